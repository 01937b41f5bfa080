"""The GPT: causality, initial loss, weight tying, positions, generation."""

import math

import pytest
import torch

from qkv.config import GPTConfig
from qkv.errors import QkvError
from qkv.models.gpt import GPT

V = 40


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    options = dict(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return GPT(GPTConfig(**{**options, **overrides})).eval()


@pytest.mark.parametrize(
    "variant", [{}, {"norm": "post"}, {"positional": "sinusoidal"}, {"positional": "learned"}]
)
def test_changing_later_tokens_leaves_earlier_logits_unchanged(variant):
    model = tiny(**variant)
    idx = torch.randint(0, V, (2, 16))
    changed = idx.clone()
    t = 6
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % V
    logits, _ = model(idx)
    logits_changed, _ = model(changed)
    torch.testing.assert_close(logits[:, : t + 1], logits_changed[:, : t + 1])
    assert not torch.allclose(logits[:, t + 1 :], logits_changed[:, t + 1 :])


def test_loss_at_initialisation_is_close_to_log_vocab():
    model = tiny()
    idx = torch.randint(0, V, (8, 16))
    targets = torch.randint(0, V, (8, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(V)) < 0.1


def test_the_gpt_overfits_one_small_batch():
    model = tiny().train()
    idx = torch.randint(0, V, (4, 16), generator=torch.Generator().manual_seed(1))
    x, y = idx[:, :-1], idx[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    _, first = model(x, y)
    for _ in range(150):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 * first.item()


def test_lm_head_is_tied_to_the_token_embedding():
    model = tiny()
    assert model.lm_head.weight is model.transformer.wte.weight


def test_parameter_names_follow_gpt2():
    names = set(tiny(positional="learned", activation="gelu").state_dict())
    for name in [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_proj.bias",
        "transformer.h.1.mlp.c_fc.weight",
        "transformer.h.1.mlp.c_proj.weight",
        "transformer.ln_f.bias",
    ]:
        assert name in names


def test_gpt2_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, n_layer=8, n_head=4, n_embd=256, block_size=64))
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.001
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.001
    assert torch.all(model.transformer.h[0].mlp.c_fc.bias == 0)


def test_config_is_validated():
    with pytest.raises(QkvError, match="divisible"):
        GPTConfig(vocab_size=V, n_embd=30, n_head=4)
    with pytest.raises(QkvError, match="positive"):
        GPTConfig(vocab_size=V, n_layer=0)
    with pytest.raises(QkvError, match="vocab_size"):
        GPT(GPTConfig())


def test_sequence_longer_than_the_context_is_refused_by_forward():
    with pytest.raises(QkvError, match="block_size"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_generate_crops_long_prompts_to_the_context():
    model = tiny()
    prompt = torch.randint(0, V, (1, 40))
    out = model.generate(prompt, 5, temperature=0)
    assert out.shape == (1, 45)
    torch.testing.assert_close(out[:, :40], prompt)
    # the first new token depends only on the last block_size tokens of the prompt
    cropped = model.generate(prompt[:, -16:], 1, temperature=0)
    assert out[0, 40] == cropped[0, 16]


def test_temperature_zero_is_greedy():
    model = tiny()
    prompt = torch.randint(0, V, (2, 5))
    out = model.generate(prompt, 8, temperature=0)
    idx = prompt
    for _ in range(8):
        logits, _ = model(idx[:, -16:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, idx)


def test_seeded_generation_is_repeatable():
    model = tiny()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    a = model.generate(prompt, 20, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 20, generator=torch.Generator().manual_seed(3))
    c = model.generate(prompt, 20, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
