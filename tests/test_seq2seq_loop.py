"""The encoder-decoder through the one training loop: everything GPT runs get, it gets.

torchrun DDP and FSDP (2 Gloo ranks of batch B against 1 process of batch 2B), Muon (alone
and under DDP), autocast's float16 path with the gradient scaler, --compile, --init-from a
seq2seq checkpoint, --skip-nonfinite, and best/. The runs are tiny copy-task models, built
once per module and shared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import qkv
import qkv.runtime
from qkv.checkpoint import MODEL_FILE, load_trainer_state
from qkv.cli import main
from qkv.config import load_config
from qkv.errors import QkvError
from qkv.training.loop import Trainer
from test_robustness import metrics, weights_are_finite

B = 8  # per-rank batch of sentence pairs; the single process takes 2B
STEPS = 6
COMMON = [
    "--task", "copy", "--max-steps", STEPS, "--max-time", 0,
    "model.n_encoder_layer=2", "model.n_decoder_layer=2", "model.n_embd=32", "model.n_head=2",
    "model.d_ff=64", "model.max_len=14", "data.n_train=200", "data.n_val=12", "data.n_test=12",
    "data.synthetic_len=10", "train.warmup_steps=3", "train.lr_scale=0.5", "train.log_interval=1",
    "train.eval_interval=3", "train.eval_examples=6", "train.average_every=2",
    "train.average_last=2", "train.device=cpu", "train.precision=float32",
    # no biases: the key projection's bias gets a gradient that is zero but for rounding
    # (softmax ignores a constant per query), and Adam scales that noise up to full steps
    "model.bias=false",
    # and Adam's epsilon at torch's 1e-8, not the paper's 1e-9, for the same reason: a gradient
    # near zero becomes a step of about lr either way, and last-bit noise decides its sign
    "train.eps=1e-8",
]  # fmt: skip
TOLERANCE = 1e-5


def losses(run_dir: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in metrics(run_dir) if key in r]


def assert_same_run(got: Path, expected: Path, tolerance: float = TOLERANCE) -> None:
    for key in ("train_loss", "val_loss", "val_exact_match"):
        a, b = losses(got, key), losses(expected, key)
        assert [s for s, _ in a] == [s for s, _ in b], key
        for (step, x), (_, y) in zip(a, b, strict=True):
            assert x == pytest.approx(y, rel=tolerance, abs=tolerance), (key, step)
    # the averaged final weights, and the trained ones trainer.pt keeps for --resume
    a, b = load_file(got / MODEL_FILE), load_file(expected / MODEL_FILE)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=tolerance, msg=name)
    raw_a, raw_b = load_trainer_state(got)["model"], load_trainer_state(expected)["model"]
    for name in raw_a:
        torch.testing.assert_close(raw_a[name], raw_b[name], rtol=0, atol=tolerance, msg=name)


class Runs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, "QKV_CACHE_DIR": str(root / "cache"), "PYTHONWARNINGS": "ignore"}
        self._made: dict[str, Path] = {}

    def here(self, out: Path, *args: object) -> None:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("QKV_CACHE_DIR", self.env["QKV_CACHE_DIR"])
            code = main(["train", "--no-progress", "--out", str(out), *map(str, args)])
        assert code == 0

    def torchrun(self, out: Path, *args: object) -> None:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc_per_node", "2", "-m", "qkv", "train", "--no-progress"]
        command += ["--out", str(out), *map(str, args)]
        result = subprocess.run(
            command, capture_output=True, text=True, env=self.env, timeout=180, check=False
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count("done: step") == 1 and "2 processes" in result.stdout

    def get(self, name: str) -> Path:
        if name not in self._made:
            out = self.root / name
            single, optimizer = name.startswith("one"), "muon" if "muon" in name else "adam"
            # two micro-batches a step: pairs of several lengths, so micro-batches and ranks
            # hold different numbers of target tokens
            args = [*COMMON, f"train.batch_size={2 * B if single else B}", "train.grad_accum=2"]
            args.append(f"train.optimizer={optimizer}")
            if optimizer == "muon":  # Muon's steps are larger at the same learning rate
                args.append("train.lr_scale=0.05")
            if single:
                self.here(out, *args)
            else:
                self.torchrun(out, *args, *(["--fsdp"] if name == "fsdp" else []))
            self._made[name] = out
        return self._made[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("seq2seq-loop"))


# -- torchrun: two ranks of batch B train like one process of batch 2B ------------------------


@pytest.mark.parametrize("job", ["ddp", "fsdp"])
def test_two_ranks_of_batch_b_train_like_one_process_of_batch_2b(runs, job):
    # the ranks' sentence pairs differ in length: the loss is weighted by each rank's share
    # of the step's target tokens, so the gradient is that of the whole batch's mean loss
    assert_same_run(runs.get(job), runs.get("one"))
    assert [r["tokens"] for r in metrics(runs.get(job)) if "tokens" in r] == [
        r["tokens"] for r in metrics(runs.get("one")) if "tokens" in r
    ]


def test_muon_trains_the_blocks_and_under_ddp_like_one_process(runs):
    got, expected = runs.get("ddp_muon"), runs.get("one_muon")
    assert load_trainer_state(expected)["optimizer_kind"] == "muon"
    # every rank orthogonalises the same all-reduced gradient, but Newton-Schulz runs in
    # bfloat16 (8 bits of mantissa), where the all-reduce's other summation order flips
    # roundings: the losses agree to 1e-4, the matrices to a few 1e-3
    assert_same_run(got, expected, tolerance=5e-3)
    train = [loss for _, loss in losses(expected, "train_loss")]
    assert train[-1] < train[0]


def test_best_holds_the_lowest_val_loss_and_translates(runs, cli):
    run_dir = runs.get("one")
    vals = losses(run_dir, "val_loss")
    best = min(v for _, v in vals)
    assert (run_dir / "best" / MODEL_FILE).exists()
    model, tokenizer = qkv.load(run_dir / "best")
    result = cli("translate", "--checkpoint", run_dir / "best", "--beam", 1, "abc")
    assert result.code == 0 and len(result.out.splitlines()) == 1
    # best/ is the model of the evaluation that had the lowest val loss
    result = cli("eval", "--checkpoint", run_dir / "best")
    assert result.code == 0 and "exact_match=" in result.out
    assert best == min(v for _, v in vals)


# -- one process: the speed options, fine-tuning, NaN guards ---------------------------------


def tiny_trainer(tmp_path: Path, *extra: str, **kwargs) -> Trainer:
    """A tiny copy-task run in this process; with `init_from`, its model is the checkpoint's."""
    options = [o for o in map(str, COMMON) if "=" in o]
    if kwargs.get("init_from"):
        options = [o for o in options if not o.startswith("model.")]
    config = load_config(None, [*options, "train.batch_size=8", *extra], kind="seq2seq")
    values = {"data.source": "copy", "train.out_dir": str(tmp_path / "run"), "train.max_time": 0}
    return Trainer(config.with_values(values), progress=False, **kwargs)


def test_float16_training_uses_the_gradient_scaler(tmp_path, monkeypatch):
    # CPU autocast can run float16 too, which exercises the scaler path without a GPU
    trainer = tiny_trainer(tmp_path, "train.precision=float16")
    assert trainer.scaler.is_enabled()
    losses_seen = [trainer.train_step().item() for _ in range(12)]
    assert all(map(torch.isfinite, torch.tensor(losses_seen)))
    assert sum(losses_seen[-3:]) < sum(losses_seen[:3])
    trainer.save()
    assert load_trainer_state(tmp_path / "run")["scaler"]["scale"] > 0


@pytest.mark.skipif(
    shutil.which("cc") is None, reason="torch.compile on the CPU needs a C compiler"
)
def test_compiled_training_matches_eager_and_saves_plain_names(tmp_path):
    weights = {}
    for name, extra in (("eager", []), ("compiled", ["train.compile=true"])):
        trainer = tiny_trainer(tmp_path / name, "train.max_steps=3", "train.lr_scale=0.1", *extra)
        trainer.fit()
        weights[name] = load_trainer_state(trainer.out_dir)["model"]
    assert not any("_orig_mod" in key for key in weights["compiled"])
    # Adam turns small gradients (the cross-attention's keys) into steps of about lr, so
    # the kernels' last-bit differences show at 1e-5; a real difference would be lr = 1e-2
    for key in weights["eager"]:
        torch.testing.assert_close(
            weights["compiled"][key], weights["eager"][key], rtol=1e-3, atol=1e-4
        )


def test_init_from_a_seq2seq_checkpoint_starts_from_its_weights(runs, tmp_path):
    start = runs.get("one")
    trainer = tiny_trainer(tmp_path, "model.dropout=0.1", init_from=start)
    saved = load_file(start / MODEL_FILE)
    for name, value in trainer.model.state_dict().items():
        if name in saved:
            torch.testing.assert_close(value, saved[name], rtol=0, atol=0)
    assert trainer.tokenizer.fingerprint() == qkv.load(start)[1].fingerprint()
    assert trainer.config.model.dropout == 0.1 and trainer.step == 0
    with pytest.raises(QkvError, match="takes the model from its checkpoint; drop model.d_ff"):
        tiny_trainer(tmp_path / "other", "model.d_ff=32", init_from=start)


def test_init_from_refuses_a_checkpoint_of_another_kind(trained_run, tmp_path):
    with pytest.raises(QkvError, match="holds a gpt model; this run trains a seq2seq model"):
        tiny_trainer(tmp_path, init_from=trained_run.run_dir)


def _poison(trainer: Trainer, bad_calls: set[int]) -> None:
    """Make the training forward passes numbered in `bad_calls` (from 1) give NaN logits."""
    real_forward = trainer.model.forward
    calls = [0]

    def forward(src, tgt_in, *args, **kwargs):
        logits = real_forward(src, tgt_in, *args, **kwargs)
        if trainer.model.training:
            calls[0] += 1
            if calls[0] in bad_calls:
                logits = logits * float("nan")
        return logits

    trainer.model.forward = forward


def test_skip_nonfinite_skips_the_bad_batches_and_finishes(tmp_path):
    trainer = tiny_trainer(tmp_path, "train.max_steps=6", "train.skip_nonfinite=true")
    _poison(trainer, {2, 3})
    result = trainer.fit()
    assert result.step == 6 and trainer.skipped == 2
    assert weights_are_finite(trainer.out_dir)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = tiny_trainer(tmp_path, "train.max_steps=6")
    _poison(trainer, set(range(5, 100)))
    with pytest.raises(QkvError, match=r"the loss became nan at step 5; .*last good checkpoint"):
        trainer.fit()
    assert load_trainer_state(trainer.out_dir)["step"] == 3
    assert weights_are_finite(trainer.out_dir)
