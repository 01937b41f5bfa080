"""Training the encoder-decoder with the paper's recipe (Vaswani et al., 2017, section 5).

    loss    = label-smoothed cross-entropy over the non-pad target tokens, epsilon = 0.1
    Adam    beta1 = 0.9, beta2 = 0.98, eps = 1e-9
    lrate   = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)      (eq. 3)

Label smoothing (Szegedy et al., 2016) trains towards q = (1 - eps) * onehot(y) + eps / V
instead of the one-hot target: the model learns to be less sure, which costs perplexity but
improves accuracy and BLEU (paper, section 5.4). It is torch's `cross_entropy` with
`label_smoothing`, which computes exactly
    loss_t = (1 - eps) * (-log p(y_t)) + eps * mean_k(-log p(k)).
The learning rate rises linearly for `warmup` steps and then decays as 1 / sqrt(step);
`scale` (1 in the paper) sets the size of the steps for other models and run lengths. The
final model is the average of the weights at the last `average_last` multiples of
`average_every` steps and at the end (section 6.1 averages the last 5 checkpoints), which
smooths out the noise of the last updates.

The run directory is a checkpoint like a GPT run's (config.json with "kind": "seq2seq",
model.safetensors, tokenizer.json, trainer.pt, metrics.jsonl), saved at every eval and at
the end. SIGINT/SIGTERM stop between steps, save, and raise `TrainingInterrupted`; `--resume`
restores weights, optimizer, step, clock, RNG and batch position; a NaN loss stops the run.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from qkv.checkpoint import (
    append_metrics,
    load_seq2seq_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from qkv.data.pairs import LengthBatches, collate, encode_pairs
from qkv.data.tasks import PairSplits, load_pairs
from qkv.decoding import greedy_decode
from qkv.errors import QkvError, TrainingInterrupted
from qkv.models.seq2seq import Seq2SeqTransformer
from qkv.seq2seq_config import PAD_ID, Seq2SeqRunConfig
from qkv.tokenizer import Seq2SeqTokenizer
from qkv.train import resolve_device, stop_signals_deferred


def inverse_sqrt_lr(step: int, d_model: int, warmup: int, scale: float = 1.0) -> float:
    """scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), steps counted from 1."""
    step = max(step, 1)
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def label_smoothed_loss(logits: Tensor, targets: Tensor, epsilon: float = 0.1) -> Tensor:
    """Mean label-smoothed cross-entropy over the targets that are not <pad>.

    logits (B, T, V), targets (B, T) -> a scalar; see the module docstring for the formula.
    """
    return F.cross_entropy(
        logits.flatten(0, 1).float(),
        targets.flatten(),
        ignore_index=PAD_ID,
        label_smoothing=epsilon,
    )


def data_splits(config: Seq2SeqRunConfig) -> PairSplits:
    data = config.data
    return load_pairs(
        data.source, data.n_train, data.n_val, data.n_test, data.seed, data.synthetic_len
    )


def new_tokenizer(config: Seq2SeqRunConfig, splits: PairSplits) -> Seq2SeqTokenizer:
    """Characters from every split (so no val or test text is unknown); a BPE's merges from
    the train split only."""
    chosen = (
        splits.train if config.data.tokenizer == "bpe" else splits.train + splits.val + splits.test
    )
    texts = [text for pair in chosen for text in pair]
    return Seq2SeqTokenizer.train(texts, config.data.tokenizer, config.data.vocab_size)


@dataclass
class Seq2SeqTrainResult:
    out_dir: Path
    step: int
    val_loss: float
    val_exact_match: float
    elapsed: float


class Seq2SeqTrainer:
    """Holds a run's state; `fit` trains until max_steps or max_time."""

    def __init__(
        self, config: Seq2SeqRunConfig, *, resume: bool = False, progress: bool = True
    ) -> None:
        self.out_dir = Path(config.train.out_dir)
        self.device = resolve_device(config.train.device)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QkvError(
                f"cannot use {self.out_dir} as the run directory: {exc.strerror}"
            ) from None
        self.progress = progress
        saved = load_seq2seq_checkpoint(self.out_dir, self.device) if resume else None
        if saved and saved[2].model != dataclasses.replace(
            config.model, vocab_size=saved[2].model.vocab_size
        ):
            raise QkvError(f"the model config differs from the run's in {self.out_dir}")
        splits = data_splits(config)
        self.tokenizer = saved[1] if saved else new_tokenizer(config, splits)
        model_config = dataclasses.replace(config.model, vocab_size=self.tokenizer.vocab_size)
        self.config = dataclasses.replace(config, model=model_config)
        max_len, source = model_config.max_len, config.data.source
        self.train_examples = encode_pairs(splits.train, self.tokenizer, max_len, source)
        self.val_examples = encode_pairs(splits.val, self.tokenizer, max_len, source)
        torch.manual_seed(config.train.seed)
        self.model = saved[0] if saved else Seq2SeqTransformer(model_config).to(self.device)
        cfg = config.train
        fused = self.device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=0.0, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused
        )
        self.batches = LengthBatches(self.train_examples, cfg.batch_size, cfg.seed)
        self.step, self.elapsed = 0, 0.0
        self.snapshots: list[dict[str, Tensor]] = []  # the last weights, for averaging
        self.raw_weights: dict[str, Tensor] | None = None  # the trained weights, once averaged
        self.stop_signal: int | None = None
        if resume:
            self._restore(load_trainer_state(self.out_dir))

    # -- saving and resuming ----------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.raw_weights or self.model.state_dict(),
            "snapshots": self.snapshots,
            "step": self.step,
            "elapsed": self.elapsed,
            "optimizer": self.optimizer.state_dict(),
            "batches": self.batches.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["batches"])
        torch.set_rng_state(state["torch_rng"])
        self.snapshots = list(state.get("snapshots", []))
        self.step, self.elapsed = state["step"], state["elapsed"]

    def save(self) -> None:
        finite = all(bool(p.detach().isfinite().all()) for p in self.model.parameters())
        if not finite:
            raise self._nonfinite_error("the weights became NaN or inf")
        save_checkpoint(self.out_dir, self.model, self.config, self.tokenizer, self._state())

    def _log_metrics(self, record: dict[str, Any]) -> None:
        append_metrics(self.out_dir, record)

    def _nonfinite_error(self, what: str) -> QkvError:
        return QkvError(
            f"{what} at step {self.step}; the last good checkpoint is in {self.out_dir} "
            "(try a lower train.lr_scale)"
        )

    # -- stopping cleanly -------------------------------------------------------------------

    def _stop_signals_deferred(self) -> AbstractContextManager[None]:
        """Within: SIGINT/SIGTERM set `stop_signal`; the loop saves and stops between steps."""
        return stop_signals_deferred(lambda signum, frame: setattr(self, "stop_signal", signum))

    def _stop(self, signum: int) -> TrainingInterrupted:
        name = signal.Signals(signum).name
        self.save()
        return TrainingInterrupted(
            f"{name} at step {self.step}: checkpoint saved in {self.out_dir}; resume with "
            f"`qkv train --out {self.out_dir} --resume`",
            signum,
        )

    # -- the loop -----------------------------------------------------------------------------

    def learning_rate(self) -> float:
        cfg = self.config.train
        return inverse_sqrt_lr(
            self.step + 1, self.config.model.n_embd, cfg.warmup_steps, cfg.lr_scale
        )

    def train_step(self) -> Tensor:
        """One optimizer step on one length-grouped batch; returns the loss (no sync)."""
        cfg = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        src, tgt_in, tgt_out = self.batches.next_batch(self.device)
        loss = label_smoothed_loss(self.model(src, tgt_in), tgt_out, cfg.label_smoothing)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss.detach()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Val loss (label-smoothed, as trained) over every val pair, and the exact match of
        greedy decoding on the first `eval_examples` of them."""
        self.model.eval()
        total, tokens = 0.0, 0
        for start in range(0, len(self.val_examples), 128):
            src, tgt_in, tgt_out = collate(self.val_examples[start : start + 128], self.device)
            n = int((tgt_out != PAD_ID).sum())
            total += (
                float(
                    label_smoothed_loss(
                        self.model(src, tgt_in), tgt_out, self.config.train.label_smoothing
                    )
                )
                * n
            )
            tokens += n
        shown = self.val_examples[: self.config.train.eval_examples]
        right = 0
        for start in range(0, len(shown), 128):
            chunk = shown[start : start + 128]
            src, _, _ = collate(chunk, self.device)
            outputs = greedy_decode(self.model, src, max_len=max(len(t) for _, t in chunk) + 1)
            right += sum(out == tgt for out, (_, tgt) in zip(outputs, chunk, strict=True))
        self.model.train()
        return {"val_loss": total / max(tokens, 1), "val_exact_match": right / max(len(shown), 1)}

    def fit(self) -> Seq2SeqTrainResult:
        """Train until max_steps or max_time; SIGINT/SIGTERM save and stop between steps."""
        self.stop_signal = None
        with self._stop_signals_deferred():
            result = self._fit()
            if self.stop_signal is not None:
                raise self._stop(self.stop_signal)
        return result

    def _time_is_up(self) -> bool:
        max_time = self.config.train.max_time
        return max_time > 0 and self.elapsed >= max_time

    def _fit(self) -> Seq2SeqTrainResult:
        cfg = self.config.train
        tqdm.write(
            f"qkv: seq2seq {self.model.num_params() / 1e6:.2f}M parameters, "
            f"{len(self.train_examples):,} train and {len(self.val_examples):,} val pairs, "
            f"vocab {self.tokenizer.vocab_size}, device {self.device.type}, run dir {self.out_dir}"
        )
        self.model.train()
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.progress, unit="step")
        start, start_elapsed = time.perf_counter(), self.elapsed
        metrics: dict[str, float] = {}
        while self.step < cfg.max_steps and not self._time_is_up():
            loss = self.train_step()
            self.elapsed = start_elapsed + time.perf_counter() - start
            if self.step % cfg.average_every == 0:
                self._take_snapshot()
            if self.step % cfg.log_interval == 0:
                self._log_step(float(loss), bar)
            if self.step % cfg.eval_interval == 0:
                metrics = self._evaluate_and_save(bar)
                # evaluating and saving is not training time
                start, start_elapsed = time.perf_counter(), self.elapsed
            if self.stop_signal is not None:
                bar.close()
                raise self._stop(self.stop_signal)
        bar.close()
        averaged = self._average_snapshots()
        if averaged or not metrics or self.step % cfg.eval_interval != 0:
            metrics = self._evaluate_and_save(bar)
        return Seq2SeqTrainResult(
            self.out_dir, self.step, metrics["val_loss"], metrics["val_exact_match"], self.elapsed
        )

    def _take_snapshot(self) -> None:
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.snapshots = [*self.snapshots, weights][-self.config.train.average_last :]

    def _average_snapshots(self) -> bool:
        """Replace the weights by the mean of the last `average_last` snapshots (the paper,
        section 6.1: "averaging the last 5 checkpoints"); the trained weights stay in
        trainer.pt, so a resumed run goes on from them. False if there is nothing to average."""
        if self.config.train.average_last < 2 or not self.snapshots:
            return False
        if self.step % self.config.train.average_every != 0:
            self._take_snapshot()  # the final weights count too
        if len(self.snapshots) < 2:
            return False
        self.raw_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        mean = {k: torch.stack([s[k] for s in self.snapshots]).mean(0) for k in self.raw_weights}
        self.model.load_state_dict(mean)
        return True

    def _log_step(self, loss: float, bar: tqdm) -> None:
        if not math.isfinite(loss):
            raise self._nonfinite_error(f"the loss became {loss}")
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        bar.update(self.step - bar.n)
        self._log_metrics(
            {
                "step": self.step,
                "elapsed": round(self.elapsed, 3),
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": loss,
            }
        )

    def _evaluate_and_save(self, bar: tqdm) -> dict[str, float]:
        metrics = self.evaluate()
        if not math.isfinite(metrics["val_loss"]):
            raise self._nonfinite_error(f"the val loss became {metrics['val_loss']}")
        self._log_metrics({"step": self.step, "elapsed": round(self.elapsed, 3), **metrics})
        bar.write(
            f"step {self.step} ({self.elapsed:.0f}s): val loss {metrics['val_loss']:.4f}, "
            f"val exact match {metrics['val_exact_match']:.3f}"
        )
        self.save()
        return metrics


def train_seq2seq(
    config: Seq2SeqRunConfig, *, resume: bool = False, progress: bool = True
) -> Seq2SeqTrainResult:
    """Train (or resume) the seq2seq run that `config` describes."""
    return Seq2SeqTrainer(config, resume=resume, progress=progress).fit()
