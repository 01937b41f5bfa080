"""The speedrun's model and schedule options, each against its equation.

ReLU^2, QK-norm, an untied head, zero-initialised projections, logit soft-capping, value
embeddings, x0 mixing, the trapezoidal schedule and the embedding's learning-rate scale
(benchmarks/LOG.md measures them).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from qkv.config import GPTConfig, Seq2SeqConfig, load_config
from qkv.config.gpt import TrainConfig
from qkv.data import BatchSampler
from qkv.errors import QkvError
from qkv.interop.gpt2 import check_representable
from qkv.models.gpt import GPT
from qkv.models.seq2seq import Seq2SeqTransformer
from qkv.nn.attention import MultiHeadAttention
from qkv.nn.blocks import FeedForward
from qkv.training.lm import batch_rows, learning_rate, row_length
from qkv.training.loop import Trainer

V = 29


def gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    options = dict(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16)
    return GPT(GPTConfig(**{**options, **overrides})).double().eval()


def ids(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


def test_relu2_is_the_square_of_relu():
    torch.manual_seed(0)
    ffn = FeedForward(8, activation="relu2").double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    hidden = torch.relu(x @ ffn.c_fc.weight.T + ffn.c_fc.bias) ** 2
    torch.testing.assert_close(ffn(x), hidden @ ffn.c_proj.weight.T + ffn.c_proj.bias)


def test_qk_norm_scores_are_the_dot_products_of_rms_normalised_q_and_k():
    torch.manual_seed(0)
    attention = MultiHeadAttention(8, 2, qk_norm=True).double().eval()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    _, weights = attention(x, causal=True, return_weights=True)
    q, k, _ = attention.c_attn(x).split(8, dim=-1)
    for head in range(2):
        sl = slice(4 * head, 4 * head + 4)
        qh, kh = (t[0, :, sl] / t[0, :, sl].pow(2).mean(-1, keepdim=True).sqrt() for t in (q, k))
        scores = (qh @ kh.T / 2.0).masked_fill(~torch.ones(5, 5).tril().bool(), float("-inf"))
        torch.testing.assert_close(weights[0, head], torch.softmax(scores, -1))


def test_qk_norm_makes_the_weights_blind_to_the_size_of_w_q():
    """Scaling W_Q by 10 sharpens plain attention's softmax; with QK-norm nothing changes."""
    x = torch.randn(1, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for qk_norm, should_change in ((True, False), (False, True)):
        torch.manual_seed(0)
        attention = MultiHeadAttention(8, 2, qk_norm=qk_norm, bias=False).double().eval()
        _, before = attention(x, return_weights=True)
        with torch.no_grad():
            attention.c_attn.weight[:8] *= 10
        _, after = attention(x, return_weights=True)
        assert (not torch.allclose(before, after)) == should_change


def test_an_untied_head_has_its_own_matrix_and_export_to_gpt2_refuses_it():
    model = gpt(tie_embeddings=False)
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert "lm_head.weight" in model.state_dict()
    with pytest.raises(QkvError, match="GPT-2 needs model.tie_embeddings=True"):
        check_representable(dataclasses.replace(model.config, positional="learned"))


def test_zero_initialised_projections_make_every_block_the_identity_at_first():
    model = gpt(zero_init_proj=True)
    idx = ids(2, 7)
    x = model.transformer.wte(idx)
    torch.testing.assert_close(model(idx)[0], model.lm_head(model.transformer.ln_f(x)))


def test_soft_capped_logits_are_cap_tanh_of_the_plain_logits():
    plain, capped = gpt(), gpt(logit_softcap=2.0)
    capped.load_state_dict(plain.state_dict())
    idx = ids(2, 7)
    logits = capped(idx)[0]
    torch.testing.assert_close(logits, 2.0 * torch.tanh(plain(idx)[0] / 2.0))
    assert logits.abs().max() < 2.0


def variant_of(plain: GPT, **overrides) -> GPT:
    """A model with extra options holding `plain`'s weights for everything they share."""
    model = gpt(**overrides)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected
    return model


def test_value_embeddings_start_at_zero_and_add_a_table_of_the_token_to_v():
    plain = gpt()
    model = variant_of(plain, value_embeddings=True)
    idx = ids(2, 7)
    torch.testing.assert_close(model(idx)[0], plain(idx)[0])  # zero tables: no effect
    with torch.no_grad():
        model.transformer.ve[0].weight.normal_()
    # by hand: layer 0's values are W_V ln_1(x) + b_V + VE_0[idx]
    block = model.transformer.h[0]
    x = model.transformer.wte(idx)
    h = block.ln_1(x)
    attention = block.attn
    _, _, v = attention.c_attn(h).split(16, dim=-1)
    v = v + model.transformer.ve[0](idx)  # (B, T, C)
    q, k, _ = attention.c_attn(h).split(16, dim=-1)
    q, k = (attention.rotary(attention._split_heads(t), torch.arange(7)) for t in (q, k))
    out = F.scaled_dot_product_attention(q, k, attention._split_heads(v), is_causal=True)
    x = x + attention.c_proj(attention._merge_heads(out))
    x = x + block.mlp(block.ln_2(x))
    x = model.transformer.h[1](x, positions=torch.arange(7))
    torch.testing.assert_close(model(idx)[0], model.lm_head(model.transformer.ln_f(x)))


def test_value_embeddings_keep_the_model_causal_and_the_cache_exact():
    model = gpt(value_embeddings=True)
    with torch.no_grad():
        for table in model.transformer.ve:
            table.weight.normal_()
    prompt = ids(2, 3)
    cached = model.generate(prompt, 8, temperature=0.0, use_cache=True)
    uncached = model.generate(prompt, 8, temperature=0.0, use_cache=False)
    assert torch.equal(cached, uncached)
    cached = cached.clone()  # a normal tensor, not an inference-mode one
    changed = cached.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % V
    with torch.no_grad():
        torch.testing.assert_close(model(changed)[0][:, :6], model(cached)[0][:, :6])


def test_x0_mixing_feeds_each_block_a_mix_of_the_stream_and_the_embeddings():
    plain = gpt()
    model = variant_of(plain, x0_mix=True)
    idx = ids(2, 7)
    torch.testing.assert_close(model(idx)[0], plain(idx)[0])  # a = 1, b = 0: no change
    with torch.no_grad():
        model.resid_lambdas.copy_(torch.tensor([0.5, 2.0]))
        model.x0_lambdas.copy_(torch.tensor([0.25, -1.0]))
    x = x0 = model.transformer.wte(idx)
    positions = torch.arange(7)
    for layer, (a, b) in enumerate(((0.5, 0.25), (2.0, -1.0))):
        x = model.transformer.h[layer](a * x + b * x0, positions=positions)
    torch.testing.assert_close(model(idx)[0], model.lm_head(model.transformer.ln_f(x)))


def test_the_trapezoid_holds_lr_then_cools_down_linearly_to_min_lr():
    cfg = TrainConfig(
        max_steps=1000, max_time=0, warmup_steps=100, lr=1.0, min_lr=0.1, schedule="trapezoid"
    )
    assert learning_rate(cfg, 49, 0.0) == pytest.approx(0.5)  # warm-up
    assert learning_rate(cfg, 100, 0.0) == pytest.approx(1.0)
    assert learning_rate(cfg, 100 + 540, 0.0) == pytest.approx(1.0)  # p = 0.6: stable
    assert learning_rate(cfg, 100 + 720, 0.0) == pytest.approx(1.0 - 0.9 * 0.5)  # halfway down
    assert learning_rate(cfg, 1000, 0.0) == pytest.approx(0.1)
    timed = dataclasses.replace(cfg, max_time=100.0)
    assert learning_rate(timed, 101, 80.0) == pytest.approx(1.0 - 0.9 * 0.5)  # by time


def test_rows_grow_linearly_from_seq_start_to_block_size_over_seq_warmup():
    cfg = TrainConfig(max_steps=1000, max_time=0, warmup_steps=100, seq_warmup=0.5, seq_start=16)
    assert row_length(cfg, 96, 50, 0.0) == 16  # the lr's warm-up: progress 0
    assert row_length(cfg, 96, 100 + 225, 0.0) == 16 + 40  # p = 0.25: halfway, 56
    assert row_length(cfg, 96, 100 + 200, 0.0) == 48  # p = 2/9: 51.6, down to a multiple of 8
    assert row_length(cfg, 96, 100 + 180, 0.0) == 48  # p = 0.2: exactly 48
    assert row_length(cfg, 96, 100 + 450, 0.0) == 96  # p = 0.5: full rows from here
    timed = dataclasses.replace(cfg, max_time=100.0)
    assert row_length(timed, 96, 101, 25.0) == 56  # by time, as the learning rate
    assert row_length(dataclasses.replace(cfg, seq_warmup=0.0), 96, 100, 0.0) == 96  # off


def recorded_shapes(monkeypatch) -> list[tuple[int, int]]:
    """The (B, T) of every batch the samplers draw from now on."""
    shapes, next_batch = [], BatchSampler.next_batch

    def recorded(self, length=None, rows=None):
        x, y = next_batch(self, length, rows)
        shapes.append(tuple(x.shape))
        return x, y

    monkeypatch.setattr(BatchSampler, "next_batch", recorded)
    return shapes


def shapes_of_a_run(cli, text_file, tiny, out, monkeypatch, *options) -> list[tuple[int, int]]:
    """The (B, T) of every batch an 8-step run with `options` draws (its final evaluation's
    batches come last, with block_size rows of batch_size)."""
    shapes = recorded_shapes(monkeypatch)
    steady = ["train.max_time=0", "train.warmup_steps=0", "train.eval_interval=100"]
    run = ["train", "--data", text_file, "--out", out, "--max-steps", 8]
    result = cli(*run, *tiny, *steady, *options)
    assert result.code == 0, result.err
    return shapes


def test_a_run_with_seq_warmup_trains_on_growing_rows(cli, text_file, tiny, tmp_path, monkeypatch):
    warmup = ["train.seq_warmup=1.0", "train.seq_start=8", "model.block_size=32"]
    shapes = shapes_of_a_run(cli, text_file, tiny, tmp_path / "run", monkeypatch, *warmup)
    lengths = [t for _, t in shapes]
    training = lengths[: lengths.index(32)] if 32 in lengths else lengths
    assert training == [8, 8, 8, 16, 16, 16, 24, 24]  # 8 + 24 step / 8, down to multiples of 8


def test_batches_grow_linearly_from_batch_start_to_batch_size_over_batch_warmup():
    cfg = TrainConfig(
        max_steps=1000, max_time=0, warmup_steps=100, batch_size=16, batch_warmup=0.4,
        batch_start=4,
    )  # fmt: skip
    assert batch_rows(cfg, 50, 0.0) == 4  # the lr's warm-up: progress 0
    assert batch_rows(cfg, 100 + 180, 0.0) == 8  # p = 0.2: halfway, 10, down to 8
    assert batch_rows(cfg, 100 + 240, 0.0) == 12  # p = 4/15: 12, a multiple of 4
    assert batch_rows(cfg, 100 + 360, 0.0) == 16  # p = 0.4: full batches from here
    timed = dataclasses.replace(cfg, max_time=100.0)
    assert batch_rows(timed, 101, 30.0) == 12  # by time: p = 0.3, 13, down to 12
    assert batch_rows(dataclasses.replace(cfg, batch_warmup=0.0), 100, 0.0) == 16  # off


def test_a_run_with_batch_warmup_trains_on_growing_batches(
    cli, text_file, tiny, tmp_path, monkeypatch
):
    warmup = ["train.batch_warmup=1.0", "train.batch_start=2", "train.batch_size=8"]
    shapes = shapes_of_a_run(cli, text_file, tiny, tmp_path / "run", monkeypatch, *warmup)
    rows = [b for b, _ in shapes]
    training = rows[: rows.index(8)] if 8 in rows else rows
    assert training == [2, 2, 2, 4, 4, 4, 6, 6]  # 2 + 6 step / 8, down to multiples of 2
    assert len({t for _, t in shapes}) == 1  # the rows keep their length


def one_step(text_file, out, tiny, *extra) -> tuple[dict, dict]:
    """The weights before and after one Muon step of a tiny run (same seed every call)."""
    config = load_config(None, [*tiny, "train.max_time=0", "train.optimizer=muon", *extra])
    config = config.with_values({"data.source": str(text_file), "train.out_dir": str(out)})
    trainer = Trainer(config, progress=False)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train_step()
    return before, {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def test_embed_lr_scale_moves_the_embedding_that_many_times_further(text_file, tmp_path, tiny):
    # Adam's first step is -lr (g / (|g| + eps) + wd w): linear in lr, so a group at 3x the
    # rate moves exactly 3x as far, while Muon's matrices and the 1-D parameters do not change
    before, plain = one_step(text_file, tmp_path / "a", tiny)
    _, scaled = one_step(text_file, tmp_path / "b", tiny, "train.embed_lr_scale=3")
    tables = [name for name in before if name.startswith(("transformer.wte", "transformer.wpe"))]
    assert "transformer.wte.weight" in tables
    for name in tables:
        moved = plain[name] - before[name]
        assert moved.abs().max() > 0
        torch.testing.assert_close(scaled[name] - before[name], 3 * moved, msg=name)
    for name in set(before) - set(tables):
        torch.testing.assert_close(scaled[name], plain[name], msg=name)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(logit_softcap=-1.0), "model.logit_softcap must not be negative, got -1.0"),
        (dict(activation="relu3"), r"activation must be one of .*'relu2'.*got 'relu3'"),
    ],
)
def test_bad_model_options_are_named(settings, message):
    with pytest.raises(QkvError, match=message):
        GPTConfig(vocab_size=V, **settings)


def test_bad_schedule_options_are_named():
    with pytest.raises(QkvError, match=r"schedule must be one of \('cosine', 'trapezoid'\)"):
        TrainConfig(schedule="linear")
    with pytest.raises(QkvError, match=r"train.cooldown_fraction must be in \(0, 1\], got 0.0"):
        TrainConfig(cooldown_fraction=0.0)
    with pytest.raises(QkvError, match=r"train.seq_warmup must be in \[0, 1\], got 1.5"):
        TrainConfig(seq_warmup=1.5)
    with pytest.raises(QkvError, match=r"train.batch_warmup must be in \[0, 1\], got -0.1"):
        TrainConfig(batch_warmup=-0.1)
    with pytest.raises(QkvError, match=r"batch_start must be positive, got 0"):
        TrainConfig(batch_start=0)
    with pytest.raises(QkvError, match=r"embed_lr_scale must be positive, got 0"):
        TrainConfig(embed_lr_scale=0)
    with pytest.raises(QkvError, match=r"muon_momentum must be in \[0.0, 1.0\), got 1.0"):
        TrainConfig(muon_momentum=1.0)
    with pytest.raises(QkvError, match=r"muon_ns_steps must be positive, got 0"):
        TrainConfig(muon_ns_steps=0)


def test_the_encoder_decoder_takes_qk_norm_and_relu2():
    torch.manual_seed(0)
    config = Seq2SeqConfig(vocab_size=V, n_embd=16, n_head=2, d_ff=32, max_len=12)
    normed = Seq2SeqTransformer(dataclasses.replace(config, qk_norm=True, activation="relu2"))
    assert normed.encoder[0].attn.qk_norm and normed.decoder[0].attn.qk_norm
    assert not normed.decoder[0].cross_attn.qk_norm
    src, tgt = ids(2, 6) % (V - 3) + 3, ids(2, 5, seed=2) % (V - 3) + 3
    assert normed(src, tgt).shape == (2, 5, V)


def load_speedrun():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "speedrun.py"
    spec = importlib.util.spec_from_file_location("speedrun", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["speedrun"] = module
    spec.loader.exec_module(module)
    return module


def test_every_speedrun_experiment_is_a_valid_config_and_nanogpt_is_rebuilt_faithfully():
    from qkv.config import load_config

    speedrun = load_speedrun()
    for name, overrides in speedrun.EXPERIMENTS.items():
        load_config(None, overrides)  # a typo in an override is a QkvError naming it
        assert name
    nano = load_config(None, speedrun.NANOGPT_CPU)
    assert (nano.model.n_layer, nano.model.n_head, nano.model.n_embd) == (4, 4, 128)
    assert (nano.model.block_size, nano.train.batch_size) == (64, 12)
    assert (nano.train.optimizer, nano.train.lr, nano.train.min_lr) == ("adamw", 1e-3, 1e-4)
    assert nano.model.positional == "learned" and nano.model.bias is False
    assert nano.train.schedule == "cosine"
    assert nano.train.precision == "float32"  # nanoGPT autocasts on CUDA only


def test_only_the_clock_ends_a_speedrun_run():
    from qkv.config import load_config

    speedrun = load_speedrun()
    fastest = 1_000  # steps a second: more than any recipe makes on a CPU
    for overrides in speedrun.CURVE.values():
        config = load_config(None, speedrun.run_overrides(overrides))
        assert config.train.schedule_steps > max(speedrun.BUDGETS) * fastest
