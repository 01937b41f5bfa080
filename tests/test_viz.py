"""qkv attention and qkv plot: the files, what they draw, and the mistakes a user can make."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from qkv.checkpoint import load_checkpoint
from qkv.nn.attention import causal_mask
from qkv.nn.positional import sinusoidal_table
from qkv.viz.curves import curves_figure, read_metrics
from qkv.viz.explorer import explorer_html
from qkv.viz.heatmaps import attention_figure
from qkv.viz.maps import AttentionMap, gpt_attention_maps
from qkv.viz.positions import cosine_similarity, positional_table, positions_figure

TEXT = "To be, or not"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def figure_pixels(figure, dpi: int) -> tuple[int, int]:
    width, height = figure.get_size_inches() * dpi
    return round(width), round(height)


def images_of(figure) -> list[np.ndarray]:
    return [np.asarray(image.get_array()) for axes in figure.axes for image in axes.images]


@pytest.fixture(scope="module")
def model_and_maps(trained_run):
    model, tokenizer, _ = load_checkpoint(trained_run.run_dir)
    model.eval()
    return model, tokenizer, gpt_attention_maps(model, tokenizer, TEXT)


# -- the weights --------------------------------------------------------------------------


def test_maps_hold_the_models_own_weights_rows_summing_to_one_and_causal(model_and_maps):
    model, tokenizer, maps = model_and_maps
    (attention,) = maps
    assert attention.name == "self-attention"
    assert attention.queries == attention.keys == list(TEXT)
    with torch.no_grad():
        _, _, weights = model(torch.tensor([tokenizer.encode(TEXT)]), return_weights=True)
    expected = torch.stack([w[0] for w in weights]).numpy()  # (L, H, T, T)
    np.testing.assert_allclose(attention.weights, expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(attention.weights.sum(-1), 1.0, atol=1e-5)
    future = ~causal_mask(len(TEXT)).numpy()
    assert (attention.weights[..., future] == 0).all()


def test_every_heatmap_draws_exactly_its_layer_and_head(model_and_maps):
    (attention,) = model_and_maps[2]
    figure = attention_figure([attention])
    drawn = images_of(figure)
    assert len(drawn) == attention.n_layer * attention.n_head
    expected = attention.weights.reshape(-1, len(TEXT), len(TEXT))
    for image, weights in zip(drawn, expected, strict=True):
        np.testing.assert_array_equal(image, weights)


def test_an_attention_map_refuses_weights_that_do_not_fit_its_tokens():
    with pytest.raises(ValueError, match="do not match"):
        AttentionMap("self-attention", ["a", "b"], ["a", "b"], np.zeros((1, 1, 2, 3)))


def test_cross_attention_maps_draw_target_by_source():
    # the shape a seq2seq provider will give: 3 target tokens attending over 5 source tokens
    weights = np.random.default_rng(0).dirichlet(np.ones(5), size=(2, 2, 3)).astype("float32")
    cross = AttentionMap("cross-attention", list("123"), list("abcde"), weights)
    figure = attention_figure([cross, cross])
    assert [image.shape for image in images_of(figure)] == [(3, 5)] * 8


# -- the files the CLI writes ---------------------------------------------------------------


def test_attention_png_has_the_expected_size(cli, trained_run, model_and_maps, tmp_path):
    out = tmp_path / "attn.png"
    result = cli("attention", "--checkpoint", trained_run.run_dir, "--text", TEXT, "--out", out)
    assert result.code == 0, result.err
    assert result.out.startswith(f"wrote {out}: self-attention 1 layers x 2 heads x 13 x 13")
    title = f"{trained_run.run_dir.name}: {TEXT!r}"
    assert png_size(out) == figure_pixels(attention_figure(model_and_maps[2], title), 100)


def test_attention_html_inlines_the_weights_and_references_nothing_outside(
    cli, trained_run, model_and_maps, tmp_path
):
    out = tmp_path / "attn.html"
    result = cli("attention", "--checkpoint", trained_run.run_dir, "--text", TEXT, "--out", out)
    assert result.code == 0, result.err
    page = out.read_text(encoding="utf-8")
    assert "http:" not in page and "https:" not in page and "//cdn" not in page
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", page)
    data = re.search(r'<script id="qkv-data" type="application/json">(.*?)</script>', page, re.S)
    (shown,) = json.loads(data.group(1))["maps"]
    (attention,) = model_and_maps[2]
    assert shown["queries"] == list(TEXT)
    np.testing.assert_allclose(np.array(shown["weights"]), attention.weights, atol=1e-5)


def test_token_text_cannot_break_out_of_the_pages_script():
    tokens = ["</script>", "<b>", "&amp;"]
    attention = AttentionMap("self-attention", tokens, tokens, np.full((1, 1, 3, 3), 1 / 3))
    page = explorer_html([attention], title="</script><script>alert(1)")
    assert page.count("</script>") == 2  # the data element's and the code's, nothing else
    assert "<b>" not in page and "&amp;" not in page
    data = re.search(r'type="application/json">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)["maps"][0]["queries"] == tokens


def test_train_writes_the_curves_and_plot_redraws_them(cli, trained_run, tmp_path):
    assert png_size(trained_run.run_dir / "curves.png") == (990, 675)  # 11 x 7.5 in at 90 dpi
    out = tmp_path / "curves.png"
    result = cli("plot", trained_run.run_dir, "--out", out)
    assert result.code == 0 and result.out.strip() == f"wrote {out}"
    assert png_size(out) == (990, 675)


def test_curves_draw_the_logged_values(trained_run):
    records = read_metrics(trained_run.run_dir)
    figure = curves_figure(records)
    by_step = figure.axes[0]
    train, val = by_step.get_lines()
    logged = [r for r in records if "train_loss" in r]
    assert list(train.get_xdata()) == [r["step"] for r in logged]
    assert list(train.get_ydata()) == [r["train_loss"] for r in logged]
    assert list(val.get_ydata()) == [r["val_loss"] for r in records if "val_loss" in r]
    lr_line = figure.axes[2].get_lines()[0]
    assert list(lr_line.get_ydata()) == [r["lr"] for r in logged]


def test_a_line_cut_short_in_the_metrics_is_skipped(run_copy):
    metrics = run_copy / "metrics.jsonl"
    count = len(read_metrics(run_copy))
    metrics.write_text(metrics.read_text() + '{"step": 99, "train_lo', encoding="utf-8")
    assert len(read_metrics(run_copy)) == count


def test_a_failure_to_draw_the_curves_only_warns(cli, text_file, tiny, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr("qkv.viz.curves.plot_training_curves", broken)
    out = tmp_path / "run"
    result = cli("train", "--data", text_file, "--out", out, "--max-steps", "2", *tiny)
    assert result.code == 0
    assert result.err.strip().splitlines()[-1] == (
        "qkv: warning: no training curves: RuntimeError: no fonts today"
    )
    assert (out / "model.safetensors").exists() and not (out / "curves.png").exists()


# -- positions ----------------------------------------------------------------------------


def test_sinusoidal_positions_draw_the_papers_table(cli, tmp_path):
    out = tmp_path / "sin.png"
    result = cli("plot", "--positions", "sinusoidal", "--out", out)
    assert result.code == 0, result.err
    assert png_size(out) == (1170, 495)  # 13 x 5.5 in at 90 dpi
    table = sinusoidal_table(96, 128).numpy()
    matrix, similarity = images_of(positions_figure(table, "sinusoidal", ""))
    np.testing.assert_array_equal(matrix, table.T)
    np.testing.assert_allclose(np.diag(similarity), 1.0, atol=1e-6)
    # the sinusoids' similarity depends only on the distance |i - j|
    np.testing.assert_allclose(similarity[10, 20], similarity[50, 60], atol=1e-5)


def test_learned_positions_draw_the_checkpoints_p(cli, text_file, tiny, tmp_path):
    run = tmp_path / "learned"
    train_args = ["--max-steps", "1", "--no-progress", *tiny, "model.positional=learned"]
    assert cli("train", "--data", text_file, "--out", run, *train_args).code == 0
    result = cli("plot", "--positions", run)
    assert result.code == 0 and result.out.strip() == f"wrote {run / 'positions.png'}"
    assert png_size(run / "positions.png") == (1170, 495)
    model, _, config = load_checkpoint(run)
    table = positional_table("learned", config.model, model)
    np.testing.assert_array_equal(table, model.transformer.wpe.weight.detach().numpy())
    similarity = cosine_similarity(table)
    norms = np.linalg.norm(table, axis=1)
    assert similarity[0, 1] == pytest.approx(table[0] @ table[1] / norms[0] / norms[1], rel=1e-5)


def test_rotary_positions_draw_the_rotation_and_its_relative_similarity(cli, trained_run):
    _, _, config = load_checkpoint(trained_run.run_dir)
    assert config.model.positional == "rotary"
    table = positional_table("rotary", config.model, None)
    assert table.shape == (config.model.block_size, config.model.head_size)
    similarity = cosine_similarity(table)
    theta = 10000.0 ** (-np.arange(0, config.model.head_size, 2) / config.model.head_size)
    np.testing.assert_allclose(similarity[3, 7], np.cos(4 * theta).mean(), atol=1e-5)


# -- mistakes -----------------------------------------------------------------------------


def one_line_error(result) -> str:
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qkv: error: "), result.err
    return lines[0]


def test_a_missing_checkpoint_is_a_one_line_error(cli, tmp_path):
    missing = tmp_path / "nowhere"
    line = one_line_error(
        cli("attention", "--checkpoint", missing, "--text", "a", "--out", "a.png")
    )
    assert line == f"qkv: error: checkpoint {missing} does not exist or is not a directory"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "--text is empty: give the text whose attention to draw"),
        ("To be €~", "characters not in the model's vocabulary: '~', '€'"),
        ("To be " * 3, "--text is 18 tokens, longer than the model's context of 16; shorten it"),
    ],
    ids=["empty", "unknown-characters", "too-long"],
)
def test_bad_text_is_a_one_line_error(cli, trained_run, tmp_path, text, message):
    out = tmp_path / "attn.png"
    result = cli("attention", "--checkpoint", trained_run.run_dir, "--text", text, "--out", out)
    assert one_line_error(result) == f"qkv: error: {message}"
    assert not out.exists()


def test_an_out_file_of_another_kind_is_a_one_line_error(cli, trained_run):
    result = cli("attention", "--checkpoint", trained_run.run_dir, "--text", "To", "--out", "a.pdf")
    assert "write a .png (heatmaps) or an .html (explorer) file" in one_line_error(result)


def test_an_unwritable_out_is_a_one_line_error(cli, trained_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = blocker / "attn.html"
    result = cli("attention", "--checkpoint", trained_run.run_dir, "--text", "To", "--out", out)
    assert one_line_error(result).startswith(f"qkv: error: cannot write {out}: ")


def test_plot_errors_are_one_line(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_line_error(cli("plot", empty))
    assert line == f"qkv: error: {empty}/metrics.jsonl is missing: is {empty} a qkv run directory?"
    (empty / "metrics.jsonl").write_text('{"step": 0, "stop": "SIGINT"}\n')
    assert one_line_error(cli("plot", empty)).endswith("holds no loss yet: nothing to plot")
    missing = tmp_path / "nowhere"
    line = one_line_error(cli("plot", missing))
    assert line == f"qkv: error: run directory {missing} does not exist or is not a directory"
    assert "give a RUN_DIR" in one_line_error(cli("plot"))
    assert "give a RUN_DIR" in one_line_error(cli("plot", empty, "--positions", "sinusoidal"))
    line = one_line_error(cli("plot", "--positions", missing))
    assert line == f"qkv: error: checkpoint {missing} does not exist or is not a directory"
