"""Step-for-step comparison: which change learns more per optimizer step?

A timed sweep (sweep_cpu.py) mixes two things, how much a step teaches and how fast it runs,
and on a shared 2-core VM the second moves by 20% from one minute to the next. This script
measures the first alone: the trainer runs exactly STEPS steps (its cosine schedule over those
steps, no evaluation on the way), then `qkv.evaluate` scores the whole val split, as `qkv eval`
does. The result does not depend on the machine's speed, so two runs can share the CPU (one
thread each). A variant is `key=value` config overrides and/or one of the named changes below,
which are not config options (each patches qkv for this process only):

    python benchmarks/steps_cpu.py --steps 1200 --data ../shared/data/tinyshakespeare.txt \
        NAME [key=value | +change ...]

Prints one JSON line: the variant, val loss, last training loss, CPU ms per step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import qkv.nn.blocks
import qkv.training.lm
import qkv.training.loop
import qkv.training.optim
from qkv.config import load_config
from qkv.evaluate import evaluate
from qkv.models.gpt import GPT


class _ReLUSquared(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


def relu_squared() -> None:
    """FFN activation relu(x)^2 (So et al., 2021, "Primer") instead of relu(x)."""
    plain = qkv.nn.blocks.make_activation
    qkv.nn.blocks.make_activation = lambda name: _ReLUSquared() if name == "relu" else plain(name)


def zero_init_projections() -> None:
    """The residual projections (c_proj) start at zero, not at N(0, 0.02 / sqrt(2L))."""

    def zeros(model: GPT) -> None:
        for name, param in model.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.zeros_(param)

    GPT._scale_residual_projections = zeros


def untied_head() -> None:
    """The output head gets its own matrix (a copy of the embedding at the start)."""
    build = GPT.__init__

    def init(model: GPT, config) -> None:
        build(model, config)
        model.lm_head.weight = nn.Parameter(model.transformer.wte.weight.detach().clone())

    GPT.__init__ = init


def _muon_option(**settings) -> Callable[[], None]:
    def change() -> None:
        grouped = qkv.training.optim.GroupedMuon

        class Changed(grouped):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **{**kwargs, **settings})

        qkv.training.optim.GroupedMuon = Changed

    return change


def adamw_lr_times_3() -> None:
    """The AdamW part (embedding, biases, norm gains) steps with 3x the schedule's lr."""
    step = qkv.training.optim.MuonWithAdamW.step

    def tripled(self, closure=None) -> None:
        saved = [group["lr"] for group in self.adamw.param_groups]
        for group in self.adamw.param_groups:
            group["lr"] *= 3
        step(self, closure)
        for group, lr in zip(self.adamw.param_groups, saved, strict=True):
            group["lr"] = lr

    qkv.training.optim.MuonWithAdamW.step = tripled


def warmup_stable_decay() -> None:
    """Constant lr after warm-up, then a linear decay to min_lr over the last 40% of the run."""

    def schedule(cfg, step: int, elapsed: float) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        progress = min(1.0, step / cfg.schedule_steps)
        if progress < 0.6:
            return cfg.lr
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 - progress) / 0.4

    qkv.training.lm.learning_rate = schedule


CHANGES: dict[str, Callable[[], None]] = {
    "+relu2": relu_squared,
    "+zero-proj": zero_init_projections,
    "+untied": untied_head,
    "+ns3": _muon_option(ns_steps=3),
    "+momentum0.9": _muon_option(momentum=0.9),
    "+adamw-lr-x3": adamw_lr_times_3,
    "+wsd": warmup_stable_decay,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("items", nargs="*", help="key=value overrides and +changes")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--data", default="tinyshakespeare")
    args = parser.parse_args()
    changes = [item for item in args.items if item.startswith("+")]
    overrides = [item for item in args.items if not item.startswith("+")]
    for change in changes:
        CHANGES[change]()
    with tempfile.TemporaryDirectory() as out:
        fixed = [f"data.source={args.data}", f"train.out_dir={out}", "train.max_time=0"]
        fixed += [f"train.max_steps={args.steps}", f"train.eval_interval={args.steps + 1}"]
        trainer = qkv.training.loop.Trainer(load_config(None, fixed + overrides), progress=False)
        start = time.process_time()
        for _ in range(args.steps):
            loss = trainer.train_step()
        cpu_ms = 1000 * (time.process_time() - start) / args.steps
        result = evaluate(trainer.model, trainer.corpus.val, trainer.corpus.tokenizer)
    record = {
        "name": args.name,
        "steps": args.steps,
        "changes": args.items,
        "val_loss": round(result.val_loss, 4),
        "last_train_loss": round(loss.item(), 4),
        "cpu_ms_per_step": round(cpu_ms, 1),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
