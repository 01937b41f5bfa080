"""Configuration: TOML files, key=value overrides, type checks, validation, JSON round trip."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest

from qkv.config import (
    DataConfig,
    GPTConfig,
    RunConfig,
    TrainConfig,
    config_from_json,
    load_config,
)
from qkv.errors import QkvError

TOML = """
[model]
n_layer = 2
n_embd = 48
n_head = 3
dropout = 0.1

[data]
source = "plays/"

[train]
lr = 3e-4
max_steps = 123
device = "cpu"
"""


def test_toml_file_sets_model_data_and_train(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(TOML, encoding="utf-8")
    config = load_config(path)
    assert (config.model.n_layer, config.model.n_embd, config.model.n_head) == (2, 48, 3)
    assert config.model.dropout == 0.1
    assert config.data.source == "plays/"
    assert config.train.lr == 3e-4 and config.train.max_steps == 123
    assert config.train.device == "cpu"
    # everything else keeps its default
    assert config.model.block_size == GPTConfig().block_size
    assert config.train.batch_size == TrainConfig().batch_size


def test_overrides_beat_the_toml_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(TOML, encoding="utf-8")
    config = load_config(path, ["model.n_layer=5", "lr=1e-2"])
    assert config.model.n_layer == 5 and config.train.lr == 1e-2
    assert config.model.n_embd == 48  # untouched by the overrides


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ("[modle]\nn_layer = 2\n", ["bad.toml: unknown table [modle] (did you mean model?)"]),
        ("[model]\nn_layr = 2\n", ["bad.toml: unknown key model.n_layr (did you mean n_layer?)"]),
        ("[train]\nlearning_rate = 1e-3\n", ["bad.toml: unknown key train.learning_rate"]),
        ("model = 3\n", ["bad.toml: [model] must be a table of key = value lines"]),
        ("[model]\nn_layer = true\n", ["bad.toml: model.n_layer must be int, got bool True"]),
        ("[model]\nn_layer = 2.5\n", ["bad.toml: model.n_layer must be int, got float 2.5"]),
        ('[train]\nlr = "fast"\n', ["bad.toml: train.lr must be float, got str 'fast'"]),
        ("[model]\nn_layer = \n", ["config file ", "bad.toml is not valid TOML: ", "line 2"]),
    ],
)
def test_bad_toml_files_are_errors(tmp_path, toml, fragments):
    path = tmp_path / "bad.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(QkvError) as info:
        load_config(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_toml_file_is_an_error(tmp_path):
    with pytest.raises(QkvError, match=f"^config file {tmp_path / 'nope.toml'} does not exist$"):
        load_config(tmp_path / "nope.toml")


# -- overrides -------------------------------------------------------------------------------


def test_dotted_and_bare_overrides():
    config = RunConfig().with_overrides(
        ["model.n_layer=3", "n_embd=48", "source=plays/", "train.device=cpu", "bias=false"]
    )
    assert config.model.n_layer == 3 and config.model.n_embd == 48
    assert config.data.source == "plays/"
    assert config.train.device == "cpu"
    assert config.model.bias is False


def test_values_are_read_like_toml():
    config = RunConfig().with_overrides(
        ['data.source="quoted path.txt"', "out_dir=runs/a", "lr=2.5e-3", "dropout=0"]
    )
    assert config.data.source == "quoted path.txt"
    assert config.train.out_dir == "runs/a"
    assert config.train.lr == 2.5e-3
    assert config.model.dropout == 0.0 and isinstance(config.model.dropout, float)


def test_override_typos_suggest_the_right_key():
    with pytest.raises(QkvError, match=r"did you mean n_layer\?"):
        RunConfig().with_overrides(["model.n_layr=2"])
    with pytest.raises(QkvError, match=r"unknown key n_layr \(did you mean n_layer\?\)"):
        RunConfig().with_overrides(["n_layr=2"])
    with pytest.raises(QkvError, match=r"unknown table 'modle', use one of \['model', 'data'"):
        RunConfig().with_overrides(["modle.n_layer=2"])
    with pytest.raises(QkvError, match="'n_layer' must look like key=value, e.g. model.n_layer=6"):
        RunConfig().with_overrides(["n_layer"])


@dataclass
class _Extra:
    seed: int = 0


def test_ambiguous_bare_key_is_an_error(monkeypatch):
    names = [f.name for t in (GPTConfig, DataConfig, TrainConfig) for f in dataclasses.fields(t)]
    for name in {n for n in names if names.count(n) > 1}:  # any that exist today
        with pytest.raises(QkvError, match=rf"{name} is in \[.*\]; write e.g. \w+\.{name}$"):
            RunConfig().with_overrides([f"{name}=1"])
    # a key in two tables (train.seed and extra.seed) must be written with its table
    sections = RunConfig.sections()
    monkeypatch.setattr(
        RunConfig, "sections", classmethod(lambda cls: {**sections, "extra": _Extra})
    )
    expected = r"override 'seed=3': seed is in \['train', 'extra'\]; write e.g. train.seed$"
    with pytest.raises(QkvError, match=expected):
        RunConfig().with_overrides(["seed=3"])


def test_int_stands_for_float_but_bool_not_for_int():
    config = RunConfig().with_overrides(["train.lr=1", "train.max_time=60"])
    assert config.train.lr == 1.0 and type(config.train.lr) is float
    assert type(config.train.max_time) is float
    with pytest.raises(QkvError, match="model.n_layer must be int, got bool True"):
        RunConfig().with_overrides(["model.n_layer=true"])
    with pytest.raises(QkvError, match="train.max_steps must be int, got bool False"):
        RunConfig.from_dict({"train": {"max_steps": False}})
    with pytest.raises(QkvError, match="model.n_layer must be int, got str 'abc'"):
        RunConfig().with_overrides(["model.n_layer=abc"])
    with pytest.raises(QkvError, match="model.bias must be bool, got int 1"):
        RunConfig().with_overrides(["model.bias=1"])
    with pytest.raises(QkvError, match="train.device must be str, got int 3"):
        RunConfig().with_overrides(["train.device=3"])


@pytest.mark.parametrize("item", ["train.lr=nan", "train.max_time=inf", "train.min_lr=-inf"])
def test_non_finite_numbers_are_refused(item):
    key, value = item.split("=")
    with pytest.raises(QkvError, match=f"{key} must be a finite number, got {value}$"):
        RunConfig().with_overrides([item])


def test_with_values_checks_like_everything_else():
    config = RunConfig().with_values({"train.max_steps": 7})
    assert config.train.max_steps == 7
    assert RunConfig().train.max_steps != 7  # the original is untouched
    with pytest.raises(QkvError, match="max_steps must be positive, got -7"):
        RunConfig().with_values({"train.max_steps": -7})


# -- JSON round trip -------------------------------------------------------------------------


def test_json_round_trip_gives_back_the_same_config(tmp_path):
    original = RunConfig().with_overrides(
        [
            "model.vocab_size=65",
            "model.n_layer=2",
            "model.positional=sinusoidal",
            "model.bias=false",
            "data.source=some/file.txt",
            "train.lr=1",
            "train.max_time=0",
        ]
    )
    path = tmp_path / "config.json"
    original.save_json(path)
    loaded = config_from_json(path)
    assert loaded == original
    assert json.loads(path.read_text(encoding="utf-8")) == original.to_dict()
    assert RunConfig.from_dict(original.to_dict()) == original
    # vocab_size may stay unset
    default = RunConfig()
    default.save_json(path)
    assert config_from_json(path) == default and config_from_json(path).model.vocab_size is None


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["block_size", "n_layer", "n_head", "n_embd", "vocab_size"])
@pytest.mark.parametrize("value", [0, -1])
def test_gpt_sizes_must_be_positive(name, value):
    with pytest.raises(QkvError, match=f"{name} must be positive, got {value}$"):
        GPTConfig(**{name: value})


def test_n_embd_must_divide_into_heads():
    with pytest.raises(QkvError, match="model.n_embd=30 must be divisible by model.n_head=4"):
        GPTConfig(n_embd=30, n_head=4)
    assert GPTConfig(n_embd=32, n_head=4).head_size == 8


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dropout": 1.0}, r"dropout must be in \[0.0, 1.0\), got 1.0"),
        ({"dropout": -0.1}, r"dropout must be in \[0.0, 1.0\), got -0.1"),
        ({"positional": "rotary-ish"}, r"positional must be one of \('learned', .*'rotary-ish'"),
        ({"norm": "middle"}, r"norm must be one of \('pre', 'post'\), got 'middle'"),
        ({"activation": "swishy"}, r"activation must be one of \('relu', .*got 'swishy'"),
        (
            {"positional": "sinusoidal", "n_embd": 33, "n_head": 3},
            "sinusoidal positions need an even model.n_embd, got 33",
        ),
    ],
)
def test_gpt_choices_and_fractions_are_checked(options, message):
    with pytest.raises(QkvError, match=message):
        GPTConfig(**options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_steps": 0}, "max_steps must be positive, got 0"),
        ({"batch_size": 0}, "batch_size must be positive, got 0"),
        ({"lr": 0}, "lr must be positive, got 0"),
        ({"max_time": -1.0}, "train.max_time must not be negative, got -1.0"),
        ({"warmup_steps": -1}, "train.warmup_steps must not be negative, got -1"),
        ({"grad_clip": -1.0}, "train.grad_clip must not be negative, got -1.0"),
        ({"beta2": 1.0}, r"beta2 must be in \[0.0, 1.0\), got 1.0"),
        ({"device": "tpu"}, r"device must be one of \('auto', 'cpu', 'cuda', 'mps'\), got 'tpu'"),
    ],
)
def test_train_config_is_checked(options, message):
    with pytest.raises(QkvError, match=message):
        TrainConfig(**options)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_val_fraction_is_checked(fraction):
    with pytest.raises(QkvError, match=rf"data.val_fraction must be in \(0, 1\), got {fraction}"):
        DataConfig(val_fraction=fraction)


def test_schedule_steps_defaults_to_max_steps():
    assert TrainConfig(max_steps=77).schedule_steps == 77
    assert TrainConfig(max_steps=77, decay_steps=50).schedule_steps == 50
