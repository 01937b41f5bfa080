"""How a training run begins, for any model kind.

A run starts fresh, resumes its own run directory (`resume`: trainer.pt holds the weights,
optimizer, step, clock, RNG and data position), or starts from another checkpoint's weights
and tokenizer with a fresh optimizer and schedule (`init_from`: fine-tuning, e.g. GPT-2
after `qkv import-hf`, or a seq2seq model on a new task).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

from qkv import runtime
from qkv.checkpoint import (
    MODEL_FILE,
    TRAINER_FILE,
    Checkpoint,
    checkpoint_step,
    load_trainer_state,
    open_checkpoint,
)
from qkv.config import KINDS, ConfigTree
from qkv.errors import QkvError
from qkv.runtime import allow_tf32, resolve_device
from qkv.training import distributed
from qkv.training.distributed import SINGLE, World


class RunStart:
    """Everything a `Trainer` begins with; see the module docstring."""

    def __init__(
        self,
        config: ConfigTree,
        *,
        resume: bool = False,
        init_from: str | Path | None = None,
        world: World | None = None,
    ) -> None:
        self.world = world or SINGLE
        check_run_options(config, resume, init_from, self.world)
        self.out_dir = make_run_dir(Path(config.train.out_dir))
        self.device = distributed.rank_device(resolve_device(config.train.device), self.world)
        kind = KINDS[config.KIND]
        start = _open_start(self.out_dir if resume else init_from, kind.name)
        if start is not None and init_from:
            config = fine_tuning_config(config, start.config)
        tokenizer = start.tokenizer if start is not None else None
        self.recipe = kind.recipe_class()(config, tokenizer, self.device, self.world)
        model_config = self.recipe.config.model
        torch.manual_seed(config.train.seed)
        if start is not None and _weights_differ(start.config.model, model_config, resume):
            raise QkvError(
                f"the model config differs from the run's in {self.out_dir}: "
                + _model_differences(start.config.model, model_config)
            )
        # a checkpoint's weights in the run's model (which may set another dropout)
        self.model = start.model(self.device, model_config) if start else self.recipe.build_model()
        self.model.to(self.device)
        self.state = load_trainer_state(self.out_dir) if resume else None
        if self.state is not None:  # the snapshot's weights, before DDP copies or FSDP shards
            self._check_snapshot_step(self.state["step"])
            self.model.load_state_dict(self.state["model"])
        train = config.train
        # the module the training step runs: DDP around self.model, or self.model itself,
        # sharded in place by FSDP; self.model's plain names go into the checkpoints
        self.parallel = distributed.parallelize(self.model, self.world, train.fsdp)
        self.optimizer = self.recipe.make_optimizer(self.model, self.device)
        fp16 = runtime.amp_dtype(self.device, train.precision) == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        allow_tf32(self.device)
        # compiled for the training steps only; self.model stays the plain module, so state
        # dicts never carry torch.compile's "_orig_mod." prefix
        self.forward = torch.compile(self.parallel) if train.compile else self.parallel
        self.seed = train.seed

    def _check_snapshot_step(self, state_step: int) -> None:
        weights_step = checkpoint_step(self.out_dir)
        if weights_step is not None and weights_step != state_step and self.world.is_main:
            print(
                f"qkv: {self.out_dir}/{MODEL_FILE} is from step {weights_step} and "
                f"{TRAINER_FILE} from step {state_step} (a save was cut short); resuming "
                f"from the complete snapshot of step {state_step} in {TRAINER_FILE}",
                file=sys.stderr,
            )

    def seed_other_ranks(self, step: int) -> None:
        """Dropout masks of their own for ranks other than 0; rank 0 keeps the run's stream
        (the one trainer.pt saves), so a single process is unchanged."""
        if self.world.rank > 0:
            torch.manual_seed(self.seed + 1_000_003 * self.world.rank + step)


def check_run_options(
    config: ConfigTree, resume: bool, init_from: str | Path | None, world: World
) -> None:
    if resume and init_from:
        raise QkvError("--resume continues a run and --init-from starts one: use one of them")
    if config.train.fsdp and config.train.optimizer == "muon":
        raise QkvError(
            "train.optimizer=muon orthogonalises whole matrices, which --fsdp splits across "
            "ranks: use train.optimizer=adamw (or adam) with --fsdp (DDP works with muon)"
        )
    if config.train.fsdp and not world.launched:
        raise QkvError(
            "--fsdp shards the model over the processes torchrun starts: launch with "
            "`torchrun --nproc_per_node N -m qkv train --fsdp ...`"
        )


def make_run_dir(out_dir: Path) -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QkvError(f"cannot use {out_dir} as the run directory: {exc.strerror}") from None
    return out_dir


def _open_start(directory: str | Path | None, kind: str) -> Checkpoint | None:
    """The checkpoint a run resumes or starts from, which must hold the run's model kind."""
    if directory is None:
        return None
    start = open_checkpoint(directory)
    if start.kind.name != kind:
        raise QkvError(
            f"{directory} holds a {start.kind.name} model; this run trains a {kind} model"
        )
    return start


def _weights_differ(saved: Any, run: Any, resume: bool) -> bool:
    """Whether the run's model config cannot take the saved weights: a resumed run must be
    the same model; a fine-tuning run may change the dropout, which holds no weights."""
    if resume:
        return saved != run
    return dataclasses.replace(saved, dropout=0.0) != dataclasses.replace(run, dropout=0.0)


def _model_differences(saved: Any, run: Any) -> str:
    """`model.n_embd=64 (the run's: 32)` for each setting where `run` differs from `saved`."""
    return ", ".join(
        f"model.{f.name}={getattr(run, f.name)!r} (the run's: {getattr(saved, f.name)!r})"
        for f in dataclasses.fields(saved)
        if getattr(run, f.name) != getattr(saved, f.name)
    )


def fine_tuning_config(config: ConfigTree, start: ConfigTree) -> ConfigTree:
    """A run that starts from another checkpoint keeps that model and that tokenizer.

    The architecture must match the weights and the vocabulary the ids, so `start`'s
    model config and tokenizer settings replace the run's; data and training are the run's.
    Only model.dropout, which changes no weight, may be set anew; any other model.* setting,
    or a tokenizer setting, is an error rather than silently ignored.
    """
    if config.data.tokenizer != "char" or config.data.vocab_size is not None:
        raise QkvError("--init-from takes the tokenizer from its checkpoint; drop --tokenizer")
    defaults = type(config.model)()
    chosen = {
        f.name
        for f in dataclasses.fields(defaults)
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
