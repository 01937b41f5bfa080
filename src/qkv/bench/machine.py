"""The machine `qkv bench` runs on: its limits and the line that describes it.

- `matmul_peak`: FLOP/s of a square matmul, the yardstick for MFU;
- `device_memory`: the device's total memory, which bounds the explicit attention runs;
- `PeakMemory`: peak memory of a stretch of code (CPU: VmHWM from /proc; CUDA: torch's
  peak allocation);
- `cpu_name` and `_machine_line`: the device, cores, threads and versions of the report.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys

import torch

from qkv.bench.timing import _timed
from qkv.interop import require_transformers


def matmul_peak(
    n: int, device: torch.device, repeats: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """FLOP/s of an (n, n) @ (n, n) matmul in `dtype`: 2 n^3 FLOPs, best of `repeats`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    _timed(lambda: a @ b, device)  # warm-up: BLAS threads, caches
    best = min(_timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / best


class PeakMemory:
    """Peak memory of a stretch of code, in bytes above what was in use when it began."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.before = 0

    @staticmethod
    def _status(field_name: str) -> int:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024  # kB
        raise OSError(f"{field_name} not in /proc/self/status")

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        elif self.device.type == "cpu" and sys.platform == "linux":
            _release_free_heap()
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")  # resets VmHWM to the current resident set
            self.before = self._status("VmRSS")

    def peak(self) -> int | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated() - self.before
        if self.device.type == "cpu" and sys.platform == "linux":
            return self._status("VmHWM") - self.before
        return None


def _release_free_heap() -> None:
    """Give memory that glibc keeps after free() back to the system, so RSS is what is used."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: measure as it is
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def device_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_name() -> str:
    """The CPU's model name (as `lscpu` shows it), or the architecture where it is unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine_line(device: torch.device, threads: int) -> str:
    transformers = require_transformers()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return (
        f"device {device.type} ({where}; {os.cpu_count()} cores), {threads} torch threads, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, float32"
    )
