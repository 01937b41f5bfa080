"""Property tests with hypothesis: arbitrary text, arbitrary overrides, arbitrary masks.

Every test is derandomized (the same examples on every run) and kept to a modest number of
examples, so the suite stays fast and deterministic.
"""

from __future__ import annotations

import dataclasses

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qkv.config import RunConfig
from qkv.errors import QkvError
from qkv.nn.attention import causal_mask, scaled_dot_product_attention
from qkv.tokenizer import CharTokenizer

FUZZ = settings(derandomize=True, deadline=None, max_examples=150)


# -- the character tokenizer ----------------------------------------------------------------


@FUZZ
@given(st.text(min_size=1))
def test_char_tokenizer_round_trips_any_text_it_was_built_from(text):
    tokenizer = CharTokenizer.from_text(text)
    ids = tokenizer.encode(text)
    assert len(ids) == len(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text


# -- the override parser --------------------------------------------------------------------


def _every_key() -> list[str]:
    tree = RunConfig().to_dict()
    dotted = [f"{section}.{key}" for section, keys in tree.items() for key in keys]
    return dotted + [key for keys in tree.values() for key in keys]


_VALUES = st.one_of(
    st.text(max_size=20),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["true", "false", "'quoted'", '"x"', "[1, 2]", "{a = 1}", "1979-05-27"]),
)
_NUMBERS = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "+nan", "1e400", "-1", "0", "0.5", "1_000"]),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


def _numeric_keys() -> list[str]:
    tree = RunConfig().to_dict()
    return [
        f"{section}.{key}"
        for section, keys in tree.items()
        if isinstance(keys, dict)  # not the "kind"
        for key, value in keys.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]


def _pairs(keys: list[str], values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(keys), values).map(lambda kv: f"{kv[0]}={kv[1]}")


_OVERRIDES = st.one_of(
    st.text(max_size=40),
    _pairs(_every_key(), _VALUES),
    _pairs(_numeric_keys(), _NUMBERS),  # where NaN, inf and negatives would do harm
)


@FUZZ
@given(st.lists(_OVERRIDES, max_size=3))
def test_overrides_give_a_valid_config_or_a_qkv_error(overrides):
    try:
        config = RunConfig().with_overrides(overrides)
    except QkvError as exc:
        assert str(exc) and "\n" not in str(exc).strip()
        return
    assert isinstance(config, RunConfig)
    assert RunConfig.from_dict(config.to_dict()) == config  # it saves and loads back
    for section in (config.model, config.data, config.train):
        for field in dataclasses.fields(section):
            value = getattr(section, field.name)
            if isinstance(value, float):
                assert value == value and abs(value) != float("inf"), (field.name, value)


# -- attention under random masks -----------------------------------------------------------


@st.composite
def attention_inputs(draw):
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    t_q, t_k, d = draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 8))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    q, k, v = (torch.randn(b, h, t, d, generator=g) * 3 for t in (t_q, t_k, t_k))
    mask_shape = draw(st.sampled_from([(t_q, t_k), (b, 1, t_q, t_k), (b, h, t_q, t_k)]))
    mask = torch.rand(mask_shape, generator=g) < draw(st.floats(0.0, 1.0))
    return q, k, v, mask, draw(st.booleans())


@FUZZ
@given(attention_inputs())
def test_attention_never_gives_nan_and_visible_rows_sum_to_one(inputs):
    q, k, v, mask, causal = inputs
    fused = scaled_dot_product_attention(q, k, v, mask, causal=causal)
    out, weights = scaled_dot_product_attention(q, k, v, mask, causal=causal, return_weights=True)
    assert not torch.isnan(fused).any() and not torch.isnan(out).any()
    assert not torch.isnan(weights).any()
    visible = mask & causal_mask(q.size(-2), k.size(-2)) if causal else mask
    visible = visible.expand_as(weights)
    sums = weights.sum(-1)
    seen = visible.any(-1)
    torch.testing.assert_close(sums[seen], torch.ones_like(sums[seen]))
    assert torch.all(sums[~seen] == 0)
    assert torch.all(weights[~visible] == 0)
    torch.testing.assert_close(fused, out, atol=1e-5, rtol=1e-4)
