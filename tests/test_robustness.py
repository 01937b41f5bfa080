"""Never lose a run, never save garbage: signals, kills mid-save, a full disk, NaN losses."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FAILSAFE_S, saved_step, wait_until
from qkv.checkpoint import (
    MODEL_FILE,
    TRAINER_FILE,
    checkpoint_step,
    load_checkpoint,
    load_trainer_state,
)
from qkv.config import load_config
from qkv.errors import QkvError, TrainingInterrupted
from qkv.runtime import STOP_SIGNALS
from qkv.training.loop import Trainer
from test_cli import assert_one_line_error

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and fork")


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def tiny_trainer(text_file: Path, out: Path, tiny: list[str], *extra: str) -> Trainer:
    """An in-process Trainer for a tiny model on the generated text."""
    config = load_config(None, [*tiny, "train.max_time=0", *extra])
    config = config.with_values({"data.source": str(text_file), "train.out_dir": str(out)})
    return Trainer(config, progress=False)


def weights_are_finite(run_dir: Path) -> bool:
    model, _, _ = load_checkpoint(run_dir)
    return all(bool(p.isfinite().all()) for p in model.parameters())


# -- SIGINT / SIGTERM -----------------------------------------------------------------------


def _train_until_signalled(text_file: Path, run_dir: Path, tiny: list[str], signum: int):
    """Start `python -m qkv train`, wait for a few logged steps, send `signum`; -> result.

    The metrics line of step 5 is the thing awaited here: the loop wrote it, so the loop is
    running with its signal handlers in place and at least 5 steps done. The save the
    signal asks for is awaited through the process's exit.
    """
    command = [sys.executable, "-m", "qkv", "train", "--data", str(text_file)]
    command += ["--out", str(run_dir), "--max-steps", "100000", "--max-time", "0"]
    command += ["--no-progress", *tiny]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    wait_until(
        lambda: any(r.get("step", 0) >= 5 for r in metrics(run_dir)),
        [process],
        "the metrics line of step 5",
    )
    process.send_signal(signum)
    out, err = process.communicate(timeout=FAILSAFE_S)
    return process.returncode, out, err


@posix_only
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_resumable_checkpoint_and_exits(
    cli, text_file, tmp_path, tiny, signum, code
):
    run_dir = tmp_path / "run"
    returncode, _, err = _train_until_signalled(text_file, run_dir, tiny, signum)
    assert returncode == code, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert signal.Signals(signum).name in lines[-1]
    assert str(run_dir) in lines[-1] and f"qkv train --out {run_dir} --resume" in lines[-1]

    stopped = load_trainer_state(run_dir)["step"]
    assert stopped >= 5
    assert checkpoint_step(run_dir) == stopped
    last = metrics(run_dir)[-1]
    assert (last["step"], last["stop"]) == (stopped, signal.Signals(signum).name)
    load_checkpoint(run_dir)

    resumed = cli(
        "train", "--out", run_dir, "--resume", "--max-steps", stopped + 3, "--no-progress"
    )
    assert resumed.code == 0, resumed.err
    assert f"done: step {stopped + 3}" in resumed.out
    new_steps = [r["step"] for r in metrics(run_dir) if "train_loss" in r and r["step"] > stopped]
    assert new_steps == [stopped + 1, stopped + 2, stopped + 3]


def test_fit_restores_the_previous_signal_handlers(text_file, tmp_path, tiny):
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    tiny_trainer(text_file, tmp_path / "run", tiny, "train.max_steps=2").fit()
    assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == before


@posix_only
def test_a_signal_during_fit_stops_between_steps(text_file, tmp_path, tiny):
    trainer = tiny_trainer(text_file, tmp_path / "run", tiny, "train.max_steps=50")
    real_step = trainer.train_step

    def step_then_signal() -> torch.Tensor:
        loss = real_step()
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # handled: sets the flag, nothing more
        return loss

    trainer.train_step = step_then_signal
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 3") as info:
        trainer.fit()
    assert info.value.exit_code == 143
    assert load_trainer_state(tmp_path / "run")["step"] == 3


# -- SIGKILL mid-save -----------------------------------------------------------------------


def _save_forever(trainer: Trainer, first_step: int, ready) -> None:
    """The child: train and save, over and over, until killed."""
    # a forked child must not enter the OpenMP pool the parent started: it would hang
    torch.set_num_threads(1)
    trainer.step = first_step
    while True:
        trainer.train_step()
        trainer.save()
        ready.set()


SIGKILL_TRIALS = 20


@posix_only
def test_sigkill_at_random_moments_of_a_save_never_breaks_the_checkpoint(text_file, tmp_path, tiny):
    """A child trains and saves in a loop; it is killed at a random moment after its first
    save (0-30 ms later: in a save, between its files, or in the middle of one),
    SIGKILL_TRIALS times; after every kill the checkpoint loads strictly and its weights are
    never older than its trainer.pt."""
    run_dir = tmp_path / "run"
    trainer = tiny_trainer(text_file, run_dir, tiny, "train.max_steps=1000000")
    fork = multiprocessing.get_context("fork")
    rng = random.Random(0)
    trials, between_files, mid_file = 0, 0, 0
    for trials in range(1, SIGKILL_TRIALS + 1):  # all of them, however long they take
        ready = fork.Event()
        child = fork.Process(target=_save_forever, args=(trainer, 1000 * trials, ready))
        child.start()
        assert ready.wait(FAILSAFE_S), "the child never saved"
        time.sleep(rng.uniform(0.0, 0.03))  # a random moment of the saves that follow
        os.kill(child.pid, signal.SIGKILL)
        child.join(FAILSAFE_S)
        assert child.exitcode == -signal.SIGKILL

        model, tokenizer, config = load_checkpoint(run_dir)  # strict: weights match config
        assert config.model == trainer.config.model
        assert tokenizer.vocab_size == trainer.tokenizer.vocab_size
        state = load_trainer_state(run_dir)
        weights_step = checkpoint_step(run_dir)
        assert weights_step is not None and weights_step >= state["step"]
        between_files += weights_step != state["step"]
        mid_file += any(run_dir.glob(".*.tmp"))
    print(f"\n{trials} SIGKILLs survived ({between_files} between files, {mid_file} mid-file)")
    assert trials == SIGKILL_TRIALS
    trainer.save()
    assert not any(run_dir.glob(".*.tmp")), "the next save clears what a kill left behind"


# -- a full disk ----------------------------------------------------------------------------


def _no_space(*args, **kwargs) -> None:
    target = Path(str(args[1]))  # save_model(model, path), torch.save(obj, path)
    target.write_bytes(b"partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize(
    ("writer", "untouched"),
    [("qkv.checkpoint.save_model", [MODEL_FILE, TRAINER_FILE]), ("torch.save", [TRAINER_FILE])],
)
def test_a_full_disk_keeps_the_old_checkpoint_and_is_a_one_line_error(
    cli, run_copy, monkeypatch, writer, untouched
):
    kept = {name: (run_copy / name).read_bytes() for name in untouched}
    monkeypatch.setattr(writer, _no_space)
    result = cli("train", "--out", run_copy, "--resume", "--max-steps", 21, "--no-progress")
    assert_one_line_error(result, str(run_copy), "No space left on device")
    assert {name: (run_copy / name).read_bytes() for name in kept} == kept
    assert not any(run_copy.glob(".*.tmp"))
    monkeypatch.undo()
    load_checkpoint(run_copy)
    assert load_trainer_state(run_copy)["step"] == 20


def test_resume_after_a_save_cut_short_between_files_goes_on_and_says_so(
    cli, run_copy, monkeypatch
):
    monkeypatch.setattr(torch, "save", _no_space)  # the weights reach step 21, trainer.pt not
    cli("train", "--out", run_copy, "--resume", "--max-steps", 21, "--no-progress")
    monkeypatch.undo()
    assert (checkpoint_step(run_copy), load_trainer_state(run_copy)["step"]) == (21, 20)
    result = cli("train", "--out", run_copy, "--resume", "--max-steps", 22, "--no-progress")
    assert result.code == 0, result.err
    assert "is from step 21" in result.err and "snapshot of step 20" in result.err
    assert checkpoint_step(run_copy) == load_trainer_state(run_copy)["step"] == 22


# -- NaN and inf ----------------------------------------------------------------------------


def _poison(trainer: Trainer, bad_calls: set[int]) -> None:
    """Make the training forward passes numbered in `bad_calls` (from 1) return a NaN loss."""
    real_forward = trainer.model.forward
    calls = [0]

    def forward(idx, targets=None, **options):
        if options:  # GPT.forward's other uses (the probe's return_weights) pass through
            return real_forward(idx, targets, **options)
        logits, loss = real_forward(idx, targets)
        if trainer.model.training:
            calls[0] += 1
            if calls[0] in bad_calls:
                loss = loss * float("nan")
        return logits, loss

    trainer.model.forward = forward


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(text_file, tmp_path, tiny):
    run_dir = tmp_path / "run"
    trainer = tiny_trainer(text_file, run_dir, tiny, "train.max_steps=10", "train.eval_interval=2")
    _poison(trainer, set(range(5, 100)))
    with pytest.raises(QkvError, match=r"the loss became nan at step 5; .*last good checkpoint"):
        trainer.fit()
    assert load_trainer_state(run_dir)["step"] == 4
    assert weights_are_finite(run_dir)


def test_non_finite_weights_are_never_saved(text_file, tmp_path, tiny):
    run_dir = tmp_path / "run"
    trainer = tiny_trainer(text_file, run_dir, tiny, "train.max_steps=4")
    trainer.save()
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("inf")
    with pytest.raises(QkvError, match="weights became NaN or inf"):
        trainer.save()
    assert weights_are_finite(run_dir)


def test_a_huge_learning_rate_is_a_one_line_error_naming_the_step(cli, text_file, tmp_path, tiny):
    run_dir = tmp_path / "run"
    args = ["train", "--data", text_file, "--out", run_dir, "--max-steps", 20, "--max-time", 0]
    result = cli(*args, "--no-progress", *tiny, "train.lr=1e30", "train.eval_interval=1")
    assert_one_line_error(result, "at step", str(run_dir), "--skip-nonfinite")
    if (run_dir / MODEL_FILE).exists():
        assert weights_are_finite(run_dir)


def test_skip_nonfinite_skips_the_bad_batches_and_finishes(text_file, tmp_path, tiny):
    run_dir = tmp_path / "run"
    trainer = tiny_trainer(
        text_file, run_dir, tiny, "train.max_steps=8", "train.skip_nonfinite=true"
    )
    _poison(trainer, {3, 4})
    result = trainer.fit()
    assert result.step == 8 and trainer.skipped == 2
    assert weights_are_finite(run_dir)
    skipped = [r for r in metrics(run_dir) if "skipped_batches" in r]
    assert [r["step"] for r in skipped] == [3, 4]


def test_skip_nonfinite_flag_sets_the_config(cli, text_file, tmp_path, tiny):
    run_dir = tmp_path / "run"
    args = ["train", "--data", text_file, "--out", run_dir, "--max-steps", 2, "--max-time", 0]
    result = cli(*args, "--no-progress", "--skip-nonfinite", *tiny)
    assert result.code == 0, result.err
    assert load_checkpoint(run_dir)[2].train.skip_nonfinite is True


# -- a crash, then --resume -----------------------------------------------------------------


@posix_only
def test_resuming_after_sigkill_reproduces_the_uninterrupted_losses(cli, text_file, tmp_path, tiny):
    """Kill a real run with SIGKILL once its second checkpoint is on disk (no chance to save;
    in a step or in the next save, wherever the kill lands), resume it: every step it trains
    again, and every later step, has the uninterrupted run's loss."""
    schedule = [*tiny, "train.max_time=0", "train.decay_steps=24", "train.log_interval=1"]
    schedule += ["train.eval_interval=4", "model.dropout=0.1"]  # dropout: the RNG must resume
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    args = ["train", "--data", str(text_file), "--no-progress", "--max-steps"]

    command = [sys.executable, "-m", "qkv", *args, "100000", "--out", str(crashed), *schedule]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until(lambda: saved_step(crashed) >= 8, [process], "the save of step 8")
    process.kill()
    process.communicate()
    saved = saved_step(crashed)
    logged = max(r["step"] for r in metrics(crashed))  # how far it got before the kill landed
    end = max(24, logged + 4)  # beyond every step it logged, however late the kill came
    assert cli(*args, end, "--out", str(crashed), "--resume", *schedule).code == 0
    assert cli(*args, end, "--out", str(straight), *schedule).code == 0

    def losses(run_dir: Path) -> dict[int, float]:  # the last record of each step wins
        return {r["step"]: r["train_loss"] for r in metrics(run_dir) if "train_loss" in r}

    expected, resumed = losses(straight), losses(crashed)
    assert sorted(expected) == list(range(1, end + 1))
    assert 8 <= saved < end and load_trainer_state(crashed)["step"] == end
    assert {step: resumed[step] for step in expected} == expected
