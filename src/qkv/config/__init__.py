"""Configuration: one tree of typed tables per model kind, and the table of kinds.

`load_config` builds a run's config from the kind's defaults, a preset, a TOML file and
`key=value` overrides; `config_from_json` reads the one a checkpoint saved. Nothing in this
package imports torch.
"""

from __future__ import annotations

from pathlib import Path

from qkv.config.choices import (
    ACTIVATIONS,
    DEVICES,
    NORM_PLACEMENTS,
    NORM_TYPES,
    OPTIMIZERS,
    POSITIONAL_KINDS,
)
from qkv.config.gpt import DataConfig, GPTConfig, RunConfig, TrainConfig
from qkv.config.kinds import DEFAULT_KIND, KINDS, ModelKind, kind_named, kind_of
from qkv.config.seq2seq import (
    Seq2SeqConfig,
    Seq2SeqDataConfig,
    Seq2SeqRunConfig,
    Seq2SeqTrainConfig,
)
from qkv.config.train import LoopConfig
from qkv.config.tree import ConfigTree, read_json_config, read_toml
from qkv.errors import QkvError

__all__ = [
    "ACTIVATIONS",
    "DEVICES",
    "KINDS",
    "NORM_PLACEMENTS",
    "NORM_TYPES",
    "OPTIMIZERS",
    "POSITIONAL_KINDS",
    "ConfigTree",
    "DataConfig",
    "GPTConfig",
    "LoopConfig",
    "ModelKind",
    "RunConfig",
    "Seq2SeqConfig",
    "Seq2SeqDataConfig",
    "Seq2SeqRunConfig",
    "Seq2SeqTrainConfig",
    "TrainConfig",
    "config_from_json",
    "kind_named",
    "kind_of",
    "load_config",
    "read_json_config",
    "read_toml",
]


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    kind: str | None = None,
    preset: str | None = None,
) -> ConfigTree:
    """Defaults of the kind, then a preset, the TOML file at `path`, the `key=value` overrides.

    The kind is `kind`, else the TOML file's top-level `kind = "..."`, else the GPT.
    """
    tables = read_toml(Path(path)) if path is not None else {}
    chosen = kind or tables.get("kind")
    if kind and tables.get("kind", kind) != kind:
        raise QkvError(f"{path} is a {tables['kind']} config; it cannot train --model {kind}")
    model_kind = kind_named(chosen or DEFAULT_KIND)
    config = model_kind.run_config()
    if preset is not None:
        config = config.with_values(model_kind.preset_values(preset))
    if path is not None:
        config = config.with_tables(tables, origin=str(path))
    return config.with_overrides(overrides or [])


def config_from_json(path: Path) -> ConfigTree:
    """The effective config a checkpoint saved, as its kind's config tree."""
    tree = read_json_config(path, f"is {path.parent} a qkv checkpoint?")
    return config_from_tree(tree, str(path))


def config_from_tree(tree: dict, origin: str) -> ConfigTree:
    return kind_of(tree, origin).run_config.from_saved(tree, origin)
