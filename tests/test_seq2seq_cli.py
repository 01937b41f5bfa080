"""`qkv train --model seq2seq`, `qkv translate`, `qkv eval` on a seq2seq checkpoint, errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import sacrebleu
import torch

import qkv
from qkv.checkpoint import open_checkpoint, save_checkpoint
from qkv.config.seq2seq import EOS_ID
from qkv.data.tasks import pair_splits
from qkv.decoding import beam_search, greedy_decode
from qkv.evaluate import score_translations
from qkv.models.seq2seq import Seq2SeqTransformer

TINY_SEQ2SEQ = [
    "--preset", "tiny", "--max-time", "0", "--no-progress", "--device", "cpu", "--seed", "0",
    "model.max_len=16", "data.n_train=400", "data.n_val=10", "data.n_test=20",
    "data.synthetic_len=4", "train.batch_size=16", "train.warmup_steps=10",
    "train.eval_interval=20", "train.eval_examples=10", "train.log_interval=5",
]  # fmt: skip
SOURCES = ["djrj", "btdw", "wcky", "rejd", "kzzk", "abc", "dcba", "eil", "quz", "ves"]


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.code == 2, (result.code, result.err)
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qkv: error: "), result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory) -> Path:
    """A tiny copy model trained for 20 steps through the command line."""
    from qkv.cli import main

    out = tmp_path_factory.mktemp("seq2seq") / "copy"
    code = main(["train", "--task", "copy", "--out", str(out), "--max-steps", "20", *TINY_SEQ2SEQ])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def random_run(copy_run, tmp_path_factory) -> Path:
    """The copy run's config and vocabulary with freshly drawn weights. The 20-step copy model
    answers every input with nothing; these weights, drawn wide and with <eos> made likelier,
    give outputs that differ from input to input and end at different lengths, so greedy,
    beam search and each length penalty print different translations of SOURCES."""
    checkpoint = open_checkpoint(copy_run)
    torch.manual_seed(0)
    model = Seq2SeqTransformer(checkpoint.config.model)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.normal_(0.0, 0.3)
        model.lm_head.weight[EOS_ID] *= 3
    out = tmp_path_factory.mktemp("seq2seq") / "random"
    save_checkpoint(out, model, checkpoint.config, checkpoint.tokenizer)
    return out


def library_decode(run: Path, texts: list[str], beam: int, alpha: float = 0.6) -> list[str]:
    """Each text decoded on its own by qkv.decoding: greedy for beam 1, else beam search."""
    model, tokenizer = qkv.load(run)
    outputs = []
    for text in texts:
        src = torch.tensor([tokenizer.encode(text) + [EOS_ID]])
        ids = greedy_decode(model, src) if beam == 1 else beam_search(model, src, beam, alpha)
        outputs.append(tokenizer.decode(ids[0]))
    return outputs


def lines(texts: list[str]) -> str:
    return "".join(f"{text}\n" for text in texts)


def test_train_writes_a_seq2seq_checkpoint(copy_run):
    config = (copy_run / "config.json").read_text()
    assert '"kind": "seq2seq"' in config
    for name in ("model.safetensors", "tokenizer.json", "trainer.pt", "metrics.jsonl"):
        assert (copy_run / name).exists()
    model, tokenizer = qkv.load(copy_run)
    assert isinstance(model, Seq2SeqTransformer) and not model.training
    assert model.config.n_encoder_layer == 1  # the tiny preset


@pytest.mark.parametrize(("beam", "alpha"), [(1, 0.6), (4, 0.6), (4, 0.0), (4, 2.0)])
def test_translate_prints_the_librarys_greedy_or_beam_decode(cli, random_run, beam, alpha):
    result = cli(
        "translate", "--checkpoint", random_run, "--device", "cpu", "--beam", beam,
        "--alpha", alpha, *SOURCES,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.out == lines(library_decode(random_run, SOURCES, beam, alpha))


def test_the_decoding_settings_change_the_translations(random_run):
    """So a `qkv translate` that ignored --beam or --alpha fails the test above."""
    greedy, beam = library_decode(random_run, SOURCES, 1), library_decode(random_run, SOURCES, 4)
    assert greedy != beam
    assert library_decode(random_run, SOURCES, 4, 0.0) != beam
    assert library_decode(random_run, SOURCES, 4, 2.0) != beam
    assert len({len(output) for output in beam}) >= 3  # outputs of several lengths
    assert beam != SOURCES


def test_translate_defaults_to_beam_4_and_reads_stdin(cli, random_run, monkeypatch):
    result = cli("translate", "--checkpoint", random_run, "--device", "cpu", *SOURCES)
    assert result.out == lines(library_decode(random_run, SOURCES, 4, 0.6))
    monkeypatch.setattr("sys.stdin", io.StringIO(lines(SOURCES)))
    piped = cli("translate", "--checkpoint", random_run, "--device", "cpu")
    assert piped.code == 0 and piped.out == result.out


def test_eval_scores_the_librarys_translations_of_the_test_split(cli, random_run):
    result = cli("eval", "--checkpoint", random_run, "--device", "cpu", "--beam", "2")
    assert result.code == 0, result.err
    test = pair_splits(open_checkpoint(random_run).config.data).test
    hypotheses = library_decode(random_run, [source for source, _ in test], 2)
    expected = score_translations(hypotheses, [target for _, target in test], char_level=True)
    assert result.out == expected.line() + "\n" and expected.examples == 20


def write_pairs(path: Path, sources: list[str], targets: list[str]) -> Path:
    path.write_text(lines([f"{s}\t{t}" for s, t in zip(sources, targets, strict=True)]))
    return path


def translated(run: Path) -> tuple[list[str], list[str]]:
    """The SOURCES the model translates to something (beam 4), and those translations."""
    outputs = library_decode(run, SOURCES, 4)
    kept = [i for i, output in enumerate(outputs) if output]
    return [SOURCES[i] for i in kept], [outputs[i] for i in kept]


def test_eval_on_pairs_scores_an_imperfect_translation_as_sacrebleu_does(cli, random_run, tmp_path):
    sources, outputs = translated(random_run)
    # every other reference differs from the model's output in its first character
    wrong_first = [("b" if o[0] == "a" else "a") + o[1:] for o in outputs]
    references = [o if i % 2 else wrong_first[i] for i, o in enumerate(outputs)]
    pairs = write_pairs(tmp_path / "pairs.tsv", sources, references)
    result = cli("eval", "--checkpoint", random_run, "--data", pairs)
    assert result.code == 0, result.err
    exact = sum(o == r for o, r in zip(outputs, references, strict=True)) / len(outputs)
    bleu = sacrebleu.corpus_bleu(outputs, [references], tokenize="char").score  # char-level model
    chrf = sacrebleu.corpus_chrf(outputs, [references]).score
    n = len(outputs)
    assert result.out == f"exact_match={exact:.4f} bleu={bleu:.2f} chrf={chrf:.2f} examples={n}\n"
    assert 0 < exact < 1 and 0 < bleu < 100 and 0 < chrf < 100


def test_a_model_scored_on_its_own_translations_scores_one_hundred(cli, random_run, tmp_path):
    """A real model, no stand-in: references that are its beam-4 outputs are matched exactly."""
    sources, outputs = translated(random_run)
    pairs = write_pairs(tmp_path / "own.tsv", sources, outputs)
    result = cli("eval", "--checkpoint", random_run, "--data", pairs)
    assert result.out == f"exact_match=1.0000 bleu=100.00 chrf=100.00 examples={len(outputs)}\n"
    assert len(outputs) >= 8


def test_train_on_a_tsv_file_and_resume(cli, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{w}\t{w[::-1]}\n" for w in ["abc", "bca", "cab", "ab"] * 10))
    out = tmp_path / "run"
    args = ["--model", "seq2seq", "--data", pairs, "--out", out, *TINY_SEQ2SEQ]
    first = cli("train", *args, "--max-steps", "4")
    assert first.code == 0, first.err
    resumed = cli("train", "--out", out, "--resume", "--max-steps", "8", "--no-progress")
    assert resumed.code == 0, resumed.err
    assert "step 8" in resumed.out


def test_a_tsv_line_without_a_tab_is_a_one_line_error(cli, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("abc\tcba\nno tab here\n", encoding="utf-8")
    result = cli("train", "--model", "seq2seq", "--data", pairs, "--out", tmp_path / "o")
    assert_one_line_error(result, f"{pairs}:2: no tab in this line")


def test_unknown_characters_in_translate_are_named(cli, copy_run):
    result = cli("translate", "--checkpoint", copy_run, "abc€")
    assert_one_line_error(result, "characters not in the model's vocabulary: '€'")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["translate", "--beam", "0", "x"], "--beam must be >= 1"),
        (["translate", "--alpha", "-1", "x"], "--alpha must be >= 0"),
        (["sample"], "holds a seq2seq model: use qkv translate or qkv eval"),
    ],
)
def test_bad_decoding_options_are_one_line_errors(cli, copy_run, args, fragment):
    assert_one_line_error(cli(*args, "--checkpoint", copy_run), fragment)


def test_translate_on_a_gpt_checkpoint_is_a_one_line_error(cli, trained_run):
    result = cli("translate", "--checkpoint", trained_run.run_dir, "x")
    assert_one_line_error(result, "holds a gpt model: use qkv sample or qkv eval")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "gpt", "--task", "dates"], "--task and --preset are for --model seq2seq"),
        (["--task", "copy", "--data", "x.tsv"], "use --task NAME or --data FILE.tsv"),
        (["--task", "copy", "model.n_layr=2"], "unknown key model.n_layr"),
    ],
)
def test_bad_seq2seq_train_options_are_one_line_errors(cli, tmp_path, args, fragment):
    assert_one_line_error(cli("train", "--out", tmp_path / "o", *args), fragment)


def test_help_lists_translate(cli, capsys):
    from qkv.cli import build_parser

    assert "translate" in build_parser().format_help()


def test_a_bpe_vocabulary_trains_and_translates_any_text(cli, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{w} {w}\t{w}\n" for w in ["one", "two", "three", "four"] * 10))
    out = tmp_path / "bpe"
    args = ["--data", pairs, "--out", out, "--tokenizer", "bpe", "--vocab-size", "300"]
    result = cli("train", "--model", "seq2seq", *args, *TINY_SEQ2SEQ, "--max-steps", "2")
    assert result.code == 0, result.err
    translated = cli("translate", "--checkpoint", out, "--beam", "2", "fünf €")  # unseen text
    assert translated.code == 0, translated.err
    assert translated.out == lines(library_decode(out, ["fünf €"], 2))
