"""The README's multi-node launch, tested as two machines on one.

Two torchrun launchers, each started as the README says (`--nnodes 2 --nproc_per_node 1
--rdzv_backend c10d --rdzv_endpoint HOST:PORT`, here HOST is 127.0.0.1), stand for two
machines of one process each; they meet through torchrun's c10d rendezvous and train one job
over Gloo. On two real machines only the one whose address is HOST hosts the rendezvous store;
on one machine both would match it, so the first says so (`--rdzv-conf is_host=1`) and the
second only connects (`is_host=0`), as the other machine would.

The job of 2 ranks with batch B trains like one process with batch 2B (test_distributed's
reference run, same flags). A machine that dies (SIGKILL to its launcher and its worker at
once: nothing on it gets to say goodbye) ends the other machine's launcher with qkv's one
line, and the last checkpoint resumes in one process as if nothing had happened.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import qkv
from conftest import FAILSAFE_S, saved_step, wait_until
from test_distributed import (
    COMMON,
    STEPS,
    B,
    Runs,
    assert_same_losses,
    assert_same_weights,
    rank_pids,
)
from test_robustness import metrics

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


def free_port() -> int:
    """A free TCP port below the kernel's ephemeral range (ports it hands out by itself to
    other sockets), so nothing else takes it before torchrun binds it unless it asks for that
    very number; random, so concurrent test runs pick different ones."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except OSError:
        low = 32768
    candidates = list(range(20000, max(20000, min(low, 29000))))
    random.Random(os.getpid()).shuffle(candidates)
    for port in [*candidates, 0]:  # 0: any port the kernel gives, if none is left below
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise AssertionError("no free port")


@dataclass
class Exit:
    code: int
    out: str
    err: str


class TwoMachines:
    """A 2-node torchrun job of `qkv train`, its two launchers started on this machine.

    Launcher 0 hosts the rendezvous store. Each launcher's output goes to files (two pipes
    read one after the other could fill and block a launcher the other one waits for).
    """

    def __init__(self, runs: Runs, logs: Path, *train_args: object) -> None:
        port = free_port()
        self.job_id = f"qkv-test-{port}"  # torchrun's --rdzv_id
        self.logs = logs
        self.launchers = [self._start(runs, port, node, train_args) for node in (0, 1)]
        self.workers: dict[int, dict[int, int]] = {}  # launcher -> {rank: pid}, once seen

    def _start(self, runs: Runs, port: int, node: int, train_args) -> subprocess.Popen:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
        command += ["--nproc_per_node", "1", "--rdzv_id", self.job_id]
        command += ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}"]
        command += ["--rdzv-conf", f"is_host={int(node == 0)}"]
        command += ["-m", "qkv", "train", "--no-progress", "--seed", "1", *map(str, train_args)]
        with (
            open(self.logs / f"node{node}.out", "w") as out,
            open(self.logs / f"node{node}.err", "w") as err,
        ):
            return subprocess.Popen(command, stdout=out, stderr=err, text=True, env=runs.env)

    def output(self, node: int) -> Exit:
        """The exit status and output of a launcher that has ended (and of its worker)."""
        read = (self.logs / f"node{node}.{stream}" for stream in ("out", "err"))
        return Exit(self.launchers[node].returncode, *(path.read_text() for path in read))

    def finish(self, node: int) -> Exit:
        """Wait for a launcher to end (FAILSAFE_S at most) -> its exit."""
        try:
            self.launchers[node].wait(FAILSAFE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"launcher {node} still running after {FAILSAFE_S:.0f} s")
        return self.output(node)

    def rank_of(self, node: int) -> int:
        """The rank of the launcher's worker (the rendezvous hands the ranks out)."""
        self.workers[node] = rank_pids(self.launchers[node])
        (rank,) = self.workers[node]
        return rank

    def machine_dies(self, node: int) -> None:
        """Everything on the machine ends at once: its worker and its launcher, SIGKILLed one
        right after the other, before either can tell the other machine anything."""
        self._kill(node)

    def _kill(self, node: int) -> None:
        """SIGKILL a running launcher's workers, then the launcher (the workers are its
        children until then, so their pids cannot have gone to another process)."""
        launcher = self.launchers[node]
        self.workers[node] = rank_pids(launcher)
        for pid in self.workers[node].values():
            os.kill(pid, signal.SIGKILL)
        launcher.kill()
        launcher.wait()

    def close(self) -> None:
        """Leave no process behind, whatever the test did. A worker can outlive its
        launcher; it is killed only while its environment still names this job."""
        for node, launcher in enumerate(self.launchers):
            if launcher.poll() is None:
                self._kill(node)
        for pid in (pid for workers in self.workers.values() for pid in workers.values()):
            with contextlib.suppress(OSError):  # gone already
                if f"TORCHELASTIC_RUN_ID={self.job_id}".encode() in _environ(pid):
                    os.kill(pid, signal.SIGKILL)


def _environ(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("multinode"))


@pytest.fixture
def two_machines(runs: Runs, tmp_path: Path):
    """Start a 2-node job with `qkv train ARGS`: two_machines(*args) -> TwoMachines."""
    started: list[TwoMachines] = []

    def start(*train_args: object) -> TwoMachines:
        started.append(TwoMachines(runs, tmp_path, "--data", runs.data, *train_args))
        return started[-1]

    yield start
    for job in started:
        job.close()


def test_two_machines_of_batch_b_train_like_one_process_of_batch_2b(runs, two_machines, tmp_path):
    """Both launchers finish cleanly, rank 0 alone reports, and losses and weights are those
    of one process with the same global batch (up to float rounding, as in DDP on one
    machine: the all-reduce sums in another order)."""
    out = tmp_path / "run"
    job = two_machines("--out", out, "--max-steps", STEPS, *COMMON, f"train.batch_size={B}")
    exits = [job.finish(node) for node in (0, 1)]
    assert [e.code for e in exits] == [0, 0], [e.err for e in exits]
    stdout = "".join(e.out for e in exits)
    assert stdout.count(f"done: step {STEPS}") == 1 and stdout.count("2 processes") == 1
    assert_same_losses(out, runs.get("one"))
    assert_same_weights(out, runs.get("one"))


@linux_only
@pytest.mark.parametrize("dying", [0, 1], ids=["the-store-host-dies", "the-other-machine-dies"])
def test_a_machine_that_dies_ends_the_other_and_the_last_checkpoint_resumes(
    runs, two_machines, tmp_path, dying
):
    """Kill one machine once the job has saved twice. The other launcher ends with qkv's one
    line from its rank (torchrun adds its own report; no traceback is qkv's), and the run
    resumes in one process of batch 2B to the weights one process trains straight.

    The survivor notices at its next collective (the dead peer's sockets close), long before
    train.dist_timeout (600 s); FAILSAFE_S bounds the wait far below that, so a survivor
    that ends within it did not sit out the timeout. The time it took is printed.
    """
    out = tmp_path / "run"
    # COMMON saves every 2 steps (train.eval_interval=2); the job would go on for ages
    job = two_machines("--out", out, "--max-steps", 100000, *COMMON, f"train.batch_size={B}")
    wait_until(lambda: saved_step(out) >= 4, job.launchers, "the save of step 4")
    survivor = 1 - dying
    survivor_rank = job.rank_of(survivor)
    killed_at = time.monotonic()
    job.machine_dies(dying)
    ended = job.finish(survivor)
    print(f"\nthe survivor (rank {survivor_rank}) ended {time.monotonic() - killed_at:.1f} s later")

    assert ended.code != 0
    said = [line for line in ended.err.splitlines() if line.startswith("qkv: ")]
    assert len(said) == 1, ended.err
    assert said[0].startswith(f"qkv: rank {survivor_rank}: lost the other processes of the job")
    assert f"the last checkpoint in {out} is whole: resume it with --resume" in said[0]
    qkv_source = str(Path(qkv.__file__).parent)
    assert not [line for line in ended.err.splitlines() if qkv_source in line], ended.err

    saved = saved_step(out)
    end = saved + 2
    batch = f"train.batch_size={2 * B}"  # the same global batch, now in one process
    runs.train_here("--out", out, "--resume", "--max-steps", end, batch)
    straight = tmp_path / "straight"
    runs.train_here("--data", runs.data, "--out", straight, "--max-steps", end, *COMMON, batch)
    assert_same_weights(out, straight)
    resumed, expected = (
        {r["step"]: r["train_loss"] for r in metrics(run) if "train_loss" in r}
        for run in (out, straight)
    )  # the last record of a step wins: the steps trained again are the resumed run's
    for step in range(saved + 1, end + 1):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5), step
