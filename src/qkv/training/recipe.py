"""A recipe: what one model kind brings to the one training loop.

The loop (`training.loop.Trainer`) owns everything that is the same for every kind: the run
directory, resuming, the clock and the step budget, stop signals, the non-finite guard,
logging, the evaluation cadence, checkpoints and `best/`, DDP and FSDP, autocast and
compile. A recipe owns what differs:

    data        `next_batch()` -> (a tuple of tensors on the device, how many targets it
                holds, counted on the host so the step never waits on the device); its
                position in `state_dict()` (so a resumed run draws the same batches)
    model       `build_model()`, from the kind's model class and `config.model`
    optimizer   `make_optimizer(model, device)` (every kind: `training.optim`)
    schedule    `learning_rate(step, elapsed)`
    loss        `loss(forward, batch)`: the mean loss over the batch's targets
    metrics     `evaluate(model)` -> {"val_loss": ..., ...}, the same numbers on every rank
    extras      `after_step(step, weights)` and `final_weights(step, weights)`, e.g. the
                encoder-decoder's averaging of its last snapshots

The gradient of a step is the gradient of the mean loss over every target of the step's
global batch (all micro-batches, all ranks): the loop weighs each micro-batch's mean loss by
its share of the targets, so batches of unequal length (pairs of sentences) average exactly
as one big batch would, and batches of equal length (text windows) reduce to the usual
`loss / grad_accum`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from qkv.config import ConfigTree, ModelKind
from qkv.training.optim import make_optimizer

Batch = tuple[Tensor, ...]
WeightsFn = Callable[[], dict[str, Tensor]]  # the whole model state dict, gathered if sharded


class Recipe(ABC):
    """The defaults every kind shares, and what each must say (the abstract methods).

    A recipe is built as `Recipe(config, tokenizer, device, world)`: `tokenizer` is the one
    of the checkpoint a run resumes or starts from (None: make a new one from the data), and
    `world` tells it which slice of each global batch is this rank's.
    """

    kind: ModelKind
    # Whether evaluating and saving count against train.max_time. The language model follows
    # nanoGPT's wall clock (everything counts, so time-to-quality figures compare); the
    # encoder-decoder's budget counts training only, as its docs/seq2seq.md figures do.
    eval_counts_as_training_time = True
    # Whether every rank's batches hold the same number of targets (text windows do), so the
    # step's total is known without asking the other ranks (one collective less per step).
    equal_batches = False

    config: ConfigTree  # with model.vocab_size set from the tokenizer
    tokenizer: Any

    def build_model(self) -> nn.Module:
        return self.kind.model_class()(self.config.model)

    def make_optimizer(self, model: nn.Module, device: torch.device) -> Any:
        """`train.optimizer` over the model; the loop sets the learning rate before each step."""
        return make_optimizer(model, self.config.train, device, lr=0.0)

    @abstractmethod
    def learning_rate(self, step: int, elapsed: float) -> float: ...

    @abstractmethod
    def next_batch(self) -> tuple[Batch, int]: ...

    @abstractmethod
    def loss(self, forward: Callable[..., Any], batch: Batch) -> Tensor: ...

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...

    @abstractmethod
    def describe(self, model: nn.Module) -> str: ...

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def probe_text(self) -> str:
        """The text whose attention each evaluation records (viz/probe.py): train.probe_text,
        else the kind's default; "" when train.probe is off."""
        train = self.config.train
        if not train.probe:
            return ""
        return train.probe_text or self.default_probe_text()

    def default_probe_text(self) -> str:
        """A fixed text from the data, the same at every evaluation ("": no probe)."""
        return ""

    def after_step(self, step: int, weights: WeightsFn) -> None:  # noqa: B027
        """Called after every optimizer step (nothing by default)."""

    def final_weights(self, step: int, weights: WeightsFn) -> dict[str, Tensor] | None:
        """Weights to end the run with instead of the trained ones (None: keep those)."""
        return None
