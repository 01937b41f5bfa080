"""Optimizers: AdamW for everything, or Muon for the blocks' weight matrices with AdamW beside it.

AdamW (Loshchilov & Hutter, 2019) keeps running means of each gradient and of its square,
steps by their ratio, and decays the weights apart from the gradient step:

    m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2,   w -= lr (m^ / (sqrt(v^) + eps) + wd w)

Weight decay applies to the matrices only (embeddings, projections), never to biases or norm
gains. Muon (Jordan et al., 2024, "Muon: an optimizer for the hidden layers of neural
networks"; `torch.optim.Muon`) treats a weight matrix as a matrix: it keeps a Nesterov momentum
M of the gradient and steps along its orthogonalisation,

    M = mu M + G,   O = NewtonSchulz5(G + mu M) ~ U V^T   (where G + mu M = U S V^T),
    W -= lr * 0.2 sqrt(max(A, B)) * O      (for an A x B matrix)

so every direction of the update moves by the same amount, however small its gradient was.
The 0.2 sqrt(max(A, B)) factor (Liu et al., 2025, "Muon is Scalable for LLM Training") gives
the update the size AdamW's would have, so both share one learning rate and schedule. Muon is
for the 2-D weights inside the blocks; the embedding (tied to the output head), biases and norm
gains stay with AdamW, as in Jordan et al.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from qkv.config import OPTIMIZERS, TrainConfig
from qkv.errors import QkvError


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> Any:
    """The optimizer `cfg.optimizer` names, over the model's trainable parameters."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return make_adamw([p for _, p in named], cfg, device)
    if cfg.optimizer == "muon":
        if not hasattr(torch.optim, "Muon"):
            raise QkvError(f"train.optimizer='muon' needs torch >= 2.9, not {torch.__version__}")
        hidden = [p for n, p in named if is_hidden_matrix(n, p)]
        rest = [p for n, p in named if not is_hidden_matrix(n, p)]
        muon = torch.optim.Muon(
            hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw"
        )
        return MuonWithAdamW(muon, make_adamw(rest, cfg, device))
    raise QkvError(f"train.optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")


def make_adamw(params: list[nn.Parameter], cfg: TrainConfig, device: torch.device):
    """AdamW with weight decay on the matrices only; fused (one kernel) on CPU and CUDA."""
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def is_hidden_matrix(name: str, param: nn.Parameter) -> bool:
    """A 2-D weight inside a Transformer block: attention and feed-forward projections."""
    return param.dim() == 2 and ".h." in f".{name}"


class MuonWithAdamW:
    """Two optimizers stepped as one: Muon for the hidden matrices, AdamW for the rest.

    It offers what the trainer and torch's GradScaler use: `param_groups` (both optimizers'
    groups, so a schedule sets every learning rate), `step`, `zero_grad`, and a state dict
    holding both states.
    """

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.muon, self.adamw = muon, adamw
        self.parts = (muon, adamw)  # for torch.distributed.checkpoint's state-dict helpers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self) -> dict:
        return {**self.muon.state, **self.adamw.state}

    def step(self, closure: Callable[[], float] | None = None) -> None:
        if closure is not None:
            raise ValueError("MuonWithAdamW.step takes no closure")
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"muon", "adamw"}:
            raise QkvError("the saved optimizer state is not Muon's: resume with its optimizer")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])
