"""One head's attention, step by step, with the numbers of a real model.

Shape legend: T_q queries, T_k keys, C channels (d_model), D head size, H heads.

For head h of one attention sub-layer (the notes' "How is key-query-value attention
computed?"; the paper, section 3.2, equation 1):

    q_i  = W_Q^h x_i + b_Q^h             x_i: the sub-layer's input (LN_1 of the block's
    k_j  = W_K^h z_j + b_K^h             input in a pre-norm block); z = x for self-attention,
    v_j  = W_V^h z_j + b_V^h             the encoder's output for cross-attention
    (rotary positions: q_i and k_j rotated by their positions)
    e_ij = q_i . k_j                     raw score
    s_ij = e_ij / sqrt(D)                scaled
    s_ij = -inf where key j is hidden    masked (the future; padding)
    a_ij = softmax_j(s_ij)               weights, each row sums to 1
    o_i  = sum_j a_ij v_j                the head's output (D numbers)
    y_i  = W_O^h o_i                     the head's share of the sub-layer's output; the
                                         output is sum_h W_O^h o_i + b_O

Every number comes from the model's own modules while it runs the text: the sub-layer's
input and output are read by forward hooks on the attention module (during the same forward
pass `qkv attention` draws), q, k, v by the module's own `project` (rotary included) or, for
cross-attention, the source keys and values the decoder block made. Only the dot products and
the sums the equations spell out are done here, and the softmax of those scores is checked
against the weights the model returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qkv.errors import QkvError
from qkv.nn.attention import CrossAttention, causal_mask
from qkv.viz.maps import AttentionMap


@dataclass(frozen=True)
class HeadSteps:
    """Head `head` of layer `layer` of one kind of attention, every step (float64 arrays)."""

    name: str  # the map's name: "self-attention", "cross-attention", ...
    layer: int
    head: int
    queries: list[str]
    keys: list[str]
    x: np.ndarray  # (T_q, C) the sub-layer's input at the queries
    z: np.ndarray  # (T_k, C) its input at the keys (x, or the encoder's output)
    w_q: np.ndarray  # (D, C) this head's rows of c_attn (W_Q^h); bias rows b_q (D,)
    w_k: np.ndarray  # (D, C)
    w_v: np.ndarray  # (D, C)
    b_q: np.ndarray | None
    b_k: np.ndarray | None
    b_v: np.ndarray | None
    rows: dict[str, tuple[int, int]]  # "q", "k", "v" -> [first, end) rows of c_attn.weight
    rotary: bool  # q and k were rotated by position after the projection
    q: np.ndarray  # (T_q, D)
    k: np.ndarray  # (T_k, D)
    v: np.ndarray  # (T_k, D)
    scores: np.ndarray  # (T_q, T_k) e_ij = q_i . k_j
    mask: np.ndarray  # (T_q, T_k) bool, True where query i may attend to key j
    weights: np.ndarray  # (T_q, T_k) a_ij, the model's own
    out: np.ndarray  # (T_q, D) o_i = sum_j a_ij v_j
    w_o: np.ndarray  # (C, D) this head's columns of c_proj (W_O^h)
    share: np.ndarray  # (T_q, C) W_O^h o_i
    output: np.ndarray  # (T_q, C) the whole sub-layer's output (every head, plus b_O)
    b_o: np.ndarray | None

    @property
    def head_size(self) -> int:
        return self.q.shape[1]

    @property
    def scale(self) -> float:
        """1 / sqrt(D), the paper's scaling (section 3.2.1)."""
        return 1.0 / math.sqrt(self.head_size)

    @property
    def scaled(self) -> np.ndarray:
        """s_ij = e_ij / sqrt(D), before the mask."""
        return self.scores * self.scale


@dataclass
class _Call:
    """What one attention module received and returned the last time it ran."""

    args: tuple
    kwargs: dict[str, Any]
    output: Any = None
    memory: Tensor | None = None  # cross-attention: the source states it projected


@contextmanager
def recording(modules: list[nn.Module]) -> Iterator[dict[nn.Module, _Call]]:
    """Within: each module's latest call (inputs and output) is kept in the dict it yields.

    Hooks live only inside the `with`; nothing is stored on the modules afterwards.
    """
    calls: dict[nn.Module, _Call] = {}
    handles, patched = [], []

    def before(module, args, kwargs):
        memory = calls[module].memory if module in calls else None
        calls[module] = _Call(args, dict(kwargs), memory=memory)

    def after(module, args, kwargs, output):
        calls[module].output = output

    for module in modules:
        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
        if isinstance(module, CrossAttention):
            patched.append(module)
            module.project_memory = _keeping_memory(module, calls)
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()
        for module in patched:
            del module.project_memory  # the class's method again


def _keeping_memory(module: CrossAttention, calls: dict) -> Callable:
    project = type(module).project_memory

    def project_memory(memory: Tensor) -> tuple[Tensor, Tensor]:
        calls.setdefault(module, _Call((), {})).memory = memory
        return project(module, memory)

    return project_memory


def explain_maps(
    model: nn.Module, provider: Callable, tokenizer: Any, text: str
) -> tuple[list[AttentionMap], dict[str, list[list[HeadSteps]]]]:
    """Run `provider` (the kind's attention maps of `text`) with every attention module
    recorded -> the maps, and {map name: [layer][head] HeadSteps}."""
    modules = model.attention_modules()
    with torch.no_grad(), recording([m for layers in modules.values() for m in layers]) as calls:
        maps = provider(model, tokenizer, text)
    steps = {}
    for attention in maps:
        layers = modules[attention.name]
        steps[attention.name] = [
            [
                _head_steps(attention, layer, h, module, calls[module])
                for h in range(attention.n_head)
            ]
            for layer, module in enumerate(layers)
        ]
    return maps, steps


def _head_steps(
    attention: AttentionMap, layer: int, head: int, module: nn.Module, call: _Call
) -> HeadSteps:
    x = call.args[0]  # (1, T_q, C)
    q, k, v, z = _project(module, call)  # (1, H, T_q, D), (1, H_kv, T_k, D) x 2, (1, T_k, C)
    c, d = x.size(-1), module.head_size
    g = head // (module.n_head // module.n_kv_head)  # the key/value head this head reads
    rows = _HeadRows(module, c)
    out_all, returned = call.output  # (1, T_q, C), (1, H, T_q, T_k)
    qh, kh, vh = q[0, head].double(), k[0, g].double(), v[0, g].double()
    scores = qh @ kh.T  # (T_q, T_k)
    mask = _mask(call, qh.size(0), kh.size(0))
    weights = returned[0, head].double()
    _check_softmax(scores / math.sqrt(d), mask, weights, attention.name, layer, head)
    w_o = module.c_proj.weight[:, head * d : (head + 1) * d].double()  # (C, D)
    out = weights @ vh  # (T_q, D)
    bias = module.c_attn.bias
    return HeadSteps(
        name=attention.name, layer=layer, head=head,
        queries=attention.queries, keys=attention.keys,
        x=_np(x[0]), z=_np(z[0]),
        w_q=_np(rows("q", head)), w_k=_np(rows("k", g)), w_v=_np(rows("v", g)),
        b_q=None if bias is None else _np(rows("q", head, bias)),
        b_k=None if bias is None else _np(rows("k", g, bias)),
        b_v=None if bias is None else _np(rows("v", g, bias)),
        rows={part: rows.span(part, h) for part, h in (("q", head), ("k", g), ("v", g))},
        rotary=getattr(module, "rotary", None) is not None,
        q=_np(qh), k=_np(kh), v=_np(vh), scores=_np(scores), mask=mask.cpu().numpy(),
        weights=_np(weights), out=_np(out), w_o=_np(w_o), share=_np(out @ w_o.T),
        output=_np(out_all[0]),
        b_o=None if module.c_proj.bias is None else _np(module.c_proj.bias),
    )  # fmt: skip


def _project(module: nn.Module, call: _Call) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The module's own q, k, v for this call, and the states the keys came from."""
    x = call.args[0]
    if isinstance(module, CrossAttention):
        k, v = call.args[1]  # what the decoder block projected from the source
        return module.project_queries(x), k, v, call.memory
    context = call.kwargs.get("context", call.args[1] if len(call.args) > 1 else None)
    q, k, v = module.project(x, context, call.kwargs.get("positions"))
    return q, k, v, x if context is None else context


class _HeadRows:
    """Where a head's block of [W_Q; W_K; W_V] sits in c_attn (queries first, then the
    key heads, then the value heads; grouped-query attention has fewer key/value heads)."""

    def __init__(self, module: nn.Module, c: int) -> None:
        self.module, self.d = module, module.head_size
        self.start = {"q": 0, "k": c, "v": c + module.kv_width}

    def span(self, part: str, head: int) -> tuple[int, int]:
        first = self.start[part] + head * self.d
        return first, first + self.d

    def __call__(self, part: str, head: int, tensor: Tensor | None = None) -> Tensor:
        first, end = self.span(part, head)
        tensor = self.module.c_attn.weight if tensor is None else tensor
        return tensor[first:end].double()


def _mask(call: _Call, t_q: int, t_k: int) -> Tensor:
    """(T_q, T_k) bool: the call's padding mask, and the causal mask if it was causal."""
    mask = torch.ones(t_q, t_k, dtype=torch.bool)
    given = call.kwargs.get("mask")
    if given is not None:
        mask = mask & given[0].reshape(-1, t_k).cpu()  # (1, 1, T_k) or (1, T_q, T_k)
    if call.kwargs.get("causal") and t_q > 1:
        mask = mask & causal_mask(t_q, t_k)
    return mask


def _check_softmax(scaled: Tensor, mask: Tensor, weights: Tensor, *where) -> None:
    """The weights the model returned must be softmax(scaled scores, masked): else the steps
    shown would not be the ones the model took."""
    mine = torch.softmax(scaled.masked_fill(~mask.to(scaled.device), float("-inf")), dim=-1)
    mine = torch.nan_to_num(mine, nan=0.0)  # a query that sees no key gets zero weights
    if not torch.allclose(mine, weights, atol=1e-5):
        raise RuntimeError(f"{where}: the recomputed softmax differs from the model's weights")


def _np(t: Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def select_steps(
    steps: dict[str, list[list[HeadSteps]]], name: str, layer: int, head: int
) -> HeadSteps:
    """One head's steps; a layer or head the model does not have is one clear error."""
    layers = steps[name]
    if not 0 <= layer < len(layers):
        raise QkvError(
            f"--layer {layer}: the {name} has {len(layers)} layers (0-{len(layers) - 1})"
        )
    heads = layers[layer]
    if not 0 <= head < len(heads):
        raise QkvError(f"--head {head}: the {name} has {len(heads)} heads (0-{len(heads) - 1})")
    return heads[head]


def checkpoint_attention_steps(
    directory: str | Path, text: str, device: str | torch.device = "cpu"
) -> tuple[list[AttentionMap], dict[str, list[list[HeadSteps]]]]:
    """Load a checkpoint and run `text` through it as `qkv attention` does, recording every
    head's steps: -> (maps, {map name: [layer][head] HeadSteps})."""
    from qkv.checkpoint import open_checkpoint

    if not text:
        raise QkvError("--text is empty: give the text whose attention to draw")
    checkpoint = open_checkpoint(directory)
    provider = checkpoint.kind.verb("attention", str(directory))
    model = checkpoint.model(device).eval()
    return explain_maps(model, provider, checkpoint.tokenizer, text)
