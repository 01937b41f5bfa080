"""The trainer: next-token prediction with AdamW, warm-up and cosine decay, and checkpoints.

It knows the model only through `model(x, y) -> (logits, loss)`. One optimizer step:

    for each of grad_accum micro-batches:  loss = CE(model(x), y) / grad_accum; loss.backward()
    clip the gradient norm to grad_clip;   AdamW step;   zero the gradients

AdamW (Loshchilov & Hutter, 2019) decays only the matrices (embeddings, projections), not
biases or LayerNorm gains, as GPT-2 and nanoGPT do. The learning rate warms up linearly over
`warmup_steps`, then follows a cosine from `lr` to `min_lr` (Loshchilov & Hutter, 2017) over
the run: over `decay_steps`, or over the wall-clock budget `max_time` when that runs out first,
so a time-limited run still ends at min_lr.

Speed habits (nanoGPT's): on CUDA, bfloat16 autocast (float16 with a gradient scaler on cards
without bf16) and TF32 matmuls; fused AdamW; `train.compile` (`--compile`) runs the training
steps through torch.compile while checkpoints come from the plain module; batches are pinned
and copied without blocking; the loss is read back (a host-device sync) only at log points.

On several processes (`torchrun ... -m qkv train`, see distributed.py) the same loop runs on
every rank: DDP averages the gradients on each step's last micro-batch (FSDP2 with
`train.fsdp` shards them), the ranks agree on the clock and on a stop signal after every
step, and rank 0 alone logs and writes the (always whole) checkpoints.

Everything the run needs to go on is in the run directory (see checkpoint.py), and `resume`
restores model, optimizer, step, clock, RNG and data position, so on CPU a resumed run
reproduces the uninterrupted run's losses exactly. `init_from` starts a new run from another
checkpoint's weights and tokenizer instead (fine-tuning, e.g. GPT-2 after `qkv import-hf`).

A run is never lost and never saves garbage:

- SIGINT (Ctrl-C) or SIGTERM only sets a flag; the loop looks at it after each optimizer
  step, so the run stops between steps, saves a resumable checkpoint, and raises
  `TrainingInterrupted` (the command line exits 130 or 143). The previous handlers come back
  when `fit` returns.
- A NaN or inf loss stops the run with a `QkvError` naming the step (checked at every log
  point), and the weights are checked before every save, so the last checkpoint on disk is
  always a finite one. With `train.skip_nonfinite` such a batch is skipped instead: its
  gradients are dropped, no update is made, and the step still counts (the batch is used up).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from qkv import distributed
from qkv.checkpoint import (
    MODEL_FILE,
    TRAINER_FILE,
    append_metrics,
    checkpoint_step,
    load_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from qkv.config import GPTConfig, RunConfig, TrainConfig
from qkv.data import BatchSampler, Corpus, prepare_corpus
from qkv.distributed import World
from qkv.errors import JobBroken, QkvError, TrainingInterrupted
from qkv.models.gpt import GPT
from qkv.optim import make_optimizer

BEST_DIR = "best"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class TrainResult:
    """What a finished run reports."""

    out_dir: Path
    step: int
    val_loss: float
    best_val_loss: float
    elapsed: float
    tokens_per_s: float


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then the CPU; asking for a missing device is an error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise QkvError(f"device {name!r} is not available on this machine; use --device cpu")
    return torch.device(name)


def learning_rate(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """Linear warm-up to lr over warmup_steps, then a cosine from lr down to min_lr.

    The cosine's progress is the larger of the step fraction and, under a time budget, the
    time fraction, so a run stopped by max_time still finishes its decay.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.schedule_steps - cfg.warmup_steps)
    if cfg.max_time > 0:
        progress = max(progress, elapsed / cfg.max_time)
    progress = min(progress, 1.0)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA: bfloat16 where the card has it, else float16 (which needs a
    gradient scaler: its narrow exponent range underflows small gradients). None elsewhere:
    CPUs and MPS train in float32."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device):
    """The forward pass's autocast context: `amp_dtype`, or plain float32."""
    dtype = amp_dtype(device)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@torch.no_grad()
def estimate_loss(
    model: GPT,
    corpus: Corpus,
    config: RunConfig,
    device: torch.device,
    world: World = distributed.SINGLE,
) -> dict:
    """Mean loss on the same eval_iters random batches of each split at every eval point.

    The batches come from a generator of their own, so evaluating never moves the training
    data position or the global RNG. In a job, each rank scores its slice of the global
    batches and the ranks average: every rank gets the same numbers.
    """
    model.eval()
    losses = {}
    for split, ids in (("train", corpus.train), ("val", corpus.val)):
        sampler = BatchSampler(
            ids,
            config.model.block_size,
            config.train.batch_size,
            config.train.seed + 1,
            device,
            rank=world.rank,
            world_size=world.size,
        )
        total = 0.0
        for _ in range(config.train.eval_iters):
            x, y = sampler.next_batch()
            with autocast(device):
                _, loss = model(x, y)
            total += loss.item()
        losses[split] = distributed.mean(total / config.train.eval_iters, world, device)
    model.train()
    return losses


class Trainer:
    """Holds a run's state; `fit` trains until max_steps or max_time."""

    def __init__(
        self,
        config: RunConfig,
        *,
        resume: bool = False,
        progress: bool = True,
        init_from: str | Path | None = None,
        world: World = distributed.SINGLE,
    ):
        if resume and init_from:
            raise QkvError("--resume continues a run and --init-from starts one: use one of them")
        if config.train.fsdp and config.train.optimizer == "muon":
            raise QkvError(
                "train.optimizer=muon orthogonalises whole matrices, which --fsdp splits across "
                "ranks: use train.optimizer=adamw with --fsdp (DDP works with muon)"
            )
        if config.train.fsdp and not world.launched:
            raise QkvError(
                "--fsdp shards the model over the processes torchrun starts: launch with "
                "`torchrun --nproc_per_node N -m qkv train --fsdp ...`"
            )
        self.world = world
        self.out_dir = Path(config.train.out_dir)
        self.device = distributed.rank_device(resolve_device(config.train.device), world)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QkvError(
                f"cannot use {self.out_dir} as the run directory: {exc.strerror}"
            ) from None
        self.progress = progress and world.is_main
        start_dir = self.out_dir if resume else init_from
        saved = load_checkpoint(start_dir, self.device) if start_dir else None
        if saved and init_from:
            config = fine_tuning_config(config, saved[2])
        data = config.data
        self.corpus = prepare_corpus(
            data.source,
            data.val_fraction,
            saved[1] if saved else None,
            kind=data.tokenizer,
            vocab_size=data.vocab_size,
        )
        vocab_size = self.corpus.tokenizer.vocab_size
        model_config = dataclasses.replace(config.model, vocab_size=vocab_size)
        self.config = dataclasses.replace(config, model=model_config)
        _check_enough_data(self.corpus, model_config.block_size, config.data.source)
        torch.manual_seed(config.train.seed)
        if saved and saved[2].model != model_config:
            raise QkvError(f"the model config differs from the run's in {self.out_dir}")
        self.model = saved[0] if saved else GPT(model_config).to(self.device)
        state = load_trainer_state(self.out_dir) if resume else None
        if state is not None:  # the snapshot's weights, before DDP copies or FSDP shards them
            self._check_snapshot_step(state)
            self.model.load_state_dict(state["model"])
        # the module the training step runs: DDP around self.model, or self.model itself,
        # sharded in place by FSDP; self.model's plain names go into the checkpoints
        self.parallel = distributed.parallelize(self.model, world, config.train.fsdp)
        self.optimizer = make_optimizer(self.model, config.train, self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=amp_dtype(self.device) == torch.float16
        )
        if self.device.type == "cuda":  # TensorFloat-32 for the float32 matmuls that remain
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # compiled for the training steps only; self.model stays the plain module, so state
        # dicts never carry torch.compile's "_orig_mod." prefix
        self.forward = torch.compile(self.parallel) if config.train.compile else self.parallel
        self.sampler = BatchSampler(
            self.corpus.train,
            model_config.block_size,
            config.train.batch_size,
            config.train.seed,
            self.device,
            rank=world.rank,
            world_size=world.size,
        )
        self.step, self.elapsed, self.best_val = 0, 0.0, math.inf
        self.skipped = 0  # batches skipped for a non-finite loss (train.skip_nonfinite)
        self.stop_signal: int | None = None  # set by SIGINT/SIGTERM during fit
        if state is not None:
            self._restore(state)
        self._seed_other_ranks()

    # -- saving and resuming -------------------------------------------------------------

    def _state(self, model_state: dict, optimizer_state: dict) -> dict[str, Any]:
        """The resumable snapshot. It holds the weights too: trainer.pt is replaced in one
        atomic rename, so weights, optimizer, RNG and data position always belong together."""
        return {
            "model": model_state,
            "step": self.step,
            "elapsed": self.elapsed,
            "best_val": self.best_val,
            "optimizer": optimizer_state,
            "optimizer_kind": self.config.train.optimizer,
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "scaler": self.scaler.state_dict(),
        }

    def _check_snapshot_step(self, state: dict[str, Any]) -> None:
        weights_step = checkpoint_step(self.out_dir)
        if weights_step is not None and weights_step != state["step"] and self.world.is_main:
            print(
                f"qkv: {self.out_dir}/{MODEL_FILE} is from step {weights_step} and "
                f"{TRAINER_FILE} from step {state['step']} (a save was cut short); resuming "
                f"from the complete snapshot of step {state['step']} in {TRAINER_FILE}",
                file=sys.stderr,
            )

    def _restore(self, state: dict[str, Any]) -> None:
        """Everything but the weights (already loaded): optimizer, data position, RNG, clock."""
        saved_kind = state.get("optimizer_kind", "adamw")  # runs from before Muon used AdamW
        if saved_kind != self.config.train.optimizer:
            raise QkvError(
                f"the run in {self.out_dir} was trained with train.optimizer={saved_kind}; "
                f"resume it with that optimizer, not {self.config.train.optimizer}"
            )
        distributed.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.elapsed, self.best_val = state["step"], state["elapsed"], state["best_val"]

    def _seed_other_ranks(self) -> None:
        """Dropout masks of their own for ranks other than 0; rank 0 keeps the run's stream
        (the one trainer.pt saves), so a single process is unchanged."""
        if self.world.rank > 0:
            torch.manual_seed(self.config.train.seed + 1_000_003 * self.world.rank + self.step)

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
            save_checkpoint(self.out_dir, model, self.config, self.corpus.tokenizer, state)

    def save_best(self) -> None:
        """Write the best-val model to run_dir/best (weights, config, tokenizer: for sampling)."""
        model = self.model
        if self.config.train.fsdp:
            model_state = distributed.full_state(self.model, self.optimizer, True)[0]
            model = self._whole_model(model_state) if self.world.is_main else None
        if self.world.is_main:
            save_checkpoint(self.out_dir / BEST_DIR, model, self.config, self.corpus.tokenizer)

    def _whole_model(self, model_state: dict[str, torch.Tensor]) -> GPT:
        """An unsharded copy of the model on the CPU, from a full state dict (for saving)."""
        with torch.random.fork_rng(devices=[]):  # building it must not move the run's RNG
            model = GPT(self.config.model)
        model.load_state_dict(model_state)
        return model

    def _log_metrics(self, record: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        append_metrics(self.out_dir, record)

    # -- stopping cleanly -------------------------------------------------------------------

    def _nonfinite_error(self, what: str) -> QkvError:
        return QkvError(
            f"{what} at step {self.step}; the last good checkpoint is in {self.out_dir} "
            "(try a lower train.lr, or --skip-nonfinite to skip such batches)"
        )

    def _check_finite_weights(self) -> None:
        params = self.model.parameters()
        finite = torch.stack([distributed.local(p.detach()).isfinite().all() for p in params])
        if not distributed.all_ranks(bool(finite.all()), self.world, self.device):
            raise self._nonfinite_error("the weights became NaN or inf")

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        self.stop_signal = signum

    def _stop_signals_deferred(self) -> AbstractContextManager[None]:
        """Within: SIGINT/SIGTERM set `stop_signal` instead of stopping the process."""
        return stop_signals_deferred(self._on_stop_signal)

    def _stop(self, signum: int) -> TrainingInterrupted:
        """Save where the run is and return the exception that ends it."""
        name = signal.Signals(signum).name
        self._log_metrics({"step": self.step, "elapsed": round(self.elapsed, 3), "stop": name})
        self.save()
        return TrainingInterrupted(
            f"{name} at step {self.step}: checkpoint saved in {self.out_dir}; resume with "
            f"`qkv train --out {self.out_dir} --resume`",
            signum,
        )

    # -- the loop ---------------------------------------------------------------------------

    @property
    def tokens_per_step(self) -> int:
        """The job's tokens per optimizer step: batch_size is per rank and micro-step."""
        cfg = self.config.train
        return cfg.batch_size * cfg.grad_accum * self.world.size * self.config.model.block_size

    def _time_is_up(self) -> bool:
        max_time = self.config.train.max_time
        return max_time > 0 and self.elapsed >= max_time

    def train_step(self) -> torch.Tensor:
        """One optimizer step; returns the mean micro-batch loss as a tensor (no sync)."""
        cfg = self.config.train
        lr = learning_rate(cfg, self.step, self.elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro_step in range(cfg.grad_accum):
            x, y = self.sampler.next_batch()
            # in a job, gradients are averaged over the ranks once, on the last micro-step
            last = micro_step == cfg.grad_accum - 1
            with distributed.gradient_sync(self.parallel, last), autocast(self.device):
                _, loss = self.forward(x, y)
                self.scaler.scale(loss / cfg.grad_accum).backward()  # scale() is 1 unless fp16
            total += loss.detach()
        norm = None
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            norm = distributed.replicated(norm)
        finite = cfg.skip_nonfinite and _all_finite(total, norm)
        if cfg.skip_nonfinite and not distributed.all_ranks(finite, self.world, self.device):
            self._skip_batch(total.item() / cfg.grad_accum)
            return total / cfg.grad_accum
        self.scaler.step(self.optimizer)  # with fp16, skips the step if gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total / cfg.grad_accum

    def _skip_batch(self, loss: float) -> None:
        """Drop this batch's gradients without an update; the step still counts."""
        self.scaler.update()  # forget the unscale_ of this step
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped += 1
        self.step += 1
        if self.world.is_main:
            tqdm.write(f"qkv: step {self.step}: the loss is {loss}; skipped the batch")

    def fit(self) -> TrainResult:
        """Train until max_steps or max_time; SIGINT/SIGTERM save and stop between steps."""
        self.stop_signal = None
        with self._stop_signals_deferred():
            result = self._fit()
            stop = self._agree_on_clock_and_stop()
            if stop is not None:  # it came during the final evaluation and save
                raise self._stop(stop)
        return result

    def _agree_on_clock_and_stop(self) -> int | None:
        """-> the signal to stop on, if any rank got one: all ranks stop at the same step.

        In a job, every rank also takes the slowest rank's clock, so the learning rate and the
        time limit agree. A signal that comes during this collective waits for the next one.
        """
        local = self.stop_signal or 0
        self.elapsed, signum = distributed.largest([self.elapsed, local], self.world, self.device)
        return int(signum) or None

    def _fit(self) -> TrainResult:
        cfg = self.config.train
        self._announce()
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.progress, unit="step")
        start, start_elapsed, start_step = time.perf_counter(), self.elapsed, self.step
        losses = {"val": math.nan}
        while self.step < cfg.max_steps and not self._time_is_up():
            loss = self.train_step()
            self.elapsed = start_elapsed + time.perf_counter() - start
            if self.step % cfg.log_interval == 0 or self.step == cfg.max_steps:
                loss_value = distributed.mean(loss.item(), self.world, self.device)
                self._log_step(loss_value, bar, start, start_step)
            if self.step % cfg.eval_interval == 0:
                losses = self._evaluate_and_save(bar)
            stop = self._agree_on_clock_and_stop()
            if stop is not None:
                bar.close()
                raise self._stop(stop)
        bar.close()
        if self.step % cfg.eval_interval != 0 or math.isnan(losses["val"]):
            losses = self._evaluate_and_save(bar)
        steps_run = self.step - start_step
        run_time = self.elapsed - start_elapsed
        tok_s = steps_run * self.tokens_per_step / run_time if run_time > 0 else 0.0
        return TrainResult(
            self.out_dir, self.step, losses["val"], self.best_val, self.elapsed, tok_s
        )

    def _announce(self) -> None:
        if not self.world.is_main:
            return
        job = ""
        if self.world.launched:
            sharded = ", sharded with FSDP" if self.config.train.fsdp else ""
            job = f", {self.world.size} processes{sharded}"
        millions = self.model.num_params() / 1e6
        tqdm.write(
            f"qkv: {millions:.2f}M parameters, {len(self.corpus.train):,} train and "
            f"{len(self.corpus.val):,} val tokens, vocab {self.corpus.tokenizer.vocab_size}, "
            f"device {self.device.type}{job}, run dir {self.out_dir}"
        )

    def _log_step(self, loss: float, bar: tqdm, start: float, start_step: int) -> None:
        if not math.isfinite(loss):
            if self.config.train.skip_nonfinite:
                self._log_metrics({"step": self.step, "skipped_batches": self.skipped})
                return
            raise self._nonfinite_error(f"the loss became {loss}")
        run_time = time.perf_counter() - start
        tok_s = (self.step - start_step) * self.tokens_per_step / max(run_time, 1e-9)
        lr = self.optimizer.param_groups[0]["lr"]
        postfix = {"loss": f"{loss:.4f}", "tok/s": f"{tok_s:,.0f}"}
        if self.config.train.max_time > 0:
            postfix["time left"] = f"{max(0.0, self.config.train.max_time - self.elapsed):.0f}s"
        bar.set_postfix(postfix)
        bar.update(self.step - bar.n)
        record = {
            "step": self.step,
            "tokens": self.step * self.tokens_per_step,
            "elapsed": round(self.elapsed, 3),
            "lr": lr,
            "train_loss": loss,
            "tokens_per_s": round(tok_s, 1),
        }
        self._log_metrics(record)

    def _evaluate_and_save(self, bar: tqdm) -> dict[str, float]:
        losses = estimate_loss(self.model, self.corpus, self.config, self.device, self.world)
        if not (math.isfinite(losses["val"]) and math.isfinite(losses["train"])):
            raise self._nonfinite_error(f"the val loss became {losses['val']}")
        improved = losses["val"] < self.best_val
        self.best_val = min(self.best_val, losses["val"])
        self._log_metrics(
            {
                "step": self.step,
                "tokens": self.step * self.tokens_per_step,
                "elapsed": round(self.elapsed, 3),
                "eval_train_loss": losses["train"],
                "val_loss": losses["val"],
            }
        )
        if self.world.is_main:
            bar.write(
                f"step {self.step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
            )
        self.save()
        if improved:
            self.save_best()
        return losses


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


def _all_finite(*values: torch.Tensor | None) -> bool:
    """True if every given tensor (the loss, the gradient norm) is finite: one sync."""
    present = [v.reshape(-1) for v in values if v is not None]
    return bool(torch.isfinite(torch.cat(present)).all())


def _check_enough_data(corpus: Corpus, block_size: int, source: str) -> None:
    for split, ids in (("train", corpus.train), ("val", corpus.val)):
        if len(ids) < block_size + 1:
            raise QkvError(
                f"{source}: the {split} split has {len(ids)} tokens, fewer than the context "
                f"length + 1 = {block_size + 1}; use more text or a smaller model.block_size"
            )


def fine_tuning_config(config: RunConfig, start: RunConfig) -> RunConfig:
    """A run that starts from another checkpoint keeps that model and that tokenizer.

    The architecture must match the weights and the vocabulary the ids, so `start`'s
    model config and tokenizer settings replace the run's; data and training are the run's.
    Only model.dropout, which changes no weight, may be set anew; any other model.* setting,
    or a tokenizer setting, is an error rather than silently ignored.
    """
    if config.data.tokenizer != "char" or config.data.vocab_size is not None:
        raise QkvError("--init-from takes the tokenizer from its checkpoint; drop --tokenizer")
    defaults = GPTConfig()
    chosen = {
        f.name
        for f in dataclasses.fields(GPTConfig)
        if getattr(config.model, f.name) != getattr(defaults, f.name)
    }
    if chosen - {"dropout"}:
        name = sorted(chosen - {"dropout"})[0]
        raise QkvError(f"--init-from takes the model from its checkpoint; drop model.{name}")
    model = start.model
    if "dropout" in chosen:
        model = dataclasses.replace(model, dropout=config.model.dropout)
    data = dataclasses.replace(
        config.data, tokenizer=start.data.tokenizer, vocab_size=start.data.vocab_size
    )
    return dataclasses.replace(config, model=model, data=data)


def train(
    config: RunConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train (or resume) the run that `config` describes; see `Trainer`.

    `init_from` names a checkpoint (a qkv run, or GPT-2 from `qkv import-hf`) whose weights
    and tokenizer the run starts from, with a fresh optimizer and schedule: fine-tuning.
    """
    from qkv.viz.curves import plot_after_training  # before the run, never after it

    world = distributed.world_from_env()
    device = distributed.rank_device(resolve_device(config.train.device), world)
    with distributed.process_group(world, device, config.train.dist_timeout):
        try:
            result = _fit_once(config, resume, progress, init_from, world)
        except RuntimeError as exc:
            if not (world.launched and distributed.is_peer_failure(exc)):
                raise
            reason = distributed.short_reason(exc)
            raise JobBroken(
                f"rank {world.rank}: lost the other processes of the job ({reason}); the last "
                f"checkpoint in {config.train.out_dir} is whole: resume it with --resume"
            ) from None
    if world.is_main:
        plot_after_training(result.out_dir)  # curves.png; a failure to draw only warns
    return result


def _fit_once(
    config: RunConfig, resume: bool, progress: bool, init_from: str | Path | None, world: World
) -> TrainResult:
    """A Trainer that is gone when this returns: its DDP or FSDP state must be freed before
    the process group it uses is destroyed (the other way round can hang at exit)."""
    trainer = Trainer(config, resume=resume, progress=progress, init_from=init_from, world=world)
    return trainer.fit()
