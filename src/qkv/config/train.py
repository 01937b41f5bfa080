"""The [train] settings that the one training loop reads, whatever the model kind.

Each kind's train table (`config.gpt.TrainConfig`, `config.seq2seq.Seq2SeqTrainConfig`)
extends `LoopConfig` with its recipe's own settings (its learning-rate schedule, its loss,
its evaluation) and may give these fields other defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from qkv.config.choices import (
    DEVICES,
    OPTIMIZERS,
    PRECISIONS,
    check_choice,
    check_fraction,
    check_not_negative,
    check_positive,
)


@dataclass
class LoopConfig:
    """Budget, cadence, optimizer, device and parallelism of a training run."""

    out_dir: str = "out"
    max_steps: int = 5000  # stop after this many optimizer steps
    max_time: float = 180.0  # or after this many seconds of training (0: no time limit)
    batch_size: int = 16  # examples per rank and micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    optimizer: str = "muon"  # muon (the blocks' matrices; AdamW for the rest) | adamw | adam
    weight_decay: float = 0.1  # AdamW's and Muon's, on matrices only
    embed_lr_scale: float = 1.0  # muon: AdamW's matrices (the embeddings) step at this x lr
    muon_momentum: float = 0.95  # muon: B = mu B + (1 - mu) G (torch.optim.Muon's default)
    muon_ns_steps: int = 5  # muon: Newton-Schulz iterations per orthogonalisation
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8  # Adam's epsilon
    grad_clip: float = 1.0  # 0: no clipping
    eval_interval: int = 250
    log_interval: int = 10
    device: str = "auto"
    precision: str = (
        "auto"  # autocast: auto (bf16 on GPUs, AMX CPUs) | float32 | bfloat16 | float16
    )
    seed: int = 1337
    compile: bool = False  # torch.compile the model for the training steps
    skip_nonfinite: bool = False  # skip a NaN/inf batch instead of stopping (a sync per step)
    fsdp: bool = False  # shard parameters, gradients, optimizer state over torchrun's ranks
    dist_timeout: float = 600.0  # seconds a rank waits for the others in one collective
    probe: bool = True  # record the probe text's attention at each evaluation (RUN/probe/)
    probe_text: str = ""  # the text to record ("": a fixed piece of the val data)

    def __post_init__(self) -> None:
        check_positive(self, "max_steps", "batch_size", "grad_accum", "eps", "embed_lr_scale")
        check_positive(self, "muon_ns_steps")
        check_positive(self, "eval_interval", "log_interval", "dist_timeout")
        check_not_negative("train", self, "max_time", "weight_decay", "grad_clip")
        check_fraction(self, "beta1")
        check_fraction(self, "beta2")
        check_fraction(self, "muon_momentum")
        check_choice(self, "device", DEVICES)
        check_choice(self, "precision", PRECISIONS)
        check_choice(self, "optimizer", OPTIMIZERS)
