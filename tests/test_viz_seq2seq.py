"""qkv attention on an encoder-decoder: the three kinds of maps, the files, the mistakes.

A tiny random Seq2SeqTransformer, never trained: the maps only have to be its own weights.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from qkv.checkpoint import save_checkpoint
from qkv.config.seq2seq import BOS_ID, EOS_ID, Seq2SeqConfig, Seq2SeqRunConfig
from qkv.decoding import greedy_decode
from qkv.models.seq2seq import Seq2SeqTransformer
from qkv.nn.attention import causal_mask
from qkv.tokenizer import Seq2SeqTokenizer
from qkv.viz.maps import checkpoint_attention_maps, seq2seq_attention_maps

TEXT = "26 nov 2026"
MAX_LEN = 20


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tokenizer = Seq2SeqTokenizer.train(["26 nov 2026", "2026-11-26 jeudi"])
    config = Seq2SeqConfig(
        vocab_size=tokenizer.vocab_size, max_len=MAX_LEN, n_encoder_layer=2,
        n_decoder_layer=2, n_embd=16, n_head=2, d_ff=32,
    )  # fmt: skip
    model = Seq2SeqTransformer(config).eval()
    return model, tokenizer, config


@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    model, tokenizer, config = tiny
    directory = tmp_path_factory.mktemp("seq2seq") / "ckpt"
    save_checkpoint(directory, model, Seq2SeqRunConfig(model=config), tokenizer)
    return directory


def reference(model, tokenizer, text):
    """What the maps must hold: the source, the greedy output, and the forward's weights."""
    src = torch.tensor([tokenizer.encode(text) + [EOS_ID]])
    output = greedy_decode(model, src, max_len=MAX_LEN - 1)[0]
    with torch.no_grad():
        _, weights = model(src, torch.tensor([[BOS_ID, *output]]), return_weights=True)
    stacked = {k: torch.stack([w[0] for w in v]).numpy() for k, v in weights.items()}
    return src[0].tolist(), output, stacked


def test_the_three_maps_are_the_models_own_weights(tiny):
    model, tokenizer, _ = tiny
    encoder, decoder, cross = seq2seq_attention_maps(model, tokenizer, TEXT)
    _, output, expected = reference(model, tokenizer, TEXT)
    assert [m.name for m in (encoder, decoder, cross)] == [
        "encoder self-attention", "decoder self-attention", "cross-attention",
    ]  # fmt: skip
    for attention, kind in [(encoder, "encoder_self"), (decoder, "decoder_self"), (cross, "cross")]:
        np.testing.assert_allclose(attention.weights, expected[kind], rtol=0, atol=1e-7)
        np.testing.assert_allclose(attention.weights.sum(-1), 1.0, atol=1e-5)
    s, t = len(TEXT) + 1, len(output) + 1  # the source ends in </s>; the decoder reads <s> first
    assert encoder.weights.shape == (2, 2, s, s)
    assert decoder.weights.shape == (2, 2, t, t)
    assert cross.weights.shape == (2, 2, t, s)


def test_decoder_self_attention_never_reads_ahead(tiny):
    model, tokenizer, _ = tiny
    decoder = seq2seq_attention_maps(model, tokenizer, TEXT)[1]
    future = ~causal_mask(len(decoder.queries)).numpy()
    assert future.any() and (decoder.weights[..., future] == 0).all()


def test_tokens_are_labelled_source_and_read_then_predicted(tiny):
    model, tokenizer, _ = tiny
    encoder, decoder, cross = seq2seq_attention_maps(model, tokenizer, TEXT)
    _, output, _ = reference(model, tokenizer, TEXT)
    assert encoder.queries == encoder.keys == cross.keys == [*TEXT, "</s>"]
    read = ["<s>", *(tokenizer.decode([i]) for i in output)]
    assert decoder.keys == read
    assert decoder.queries == cross.queries
    # row i has read read[i] and predicts the next output token (greedy's own choice)
    rows = [row.split("\u2192") for row in decoder.queries]
    assert [r for r, _ in rows] == read
    assert [p for _, p in rows[:-1]] == read[1:]


def test_png_and_html_are_written_for_a_seq2seq_checkpoint(cli, tiny, checkpoint, tmp_path):
    maps = checkpoint_attention_maps(checkpoint, TEXT)
    png, html = tmp_path / "attn.png", tmp_path / "attn.html"
    for out in (png, html):
        result = cli("attention", "--checkpoint", checkpoint, "--text", TEXT, "--out", out)
        assert result.code == 0, result.err
        t = len(maps[1].queries)
        assert result.out.strip() == (
            f"wrote {out}: encoder self-attention 2 layers x 2 heads x 12 x 12, "
            f"decoder self-attention 2 layers x 2 heads x {t} x {t}, "
            f"cross-attention 2 layers x 2 heads x {t} x 12"
        )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html.read_text(encoding="utf-8")
    assert "http:" not in page and "https:" not in page
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", page)
    data = re.search(r'<script id="qkv-data" type="application/json">(.*?)</script>', page, re.S)
    shown = json.loads(data.group(1))["maps"]
    for attention, page_map in zip(maps, shown, strict=True):
        assert (page_map["name"], page_map["queries"]) == (attention.name, attention.queries)
        np.testing.assert_allclose(np.array(page_map["weights"]), attention.weights, atol=1e-5)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "--text is empty: give the text whose attention to draw"),
        ("26 nov~", "characters not in the model's vocabulary: '~'"),
        ("26 nov 2026 " * 2, "--text is 24 tokens (+1 for </s>), longer than the model's "
         "max_len of 20; shorten it"),
    ],
    ids=["empty", "unknown-characters", "too-long"],
)  # fmt: skip
def test_bad_text_is_a_one_line_error(cli, checkpoint, tmp_path, text, message):
    out = tmp_path / "attn.png"
    result = cli("attention", "--checkpoint", checkpoint, "--text", text, "--out", out)
    assert result.code == 2
    assert result.err.strip().splitlines() == [f"qkv: error: {message}"]
    assert not out.exists()
