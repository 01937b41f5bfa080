"""The loop's course: steps until the budget is spent, logging and evaluating on the way.

`run_loop` drives a `Trainer` (training/loop.py): one optimizer step after another until
`train.max_steps` or `train.max_time`, a log line (metrics.jsonl and the progress bar) every
`log_interval` steps, an evaluation and a checkpoint every `eval_interval` steps, a stop
signal honoured between steps, and at the end the recipe's final weights (snapshot
averaging), a last evaluation and a save.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from qkv.runtime import amp_dtype
from qkv.training import distributed


@dataclass
class TrainResult:
    """What a finished run reports: its last evaluation's metrics and the best val loss."""

    out_dir: Path
    step: int
    metrics: dict[str, float]
    best_val_loss: float
    elapsed: float
    tokens_per_s: float

    @property
    def val_loss(self) -> float:
        return self.metrics["val_loss"]


def run_loop(trainer) -> TrainResult:
    """Train until max_steps or max_time; -> a TrainResult."""
    cfg = trainer.config.train
    _announce(trainer)
    bar = tqdm(total=cfg.max_steps, initial=trainer.step, disable=not trainer.progress, unit="step")
    clock = _Clock(trainer.elapsed)
    metrics: dict[str, float] = {}
    while trainer.step < cfg.max_steps and not _time_is_up(trainer):
        loss = trainer.train_step()
        trainer.elapsed = clock.elapsed()
        if trainer.step % cfg.log_interval == 0 or trainer.step == cfg.max_steps:
            loss_value = distributed.mean(loss.item(), trainer.world, trainer.device)
            _log_step(trainer, loss_value, bar, clock)
        if trainer.step % cfg.eval_interval == 0:
            metrics = trainer.evaluate_and_save(bar)
            if not trainer.recipe.eval_counts_as_training_time:
                clock.restart(trainer.elapsed)
        stop = trainer.agree_on_clock_and_stop()
        if stop is not None:
            bar.close()
            raise trainer.stop(stop)
    bar.close()
    averaged = trainer.average_weights()
    if averaged or not metrics or trainer.step % cfg.eval_interval != 0:
        metrics = trainer.evaluate_and_save(bar)
    return TrainResult(
        trainer.out_dir,
        trainer.step,
        metrics,
        trainer.best_val,
        trainer.elapsed,
        clock.tokens_per_s(trainer.tokens_this_process),
    )


class _Clock:
    """Training time since the run began (a resumed run goes on from its saved clock), and
    the tokens per second of this process's part of the run."""

    def __init__(self, elapsed: float) -> None:
        self.began = time.perf_counter()
        self.restart(elapsed)

    def restart(self, elapsed: float) -> None:
        """Count from here on, from `elapsed` (time since the last count does not count)."""
        self.start, self.start_elapsed = time.perf_counter(), elapsed

    def elapsed(self) -> float:
        return self.start_elapsed + time.perf_counter() - self.start

    def tokens_per_s(self, tokens: int) -> float:
        """`tokens` trained on since this process began, per second of its wall clock."""
        seconds = time.perf_counter() - self.began
        return tokens / seconds if seconds > 0 else 0.0


def _time_is_up(trainer) -> bool:
    max_time = trainer.config.train.max_time
    return max_time > 0 and trainer.elapsed >= max_time


def _announce(trainer) -> None:
    if not trainer.world.is_main:
        return
    job = ""
    if trainer.world.launched:
        sharded = ", sharded with FSDP" if trainer.config.train.fsdp else ""
        job = f", {trainer.world.size} processes{sharded}"
    dtype = amp_dtype(trainer.device, trainer.config.train.precision)
    precision = f"{dtype} autocast".removeprefix("torch.") if dtype else "float32"
    tqdm.write(
        f"qkv: {trainer.recipe.describe(trainer.model)}, device {trainer.device.type} "
        f"({precision}){job}, run dir {trainer.out_dir}"
    )


def _log_step(trainer, loss: float, bar: tqdm, clock: _Clock) -> None:
    train = trainer.config.train
    if not math.isfinite(loss):
        if train.skip_nonfinite:
            trainer.log_metrics({"step": trainer.step, "skipped_batches": trainer.skipped})
            return
        raise trainer.nonfinite_error(f"the loss became {loss}")
    tok_s = clock.tokens_per_s(trainer.tokens_this_process)
    lr = trainer.optimizer.param_groups[0]["lr"]
    postfix = {"loss": f"{loss:.4f}", "tok/s": f"{tok_s:,.0f}"}
    if train.max_time > 0:
        postfix["time left"] = f"{max(0.0, train.max_time - trainer.elapsed):.0f}s"
    bar.set_postfix(postfix)
    bar.update(trainer.step - bar.n)
    record = {
        "step": trainer.step,
        "tokens": trainer.tokens,
        "elapsed": round(trainer.elapsed, 3),
        "lr": lr,
        "train_loss": loss,
        "tokens_per_s": round(tok_s, 1),
    }
    trainer.log_metrics(record)
