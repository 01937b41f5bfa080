"""The language model's recipe: next-token prediction on a text, warm-up then cosine decay.

    loss = mean over the batch's B x T positions of -log p(x_{t+1} | x_<=t)

The data are random windows of T + 1 consecutive ids of the train split (`BatchSampler`);
each rank of a job takes its slice of every global batch. The learning rate warms up
linearly over `warmup_steps`, then follows a cosine from `lr` to `min_lr` (Loshchilov &
Hutter, 2017) over the run: over `decay_steps`, or over the wall-clock budget `max_time`
when that runs out first, so a time-limited run still ends at min_lr. The optimizer is Muon
for the blocks' matrices with AdamW beside it (`train.optimizer`, `training.optim`).
Evaluation is the mean loss of the same `eval_iters` random batches of each split.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from qkv.config import KINDS, RunConfig, TrainConfig
from qkv.config.gpt import DataConfig
from qkv.data import BatchSampler, Corpus, prepare_corpus
from qkv.data.dataset import is_prepared
from qkv.errors import QkvError
from qkv.runtime import autocast
from qkv.tokenizer import Tokenizer
from qkv.training import distributed
from qkv.training.distributed import SINGLE, World
from qkv.training.recipe import Batch, Recipe

PROBE_TOKENS = 32  # the default probe text's length: a readable heatmap, a small record


def learning_rate(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """Linear warm-up to lr over warmup_steps, then down to min_lr by `cfg.schedule`:

        cosine:    min_lr + (lr - min_lr) (1 + cos(pi p)) / 2
        trapezoid: lr until p = 1 - c, then linearly to min_lr at p = 1 (c: cooldown_fraction;
                   "warm-up, stable, decay", Hagele et al., 2024; modded-nanogpt)

    The progress p is the larger of the step fraction and, under a time budget, the time
    fraction, so a run stopped by max_time still finishes its decay.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = _progress(cfg, step, elapsed)
    if cfg.schedule == "trapezoid":
        cooling = max(0.0, progress - (1.0 - cfg.cooldown_fraction)) / cfg.cooldown_fraction
        return cfg.lr + cooling * (cfg.min_lr - cfg.lr)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def _progress(cfg: TrainConfig, step: int, elapsed: float) -> float:
    progress = (step - cfg.warmup_steps) / max(1, cfg.schedule_steps - cfg.warmup_steps)
    if cfg.max_time > 0:
        progress = max(progress, elapsed / cfg.max_time)
    return min(max(progress, 0.0), 1.0)


def row_length(cfg: TrainConfig, block_size: int, step: int, elapsed: float) -> int:
    """The length T of the training rows at this point of the run (sequence-length warm-up,
    as in modded-nanogpt's growing attention window):

        T = seq_start + (block_size - seq_start) p / seq_warmup, while p < seq_warmup,

    rounded down to a multiple of 8 (fewer distinct shapes), then block_size; p is the
    schedule's progress (`learning_rate`), 0 during its warm-up. Short rows make cheap steps
    while the model learns what short contexts teach; seq_warmup = 0 (the default) is off."""
    return _grown(cfg.seq_start, block_size, cfg.seq_warmup, _progress(cfg, step, elapsed), 8)


def batch_rows(cfg: TrainConfig, step: int, elapsed: float) -> int:
    """The number B of rows in this step's batch (batch-size warm-up, as GPT-3 grows its
    batch over its first tokens; Brown et al., 2020, appendix B):

        B = batch_start + (batch_size - batch_start) p / batch_warmup, while p < batch_warmup,

    rounded down to a multiple of batch_start, then batch_size; p as in `row_length`. Early
    in training the gradient's noise scale is small (McCandlish et al., 2018), so a few rows
    give nearly the step a full batch gives, for a fraction of its cost. 0 (the default) is
    off."""
    p = _progress(cfg, step, elapsed)
    return _grown(cfg.batch_start, cfg.batch_size, cfg.batch_warmup, p, cfg.batch_start)


def _grown(start: int, full: int, fraction: float, progress: float, multiple: int) -> int:
    """start + (full - start) progress / fraction, down to a multiple of `multiple` and at
    least start, while progress < fraction; full from there (and when fraction is 0)."""
    if fraction == 0.0 or progress >= fraction:
        return full
    start = min(start, full)
    grown = start + (full - start) * progress / fraction
    return max(start, int(grown) // multiple * multiple)


class LanguageModelRecipe(Recipe):
    """A GPT on a text; see the module docstring."""

    kind = KINDS["gpt"]
    equal_batches = True  # B windows of T targets on every rank

    def __init__(
        self,
        config: RunConfig,
        tokenizer: Tokenizer | None,
        device: torch.device,
        world: World = SINGLE,
    ) -> None:
        data = config.data
        self.corpus = load_corpus(data, tokenizer, world, device)
        self.tokenizer = self.corpus.tokenizer
        model = dataclasses.replace(config.model, vocab_size=self.tokenizer.vocab_size)
        data = _with_corpus_tokenizer(data, self.tokenizer)
        self.config = dataclasses.replace(config, model=model, data=data)
        _check_enough_data(self.corpus, model.block_size, data.source)
        self.device, self.world = device, world
        self.sampler = self._sampler(self.corpus.train, config.train.seed)
        self.rows = model.block_size  # the training rows' length (`row_length`)
        self.rows_per_batch = config.train.batch_size  # rows per batch (`batch_rows`)

    def _sampler(self, ids, seed: int) -> BatchSampler:
        train = self.config.train
        return BatchSampler(
            ids,
            self.config.model.block_size,
            train.batch_size,
            seed,
            self.device,
            rank=self.world.rank,
            world_size=self.world.size,
        )

    def learning_rate(self, step: int, elapsed: float) -> float:
        """The step's learning rate; it also sets the length and the number of the step's
        rows (the loop asks for it before each step's batches: `row_length`, `batch_rows`)."""
        train = self.config.train
        self.rows = row_length(train, self.config.model.block_size, step, elapsed)
        self.rows_per_batch = batch_rows(train, step, elapsed)
        return learning_rate(train, step, elapsed)

    def next_batch(self) -> tuple[Batch, int]:
        x, y = self.sampler.next_batch(self.rows, self.rows_per_batch)  # inputs, targets (B, T)
        return (x, y), y.numel()

    def loss(self, forward: Callable[..., Any], batch: Batch) -> Tensor:
        _, loss = forward(*batch)
        return loss

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean loss on the same eval_iters random batches of each split at every eval point.

        The batches come from a generator of their own, so evaluating never moves the
        training data position or the global RNG. In a job, each rank scores its slice of the
        global batches and the ranks average: every rank gets the same numbers.
        """
        model.eval()
        losses = {}
        for split, ids in (("eval_train_loss", self.corpus.train), ("val_loss", self.corpus.val)):
            sampler = self._sampler(ids, self.config.train.seed + 1)
            total = 0.0
            for _ in range(self.config.train.eval_iters):
                x, y = sampler.next_batch()
                with autocast(self.device, self.config.train.precision):
                    _, loss = model(x, y)
                total += loss.item()
            mean = total / self.config.train.eval_iters
            losses[split] = distributed.mean(mean, self.world, self.device)
        model.train()
        return losses

    def default_probe_text(self) -> str:
        """The first PROBE_TOKENS tokens of the val split (at most the context)."""
        n = min(PROBE_TOKENS, self.config.model.block_size)
        return self.tokenizer.decode(self.corpus.val[:n].tolist())

    def describe(self, model: nn.Module) -> str:
        return (
            f"{model.num_params() / 1e6:.2f}M parameters, {len(self.corpus.train):,} train and "
            f"{len(self.corpus.val):,} val tokens, vocab {self.tokenizer.vocab_size}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])


def load_corpus(
    data: DataConfig, tokenizer: Tokenizer | None, world: World, device: torch.device
) -> Corpus:
    """The run's corpus, memory-mapped. Under torchrun one process per machine (local rank 0)
    prepares it, or checks a prepared one's sha256s, while the others wait; then they map the
    same shards. A mistake there stops every rank with its one line."""
    corpus, error = None, None
    if world.local_rank == 0:
        try:
            corpus = _open_corpus(data, tokenizer, checksums=True)
        except QkvError as exc:
            error = exc
    if not distributed.all_ranks(error is None, world, device):
        raise error or QkvError("the data could not be prepared (rank 0 of each machine says why)")
    return corpus or _open_corpus(data, tokenizer, checksums=False)


def _open_corpus(data: DataConfig, tokenizer: Tokenizer | None, checksums: bool) -> Corpus:
    return prepare_corpus(
        data.source,
        data.val_fraction,
        tokenizer,
        kind=data.tokenizer,
        vocab_size=data.vocab_size,
        text_field=data.text_field,
        checksums=checksums,
    )


def _with_corpus_tokenizer(data: DataConfig, tokenizer: Tokenizer) -> DataConfig:
    """A prepared directory brings its tokenizer: the run's config records its kind, and a
    --tokenizer that asks for another kind is an error rather than silently ignored."""
    if not is_prepared(data.source):
        return data
    if data.tokenizer not in ("char", tokenizer.kind) or (
        data.vocab_size is not None and data.vocab_size != tokenizer.vocab_size
    ):
        raise QkvError(
            f"{data.source} was prepared with a {tokenizer.kind} tokenizer of "
            f"{tokenizer.vocab_size} tokens; drop --tokenizer/--vocab-size (a prepared corpus "
            "brings its own)"
        )
    return dataclasses.replace(data, tokenizer=tokenizer.kind, vocab_size=None)


def _check_enough_data(corpus: Corpus, block_size: int, source: str) -> None:
    for split, ids in (("train", corpus.train), ("val", corpus.val)):
        if len(ids) < block_size + 1:
            raise QkvError(
                f"{source}: the {split} split has {len(ids)} tokens, fewer than the context "
                f"length + 1 = {block_size + 1}; use more text or a smaller model.block_size"
            )
