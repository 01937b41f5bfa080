"""The encoder-decoder's recipe: the paper's (Vaswani et al., 2017, section 5).

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
smooths out the noise of the last updates; the trained weights stay in trainer.pt, so a
resumed run goes on from them.

Batches hold pairs of similar length (`LengthBatches`); in a job each rank takes its slice
of every global batch. Evaluation is the val loss (label-smoothed, as trained) over every val
pair and the exact match of greedy decoding on the first `eval_examples` of them; every rank
computes them on the whole val split, so all agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.config import KINDS, Seq2SeqRunConfig
from qkv.config.choices import PAD_ID
from qkv.data.pairs import Example, LengthBatches, collate, encode_pairs
from qkv.data.tasks import PairSplits, pair_splits
from qkv.decoding.beam import greedy_decode
from qkv.tokenizer import Seq2SeqTokenizer
from qkv.training.distributed import SINGLE, World
from qkv.training.recipe import Batch, Recipe, WeightsFn

EVAL_BATCH = 128


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


def new_tokenizer(config: Seq2SeqRunConfig, splits: PairSplits) -> Seq2SeqTokenizer:
    """Characters from every split (so no val or test text is unknown); a BPE's merges from
    the train split only."""
    chosen = (
        splits.train if config.data.tokenizer == "bpe" else splits.train + splits.val + splits.test
    )
    texts = [text for pair in chosen for text in pair]
    return Seq2SeqTokenizer.train(texts, config.data.tokenizer, config.data.vocab_size)


def count_targets(examples: list[Example]) -> int:
    """The target tokens the decoder predicts for these pairs: each target and its <eos>."""
    return sum(len(target) + 1 for _, target in examples)


class TranslationRecipe(Recipe):
    """An encoder-decoder on pairs of strings; see the module docstring."""

    kind = KINDS["seq2seq"]
    eval_counts_as_training_time = False

    def __init__(
        self,
        config: Seq2SeqRunConfig,
        tokenizer: Seq2SeqTokenizer | None,
        device: torch.device,
        world: World = SINGLE,
    ) -> None:
        splits = pair_splits(config.data)
        self.tokenizer = tokenizer or new_tokenizer(config, splits)
        model = dataclasses.replace(config.model, vocab_size=self.tokenizer.vocab_size)
        self.config = dataclasses.replace(config, model=model)
        max_len, source = model.max_len, config.data.source
        self.train_examples = encode_pairs(splits.train, self.tokenizer, max_len, source)
        self.val_examples = encode_pairs(splits.val, self.tokenizer, max_len, source)
        self.first_val_source = splits.val[0][0] if splits.val else ""
        self.device, self.world = device, world
        train = config.train
        self.batches = LengthBatches(self.train_examples, train.batch_size * world.size, train.seed)
        self.snapshots: list[dict[str, Tensor]] = []  # the last weights, for averaging

    def learning_rate(self, step: int, elapsed: float) -> float:
        train = self.config.train
        return inverse_sqrt_lr(
            step + 1, self.config.model.n_embd, train.warmup_steps, train.lr_scale
        )

    def next_batch(self) -> tuple[Batch, int]:
        """This rank's slice of the next global batch: source (B, S), target in and out
        (B, T), and its number of target tokens."""
        examples = self.batches.next_examples()
        while len(examples) < self.world.size:  # an epoch's last, ragged batch: no row each
            examples = self.batches.next_examples()
        n, rank, size = len(examples), self.world.rank, self.world.size
        mine = examples[rank * n // size : (rank + 1) * n // size]
        return collate(mine, self.device), count_targets(mine)

    def loss(self, forward: Callable[..., Any], batch: Batch) -> Tensor:
        src, tgt_in, tgt_out = batch
        return label_smoothed_loss(forward(src, tgt_in), tgt_out, self.config.train.label_smoothing)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        total, tokens = 0.0, 0
        for start in range(0, len(self.val_examples), EVAL_BATCH):
            chunk = self.val_examples[start : start + EVAL_BATCH]
            n = count_targets(chunk)
            total += float(self.loss(model, collate(chunk, self.device))) * n
            tokens += n
        shown = self.val_examples[: self.config.train.eval_examples]
        right = 0
        for start in range(0, len(shown), EVAL_BATCH):
            chunk = shown[start : start + EVAL_BATCH]
            src, _, _ = collate(chunk, self.device)
            outputs = greedy_decode(model, src, max_len=max(len(t) for _, t in chunk) + 1)
            right += sum(out == tgt for out, (_, tgt) in zip(outputs, chunk, strict=True))
        model.train()
        return {"val_loss": total / max(tokens, 1), "val_exact_match": right / max(len(shown), 1)}

    def default_probe_text(self) -> str:
        """The first val pair's source sentence."""
        return self.first_val_source

    def describe(self, model: nn.Module) -> str:
        return (
            f"seq2seq {model.num_params() / 1e6:.2f}M parameters, "
            f"{len(self.train_examples):,} train and {len(self.val_examples):,} val pairs, "
            f"vocab {self.tokenizer.vocab_size}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches.state_dict(), "snapshots": self.snapshots}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches.load_state_dict(state["batches"])
        self.snapshots = list(state.get("snapshots", []))

    # -- averaging the last snapshots (the paper, section 6.1) ---------------------------

    def after_step(self, step: int, weights: WeightsFn) -> None:
        if step % self.config.train.average_every == 0:
            self._take_snapshot(weights)

    def _take_snapshot(self, weights: WeightsFn) -> None:
        copy = {k: v.detach().clone() for k, v in weights().items()}
        self.snapshots = [*self.snapshots, copy][-self.config.train.average_last :]

    def final_weights(self, step: int, weights: WeightsFn) -> dict[str, Tensor] | None:
        """The mean of the last `average_last` snapshots ("averaging the last 5
        checkpoints"), the final weights among them; None if there is nothing to average.

        The final weights join the mean without joining the snapshots, so a resumed run
        (even one with no step left to take) averages exactly what this one did."""
        train = self.config.train
        if train.average_last < 2 or not self.snapshots:
            return None
        chosen = self.snapshots
        if step % train.average_every != 0:  # the final weights are not a snapshot yet
            final = {k: v.detach().clone() for k, v in weights().items()}
            chosen = [*self.snapshots, final][-train.average_last :]
        if len(chosen) < 2:
            return None
        keys = chosen[-1].keys()
        return {k: torch.stack([s[k] for s in chosen]).mean(0) for k in keys}
