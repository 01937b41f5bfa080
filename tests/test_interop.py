"""qkv's GPT against Hugging Face's GPT-2 on the same weights: logits, greedy tokens, round trip.

minGPT's one test, made stricter: a random qkv model is copied into `GPT2LMHeadModel` with
`qkv.interop.to_hf`; both must give the same logits and the same greedy continuations, with
and without the KV cache, and `from_hf` must give the original tensors back. Offline: no
model is downloaded, the peer is built from the config.
"""

import os
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from qkv.config import GPTConfig  # noqa: E402
from qkv.errors import QkvError  # noqa: E402
from qkv.interop import (  # noqa: E402
    from_hf,
    hf_config,
    hf_to_qkv_state,
    nearest_gpt2,
    to_hf,
)
from qkv.models.gpt import GPT  # noqa: E402

V = 50
TOLERANCE = 1e-5


def tiny_config(**overrides) -> GPTConfig:
    options = dict(vocab_size=V, block_size=32, n_layer=2, n_embd=32, n_head=2)
    options.update(activation="gelu", positional="learned")  # GPT-2's (qkv defaults to rotary)
    return GPTConfig(**{**options, **overrides})


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    model = GPT(tiny_config(**overrides)).eval()
    with torch.no_grad():  # biases and LayerNorms start at 0 and 1; make them count
        for name, param in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_logits_match_hugging_face(activation, attn_implementation):
    model = tiny_gpt(activation=activation)
    hf = to_hf(model, attn_implementation)
    idx = torch.randint(0, V, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    assert theirs.dtype == torch.float32
    diff = (ours - theirs).abs().max().item()
    print(f"max |logit difference| ({activation}, {attn_implementation}): {diff:.3g}")
    assert diff < TOLERANCE


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_matches_hugging_face(use_cache):
    model = tiny_gpt(block_size=64)  # room for 5 + 50 tokens: GPT-2 cannot slide its window
    hf = to_hf(model)
    prompt = torch.randint(0, V, (1, 5), generator=torch.Generator().manual_seed(2))
    ours = model.generate(prompt, 50, temperature=0, use_cache=use_cache)
    theirs = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=50,
        min_new_tokens=50,
        use_cache=use_cache,
        pad_token_id=0,
    )
    assert ours.shape == (1, 55)
    assert torch.equal(ours, theirs)


def test_round_trip_gives_back_identical_tensors():
    model = tiny_gpt()
    back = from_hf(to_hf(model))
    assert back.config == model.config
    ours, returned = model.state_dict(), back.state_dict()
    assert ours.keys() == returned.keys()
    for key, tensor in ours.items():
        assert torch.equal(tensor, returned[key]), key
    assert back.lm_head.weight is back.transformer.wte.weight


def test_the_copy_shares_no_storage():
    model = tiny_gpt()
    hf = to_hf(model)
    with torch.no_grad():
        hf.transformer.h[0].attn.c_attn.weight.zero_()
    assert model.transformer.h[0].attn.c_attn.weight.abs().sum() > 0


def test_conv1d_matrices_are_transposed():
    model = tiny_gpt()
    hf = to_hf(model)
    ours = model.transformer.h[1].mlp.c_fc.weight  # (4C, C), nn.Linear
    theirs = hf.transformer.h[1].mlp.c_fc.weight  # (C, 4C), Conv1D
    assert theirs.shape == (32, 128)
    assert torch.equal(ours.t(), theirs)


def test_from_a_state_dict_needs_the_config():
    model = tiny_gpt()
    state = to_hf(model).state_dict()
    with pytest.raises(QkvError, match="config"):
        from_hf(state)
    back = from_hf(state, config=model.config)
    assert torch.equal(back.transformer.wpe.weight, model.transformer.wpe.weight)


def test_a_base_model_state_dict_without_prefix_loads():
    model = tiny_gpt()
    state = to_hf(model).transformer.state_dict()  # keys as in GPT-2's own files: "h.0..."
    back = from_hf(state, config=model.config)
    assert torch.equal(back.lm_head.weight, model.lm_head.weight)
    assert torch.equal(
        back.transformer.h[1].attn.c_proj.weight, model.transformer.h[1].attn.c_proj.weight
    )


def test_mask_buffers_of_old_checkpoints_are_ignored():
    state = dict(to_hf(tiny_gpt()).state_dict())
    state["transformer.h.0.attn.bias"] = torch.ones(1, 1, 32, 32)
    assert "transformer.h.0.attn.bias" not in hf_to_qkv_state(state)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"positional": "rotary"}, "positional"),
        ({"positional": "sinusoidal"}, "positional"),
        ({"norm": "post"}, "norm"),
        ({"norm_type": "rmsnorm"}, "norm_type"),
        ({"bias": False}, "bias"),
        ({"activation": "swiglu"}, "activation"),
        ({"n_kv_head": 1}, "n_kv_head"),
    ],
)
def test_configs_gpt2_cannot_represent_are_refused(override, field):
    model = GPT(tiny_config(**override))
    with pytest.raises(QkvError, match=field):
        to_hf(model)


def test_nearest_gpt2_changes_only_what_gpt2_cannot_represent():
    config = tiny_config(positional="rotary", activation="swiglu", n_kv_head=1, dropout=0.1)
    nearest, changes = nearest_gpt2(config)
    assert changes == [
        "positional=learned (was rotary)",
        "n_kv_head=None (was 1)",
        "activation=gelu (was swiglu)",
    ]
    assert (nearest.n_layer, nearest.dropout, nearest.block_size) == (2, 0.1, 32)
    assert nearest_gpt2(nearest) == (nearest, [])
    to_hf(GPT(nearest))  # representable


def test_hf_config_is_gpt2_with_dropout_and_eps():
    config = hf_config(tiny_config(dropout=0.1, activation="relu"))
    assert config.activation_function == "relu"
    assert (config.resid_pdrop, config.embd_pdrop, config.attn_pdrop) == (0.1, 0.1, 0.1)
    assert config.layer_norm_epsilon == 1e-5
    assert config.n_positions == 32
    assert hf_config(tiny_config()).activation_function == "gelu_new"


def test_an_unknown_hugging_face_activation_is_refused():
    hf = to_hf(tiny_gpt())
    hf.config.activation_function = "gelu"  # the exact erf GELU: not qkv's tanh approximation
    with pytest.raises(QkvError, match="activation_function"):
        from_hf(hf)


def test_importing_qkv_does_not_import_transformers():
    code = (
        "import sys, qkv, qkv.interop, qkv.bench, qkv.cli; sys.exit('transformers' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
