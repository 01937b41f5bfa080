"""The one training loop, for every model kind: a recipe (training/recipe.py) says what
differs, the `Trainer` does the rest.

One optimizer step:

    for each of grad_accum micro-batches:  loss = recipe.loss(model, batch)
                                            (loss * share of the step's targets).backward()
    clip the gradient norm to grad_clip;   optimizer step;   zero the gradients

Speed habits (nanoGPT's): on CUDA, bfloat16 autocast (float16 with a gradient scaler on cards
without bf16) and TF32 matmuls; bfloat16 autocast on CPUs with AMX (`train.precision`); fused
optimizers; `train.compile` (`--compile`) runs the training steps through torch.compile while
checkpoints come from the plain module; the loss is read back (a host-device sync) only at log
points.

On several processes (`torchrun ... -m qkv train`, see distributed.py) the same loop runs on
every rank: DDP averages the gradients on each step's last micro-batch (FSDP2 with
`train.fsdp` shards them), the ranks agree on the clock and on a stop signal after every
step, and rank 0 alone logs and writes the (always whole) checkpoints.

Everything the run needs to go on is in the run directory (see checkpoint.py), and resuming
restores model, optimizer, step, clock, RNG and the recipe's data position, so on CPU a
resumed run reproduces the uninterrupted run's losses exactly.

A run is never lost and never saves garbage:

- SIGINT (Ctrl-C) or SIGTERM only sets a flag; the loop looks at it after each optimizer
  step, so the run stops between steps, saves a resumable checkpoint, and raises
  `TrainingInterrupted` (the command line exits 130 or 143).
- A NaN or inf loss stops the run with a `QkvError` naming the step (checked at every log
  point), and the weights are checked before every save, so the last checkpoint on disk is
  always a finite one. With `train.skip_nonfinite` such a batch is skipped instead: its
  gradients are dropped, no update is made, and the step still counts (the batch is used up).
"""

from __future__ import annotations

import math
import signal
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from qkv.checkpoint import append_metrics, save_checkpoint
from qkv.config import ConfigTree
from qkv.errors import QkvError, TrainingInterrupted
from qkv.runtime import autocast, stop_signals_deferred
from qkv.training import distributed
from qkv.training.distributed import World
from qkv.training.progress import TrainResult, run_loop
from qkv.training.start import RunStart
from qkv.viz.probe import record_probe

BEST_DIR = "best"
LABELS = {"eval_train_loss": "train loss"}  # how a metric reads in the progress lines


class Trainer:
    """Holds a run's state; `fit` trains until max_steps or max_time.

    `RunStart` (training/start.py) prepares everything a run begins with: the device, the
    run directory, the recipe and its data, the model (new, resumed or fine-tuned), the
    wrapped module for DDP/FSDP/compile, the optimizer and the state to resume.
    """

    def __init__(
        self,
        config: ConfigTree,
        *,
        resume: bool = False,
        progress: bool = True,
        init_from: str | Path | None = None,
        world: World | None = None,
    ) -> None:
        begin = RunStart(config, resume=resume, init_from=init_from, world=world)
        self.world, self.device, self.out_dir = begin.world, begin.device, begin.out_dir
        self.recipe, self.config = begin.recipe, begin.recipe.config
        self.model, self.parallel, self.forward = begin.model, begin.parallel, begin.forward
        self.optimizer, self.scaler = begin.optimizer, begin.scaler
        self.progress = progress and self.world.is_main
        self.step, self.elapsed, self.best_val = 0, 0.0, math.inf
        self.tokens: int | None = 0  # targets seen by the job (None: not known yet)
        self.tokens_this_process = 0  # of those, the ones this process trained on (tokens/s)
        self.skipped = 0  # batches skipped for a non-finite loss (train.skip_nonfinite)
        self.raw_weights: dict[str, torch.Tensor] | None = None  # the trained ones, if averaged
        self.stop_signal: int | None = None  # set by SIGINT/SIGTERM during fit
        if begin.state is not None:
            self._restore(begin.state)
        begin.seed_other_ranks(self.step)

    @property
    def tokenizer(self):
        return self.recipe.tokenizer

    # -- saving and resuming -------------------------------------------------------------

    def _state(self, model_state: dict, optimizer_state: dict) -> dict[str, Any]:
        """The resumable snapshot. It holds the weights too: trainer.pt is replaced in one
        atomic rename, so weights, optimizer, RNG and data position always belong together."""
        return {
            "model": self.raw_weights or model_state,
            "step": self.step,
            "elapsed": self.elapsed,
            "best_val": self.best_val,
            "tokens": self.tokens,
            "optimizer": optimizer_state,
            "optimizer_kind": self.config.train.optimizer,
            "data": self.recipe.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "scaler": self.scaler.state_dict(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        """Everything but the weights (already loaded): optimizer, data position, RNG, clock."""
        saved_kind = state.get("optimizer_kind") or _optimizer_before_the_field(self.config)
        if saved_kind != self.config.train.optimizer:
            raise QkvError(
                f"the run in {self.out_dir} was trained with train.optimizer={saved_kind}; "
                f"resume it with that optimizer, not {self.config.train.optimizer}"
            )
        distributed.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.recipe.load_state_dict(state.get("data", state))  # older files: top-level keys
        torch.set_rng_state(state["torch_rng"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.best_val = state.get("best_val", math.inf)
        self.tokens = state.get("tokens")

    def save(self) -> None:
        """Write the run directory: everything `--resume` needs (never non-finite weights).

        In a job every rank calls it (a sharded model is gathered to rank 0); rank 0 writes.
        """
        self._check_finite_weights()
        fsdp = self.config.train.fsdp
        model_state, optimizer_state = distributed.full_state(self.model, self.optimizer, fsdp)
        if self.world.is_main:
            model = self._whole_model(model_state) if fsdp else self.model
            state = self._state(model_state, optimizer_state)
            save_checkpoint(self.out_dir, model, self.config, self.tokenizer, state)

    def save_best(self) -> None:
        """Write the best-val model to run_dir/best (weights, config, tokenizer: for sampling)."""
        model = self.model
        if self.config.train.fsdp:
            model_state = self._full_weights()
            model = self._whole_model(model_state) if self.world.is_main else None
        if self.world.is_main:
            save_checkpoint(self.out_dir / BEST_DIR, model, self.config, self.tokenizer)

    def _full_weights(self) -> dict[str, torch.Tensor]:
        return distributed.full_model_state(self.model, self.config.train.fsdp)

    def _whole_model(self, model_state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """An unsharded copy of the model on the CPU, from a full state dict (for saving)."""
        with torch.random.fork_rng(devices=[]):  # building it must not move the run's RNG
            model = self.recipe.build_model()
        model.load_state_dict(model_state)
        return model

    def log_metrics(self, record: dict[str, Any]) -> None:
        if self.world.is_main:
            append_metrics(self.out_dir, record)

    # -- stopping cleanly -------------------------------------------------------------------

    def nonfinite_error(self, what: str) -> QkvError:
        return QkvError(
            f"{what} at step {self.step}; the last good checkpoint is in {self.out_dir} "
            "(try a lower learning rate, or --skip-nonfinite to skip such batches)"
        )

    def _check_finite_weights(self) -> None:
        params = self.model.parameters()
        finite = torch.stack([distributed.local(p.detach()).isfinite().all() for p in params])
        if not distributed.all_ranks(bool(finite.all()), self.world, self.device):
            raise self.nonfinite_error("the weights became NaN or inf")

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        self.stop_signal = signum

    def stop(self, signum: int) -> TrainingInterrupted:
        """Save where the run is and return the exception that ends it."""
        name = signal.Signals(signum).name
        self.log_metrics({"step": self.step, "elapsed": round(self.elapsed, 3), "stop": name})
        self.save()
        return TrainingInterrupted(
            f"{name} at step {self.step}: checkpoint saved in {self.out_dir}; resume with "
            f"`qkv train --out {self.out_dir} --resume`",
            signum,
        )

    # -- one step -----------------------------------------------------------------------------

    def train_step(self) -> torch.Tensor:
        """One optimizer step -> the loss as a tensor (no sync): this rank's share of the mean
        over all the step's targets, so that its mean over the ranks is that mean.

        Each micro-batch's mean loss is weighted by its share of the targets of the step's
        global batch (times the world size, which DDP's gradient average divides out), so the
        gradient is that of the mean loss over all of them (training/recipe.py).
        """
        cfg = self.config.train
        lr = self.recipe.learning_rate(self.step, self.elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # train.embed_lr_scale's group
        drawn = [self.recipe.next_batch() for _ in range(cfg.grad_accum)]
        batches, counts = [batch for batch, _ in drawn], [count for _, count in drawn]
        step_targets = sum(counts) * self.world.size
        if not self.recipe.equal_batches:  # pairs of sentences: ask the other ranks
            step_targets = distributed.total(sum(counts), self.world, self.device)
        total = torch.zeros((), device=self.device)
        for micro_step, (batch, count) in enumerate(zip(batches, counts, strict=True)):
            # in a job, gradients are averaged over the ranks once, on the last micro-step
            last = micro_step == cfg.grad_accum - 1
            share = count * self.world.size / step_targets
            with (
                distributed.gradient_sync(self.parallel, last),
                autocast(self.device, cfg.precision),
            ):
                loss = self.recipe.loss(self.forward, batch)
                self.scaler.scale(loss * share).backward()  # scale() is 1 unless fp16
            total += loss.detach() * share  # the mean over the ranks is the job's mean
        norm = None
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            norm = distributed.replicated(norm)
        if self.tokens is None:  # resumed from a file without the count: steps were alike
            self.tokens = int(self.step * step_targets)
        self.tokens += int(step_targets)
        self.tokens_this_process += int(step_targets)
        finite = cfg.skip_nonfinite and _all_finite(total, norm)
        if cfg.skip_nonfinite and not distributed.all_ranks(finite, self.world, self.device):
            self._skip_batch(total.item())
            return total
        self.scaler.step(self.optimizer)  # with fp16, skips the step if gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.recipe.after_step(self.step, self._full_weights)
        return total

    def _skip_batch(self, loss: float) -> None:
        """Drop this batch's gradients without an update; the step still counts."""
        self.scaler.update()  # forget the unscale_ of this step
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped += 1
        self.step += 1
        if self.world.is_main:
            tqdm.write(f"qkv: step {self.step}: the loss is {loss}; skipped the batch")

    # -- the loop -----------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train until max_steps or max_time; SIGINT/SIGTERM save and stop between steps."""
        self.stop_signal = None
        with stop_signals_deferred(self._on_stop_signal):
            result = run_loop(self)
            stop = self.agree_on_clock_and_stop()
            if stop is not None:  # it came during the final evaluation and save
                raise self.stop(stop)
        return result

    def agree_on_clock_and_stop(self) -> int | None:
        """-> the signal to stop on, if any rank got one: all ranks stop at the same step.

        In a job, every rank also takes the slowest rank's clock, so the learning rate and the
        time limit agree. A signal that comes during this collective waits for the next one.
        """
        local = self.stop_signal or 0
        self.elapsed, signum = distributed.largest([self.elapsed, local], self.world, self.device)
        return int(signum) or None

    def evaluate_and_save(self, bar: tqdm) -> dict[str, float]:
        with distributed.unsharded(self.model):
            metrics = self.recipe.evaluate(self.model)
            bad = [k for k, v in metrics.items() if not math.isfinite(v)]
            if not bad:  # the probe's attention at this step (viz/probe.py)
                record_probe(self.recipe, self.model, self.out_dir, self.step, self.world.is_main)
        if bad:
            raise self.nonfinite_error(f"the {LABELS.get(bad[0], bad[0])} became {metrics[bad[0]]}")
        improved = metrics["val_loss"] < self.best_val
        self.best_val = min(self.best_val, metrics["val_loss"])
        record = {"step": self.step, "tokens": self.tokens, "elapsed": round(self.elapsed, 3)}
        self.log_metrics({**record, **metrics})
        if self.world.is_main:
            shown = ", ".join(f"{_label(k)} {v:.4f}" for k, v in metrics.items())
            bar.write(f"step {self.step}: {shown}")
        self.save()
        if improved:
            self.save_best()
        return metrics

    def average_weights(self) -> bool:
        """End with the recipe's final weights (snapshot averaging), if it has any; the trained
        ones stay in trainer.pt for a resumed run."""
        final = self.recipe.final_weights(self.step, self._full_weights)
        if final is None:
            return False
        self.raw_weights = {k: v.detach().clone() for k, v in self._full_weights().items()}
        distributed.load_full_model_state(self.model, final, self.config.train.fsdp, self.world)
        return True


def _label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " "))


def _optimizer_before_the_field(config) -> str:
    """What a trainer.pt without "optimizer_kind" was trained with (config.json's rule)."""
    before = type(config).BEFORE_THE_FIELD.get("train", {})
    return before.get("optimizer", type(config.train)().optimizer)


def _all_finite(*values: torch.Tensor | None) -> bool:
    """True if every given tensor (the loss, the gradient norm) is finite: one sync."""
    present = [v.reshape(-1) for v in values if v is not None]
    return bool(torch.isfinite(torch.cat(present)).all())
