"""Sampling: the filters (temperature, top-k, top-p), option checks, and `qkv sample`
printing exactly what GPT.generate draws from the same seed and settings."""

from pathlib import Path

import pytest
import torch

import qkv
from qkv.decoding.sampling import check_sampling_options, filter_top_k, filter_top_p, sample_next
from qkv.errors import QkvError


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = filter_top_k(logits, 2)
    assert torch.equal(torch.isfinite(kept), torch.tensor([[False, True, False, True, False]]))


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(filter_top_p(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_top_p(logits, 0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_top_p(logits, 0.81)).tolist() == [[True, True, True, False]]
    # the order of the vocabulary does not matter
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(filter_top_p(shuffled, 0.8)).tolist() == [[False, True, False, True]]


def test_sampling_only_returns_kept_tokens():
    logits = torch.tensor([[0.0, 0.1, 0.2, 5.0, 4.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    picks = sample_next(logits, temperature=1.0, top_k=2, generator=g)
    assert set(picks.flatten().tolist()) == {3, 4}


def test_low_temperature_approaches_greedy():
    logits = torch.tensor([[1.0, 1.5, 1.2]]).repeat(100, 1)
    g = torch.Generator().manual_seed(0)
    assert torch.all(sample_next(logits, temperature=0.01, generator=g) == 1)
    assert torch.all(sample_next(logits, temperature=0) == 1)


@pytest.mark.parametrize(
    "args, message",
    [
        ((-1, 1.0, None, None), r"^max_new_tokens must be >= 0, got -1$"),
        ((5, -0.5, None, None), r"^temperature must be >= 0 \(0 is greedy\), got -0.5$"),
        ((5, 1.0, 0, None), r"^top_k must be >= 1, got 0$"),
        ((5, 1.0, None, 0.0), r"^top_p must be in \(0, 1\], got 0.0$"),
        ((5, 1.0, None, 1.5), r"^top_p must be in \(0, 1\], got 1.5$"),
    ],
)
def test_meaningless_options_are_refused(args, message):
    with pytest.raises(QkvError, match=message):
        check_sampling_options(*args)


# -- `qkv sample` prints what GPT.generate draws ------------------------------------------------

SEPARATOR = "\n" + "-" * 40 + "\n"  # between the samples of --num-samples


def cli_sample(cli, run: Path, prompt: str, *flags: object) -> str:
    result = cli("sample", "--checkpoint", run, "--prompt", prompt, "--device", "cpu", *flags)
    assert result.code == 0, result.err
    return result.out


def generated(run: Path, prompt: str, max_new_tokens: int, seed: int, count=1, **options):
    """`count` samples from GPT.generate, drawn one after another from one seeded generator
    (as `qkv sample --seed` draws them), each decoded with its prompt."""
    model, tokenizer = qkv.load(run)
    generator = torch.Generator().manual_seed(seed)
    idx = torch.tensor([tokenizer.encode(prompt)])
    return [
        tokenizer.decode(
            model.generate(idx, max_new_tokens, generator=generator, **options)[0].tolist()
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize(
    ("flags", "options"),
    [
        ([], {"temperature": 0.8}),  # qkv sample's default temperature
        (["--temperature", 1.0, "--top-k", 5], {"temperature": 1.0, "top_k": 5}),
        (["--temperature", 1.5, "--top-p", 0.6], {"temperature": 1.5, "top_p": 0.6}),
        (["--temperature", 0], {"temperature": 0}),  # greedy
    ],
)
def test_sample_prints_what_generate_draws_with_the_same_seed(cli, trained_run, flags, options):
    out = cli_sample(
        cli, trained_run.run_dir, "ROMEO:", "--max-new-tokens", 60, "--seed", 3, *flags
    )
    [expected] = generated(trained_run.run_dir, "ROMEO:", 60, seed=3, **options)
    assert out == expected + "\n"
    assert expected.startswith("ROMEO:") and len(expected) == len("ROMEO:") + 60


def test_sampling_settings_change_what_is_drawn(trained_run):
    """The cases above are far enough apart that a `qkv sample` ignoring one setting fails."""
    draw = [
        generated(trained_run.run_dir, "ROMEO:", 60, seed=3, **options)[0]
        for options in (
            {"temperature": 0.8},
            {"temperature": 1.0},
            {"temperature": 1.0, "top_k": 5},
            {"temperature": 1.5},
            {"temperature": 1.5, "top_p": 0.6},
            {"temperature": 0},
        )
    ]
    assert len(set(draw)) == len(draw)
    assert generated(trained_run.run_dir, "ROMEO:", 60, seed=4)[0] != draw[1]  # and the seed


def test_num_samples_are_one_batch_drawn_from_the_seed(cli, trained_run):
    """`--num-samples M` decodes the M samples as one batch of M rows (one forward pass per
    token for all of them), drawn from one seeded generator: what GPT.generate gives for
    the prompt repeated M times."""
    run = trained_run.run_dir
    out = cli_sample(cli, run, "JULIET", "--max-new-tokens", 60, "--num-samples", 3, "--seed", 5)
    model, tokenizer = qkv.load(run)
    generator = torch.Generator().manual_seed(5)
    idx = torch.tensor([tokenizer.encode("JULIET")] * 3)
    rows = model.generate(idx, 60, temperature=0.8, generator=generator)
    samples = [tokenizer.decode(row.tolist()) for row in rows]
    assert out == SEPARATOR.join(sample + "\n" for sample in samples)
    assert len(set(samples)) == 3  # each row draws afresh


def test_temperature_zero_is_greedy_and_ignores_the_seed(cli, trained_run):
    run = trained_run.run_dir
    a = cli_sample(cli, run, "HAMLET", "--max-new-tokens", 60, "--temperature", 0, "--seed", 1)
    b = cli_sample(cli, run, "HAMLET", "--max-new-tokens", 60, "--temperature", 0, "--seed", 2)
    assert a == b
    # and it is the argmax continuation
    model, tokenizer = qkv.load(run)
    ids = torch.tensor([tokenizer.encode("HAMLET")])
    greedy = tokenizer.decode(model.generate(ids, 60, temperature=0)[0].tolist())
    assert a == greedy + "\n"
