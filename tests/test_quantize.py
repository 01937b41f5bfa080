"""qkv.quantize: what each mode stores, that decoding works unchanged, and what it costs in
quality; batched samples; --quantize on the command line."""

import copy
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import qkv
from qkv.checkpoint import open_checkpoint
from qkv.config import GPTConfig
from qkv.config.choices import EOS_ID
from qkv.data.pairs import pad
from qkv.decoding import beam_search, greedy_decode
from qkv.decoding.quantize import (
    DynamicInt8Linear,
    FbgemmInt8Linear,
    Int8Linear,
    _integer_layer,
    quantize,
    weight_bytes,
)
from qkv.decoding.sampling import Sampling, stream_samples
from qkv.evaluate import EvalOptions, evaluate_language_model
from qkv.models.gpt import GPT

LEGACY = Path(__file__).parent / "data" / "legacy"
CONFIG = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_embd=64, n_head=4)


def gpt(**changes) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**CONFIG.__dict__, **changes})).eval()


def linears(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# -- what each mode stores ---------------------------------------------------------------


def test_int8_puts_every_linear_layer_in_int8_and_quarters_the_bytes():
    model = gpt()
    names, before = linears(model), weight_bytes(model)
    quantize(model, "int8")
    assert linears(model) == []
    assert [n for n, m in model.named_modules() if isinstance(m, FbgemmInt8Linear)] == names
    assert model.transformer.wte.weight.dtype == torch.float32  # read one row per token
    assert model.lm_head.dequantized()[0].shape == (64, 64)  # the tied head got its own copy
    assert 3.7 < before / weight_bytes(model) <= 4.0  # 1 byte a weight, 4 a row's scale


def test_without_the_integer_kernel_int8_runs_bfloat16_activations(monkeypatch):
    monkeypatch.setattr("qkv.decoding.quantize._integer_layer", lambda model: None)
    model = gpt()
    names, before = linears(model), weight_bytes(model)
    quantize(model, "int8")
    assert [n for n, m in model.named_modules() if isinstance(m, Int8Linear)] == names
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    assert model.lm_head.qdata.dtype == torch.int8
    assert 3.9 < before / weight_bytes(model) <= 4.0  # 1 byte a weight, 2 a row's scale


def test_fbgemms_integer_kernel_runs_on_this_cpu():
    assert _integer_layer(gpt()) is FbgemmInt8Linear  # else int8 silently runs slower


def test_without_fbgemms_op_int8_runs_the_quantized_engine(monkeypatch):
    monkeypatch.delattr(torch, "fbgemm_linear_int8_weight_fp32_activation")
    assert _integer_layer(gpt()) is DynamicInt8Linear


def test_bf16_halves_the_bytes_and_keeps_rotary_complex():
    model = gpt(positional="rotary")
    before = weight_bytes(model)
    quantize(model, "bf16")
    assert weight_bytes(model) * 2 == before
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    rotations = model.transformer.h[0].attn.rotary.rotations
    assert rotations.is_complex()  # Module.to(bfloat16) would have dropped its imaginary part


@pytest.mark.parametrize(("mode", "tolerance"), [("bf16", 0.02), ("int8", 0.03), ("int4", 0.3)])
def test_logits_stay_close_to_float32(mode, tolerance):
    model = gpt()
    ids = torch.randint(0, CONFIG.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    expected, _ = model(ids)
    logits, _ = quantize(copy.deepcopy(model), mode)(ids)
    assert logits.dtype == (torch.float32 if mode == "int8" else torch.bfloat16)
    error = relative_error(logits, expected)
    assert 0 < error < tolerance, error


def test_int4_pads_a_head_its_kernel_cannot_hold_and_crops_the_logits():
    model = gpt(vocab_size=65)  # 65 outputs: not a multiple of the kernel's 16
    expected, _ = model(torch.zeros((1, 3), dtype=torch.long))
    quantize(model, "int4")
    assert model.lm_head.layer.out_features == 80
    assert type(model.lm_head.layer.weight).__name__ == "Int4OpaqueTensor"
    assert type(model.transformer.h[0].mlp.c_fc.weight).__name__ == "Int4OpaqueTensor"
    logits, _ = model(torch.zeros((1, 3), dtype=torch.long))
    assert logits.shape == expected.shape  # (1, 3, 65)
    assert relative_error(logits, expected) < 0.3


def test_an_unknown_mode_is_one_line():
    with pytest.raises(qkv.QkvError, match="unknown quantization 'int3'"):
        quantize(gpt(), "int3")


def test_without_torchao_the_model_is_left_alone(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    model = gpt()
    with pytest.raises(qkv.QkvError, match=re.escape('pip install "qkv[quantize]"')):
        quantize(model, "int8")
    assert model.lm_head.weight.dtype == torch.float32


def test_qkv_quantize_is_a_public_name():
    assert qkv.quantize is quantize


# -- decoding works unchanged ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bf16", "int8", "int4"])
def test_cached_and_uncached_greedy_decoding_agree(mode):
    model = quantize(gpt(block_size=16), mode)
    prompt = torch.randint(0, CONFIG.vocab_size, (2, 5), generator=torch.Generator().manual_seed(2))
    cached = model.generate(prompt, 20, temperature=0)  # past block_size: the window slides
    uncached = model.generate(prompt, 20, temperature=0, use_cache=False)
    assert cached.shape == (2, 25)
    assert torch.equal(cached, uncached)


def test_int8_beam_search_translates_as_float32_does():
    model, tokenizer = qkv.load(LEGACY / "s2s")
    quantized = quantize(copy.deepcopy(model), "int8")
    assert isinstance(quantized.decoder[0].cross_attn.c_attn, nn.Linear)  # read as a tensor
    texts = ["abcde", "hello", "xyz", "qkvqkv", "reverse"]
    src = pad([tokenizer.encode(t) + [EOS_ID] for t in texts], torch.device("cpu"))  # (B, S)
    for decode in (lambda m: beam_search(m, src, beam_size=4), lambda m: greedy_decode(m, src)):
        assert decode(quantized) == decode(model)


# -- quality: qkv eval --quantize on a trained checkpoint ---------------------------------


def val_loss(result) -> float:
    assert result.code == 0, result.err
    return float(re.search(r"val_loss=([0-9.]+)", result.out).group(1))


def test_int8_and_bf16_val_loss_are_within_one_percent_of_float32(trained_run):
    # Unrounded losses: int8 moves a 20-step model's loss by ~1e-5, under the 4 decimals the
    # CLI prints, so "changed at all" is asserted here and not on the printed line.
    checkpoint = open_checkpoint(trained_run.run_dir)
    model = checkpoint.model(torch.device("cpu")).eval()
    full = evaluate_language_model(checkpoint, model, EvalOptions()).val_loss
    for mode in ("int8", "bf16"):
        quantized = quantize(copy.deepcopy(model), mode)
        loss = evaluate_language_model(checkpoint, quantized, EvalOptions()).val_loss
        assert 0 < abs(loss - full) / full < 0.01, (mode, loss, full)  # changed, but little


def test_eval_quantize_scores_the_quantized_model(cli, trained_run, monkeypatch):
    args = ["eval", "--checkpoint", trained_run.run_dir, "--device", "cpu"]
    full = val_loss(cli(*args))
    modes = []

    def recording(model, mode):
        modes.append(mode)
        return quantize(model, mode)

    monkeypatch.setattr("qkv.decoding.quantize.quantize", recording)
    for mode in ("int8", "bf16"):
        loss = val_loss(cli(*args, "--quantize", mode))
        assert abs(loss - full) / full < 0.01, (mode, loss, full)
    assert modes == ["int8", "bf16"]


def test_translate_and_eval_take_quantize(cli):
    translated = cli("translate", "--checkpoint", LEGACY / "s2s", "--quantize", "int8", "abc")
    plain = cli("translate", "--checkpoint", LEGACY / "s2s", "abc")
    assert translated.code == plain.code == 0, translated.err
    assert translated.out == plain.out
    scores = cli("eval", "--checkpoint", LEGACY / "s2s", "--quantize", "bf16", "--beam", "1")
    assert scores.code == 0 and scores.out.startswith("exact_match="), scores.err


@pytest.mark.parametrize("verb", ["sample", "eval", "translate"])
def test_a_bad_quantize_value_is_one_line(cli, trained_run, verb):
    result = cli(verb, "--checkpoint", trained_run.run_dir, "--quantize", "fp8")
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "qkv: error: --quantize must be one of int8, bf16, int4, got 'fp8'"
    ]


def test_quantize_without_torchao_says_how_to_install(cli, trained_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)
    result = cli("sample", "--checkpoint", trained_run.run_dir, "--quantize", "int8")
    assert result.code == 2 and result.out == ""
    assert result.err.strip().splitlines() == [
        'qkv: error: quantization needs torchao: pip install "qkv[quantize]"'
    ]


# -- M samples as one batch --------------------------------------------------------------


def samples(model, tokenizer, prompt: str, n: int, sampling: Sampling) -> list[str]:
    texts = [""] * n
    for i, piece in stream_samples(model, tokenizer, prompt, 40, sampling, n):
        texts[i] += piece
    return texts


def test_greedy_samples_in_one_batch_equal_samples_one_at_a_time(trained_run):
    model, tokenizer = qkv.load(trained_run.run_dir)
    quantize(model, "int8")
    greedy = Sampling(temperature=0)
    one = samples(model, tokenizer, "ROMEO", 1, greedy)
    assert samples(model, tokenizer, "ROMEO", 4, greedy) == one * 4
    ids = torch.tensor([tokenizer.encode("ROMEO")])
    assert one == [tokenizer.decode(model.generate(ids, 40, temperature=0)[0].tolist())]


def test_sampled_rows_are_reproducible_and_differ(trained_run):
    model, tokenizer = qkv.load(trained_run.run_dir)

    def draw(seed: int) -> list[str]:
        sampling = Sampling(1.0, generator=torch.Generator().manual_seed(seed))
        return samples(model, tokenizer, "To be", 3, sampling)

    first = draw(7)
    assert first == draw(7)
    assert first != draw(8)
    assert len(set(first)) == 3 and all(text.startswith("To be") for text in first)


def test_sample_cli_batches_quantized_samples(cli, trained_run):
    args = ["sample", "--checkpoint", trained_run.run_dir, "--prompt", "JULIET"]
    result = cli(*args, "--num-samples", 3, "--max-new-tokens", 30, "--quantize", "int8")
    assert result.code == 0, result.err
    texts = result.out.split("\n" + "-" * 40 + "\n")
    assert len(texts) == 3 and all(len(t) == len("JULIET") + 31 for t in texts)
