"""Training under torchrun on the CPU (Gloo, 2 processes): DDP and FSDP2 against one process.

The reference is one process with batch 2B; the jobs are 2 ranks with batch B each. Both draw
the same windows (the ranks slice one shared global batch), so losses and weights must agree
up to float rounding (the all-reduce sums in another order). The runs are built once per
module and shared: a 2-rank run takes a few seconds, mostly starting Python three times.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import qkv
from conftest import FAILSAFE_S, TINY, make_text, saved_step, wait_until
from qkv.checkpoint import load_trainer_state
from qkv.cli import main
from qkv.config import load_config
from qkv.training import distributed
from qkv.training.loop import Trainer
from test_cli import assert_one_line_error
from test_robustness import metrics

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

B = 4  # per-rank batch; the single process takes 2B
STEPS, MORE_STEPS = 4, 6
# two blocks, so FSDP shards more than one unit; the schedule's length does not depend on
# --max-steps, so a 4-step run is the first 4 steps of a 6-step one
COMMON = [
    *(o for o in TINY if not o.startswith("train.batch_size")),
    "model.n_layer=2",
    "train.grad_accum=2",
    "train.decay_steps=6",
    "train.eval_interval=2",
    "train.max_time=0",
    # AdamW: FSDP shards matrices, which Muon must see whole; Muon under DDP is tested below
    "train.optimizer=adamw",
]
TOLERANCE = 1e-5
MUON_TOLERANCE = 1e-3


def losses(run_dir: Path, key: str = "train_loss") -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in metrics(run_dir) if key in r]


def assert_same_losses(got: Path, expected: Path) -> None:
    for key in ("train_loss", "val_loss"):
        a, b = losses(got, key), losses(expected, key)
        assert [step for step, _ in a] == [step for step, _ in b], key
        for (step, x), (_, y) in zip(a, b, strict=True):
            assert x == pytest.approx(y, rel=TOLERANCE), (key, step)


def assert_same_weights(got: Path, expected: Path) -> None:
    a, b = load_file(got / "model.safetensors"), load_file(expected / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=TOLERANCE, msg=name)


class Runs:
    """The shared runs of this module, each made on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "play.txt"
        self.data.write_text(make_text(), encoding="utf-8")
        self.env = {**os.environ, "QKV_CACHE_DIR": str(root / "cache"), "PYTHONWARNINGS": "ignore"}
        self._made: dict[str, Path] = {}
        self.outputs: dict[str, subprocess.CompletedProcess] = {}

    def train_here(self, *args: object) -> None:
        """`qkv train` in this process."""
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("QKV_CACHE_DIR", self.env["QKV_CACHE_DIR"])
            code = main(["train", "--no-progress", "--seed", "1", *map(str, args)])
        assert code == 0

    def torchrun(self, nproc: int, *args: object, timeout: float = FAILSAFE_S):
        """`torchrun --standalone --nproc_per_node N -m qkv train ARGS` -> CompletedProcess."""
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc_per_node", str(nproc), "-m", "qkv", "train", "--no-progress"]
        command += ["--seed", "1", *map(str, args)]
        return subprocess.run(
            command, capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )

    def get(self, name: str) -> Path:
        if name not in self._made:
            out = self.root / name
            getattr(self, f"_make_{name}")(out)
            self._made[name] = out
        return self._made[name]

    def _fresh(self, out: Path, *flags: object) -> list[object]:
        return ["--data", self.data, "--out", out, "--max-steps", STEPS, *flags, *COMMON]

    def _make_one(self, out: Path) -> None:
        self.train_here(*self._fresh(out), f"train.batch_size={2 * B}")

    def _make_one_longer(self, out: Path) -> None:
        shutil.copytree(self.get("one"), out)
        self.train_here("--out", out, "--resume", "--max-steps", MORE_STEPS)

    def _make_ddp(self, out: Path) -> None:
        self.outputs["ddp"] = result = self.torchrun(2, *self._fresh(out), f"train.batch_size={B}")
        assert result.returncode == 0, result.stderr

    def _make_one_muon(self, out: Path) -> None:
        self.train_here(*self._fresh(out), f"train.batch_size={2 * B}", "train.optimizer=muon")

    def _make_ddp_muon(self, out: Path) -> None:
        args = (*self._fresh(out), f"train.batch_size={B}", "train.optimizer=muon")
        result = self.torchrun(2, *args)
        assert result.returncode == 0, result.stderr

    def _make_fsdp(self, out: Path) -> None:
        result = self.torchrun(2, *self._fresh(out, "--fsdp"), f"train.batch_size={B}")
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("distributed"))


# -- the same training, split over ranks -------------------------------------------------------


@pytest.mark.parametrize("job", ["ddp", "fsdp"])
def test_two_ranks_of_batch_b_train_like_one_process_of_batch_2b(runs, job):
    assert_same_losses(runs.get(job), runs.get("one"))
    assert_same_weights(runs.get(job), runs.get("one"))
    # the tokens counted are the job's: 2 ranks x B x grad_accum x block_size per step
    job_tokens = [r["tokens"] for r in metrics(runs.get(job))]
    assert job_tokens == [r["tokens"] for r in metrics(runs.get("one"))]


def test_muon_under_ddp_trains_like_one_process(runs):
    # every rank orthogonalises the same all-reduced gradient; Newton-Schulz magnifies the
    # all-reduce's different summation order in a gradient's smallest directions, so the
    # tolerance is looser than AdamW's
    got, expected = runs.get("ddp_muon"), runs.get("one_muon")
    assert load_trainer_state(got)["optimizer_kind"] == "muon"
    for (step, x), (_, y) in zip(losses(got), losses(expected), strict=True):
        assert x == pytest.approx(y, rel=1e-4), step
    a, b = load_file(got / "model.safetensors"), load_file(expected / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=MUON_TOLERANCE, msg=name)


def test_only_rank_0_writes_logs_metrics_and_checkpoints(runs):
    run_dir = runs.get("ddp")
    one_line_per_record = len(metrics(runs.get("one")))
    assert len(metrics(run_dir)) == one_line_per_record  # no rank wrote a second copy
    output = runs.outputs["ddp"]
    assert output.stdout.count("done: step 4") == 1
    assert output.stdout.count("parameters,") == 1 and "2 processes" in output.stdout
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        p.name for p in runs.get("one").iterdir()
    )
    assert not list(run_dir.glob(".*.tmp"))


def test_a_two_rank_checkpoint_resumes_in_one_process(runs, tmp_path):
    resumed = Path(shutil.copytree(runs.get("ddp"), tmp_path / "resumed"))
    batch = f"train.batch_size={2 * B}"  # the same global batch, now in one process
    runs.train_here("--out", resumed, "--resume", "--max-steps", MORE_STEPS, batch)
    assert load_trainer_state(resumed)["step"] == MORE_STEPS
    assert_same_losses(resumed, runs.get("one_longer"))
    assert_same_weights(resumed, runs.get("one_longer"))


def test_a_sharded_checkpoint_loads_and_resumes_in_one_process(runs, tmp_path):
    model, _ = qkv.load(runs.get("fsdp"))
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    resumed = Path(shutil.copytree(runs.get("fsdp"), tmp_path / "resumed"))
    batch = f"train.batch_size={2 * B}"
    runs.train_here("--out", resumed, "--resume", "--max-steps", MORE_STEPS, batch)
    assert_same_losses(resumed, runs.get("one_longer"))
    assert_same_weights(resumed, runs.get("one_longer"))


def test_a_one_process_checkpoint_resumes_sharded_on_two_ranks(runs, tmp_path):
    resumed = Path(shutil.copytree(runs.get("one"), tmp_path / "resumed"))
    batch = f"train.batch_size={B}"
    result = runs.torchrun(
        2, "--out", resumed, "--resume", "--max-steps", MORE_STEPS, "--fsdp", batch
    )
    assert result.returncode == 0, result.stderr
    assert_same_losses(resumed, runs.get("one_longer"))
    assert_same_weights(resumed, runs.get("one_longer"))


# -- gradient accumulation: one all-reduce per optimizer step --------------------------------


@pytest.fixture
def world_of_one():
    """A real Gloo process group of one process, in this process."""
    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.HashStore(), rank=0, world_size=1
    )
    yield distributed.World(launched=True)
    torch.distributed.destroy_process_group()


def _trainer(runs: Runs, out: Path, world: distributed.World, *extra: str) -> Trainer:
    config = load_config(None, [*COMMON, f"train.batch_size={B}", "train.grad_accum=3", *extra])
    config = config.with_values({"data.source": str(runs.data), "train.out_dir": str(out)})
    return Trainer(config, progress=False, world=world)


def _count_batches(trainer: Trainer) -> list[int]:
    drawn = [0]
    real_next_batch = trainer.recipe.sampler.next_batch

    def next_batch(length=None, rows=None):
        drawn[0] += 1
        return real_next_batch(length, rows)

    trainer.recipe.sampler.next_batch = next_batch
    return drawn


def test_ddp_all_reduces_gradients_only_on_the_last_micro_step(runs, tmp_path, world_of_one):
    trainer = _trainer(runs, tmp_path / "run", world_of_one)
    assert isinstance(trainer.parallel, torch.nn.parallel.DistributedDataParallel)
    drawn = _count_batches(trainer)
    reduced_after: list[int] = []  # how many batches were drawn at each all-reduce

    def counting_allreduce(state, bucket):
        reduced_after.append(drawn[0])
        work = torch.distributed.all_reduce(bucket.buffer(), async_op=True)
        return work.get_future().then(lambda fut: fut.value()[0])

    trainer.parallel.register_comm_hook(None, counting_allreduce)
    for _ in range(2):
        trainer.train_step()
    assert reduced_after, "no gradient was ever all-reduced"
    assert set(reduced_after) == {3, 6}  # the third micro-batch of each step, and only then


def test_fsdp_turns_gradient_sync_off_for_all_but_the_last_micro_step(runs, tmp_path, world_of_one):
    # a world of one reduce-scatters nothing, so watch FSDP2's switch for it instead
    trainer = _trainer(runs, tmp_path / "run", world_of_one, "train.fsdp=true")
    ran = [0]  # micro-batches run through the model (a step draws its batches first)
    real_loss = trainer.recipe.loss

    def loss(forward, batch):
        ran[0] += 1
        return real_loss(forward, batch)

    trainer.recipe.loss = loss
    switched: list[tuple[int, bool]] = []  # (micro-batches run, sync on?) at each switch
    real_switch = trainer.parallel.set_requires_gradient_sync

    def switch(requires_gradient_sync: bool, **kwargs) -> None:
        switched.append((ran[0], requires_gradient_sync))
        real_switch(requires_gradient_sync, **kwargs)

    trainer.parallel.set_requires_gradient_sync = switch
    for _ in range(2):
        trainer.train_step()
    # off for micro-batches 1 and 2 of each step (back on after each), never for the third
    runs_before = [3 * step + micro for step in (0, 1) for micro in (0, 1)]
    assert switched == [
        (n + after, on) for n in runs_before for after, on in ((0, False), (1, True))
    ]


def test_fsdp_outside_torchrun_is_a_one_line_error(cli, text_file, tmp_path, tiny):
    args = ["--out", tmp_path / "run", "--fsdp", *tiny, "train.optimizer=adamw"]
    result = cli("train", "--data", text_file, *args)
    assert_one_line_error(result, "--fsdp", "torchrun --nproc_per_node")


# -- a rank that dies, a job that is stopped ---------------------------------------------------


def rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of the workers torchrun started (read from /proc)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    ranks = {}
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        for entry in environ:
            if entry.startswith(b"RANK="):
                ranks[int(entry[5:])] = int(pid)
    return ranks


def _start_long_job(runs: Runs, out: Path) -> subprocess.Popen:
    """A 2-rank job that would run for ages; returns once it has saved a checkpoint."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "qkv", "train", "--no-progress"]
    command += ["--data", str(runs.data), "--out", str(out), "--max-steps", "100000"]
    command += [*COMMON, f"train.batch_size={B}", "train.eval_interval=5"]
    launcher = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=runs.env
    )
    wait_until(lambda: saved_step(out) >= 10, [launcher], "the save of step 10")
    return launcher


@linux_only
def test_killing_one_rank_ends_the_job_quickly_and_the_checkpoint_loads(runs, tmp_path):
    """SIGKILL rank 1: torchrun sees it die and ends rank 0, which would otherwise wait in its
    next collective for train.dist_timeout (600 s). FAILSAFE_S is far below that: a job
    that ends within it noticed the death instead of timing out."""
    out = tmp_path / "run"
    launcher = _start_long_job(runs, out)
    killed_at = time.monotonic()
    os.kill(rank_pids(launcher)[1], signal.SIGKILL)
    _, err = launcher.communicate(timeout=FAILSAFE_S)
    print(f"\nthe job ended {time.monotonic() - killed_at:.1f} s after rank 1 died")
    assert launcher.returncode != 0
    assert "SIGKILL" in err  # torchrun's report names the rank that died, and how
    model, tokenizer = qkv.load(out)
    assert load_trainer_state(out)["step"] >= 10
    assert all(bool(p.isfinite().all()) for p in model.parameters())
    assert tokenizer.vocab_size == model.config.vocab_size


@linux_only
def test_sigterm_to_torchrun_saves_once_and_stops_every_rank(runs, tmp_path):
    out = tmp_path / "run"
    launcher = _start_long_job(runs, out)
    launcher.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
    _, err = launcher.communicate(timeout=FAILSAFE_S)
    stops = [r for r in metrics(out) if "stop" in r]
    assert len(stops) == 1 and stops[0]["stop"] == "SIGTERM"
    assert load_trainer_state(out)["step"] == stops[0]["step"]
    assert err.count("qkv: SIGTERM at step") == 1  # said once, by rank 0
    assert "Unable to shutdown" not in err  # no rank had to be killed
