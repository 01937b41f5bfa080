"""`qkv import-hf` and `qkv export-hf` on a tiny random GPT-2 built here (nothing downloaded).

The Hugging Face directory is made the way a real one is: `GPT2LMHeadModel.save_pretrained`
for config.json + model.safetensors, and a byte-level BPE trained with `tokenizers` for
vocab.json + merges.txt (or tokenizer.json), with GPT-2's <|endoftext|>. Imported, the model
must give Hugging Face's logits, sample, evaluate and fine-tune; exported, it must load back
into `GPT2LMHeadModel` with the same logits. A pickled .bin is read weights-only.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from conftest import TINY, make_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

import qkv  # noqa: E402
from qkv.tokenizer import BPETokenizer  # noqa: E402

TOLERANCE = 1e-5
TRAIN_SETTINGS = [t for t in TINY if t.startswith("train.")]  # the model is GPT-2's
END_OF_TEXT = "<|endoftext|>"


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.code == 2, (result.code, result.err)
    assert len(result.err.splitlines()) == 1, result.err
    assert result.err.startswith("qkv: error: ") and "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err, (fragment, result.err)


def tiny_tokenizer() -> Tokenizer:
    """A GPT-2-style byte-level BPE, learned from a few KB of text."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[END_OF_TEXT],
        show_progress=False,
    )
    tokenizer.train_from_iterator([make_text(200)], trainer=trainer)
    return tokenizer


def tiny_gpt2(vocab_size: int, end_of_text: int) -> transformers.GPT2LMHeadModel:
    config = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=end_of_text,
        eos_token_id=end_of_text,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # biases and LayerNorms start at 0 and 1; make them count
        for name, param in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """config.json + model.safetensors + vocab.json + merges.txt, as save_pretrained makes."""
    directory = tmp_path_factory.mktemp("hf") / "gpt2-tiny"
    tokenizer = tiny_tokenizer()
    model = tiny_gpt2(tokenizer.get_vocab_size(), tokenizer.token_to_id(END_OF_TEXT))
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.model.save(str(directory))
    return directory


@pytest.fixture(scope="module")
def hf_model(hf_dir) -> transformers.GPT2LMHeadModel:
    return transformers.GPT2LMHeadModel.from_pretrained(str(hf_dir)).eval()


@pytest.fixture
def imported(cli, hf_dir, tmp_path) -> Path:
    out = tmp_path / "imported"
    result = cli("import-hf", hf_dir, out)
    assert result.code == 0, result.err
    assert "imported GPT-2" in result.out
    return out


def ids_for_test(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 64), generator=torch.Generator().manual_seed(1))


def max_logit_difference(ours: qkv.GPT, theirs, idx: torch.Tensor) -> float:
    with torch.no_grad():
        a, _ = ours(idx)
        b = theirs(idx).logits
    return (a - b).abs().max().item()


# -- import ------------------------------------------------------------------------------------


def test_imported_model_gives_hugging_faces_logits(imported, hf_model):
    model, tokenizer = qkv.load(imported)
    assert isinstance(tokenizer, BPETokenizer)
    assert model.config.vocab_size == tokenizer.vocab_size == hf_model.config.vocab_size
    diff = max_logit_difference(model, hf_model, ids_for_test(tokenizer.vocab_size))
    print(f"max |logit difference| qkv vs HF after import-hf: {diff:.3g}")
    assert diff < TOLERANCE


def test_imported_tokenizer_encodes_as_the_original(imported, hf_dir):
    _, tokenizer = qkv.load(imported)
    theirs = Tokenizer(models.BPE.from_file(str(hf_dir / "vocab.json"), str(hf_dir / "merges.txt")))
    theirs.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = "ROMEO: But, soft! naïve \U0001f600 " + END_OF_TEXT + " JULIET"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode("ROMEO: soft") == theirs.encode("ROMEO: soft").ids
    assert tokenizer.end_of_text_id in ids  # GPT-2's separator stays one special token


def test_imported_model_samples_and_evaluates(cli, imported, tmp_path):
    free = cli("sample", "--checkpoint", imported, "--max-new-tokens", 20, "--device", "cpu")
    assert free.code == 0, free.err  # starts from <|endoftext|>, shown as nothing
    prompted = cli("sample", "--checkpoint", imported, "--prompt", "ROMEO:", "--device", "cpu")
    assert prompted.code == 0 and prompted.out.startswith("ROMEO:"), prompted.err
    data = tmp_path / "eval.txt"
    data.write_text(make_text(60, seed=5), encoding="utf-8")
    result = cli("eval", "--checkpoint", imported, "--data", data, "--device", "cpu")
    assert result.code == 0, result.err
    assert result.out.startswith("val_loss=")


def test_tokenizer_json_and_pickled_weights_import_too(cli, hf_dir, hf_model, tmp_path):
    directory = tmp_path / "bin"
    directory.mkdir()
    shutil.copy(hf_dir / "config.json", directory)
    tiny_tokenizer().save(str(directory / "tokenizer.json"))
    torch.save(hf_model.state_dict(), directory / "pytorch_model.bin")
    result = cli("import-hf", directory, tmp_path / "out")
    assert result.code == 0, result.err
    model, tokenizer = qkv.load(tmp_path / "out")
    diff = max_logit_difference(model, hf_model, ids_for_test(tokenizer.vocab_size))
    print(f"max |logit difference| qkv vs HF from pytorch_model.bin: {diff:.3g}")
    assert diff < TOLERANCE


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_that_would_run_code_is_refused(cli, hf_dir, tmp_path):
    directory = tmp_path / "evil"
    shutil.copytree(hf_dir, directory)
    (directory / "model.safetensors").unlink()
    marker = tmp_path / "the-pickle-ran"
    evil = {"transformer.wte.weight": _RunsCodeWhenUnpickled(marker)}
    torch.save(evil, directory / "pytorch_model.bin")
    result = cli("import-hf", directory, tmp_path / "out")
    assert_one_line_error(result, "pytorch_model.bin", "refused")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def _edited_config(hf_dir: Path, tmp_path: Path, **changes) -> Path:
    directory = tmp_path / "edited"
    shutil.copytree(hf_dir, directory)
    tree = json.loads((directory / "config.json").read_text()) | changes
    (directory / "config.json").write_text(json.dumps(tree))
    return directory


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing-dir", ["does not exist"]),
        ("no-weights", ["model.safetensors", "pytorch_model.bin"]),
        ("no-tokenizer", ["vocab.json"]),
        ("no-config", ["config.json"]),
        ("llama", ["gpt2", "llama"]),
        ("activation", ["gelu_fast"]),
        ("inner", ["n_inner"]),
    ],
)
def test_import_errors_are_one_line(cli, hf_dir, tmp_path, case, fragments):
    if case == "missing-dir":
        directory = tmp_path / "nope"
    elif case in ("llama", "activation", "inner"):
        changes = {
            "llama": {"model_type": "llama"},
            "activation": {"activation_function": "gelu_fast"},
            "inner": {"n_inner": 48},
        }[case]
        directory = _edited_config(hf_dir, tmp_path, **changes)
    else:
        directory = tmp_path / case
        shutil.copytree(hf_dir, directory)
        doomed = {"no-weights": ["model.safetensors"], "no-config": ["config.json"]}
        for name in doomed.get(case, ["vocab.json", "merges.txt"]):
            (directory / name).unlink()
    result = cli("import-hf", directory, tmp_path / "out")
    assert_one_line_error(result, *fragments)


def test_missing_transformers_is_a_one_line_error_with_the_pip_command(
    cli, hf_dir, trained_run, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    result = cli("import-hf", hf_dir, tmp_path / "out")
    assert_one_line_error(result, "pip install")
    result = cli("export-hf", trained_run.run_dir, tmp_path / "out2")
    assert_one_line_error(result, "pip install")


# -- fine-tune, export ---------------------------------------------------------------------------


def test_init_from_fine_tunes_the_imported_model(cli, imported, tmp_path):
    data = tmp_path / "mine.txt"
    data.write_text(make_text(150, seed=7), encoding="utf-8")
    out = tmp_path / "tuned"
    flags = ["--init-from", imported, "--max-steps", 3, "--max-time", 0, "--no-progress"]
    result = cli("train", "--data", data, "--out", out, *flags, *TRAIN_SETTINGS, "train.lr=1e-3")
    assert result.code == 0, result.err
    start, tokenizer = qkv.load(imported)
    tuned, tuned_tokenizer = qkv.load(out)
    assert tuned.config == start.config  # GPT-2's shape, not qkv's defaults
    assert tuned_tokenizer.fingerprint() == tokenizer.fingerprint()
    moved = tuned.transformer.wte.weight - start.transformer.wte.weight
    assert 0 < moved.abs().max().item() < 0.1  # trained a little, from the imported weights
    both = cli("train", "--data", data, "--out", out, "--init-from", imported, "--resume")
    assert_one_line_error(both, "--init-from")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [(["model.n_layer=4"], "model.n_layer"), (["--tokenizer", "bpe"], "tokenizer")],
)
def test_init_from_refuses_settings_it_would_ignore(
    cli, imported, text_file, tmp_path, extra, fragment
):
    flags = ["--init-from", imported, "--max-steps", 1, "--no-progress", *TRAIN_SETTINGS]
    result = cli("train", "--data", text_file, "--out", tmp_path / "r", *flags, *extra)
    assert_one_line_error(result, fragment)


def test_export_loads_into_hugging_face_with_the_same_logits(cli, imported, tmp_path):
    out = tmp_path / "exported"
    result = cli("export-hf", imported, out)
    assert result.code == 0, result.err
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"} <= {
        p.name for p in out.iterdir()
    }
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(out)).eval()
    model, tokenizer = qkv.load(imported)
    diff = max_logit_difference(model, hf, ids_for_test(tokenizer.vocab_size))
    assert diff < TOLERANCE
    assert hf.config.eos_token_id == tokenizer.end_of_text_id
    theirs = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert theirs.encode("JULIET: O Romeo").ids == tokenizer.encode("JULIET: O Romeo")
    again = cli("export-hf", imported, out)
    assert_one_line_error(again, "already holds")
    print(f"max |logit difference| qkv vs HF after export-hf: {diff:.3g}")


def test_a_bpe_trained_gpt2_shaped_run_exports(cli, text_file, tmp_path):
    run = tmp_path / "run"
    gpt2_shape = ["model.positional=learned", "model.activation=gelu"]
    flags = ["--tokenizer", "bpe", "--vocab-size", 300, "--max-steps", 2, "--no-progress"]
    result = cli("train", "--data", text_file, "--out", run, *flags, *TINY, *gpt2_shape)
    assert result.code == 0, result.err
    assert cli("export-hf", run, tmp_path / "hf").code == 0
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    model, tokenizer = qkv.load(run)
    diff = max_logit_difference(model, hf, ids_for_test(tokenizer.vocab_size)[:, :16])
    assert diff < TOLERANCE
    print(f"max |logit difference| qkv vs HF, a BPE run exported: {diff:.3g}")


def test_exporting_what_gpt2_cannot_express_is_a_one_line_error(cli, trained_run, tmp_path):
    result = cli("export-hf", trained_run.run_dir, tmp_path / "hf")  # rotary positions
    assert_one_line_error(result, "positional")


def test_help_lists_the_verbs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        qkv.cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "import-hf" in out and "export-hf" in out
