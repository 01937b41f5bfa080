"""The whole-model rows of `qkv bench`: training, the Muon step and generation.

- training: tokens/s and MFU of full steps, qkv's `GPT` against HF's `GPT2LMHeadModel` on the
  same weights and batch, with `flops_per_token` F = 6 N + 12 L T C (nanoGPT/PaLM
  convention, Chowdhery et al., 2022, appendix B; N = model.num_params(), position table
  excluded): 6N the forward (2N) and backward (4N) matmuls with the weights, 12 L T C those
  of attention scores and values;
- Muon: one optimizer step over the block matrices, `GroupedMuon` against `torch.optim.Muon`;
- generation: new tokens/s of greedy decoding, with and without the KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.bench.plan import Plan, TrainCase
from qkv.bench.report import Row
from qkv.bench.timing import _alternate, _fastest, _timed, _timer
from qkv.config import GPTConfig, TrainConfig
from qkv.interop import to_hf
from qkv.models.gpt import GPT
from qkv.training.optim import GroupedMuon, hidden_matrices, make_optimizer

# -- training --------------------------------------------------------------------------------


def flops_per_token(config: GPTConfig, n_params: int) -> int:
    """Training FLOPs per token, 6 N + 12 L T C (see the module docstring)."""
    return 6 * n_params + 12 * config.n_layer * config.block_size * config.n_embd


def _step_fn(model: nn.Module, x: Tensor, y: Tensor, is_hf: bool) -> Callable[[], None]:
    """One training step; both sides take the same cross-entropy of their logits."""
    optimizer = make_optimizer(model, TrainConfig(optimizer="adamw"), x.device)

    def step() -> None:
        logits = model(input_ids=x, use_cache=False).logits if is_hf else model(x)[0]
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())  # logits (B, T, V)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _rounds_of(step: Callable[[], None], steps: int, device: torch.device) -> Callable[[], float]:
    """A round of `steps` steps -> seconds per step."""

    def one_round() -> float:
        return _timed(lambda: [step() for _ in range(steps)], device) / steps

    return one_round


def bench_training(case: TrainCase, plan: Plan, device: torch.device, peak: float) -> list[Row]:
    """tokens/s and MFU of training steps on the same batch, qkv vs HF."""
    torch.manual_seed(0)
    model = GPT(case.model).to(device).train()
    hf = to_hf(model)
    shape = (case.batch_size, case.model.block_size)
    ids = torch.randint(0, case.model.vocab_size, (shape[0], shape[1] + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]  # (B, T) each
    steps = {"qkv": _step_fn(model, x, y, False), "hf": _step_fn(hf, x, y, True)}
    warm = _alternate({side: _rounds_of(fn, 1, device) for side, fn in steps.items()}, 2)
    step_s = min(min(values) for values in warm.values())
    per_round = max(1, math.ceil(plan.min_round_s / max(step_s, 1e-9)))
    sides = {side: _rounds_of(fn, per_round, device) for side, fn in steps.items()}
    seconds = _fastest(_alternate(sides, plan.rounds))
    tokens = case.batch_size * case.model.block_size
    rate = {side: tokens / s for side, s in seconds.items()}
    flops = flops_per_token(case.model, model.num_params())
    mfu = {side: 100 * rate[side] * flops / peak for side in rate}
    note = f"{per_round} steps x {plan.rounds} rounds, {flops / 1e6:.1f} MFLOP/token"
    return [
        Row(f"train {case.label}", "tok/s", rate["qkv"], rate["hf"], note),
        Row(f"train MFU {case.label}", "%", mfu["qkv"], mfu["hf"]),
    ]


# -- the Muon step ---------------------------------------------------------------------------


def bench_muon(plan: Plan, device: torch.device) -> list[Row]:
    """One Muon step over the block matrices of `plan.muon_model`: GroupedMuon vs torch's."""
    torch.manual_seed(0)
    model = GPT(plan.muon_model).to(device)
    matrices = hidden_matrices(model)
    grads = [torch.randn_like(p) for p in matrices]

    def stepper(optimizer_class: type[torch.optim.Optimizer]) -> Callable[[], float]:
        params = [nn.Parameter(p.detach().clone()) for p in matrices]
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        optimizer = optimizer_class(params, lr=3e-3, adjust_lr_fn="match_rms_adamw")
        optimizer.step()  # warm-up, and the momentum buffers
        return lambda: _timed(optimizer.step, device)

    sides = {"qkv": stepper(GroupedMuon), "torch": stepper(torch.optim.Muon)}
    seconds = _fastest(_alternate(sides, 5 * plan.rounds))
    shapes = sorted({tuple(p.shape) for p in matrices})
    note = f"{len(matrices)} matrices of shapes {', '.join(f'{a}x{b}' for a, b in shapes)}"
    m = plan.muon_model
    name = f"Muon step, {m.n_layer}L/{m.n_embd}C block matrices"
    return [Row(name, "ms", 1e3 * seconds["qkv"], 1e3 * seconds["torch"], note)]


# -- generation ------------------------------------------------------------------------------


def hf_greedy(hf: nn.Module, prompt: Tensor, new: int, use_cache: bool = True) -> Callable:
    """Hugging Face's greedy `generate` of exactly `new` tokens after `prompt`, as a call."""

    def run() -> Tensor:
        return hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=new,
            min_new_tokens=new,
            use_cache=use_cache,
            pad_token_id=0,
        )

    return run


def _generators(model: GPT, hf: nn.Module, prompt: Tensor, new: int, use_cache: bool):
    def ours() -> Tensor:
        return model.generate(prompt, new, temperature=0, use_cache=use_cache)

    return ours, hf_greedy(hf, prompt, new, use_cache)


def bench_generation(plan: Plan, device: torch.device) -> list[Row]:
    """Greedy decoding of gen_new_tokens tokens, batch 1, with and without the KV cache."""
    torch.manual_seed(0)
    model = GPT(plan.gen_model).to(device).eval()
    hf = to_hf(model)
    rows = []
    for prompt_len in plan.gen_prompts:
        prompt = torch.randint(0, plan.gen_model.vocab_size, (1, prompt_len), device=device)
        for use_cache in (True, False):
            ours, theirs = _generators(model, hf, prompt, plan.gen_new_tokens, use_cache)
            same = torch.equal(ours(), theirs())  # also the warm-up
            sides = {"qkv": _timer(ours, device), "hf": _timer(theirs, device)}
            seconds = _fastest(_alternate(sides, plan.gen_rounds))
            rate = {side: plan.gen_new_tokens / s for side, s in seconds.items()}
            cache = "KV cache" if use_cache else "no cache"
            name = f"generate {plan.gen_new_tokens} new, prompt {prompt_len}, {cache}"
            note = "same tokens" if same else "greedy tokens differ"
            rows.append(Row(name, "tok/s", rate["qkv"], rate["hf"], note))
    return rows
