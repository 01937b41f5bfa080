"""qkv.for_decoding: wide float32 layers stored transposed compute what they computed, a tied
head stays tied, and sample/translate/quantize work through it."""

import copy
from pathlib import Path

import torch
from torch import nn

import qkv
from qkv.config import GPTConfig
from qkv.config.choices import EOS_ID
from qkv.data.pairs import pad
from qkv.decoding import beam_search, greedy_decode
from qkv.decoding.layout import TransposedEmbedding, TransposedLinear, for_decoding
from qkv.decoding.quantize import FbgemmInt8Linear, quantize, weight_bytes
from qkv.models.gpt import GPT

LEGACY = Path(__file__).parent / "data" / "legacy"
CONFIG = GPTConfig(vocab_size=80, block_size=32, n_layer=2, n_embd=32, n_head=4)


def gpt(**changes) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**CONFIG.__dict__, **changes})).eval()


def layer_names(model: nn.Module, kind: type) -> list[str]:
    return [name for name, m in model.named_modules() if type(m) is kind]


def test_transposed_linear_is_its_equation():
    torch.manual_seed(0)
    linear = nn.Linear(12, 40)
    x = torch.randn(3, 5, 12)
    expected = x.double() @ linear.weight.double().T + linear.bias.double()  # y = x W^T + b
    layer = TransposedLinear(nn.Parameter(linear.weight.detach().t().contiguous()), linear.bias)
    assert layer.weight_t.is_contiguous() and layer.weight_t.shape == (12, 40)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
    no_bias = TransposedLinear(layer.weight_t, None)
    torch.testing.assert_close(no_bias(x).double(), expected - linear.bias.double())


def test_only_wide_layers_are_transposed():
    model = gpt()
    wide = [n for n, m in model.named_modules() if type(m) is nn.Linear and m.out_features > 32]
    kept = [n for n, m in model.named_modules() if type(m) is nn.Linear and m.out_features <= 32]
    for_decoding(model)
    assert layer_names(model, TransposedLinear) == wide  # c_attn (32 -> 96), c_fc, the head
    assert layer_names(model, nn.Linear) == kept  # c_proj: 32 -> 32 and 128 -> 32
    assert "lm_head" in wide and "transformer.h.0.mlp.c_fc" in wide


def test_the_tied_head_stays_tied_and_nothing_is_stored_twice():
    model = gpt()
    before = sum(p.numel() for p in model.parameters())
    for_decoding(model)
    assert isinstance(model.transformer.wte, TransposedEmbedding)
    assert model.transformer.wte.table_t is model.lm_head.weight_t
    assert sum(p.numel() for p in model.parameters()) == before
    untied = for_decoding(gpt(tie_embeddings=False))
    assert type(untied.transformer.wte) is nn.Embedding


def test_logits_and_greedy_tokens_are_unchanged():
    model = gpt()
    laid_out = for_decoding(copy.deepcopy(model))
    prompt = torch.randint(0, 80, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(laid_out(prompt)[0], model(prompt)[0], rtol=1e-5, atol=1e-5)
    # past block_size: the window slides and the cache is refilled
    assert torch.equal(laid_out.generate(prompt, 40, 0), model.generate(prompt, 40, 0))
    assert weight_bytes(laid_out) == weight_bytes(model)


def test_seq2seq_translates_as_before():
    model, tokenizer = qkv.load(LEGACY / "s2s")
    laid_out = for_decoding(copy.deepcopy(model))
    assert layer_names(laid_out, TransposedLinear)  # something was laid out
    assert type(laid_out.decoder[0].cross_attn.c_attn) is nn.Linear  # read as a tensor
    texts = ["abcde", "hello", "xyz", "qkvqkv", "reverse"]
    src = pad([tokenizer.encode(t) + [EOS_ID] for t in texts], torch.device("cpu"))  # (B, S)
    for decode in (lambda m: beam_search(m, src, beam_size=4), lambda m: greedy_decode(m, src)):
        assert decode(laid_out) == decode(model)


def test_quantize_after_for_decoding_quantizes_every_layer_as_before():
    model = gpt()
    direct = quantize(copy.deepcopy(model), "int8")
    through = quantize(for_decoding(copy.deepcopy(model)), "int8")
    assert layer_names(through, TransposedLinear) == []
    assert layer_names(through, FbgemmInt8Linear) == layer_names(direct, FbgemmInt8Linear)
    prompt = torch.randint(0, 80, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(through(prompt)[0], direct(prompt)[0])


def test_sample_lays_out_float32_models_and_prints_what_the_plain_model_does(
    cli, trained_run, monkeypatch
):
    import qkv.decoding.layout

    seen = []

    def spy(model):
        seen.append(model)
        return for_decoding(model)

    args = ("sample", "--checkpoint", trained_run.run_dir, "--max-new-tokens", "60")
    monkeypatch.setattr(qkv.decoding.layout, "for_decoding", lambda model: model)
    plain = cli(*args)
    monkeypatch.setattr(qkv.decoding.layout, "for_decoding", spy)
    laid_out = cli(*args)
    assert plain.code == laid_out.code == 0, laid_out.err
    assert len(seen) == 1 and layer_names(seen[0], TransposedLinear)
    assert laid_out.out == plain.out and len(plain.out) > 40
