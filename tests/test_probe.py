"""Attention over training: the probe records qkv train writes at each evaluation, what they
cost the run (nothing: the same losses, resumed or not), and `qkv attention --over-training`.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np

from conftest import TINY
from qkv.checkpoint import load_checkpoint
from qkv.cli import main
from qkv.viz.head_stats import entropy, head_stats, previous_token, same_word, word_ids
from qkv.viz.maps import gpt_attention_maps
from qkv.viz.probe import read_records


def test_each_evaluation_records_the_probe_the_model_saw(trained_run):
    records = read_records(trained_run.run_dir)
    assert [r.step for r in records] == [10, 20]  # eval_interval=10, 20 steps
    # the default probe: the first 16 tokens (the context) of the val split
    val = trained_run.text[int(len(trained_run.text) * 0.9) :]
    assert records[0].text == records[1].text == val[:16]
    model, tokenizer, _ = load_checkpoint(trained_run.run_dir)
    (final,) = gpt_attention_maps(model, tokenizer, records[1].text)
    (recorded,) = records[1].maps
    assert (recorded.name, recorded.queries) == (final.name, final.queries)
    np.testing.assert_allclose(recorded.weights, final.weights, atol=1e-3)  # float16
    assert not np.allclose(records[0].maps[0].weights, recorded.weights, atol=1e-3)
    size = (trained_run.run_dir / "probe" / "step-0000020.npz").stat().st_size
    assert size < 2 * 1 * 2 * 16 * 16 + 2000  # about 2 bytes a weight, or less


def _train(out, data, *extra, steps=20):
    argv = ["train", "--data", str(data), "--out", str(out), "--max-steps", str(steps),
            "--max-time", "0", "--seed", "1", "--no-progress", *TINY, "train.eval_interval=5",
            "train.lr=1e-2", "train.decay_steps=20", *extra]  # fmt: skip
    assert main(argv) == 0


def _losses(run_dir) -> list[tuple]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    keys = ("step", "train_loss", "val_loss", "eval_train_loss")
    return [tuple(json.loads(line).get(k) for k in keys) for line in lines]


def test_recording_changes_no_loss_and_a_resumed_run_records_the_same(tmp_path, text_file):
    """With dropout, so that a stray draw from the global random generator would show."""
    dropout = "model.dropout=0.1"
    _train(tmp_path / "straight", text_file, dropout)
    _train(tmp_path / "no-probe", text_file, dropout, "train.probe=false")
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "no-probe")
    assert not (tmp_path / "no-probe" / "probe").exists()

    _train(tmp_path / "halves", text_file, dropout, steps=10)
    assert main(["train", "--out", str(tmp_path / "halves"), "--resume", "--max-steps", "20",
                 "--no-progress"]) == 0  # fmt: skip
    assert _losses(tmp_path / "halves") == _losses(tmp_path / "straight")
    straight, halves = read_records(tmp_path / "straight"), read_records(tmp_path / "halves")
    assert [r.step for r in halves] == [r.step for r in straight] == [5, 10, 15, 20]
    for a, b in zip(straight, halves, strict=True):
        np.testing.assert_array_equal(a.maps[0].weights, b.maps[0].weights)


def test_overwrite_starts_the_probe_records_again(tmp_path, text_file):
    _train(tmp_path / "run", text_file)
    _train(tmp_path / "run", text_file, "--overwrite", steps=5)
    assert [r.step for r in read_records(tmp_path / "run")] == [5]


def test_a_given_probe_text_is_recorded(tmp_path, text_file):
    _train(tmp_path / "run", text_file, "train.probe_text=To be, or not", steps=5)
    (record,) = read_records(tmp_path / "run")
    assert record.text == "To be, or not" and record.maps[0].queries == list("To be, or not")


# -- the three numbers -----------------------------------------------------------------------


def test_head_stats_of_maps_with_known_answers():
    tokens = list("ab cd")
    t = len(tokens)
    previous = np.zeros((t, t))
    previous[0, 0] = 1.0
    previous[np.arange(1, t), np.arange(t - 1)] = 1.0  # every query reads the token before it
    uniform = np.tril(np.ones((t, t)))
    uniform /= uniform.sum(1, keepdims=True)
    weights = np.stack([previous, uniform])[None]  # (1, 2, T, T)
    assert word_ids(tokens) == [0, 0, None, 1, 1]
    np.testing.assert_allclose(entropy(weights)[0], [0.0, np.log(np.arange(1, t + 1)).mean()])
    np.testing.assert_allclose(
        previous_token(weights)[0], [1.0, np.mean([1 / 2, 1 / 3, 1 / 4, 1 / 5])]
    )
    # queries with another token of their word before them: "b" (word "ab") and "d" ("cd")
    np.testing.assert_allclose(same_word(weights, tokens)[0], [1.0, np.mean([1 / 2, 1 / 5])])
    assert set(head_stats(weights, None)) == {"entropy"}
    assert word_ids(["Hello", " world", ",", " x"]) == [0, 1, 1, 2]


# -- the command -----------------------------------------------------------------------------


def test_over_training_page_holds_every_recorded_step(cli, trained_run, tmp_path):
    page = tmp_path / "heads.html"
    result = cli("attention", "--over-training", trained_run.run_dir, "--out", page)
    assert result.code == 0, result.err
    assert result.out.startswith(f"wrote {page}: 2 evaluations (steps 10-20) of ")
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"https?:|(src|href)\s*=|@import|url\(", html)
    data = re.search(r'<script id="qkv-data" type="application/json">(.*?)</script>', html, re.S)
    shown = json.loads(data.group(1))
    records = read_records(trained_run.run_dir)
    assert shown["steps"] == [10, 20]
    (page_map,) = shown["maps"]
    for frame, record in zip(page_map["frames"], records, strict=True):
        weights = record.maps[0].weights
        np.testing.assert_allclose(np.array(frame["weights"]), weights, atol=1e-3)
        stats = head_stats(weights, record.maps[0].keys)
        for name, values in stats.items():
            np.testing.assert_allclose(np.array(frame["stats"][name]), values, atol=1e-4)
        assert set(frame["stats"]) == {"entropy", "previous token", "same word"}


def test_over_training_gif_has_a_frame_per_evaluation(cli, trained_run, tmp_path):
    from PIL import Image

    gif = tmp_path / "heads.gif"
    result = cli("attention", "--over-training", trained_run.run_dir, "--out", gif)
    assert result.code == 0, result.err
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames == 2


def test_over_training_mistakes_are_one_line_errors(cli, trained_run, tmp_path, text_file):
    _train(tmp_path / "quiet", text_file, "train.probe=false", steps=5)
    recorded = read_records(trained_run.run_dir)[0].text
    cases = [
        ([tmp_path / "quiet", "--out", tmp_path / "a.html"],
         f"--over-training {tmp_path / 'quiet'}: the run has no probe records"),
        ([tmp_path / "nowhere", "--out", tmp_path / "a.html"],
         f"--over-training {tmp_path / 'nowhere'}: no such run directory"),
        ([trained_run.run_dir, "--out", tmp_path / "a.png"],
         f"--out {tmp_path / 'a.png'}: write an .html (a slider) or a .gif (an animation)"),
        ([trained_run.run_dir, "--out", tmp_path / "a.html", "--text", "other"],
         f"--text 'other': {trained_run.run_dir} recorded the probe {recorded!r}"),
    ]  # fmt: skip
    for args, message in cases:
        result = cli("attention", "--over-training", *args)
        assert result.code == 2, message
        (line,) = result.err.strip().splitlines()
        assert line.startswith(f"qkv: error: {message}")
    shutil.rmtree(tmp_path / "quiet")
