"""Optimizers: AdamW or Adam for everything, or Muon for the blocks' weight matrices with AdamW
beside it. Every model kind gets them the same way: Muon's matrices are the 2-D weights of
the model's `TransformerBlock`s (the GPT's blocks, the encoder's and the decoder's).

AdamW (Loshchilov & Hutter, 2019) keeps running means of each gradient and of its square,
steps by their ratio, and decays the weights apart from the gradient step:

    m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2,   w -= lr (m^ / (sqrt(v^) + eps) + wd w)

Weight decay applies to the matrices only (embeddings, projections), never to biases or norm
gains. `adam` is the paper's choice for the encoder-decoder (Kingma & Ba, 2015; no decay).
Muon (Jordan et al., 2024, "Muon: an optimizer for the hidden layers of neural
networks"; `torch.optim.Muon`) treats a weight matrix as a matrix: it keeps a Nesterov momentum
M of the gradient and steps along its orthogonalisation,

    M = mu M + G,   O = NewtonSchulz5(G + mu M) ~ U V^T   (where G + mu M = U S V^T),
    W -= lr * 0.2 sqrt(max(A, B)) * O      (for an A x B matrix)

so every direction of the update moves by the same amount, however small its gradient was.
The 0.2 sqrt(max(A, B)) factor (Liu et al., 2025, "Muon is Scalable for LLM Training") gives
the update the size AdamW's would have, so both share one learning rate and schedule. Muon is
for the 2-D weights inside the blocks; the embedding (tied to the output head), biases and norm
gains stay with AdamW, as in Jordan et al.

`GroupedMuon` is `torch.optim.Muon` with one change in how, not what, it computes: the
matrices of one shape (a 128 x 512 FFN matrix of every layer, say) go through Newton-Schulz
together, as one batched matmul per iteration, instead of one small matmul each. On a 2-core
CPU at the default model's sizes that halves the optimizer step (the `Muon step` row of
`qkv bench`: 0.47x-0.50x torch's time, benchmarks/RESULTS.md), which was a fifth of the
whole training step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from qkv.config.choices import OPTIMIZERS
from qkv.config.train import LoopConfig
from qkv.errors import QkvError
from qkv.nn.blocks import TransformerBlock


def make_optimizer(
    model: nn.Module, cfg: LoopConfig, device: torch.device, lr: float | None = None
) -> Any:
    """The optimizer `cfg.optimizer` names, over the model's trainable parameters.

    `lr` is the first learning rate (default `cfg.lr`); a schedule sets it before each step.
    """
    lr = cfg.lr if lr is None else lr
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type in ("cuda", "cpu")  # one kernel for all parameters
    if cfg.optimizer == "adamw":
        return make_adamw(params, cfg, device, lr)
    if cfg.optimizer == "adam":
        betas = (cfg.beta1, cfg.beta2)
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=cfg.eps, fused=fused)
    if cfg.optimizer == "muon":
        if not hasattr(torch.optim, "Muon"):
            raise QkvError(f"train.optimizer='muon' needs torch >= 2.9, not {torch.__version__}")
        hidden = {id(p) for p in hidden_matrices(model)}
        muon = GroupedMuon(
            [p for p in params if id(p) in hidden],
            lr=lr,
            weight_decay=cfg.weight_decay,
            momentum=cfg.muon_momentum,
            ns_steps=cfg.muon_ns_steps,
            adjust_lr_fn="match_rms_adamw",
        )
        rest = [p for p in params if id(p) not in hidden]
        adamw = make_adamw(rest, cfg, device, lr, embed_lr_scale=cfg.embed_lr_scale)
        return MuonWithAdamW(muon, adamw)
    raise QkvError(f"train.optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")


def make_adamw(
    params: list[nn.Parameter],
    cfg: LoopConfig,
    device: torch.device,
    lr: float,
    embed_lr_scale: float = 1.0,
):
    """AdamW with weight decay on the matrices only; fused (one kernel) on CPU and CUDA.

    The matrices' group carries `lr_scale` = `embed_lr_scale`: the loop sets its learning rate
    to lr_scale x the schedule's (beside Muon, AdamW's matrices are the embedding tables and
    an untied head, which modded-nanogpt and nanochat step at several times Muon's rate).
    """
    groups = [
        {
            "params": [p for p in params if p.dim() >= 2],
            "weight_decay": cfg.weight_decay,
            "lr_scale": embed_lr_scale,
        },
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type in ("cuda", "cpu")
    betas = (cfg.beta1, cfg.beta2)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=cfg.eps, fused=fused)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights inside the model's Transformer blocks: the attention and feed-forward
    projections (not the embeddings, the tied output head, biases or norm gains)."""
    seen: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, TransformerBlock):
            for param in module.parameters():
                if param.dim() == 2:
                    seen[id(param)] = param
    return list(seen.values())


def _lr_ratio(adjust_lr_fn: str | None, rows: int, cols: int) -> float:
    """torch.optim.Muon's per-shape step size factor (see its documentation)."""
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))  # Liu et al., 2025
    return math.sqrt(max(1.0, rows / cols))  # "original" (Jordan et al., 2024)


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on accelerators, as torch.optim.Muon runs Newton-Schulz; float32 on CPUs.

    A CPU without bfloat16 arithmetic (AVX2 only) emulates a bfloat16 matmul: measured on a
    2-core AVX2 EPYC, five iterations over (3, 96, 288) matrices take 58 ms in bfloat16 and
    2.3 ms in float32, and the bfloat16 optimizer step cut training to an eighth of its
    speed. At Muon's small matrices float32 costs a CPU little anywhere, and it rounds less.
    """
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def orthogonalise(
    updates: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
) -> Tensor:
    """(N, A, B) matrices with A <= B -> their approximate orthogonalisations U V^T, (N, A, B).

    The quintic Newton-Schulz iteration of Jordan et al. (2024), in `newton_schulz_dtype`:
    scale each X to spectral norm <= 1 (dividing by its Frobenius norm does), then
        X <- a X + (b X X^T + c (X X^T)^2) X
    which drives every singular value of X towards 1 without computing an SVD.
    """
    a, b, c = coefficients
    x = updates.to(newton_schulz_dtype(updates.device))
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT  # (N, A, A)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.baddbmm(x, poly, x, beta=a)  # a X + (b G + c G^2) X
    return x


class GroupedMuon(torch.optim.Muon):
    """torch.optim.Muon, orthogonalising all matrices of one shape in one batched iteration.

    Same hyperparameters, same state (a "momentum_buffer" per matrix, so checkpoints move
    freely between the two) and the same update up to rounding (bfloat16 on accelerators); only the
    Newton-Schulz matmuls are grouped. A tall matrix is orthogonalised as its transpose, as
    torch does, so a C x 4C matrix and a 4C x C one share a group.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:
        if closure is not None:
            raise ValueError("GroupedMuon.step takes no closure")
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            buffers: list[Tensor] = []
            self._init_group(group, params, grads, buffers)
            if params:
                self._step_group(group, params, grads, buffers)

    def _step_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        buffers: list[Tensor],
    ) -> None:
        momentum = group["momentum"]
        torch._foreach_lerp_(buffers, grads, 1 - momentum)  # B = mu B + (1 - mu) G
        # Nesterov: look ahead along the momentum, G + mu (B - G)
        updates = (
            [g.lerp(b, momentum) for g, b in zip(grads, buffers, strict=True)]
            if group["nesterov"]
            else buffers
        )
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, update in enumerate(updates):
            rows, cols = update.shape
            by_shape.setdefault((min(rows, cols), max(rows, cols)), []).append(i)
        decay = 1 - group["lr"] * group["weight_decay"]
        for members in by_shape.values():
            wide = torch.stack([_wide(updates[i]) for i in members])  # (N, A, B), A <= B
            ortho = orthogonalise(wide, group["ns_coefficients"], group["ns_steps"], group["eps"])
            for i, o in zip(members, ortho, strict=True):
                param = params[i]
                step = group["lr"] * _lr_ratio(group["adjust_lr_fn"], *param.shape)
                param.mul_(decay)  # decoupled weight decay
                param.add_(o.mT if param.size(0) > param.size(1) else o, alpha=-step)


def _wide(matrix: Tensor) -> Tensor:
    return matrix.mT if matrix.size(0) > matrix.size(1) else matrix


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
