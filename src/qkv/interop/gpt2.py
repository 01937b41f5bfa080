"""Moving weights between qkv's GPT and Hugging Face's GPT-2 (`transformers.GPT2LMHeadModel`).

qkv's parameter names are GPT-2's (`transformer.wte`, `transformer.h.N.attn.c_attn`, ...), so
the mapping is a copy by key with one twist: GPT-2 (and so Hugging Face's port) computes its
projections with `Conv1D`, y = x W + b with W stored as (in, out), while qkv uses
`nn.Linear`, y = x W^T + b with W stored as (out, in). The four matrices of each layer,
`attn.c_attn`, `attn.c_proj`, `mlp.c_fc` and `mlp.c_proj`, are therefore transposed on the
way across; everything else (embeddings, positions, LayerNorms, biases) copies as it is.

GPT-2 is one point in qkv's space of models: learned positions, pre-norm LayerNorm
(eps 1e-5), biases everywhere, one key/value head per query head, a 4C feed-forward with
GELU (tanh approximation, GPT-2's "gelu_new"), tied embeddings. Only configs that GPT-2 can
represent exactly convert (ReLU maps onto "relu" as well); any other choice raises `QkvError`
naming the field. Hugging Face's attention is set to "sdpa" by default, the same fused
kernel qkv uses; "eager" writes the softmax out and agrees to float32 rounding.

`transformers` is an optional dependency (`pip install "qkv[bench]"`) and is imported inside
the functions that need it, never when qkv is imported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from qkv.config.gpt import GPTConfig
from qkv.errors import QkvError
from qkv.models.gpt import GPT

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from transformers import GPT2Config, GPT2LMHeadModel

INSTALL_HINT = 'pip install "qkv[bench]"'

# Conv1D stores (in, out), nn.Linear (out, in): these weights cross transposed
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# GPT-2's name for each qkv activation; both GELUs are the tanh approximation
HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu_new"}
QKV_ACTIVATIONS = {"relu": "relu", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}

# buffers that some GPT-2 checkpoints carry (the old causal-mask tables); not weights
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")

# qkv field -> the only value of it that GPT-2 can represent
_GPT2_CHOICES = {
    "positional": "learned", "norm": "pre", "norm_type": "layernorm", "bias": True,
    "qk_norm": False, "tie_embeddings": True, "logit_softcap": 0.0,
    "value_embeddings": False, "x0_mix": False,
}  # fmt: skip


def require_transformers() -> Any:
    """Import and return `transformers`, or raise QkvError with the command that installs it."""
    try:
        import transformers
    except ImportError:
        raise QkvError(f"Hugging Face transformers is not installed: {INSTALL_HINT}") from None
    return transformers


def check_representable(config: GPTConfig) -> None:
    """Raise QkvError naming the first field of `config` that GPT-2 cannot represent."""
    for name, wanted in _GPT2_CHOICES.items():
        value = getattr(config, name)
        if value != wanted:
            raise QkvError(f"GPT-2 needs model.{name}={wanted!r}; this model has {value!r}")
    if config.activation not in HF_ACTIVATIONS:
        raise QkvError(
            f"GPT-2 has no model.activation={config.activation!r}; use one of "
            f"{sorted(HF_ACTIVATIONS)}"
        )
    if config.n_kv_head not in (None, config.n_head):
        raise QkvError(
            f"GPT-2 has one key/value head per query head; this model has "
            f"model.n_kv_head={config.n_kv_head} for n_head={config.n_head}"
        )
    if config.vocab_size is None:
        raise QkvError("model.vocab_size must be set to build a GPT-2 config")


def nearest_gpt2(config: GPTConfig) -> tuple[GPTConfig, list[str]]:
    """The closest config GPT-2 can represent, and "field=new (was old)" for every change."""
    wanted = dict(_GPT2_CHOICES, n_kv_head=None)
    if config.activation not in HF_ACTIVATIONS:
        wanted["activation"] = "gelu"  # GPT-2's own
    changes = {
        name: value
        for name, value in wanted.items()
        if getattr(config, name) != value
        and not (name == "n_kv_head" and config.n_kv_head == config.n_head)
    }
    notes = [f"{name}={value} (was {getattr(config, name)})" for name, value in changes.items()]
    return dataclasses.replace(config, **changes), notes


def hf_config(config: GPTConfig, attn_implementation: str = "sdpa") -> GPT2Config:
    """The `transformers.GPT2Config` of the same model (raises QkvError if there is none)."""
    transformers = require_transformers()
    check_representable(config)
    return transformers.GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=None,  # 4C, as qkv's FeedForward
        activation_function=HF_ACTIVATIONS[config.activation],
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=1e-5,  # nn.LayerNorm's default, which qkv uses
        tie_word_embeddings=True,
        # GPT-2's token ids (50256) are outside a small vocabulary: no special tokens
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        attn_implementation=attn_implementation,
    )


def gpt_config(hf: GPT2Config) -> GPTConfig:
    """The qkv `GPTConfig` of a `transformers.GPT2Config` (raises QkvError if there is none)."""
    activation = QKV_ACTIVATIONS.get(hf.activation_function)
    if activation is None:
        raise QkvError(
            f"qkv has no activation_function={hf.activation_function!r}; it reads "
            f"{sorted(QKV_ACTIVATIONS)}"
        )
    checks = {
        "n_inner": (hf.n_inner, (None, 4 * hf.n_embd)),
        "layer_norm_epsilon": (hf.layer_norm_epsilon, (1e-5,)),
        "scale_attn_weights": (hf.scale_attn_weights, (True,)),
        "scale_attn_by_inverse_layer_idx": (hf.scale_attn_by_inverse_layer_idx, (False,)),
        "add_cross_attention": (hf.add_cross_attention, (False,)),
        "tie_word_embeddings": (hf.tie_word_embeddings, (True,)),
        "attn_pdrop": (hf.attn_pdrop, (hf.resid_pdrop,)),
        "embd_pdrop": (hf.embd_pdrop, (hf.resid_pdrop,)),
    }
    for name, (value, allowed) in checks.items():
        if value not in allowed:
            raise QkvError(f"qkv cannot represent GPT-2's {name}={value!r} (needs {allowed[0]!r})")
    return GPTConfig(
        vocab_size=hf.vocab_size,
        block_size=hf.n_positions,
        n_layer=hf.n_layer,
        n_head=hf.n_head,
        n_embd=hf.n_embd,
        dropout=float(hf.resid_pdrop),
        activation=activation,
        n_kv_head=None,
        **_GPT2_CHOICES,  # spelled out: qkv's own defaults differ (rotary positions)
    )


def _is_transposed(key: str) -> bool:
    return key.endswith(TRANSPOSED)


def qkv_to_hf_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """qkv's state dict -> GPT-2's: the same keys, the Conv1D matrices transposed."""
    return {k: v.t() if _is_transposed(k) else v for k, v in state.items()}


def _with_prefix(key: str) -> str:
    """GPT-2's own checkpoint files name the base model's weights without `transformer.`."""
    return key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"


def hf_to_qkv_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """GPT-2's state dict -> qkv's; drops mask buffers, fills the tied head from wte."""
    out = {
        _with_prefix(k): v.t() if _is_transposed(k) else v
        for k, v in state.items()
        if not k.endswith(_IGNORED_SUFFIXES)
    }
    wte = out.get("transformer.wte.weight")
    head = out.setdefault("lm_head.weight", wte)
    if wte is not None and head is not wte and not torch.equal(head, wte):
        raise QkvError("qkv ties lm_head to the token embedding; these weights are untied")
    return out


def to_hf(gpt: GPT, attn_implementation: str = "sdpa") -> GPT2LMHeadModel:
    """A `transformers.GPT2LMHeadModel` with a copy of `gpt`'s weights, on its device and dtype.

    The copy shares no storage with `gpt` and is left in the same train/eval mode.
    """
    transformers = require_transformers()
    config = hf_config(gpt.config, attn_implementation)
    weight = gpt.transformer.wte.weight
    hf = transformers.GPT2LMHeadModel(config).to(device=weight.device, dtype=weight.dtype)
    state = qkv_to_hf_state(gpt.state_dict())
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(_IGNORED_SUFFIXES)]
    if missing or unexpected:  # a bug in the mapping, not a user's mistake
        raise RuntimeError(f"GPT-2 mapping is incomplete: missing {missing}, extra {unexpected}")
    return hf.train(gpt.training)


def from_hf(
    hf_model_or_state_dict: GPT2LMHeadModel | Mapping[str, Tensor],
    config: GPTConfig | None = None,
) -> GPT:
    """A qkv `GPT` with the weights of a GPT-2 model (or of its state dict).

    With a model, the config is read from it unless given. A bare state dict cannot tell the
    number of heads, so `config` is required then. The weights are copied (no shared storage).
    """
    if isinstance(hf_model_or_state_dict, Mapping):
        if config is None:
            raise QkvError("from_hf needs config= with a bare state dict (it does not say n_head)")
        state = hf_model_or_state_dict
    else:
        hf_model = hf_model_or_state_dict
        config = gpt_config(hf_model.config) if config is None else config
        state = hf_model.state_dict()
    check_representable(config)
    qkv_state = hf_to_qkv_state(state)
    weight = qkv_state["transformer.wte.weight"]
    model = GPT(dataclasses.replace(config)).to(device=weight.device, dtype=weight.dtype)
    try:
        model.load_state_dict(qkv_state, strict=True)
    except RuntimeError as exc:
        details = [line.strip() for line in str(exc).strip().splitlines()]
        raise QkvError(f"the GPT-2 weights do not fit the config: {details[-1]}") from None
    training = getattr(hf_model_or_state_dict, "training", False)
    return model.train(training)
