"""`qkv attention --explain`: one head's steps, recomputed by hand from the weights.

The hand computation here uses only the weight tensors, LayerNorm and the formulas of the
paper (section 3.2): q = x W_Q^T + b_Q (rotated by position for rotary), scores q . k,
scaled by 1/sqrt(D), masked, softmax, o = a v, share = o W_O^T. It never calls the
attention modules whose steps it checks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qkv.checkpoint import save_checkpoint
from qkv.config import GPTConfig, RunConfig, Seq2SeqConfig
from qkv.config.seq2seq import BOS_ID, EOS_ID, Seq2SeqRunConfig
from qkv.decoding import greedy_decode
from qkv.models.gpt import GPT
from qkv.models.seq2seq import Seq2SeqTransformer
from qkv.tokenizer import CharTokenizer, Seq2SeqTokenizer
from qkv.viz.explain import explain_maps
from qkv.viz.maps import gpt_attention_maps, seq2seq_attention_maps

TEXT = "to be or"
ALPHABET = "abcdefghijklmnopqrstuvwxyz ,"


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def _enlarge(model: torch.nn.Module) -> torch.nn.Module:
    """Matrices and biases drawn large, so that scores spread and a wrong step shows."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 or name.endswith("bias"):
                param.normal_(0.0, 0.4)
    return model.eval()


def gpt(**overrides) -> tuple[GPT, CharTokenizer]:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.from_text(ALPHABET)
    options = dict(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=4, n_embd=32)
    return _enlarge(GPT(GPTConfig(**{**options, **overrides}))), tokenizer


def rotate(x: torch.Tensor) -> torch.Tensor:
    """RoPE by hand (Su et al., 2021): pair (x_2i, x_2i+1) at position m turned by m theta_i."""
    t, d = x.shape
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (D/2,)
    angle = torch.arange(t, dtype=torch.float64)[:, None] * theta  # (T, D/2)
    even, odd = x[:, 0::2], x[:, 1::2]
    out = torch.empty_like(x)
    out[:, 0::2] = even * angle.cos() - odd * angle.sin()
    out[:, 1::2] = even * angle.sin() + odd * angle.cos()
    return out


def by_hand(attn, x, z, head: int, causal: bool, rotary: bool) -> dict[str, torch.Tensor]:
    """Every step of head `head` from the module's weight tensors alone (float64)."""
    c, d = x.size(-1), attn.head_size
    w, b = attn.c_attn.weight.double(), attn.c_attn.bias.double()
    g = head // (attn.n_head // attn.n_kv_head)
    q_rows = slice(head * d, (head + 1) * d)
    k_rows = slice(c + g * d, c + (g + 1) * d)
    v_rows = slice(c + attn.kv_width + g * d, c + attn.kv_width + (g + 1) * d)
    q = x @ w[q_rows].T + b[q_rows]
    k = z @ w[k_rows].T + b[k_rows]
    v = z @ w[v_rows].T + b[v_rows]
    if rotary:
        q, k = rotate(q), rotate(k)
    scores = q @ k.T
    scaled = scores / math.sqrt(d)
    t_q, t_k = scores.shape
    mask = torch.ones(t_q, t_k, dtype=torch.bool)
    if causal:
        mask = torch.arange(t_k)[None, :] <= torch.arange(t_q)[:, None]
    weights = torch.softmax(scaled.masked_fill(~mask, float("-inf")), dim=-1)
    out = weights @ v
    w_o = attn.c_proj.weight.double()[:, head * d : (head + 1) * d]
    return dict(q=q, k=k, v=v, scores=scores, scaled=scaled, mask=mask, weights=weights,
                out=out, share=out @ w_o.T)  # fmt: skip


def assert_steps_equal(steps, expected: dict[str, torch.Tensor], x, z) -> None:
    np.testing.assert_allclose(steps.x, x.numpy(), atol=1e-5)
    np.testing.assert_allclose(steps.z, z.numpy(), atol=1e-5)
    np.testing.assert_array_equal(steps.mask, expected["mask"].numpy())
    for name in ("q", "k", "v", "scores", "scaled", "weights", "out", "share"):
        np.testing.assert_allclose(
            getattr(steps, name), expected[name].numpy(), atol=1e-4, err_msg=name
        )
    np.testing.assert_allclose(steps.weights.sum(-1), 1.0, atol=1e-6)


def ln(module, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm by hand: (x - mean) / sqrt(var + eps) * g + b."""
    x = x.double()
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + module.eps) * module.weight.double() + module.bias.double()


@pytest.mark.parametrize(
    "overrides",
    [dict(positional="learned"), dict(positional="rotary", n_kv_head=2)],
    ids=["learned", "rotary-gqa"],
)
def test_gpt_steps_equal_a_hand_computation_in_every_layer_and_head(overrides):
    model, tokenizer = gpt(**overrides)
    maps, steps = explain_maps(model, gpt_attention_maps, tokenizer, TEXT)
    ids = torch.tensor(tokenizer.encode(TEXT))
    h = model.transformer.wte.weight[ids].double()  # (T, C)
    if overrides["positional"] == "learned":
        h = h + model.transformer.wpe.weight[: len(ids)].double()
    rotary = overrides["positional"] == "rotary"
    for layer, block in enumerate(model.transformer.h):
        x = ln(block.ln_1, h)
        output = torch.zeros_like(x) + block.attn.c_proj.bias.double()
        for head in range(model.config.n_head):
            expected = by_hand(block.attn, x, x, head, causal=True, rotary=rotary)
            got = steps["self-attention"][layer][head]
            assert (got.layer, got.head, got.keys) == (layer, head, list(TEXT))
            assert_steps_equal(got, expected, x, x)
            np.testing.assert_allclose(got.weights, maps[0].weights[layer, head], atol=1e-6)
            output = output + expected["share"]
        np.testing.assert_allclose(got.output, output.numpy(), atol=1e-4)  # shares + b_O
        with torch.no_grad():  # on to the next layer through the model's own block
            h = block(h.float()[None], positions=torch.arange(len(ids)))[0].double()


def seq2seq() -> tuple[Seq2SeqTransformer, Seq2SeqTokenizer]:
    torch.manual_seed(0)
    tokenizer = Seq2SeqTokenizer.train(["26 nov 2026", "2026-11-26"])
    config = Seq2SeqConfig(
        vocab_size=tokenizer.vocab_size, max_len=20, n_encoder_layer=1, n_decoder_layer=1,
        n_embd=16, n_head=2, d_ff=32, positional="sinusoidal", norm="post",
    )  # fmt: skip
    return Seq2SeqTransformer(config).eval(), tokenizer


def test_seq2seq_encoder_decoder_and_cross_attention_steps_equal_a_hand_computation():
    model, tokenizer = seq2seq()
    text = "26 nov"
    _, steps = explain_maps(model, seq2seq_attention_maps, tokenizer, text)
    src = torch.tensor([tokenizer.encode(text) + [EOS_ID]])
    output = greedy_decode(model, src, max_len=19)[0]
    tgt = torch.tensor([[BOS_ID, *output]])
    with torch.no_grad():
        memory, _ = model.encode(src)
        x_src, _ = model._embed(model.src_embed, src)
        y, positions = model._embed(model.tgt_embed, tgt)
        block = model.decoder[0]
        self_out = block.attn(y, causal=True, positions=positions)
        y_cross = block.ln_1(y + self_out)  # post-norm: the cross sub-layer reads LN(y + SA(y))
    enc, dec = model.encoder[0].attn, block.attn
    x_src, y, y_cross, memory = x_src[0].double(), y[0].double(), y_cross[0].double(), memory[0]
    for head in range(2):
        got = steps["encoder self-attention"][0][head]
        assert_steps_equal(got, by_hand(enc, x_src, x_src, head, False, False), x_src, x_src)
        got = steps["decoder self-attention"][0][head]
        assert_steps_equal(got, by_hand(dec, y, y, head, True, False), y, y)
        got = steps["cross-attention"][0][head]
        expected = by_hand(block.cross_attn, y_cross, memory.double(), head, False, False)
        assert_steps_equal(got, expected, y_cross, memory.double())


# -- the command -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt_checkpoint(tmp_path_factory):
    model, tokenizer = gpt(positional="rotary")
    directory = tmp_path_factory.mktemp("explain") / "gpt"
    save_checkpoint(directory, model, RunConfig(model=model.config), tokenizer)
    return directory, model, tokenizer


def section(lines: list[str], number: str) -> list[list[str]]:
    """The rows of numbered section `number` (e.g. "5."), each split into cells."""
    start = next(n for n, line in enumerate(lines) if line.startswith(number))
    rows = []
    for line in lines[start + 2 :]:  # past the title and the header
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def test_explain_prints_the_models_numbers_for_the_chosen_head(cli, gpt_checkpoint):
    directory, model, tokenizer = gpt_checkpoint
    result = cli("attention", "--checkpoint", directory, "--text", TEXT, "--layer", "1",
                 "--head", "2", "--explain")  # fmt: skip
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("self-attention, layer 1, head 2: 8 queries x 8 keys, C = 32")
    x = model.transformer.wte.weight[torch.tensor(tokenizer.encode(TEXT))].double()
    with torch.no_grad():
        x = model.transformer.h[0](x.float()[None], positions=torch.arange(8))[0]
    block = model.transformer.h[1]
    expected = by_hand(block.attn, ln(block.ln_1, x), ln(block.ln_1, x), 2, True, True)
    t = len(TEXT)
    for number, key in (("4.", "scores"), ("5.", "scaled"), ("7.", "weights")):
        rows = section(lines, number)
        assert len(rows) == t
        for i, row in enumerate(rows):
            cells = row[-(t + 1) : -1] if key == "weights" else row[-t:]
            for j, cell in enumerate(cells):
                if key != "weights" or j <= i:
                    assert float(cell) == pytest.approx(expected[key][i, j].item(), abs=6e-4)
            if key == "weights":
                assert row[-1] == "1.000"
    masked = section(lines, "6.")
    assert [row[-t:].count("-inf") for row in masked] == [t - 1 - i for i in range(t)]
    assert "5. scaled: e_ij / sqrt(D) = e_ij / 2.828" in result.out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer", "2"], "--layer 2: the self-attention has 2 layers (0-1)"),
        (["--head", "4"], "--head 4: the self-attention has 4 heads (0-3)"),
        (["--map", "cross"], "--map cross: this model has self-attention (--map self)"),
        (["--text", "to be or not to be"], "--explain prints tables of tokens x tokens: --text "
         "is 18 tokens, give at most 16"),
    ],
    ids=["layer", "head", "map", "too-long"],
)  # fmt: skip
def test_bad_explain_arguments_are_one_line_errors(cli, gpt_checkpoint, args, message):
    directory, _, _ = gpt_checkpoint
    argv = ["attention", "--checkpoint", directory, "--text", TEXT, "--explain", *args]
    result = cli(*argv)
    assert result.code == 2
    assert result.err.strip().splitlines() == [f"qkv: error: {message}"]
    assert result.out == ""


def test_explain_on_a_seq2seq_checkpoint_shows_each_kind_of_attention(cli, tmp_path):
    model, tokenizer = seq2seq()
    directory = tmp_path / "s2s"
    save_checkpoint(directory, model, Seq2SeqRunConfig(model=model.config), tokenizer)
    heads = {}
    for part in ("encoder", "decoder", "cross"):
        result = cli("attention", "--checkpoint", directory, "--text", "26 nov", "--map", part,
                     "--head", "1", "--explain")  # fmt: skip
        assert result.code == 0, result.err
        heads[part] = result.out.splitlines()[0]
    assert heads["encoder"].startswith("encoder self-attention, layer 0, head 1: 7 queries x 7")
    assert heads["decoder"].startswith("decoder self-attention, layer 0, head 1")
    assert heads["cross"].startswith("cross-attention, layer 0, head 1")


def test_the_explorer_page_holds_every_heads_q_k_v_for_its_step_view(cli, tmp_path):
    import json
    import re

    from qkv.viz.explain import checkpoint_attention_steps

    model, tokenizer = seq2seq()
    directory = tmp_path / "s2s"
    save_checkpoint(directory, model, Seq2SeqRunConfig(model=model.config), tokenizer)
    page = tmp_path / "page.html"
    assert cli("attention", "--checkpoint", directory, "--text", "26 nov", "--out", page).code == 0
    html = page.read_text(encoding="utf-8")
    data = re.search(r'<script id="qkv-data" type="application/json">(.*?)</script>', html, re.S)
    shown = json.loads(data.group(1))["maps"]
    _, steps = checkpoint_attention_steps(directory, "26 nov")
    assert [m["name"] for m in shown] == list(steps)
    for page_map in shown:
        layers = steps[page_map["name"]]
        assert page_map["head_size"] == 8
        assert page_map["mask"] == layers[0][0].mask.astype(int).tolist()
        for layer, heads in enumerate(layers):
            for head, expected in enumerate(heads):
                for name in "qkv":
                    got = np.array(page_map["qkv"][layer][head][name])
                    np.testing.assert_allclose(got, getattr(expected, name), atol=1e-5)
