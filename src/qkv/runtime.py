"""Where and how the code runs: the device, mixed precision, and stop signals.

Every verb that runs a model asks `resolve_device`; the trainer uses `autocast` (bfloat16 on
CUDA, float16 with a gradient scaler on cards without it, float32 elsewhere) and
`stop_signals_deferred` (Ctrl-C and SIGTERM end a run between two steps, never inside one).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

from qkv.errors import QkvError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then the CPU; asking for a missing device is an error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise QkvError(f"device {name!r} is not available on this machine; use --device cpu")
    return torch.device(name)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA: bfloat16 where the card has it, else float16 (which needs a
    gradient scaler: its narrow exponent range underflows small gradients). None elsewhere:
    CPUs and MPS train in float32."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device) -> AbstractContextManager:
    """The forward pass's autocast context: `amp_dtype`, or plain float32."""
    dtype = amp_dtype(device)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def allow_tf32(device: torch.device) -> None:
    """TensorFloat-32 for the float32 matmuls that remain under autocast, on CUDA."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@contextmanager
def stop_signals_deferred(handler: Callable[[int, object], None]) -> Iterator[None]:
    """Within: SIGINT and SIGTERM call `handler` instead of stopping the process, so a trainer
    can finish its step, save and stop; the previous handlers come back on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; there signals act as before
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)
