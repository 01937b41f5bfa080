"""The config tree: [model], [data] and [train] tables of typed dataclasses, and its files.

A run is described by one `ConfigTree` subclass per model kind (`RunConfig` for the GPT,
`Seq2SeqRunConfig` for the encoder-decoder). It comes from the kind's defaults, then a TOML
file with [model], [data] and [train] tables, then `key=value` overrides from the command
line (`model.n_layer=6 train.lr=1e-3`; a bare key such as `n_layer=6` works when only one
table has it). Every value is checked against its field's type and every choice is stored as
a string, so the effective config saves to JSON with the checkpoint (with its `"kind"`) and
loads back unchanged. Mistakes raise `QkvError` with a did-you-mean. Nothing here imports
torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from qkv.errors import QkvError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass
class ConfigTree:
    """model + data + train; a subclass declares the three tables and its kind's name."""

    KIND: ClassVar[str] = ""
    # What a saved config meant by a field it does not have: it was written before the field
    # existed, when qkv behaved as the value here says (not as today's default may).
    BEFORE_THE_FIELD: ClassVar[dict[str, dict[str, Any]]] = {}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, **dataclasses.asdict(self)}

    @classmethod
    def sections(cls) -> dict[str, type]:
        """{table name: its dataclass}."""
        return {f.name: f.default_factory for f in fields(cls)}  # type: ignore[misc]

    @classmethod
    def from_dict(cls, tree: dict[str, Any], origin: str = "config") -> ConfigTree:
        """Build from nested dicts, rejecting unknown tables and keys and wrong types."""
        tree = dict(tree)
        kind = tree.pop("kind", cls.KIND)
        if kind != cls.KIND:
            raise QkvError(f"{origin}: kind must be {cls.KIND!r}, got {kind!r}")
        sections = cls.sections()
        unknown = set(tree) - set(sections)
        if unknown:
            name = sorted(unknown)[0]
            raise QkvError(f"{origin}: unknown table [{name}]{_did_you_mean(name, sections)}")
        built = {}
        for section, section_cls in sections.items():
            values = tree.get(section, {})
            if not isinstance(values, dict):
                raise QkvError(f"{origin}: [{section}] must be a table of key = value lines")
            built[section] = _build_section(section, section_cls, values, origin)
        return cls(**built)

    @classmethod
    def from_saved(cls, tree: dict[str, Any], origin: str) -> ConfigTree:
        """The config a checkpoint saved, with `BEFORE_THE_FIELD` for fields it lacks."""
        tree = dict(tree)
        for section, values in cls.BEFORE_THE_FIELD.items():
            if isinstance(tree.get(section), dict):
                tree[section] = {**values, **tree[section]}
        return cls.from_dict(tree, origin)

    def with_overrides(self, overrides: list[str]) -> ConfigTree:
        """Apply `key=value` strings: `model.n_layer=6`, or a bare key that is unambiguous."""
        values = {}
        for item in overrides:
            section, key, raw = _parse_override(item, self.sections())
            values[f"{section}.{key}"] = _parse_value(raw)
        return self.with_values(values)

    def with_values(self, values: dict[str, Any]) -> ConfigTree:
        """A copy with `{"section.key": value}` set, checked like everything else."""
        tree = self.to_dict()
        for dotted, value in values.items():
            section, key = dotted.split(".", 1)
            tree[section][key] = value
        return type(self).from_dict(tree, origin="override")

    def with_tables(self, tables: dict[str, Any], origin: str) -> ConfigTree:
        """A copy with the tables of a TOML file laid over this config's, key by key."""
        tree = self.to_dict()
        for section, values in tables.items():
            if isinstance(values, dict) and isinstance(tree.get(section), dict):
                tree[section] = {**tree[section], **values}
            else:
                tree[section] = values
        return type(self).from_dict(tree, origin=origin)

    def save_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def _field_types(section_cls: type) -> dict[str, type]:
    defaults = section_cls()
    return {f.name: type(getattr(defaults, f.name)) for f in fields(section_cls)}


def _build_section(section: str, section_cls: type, values: dict, origin: str) -> Any:
    types = _field_types(section_cls)
    checked = {}
    for key, value in values.items():
        if key not in types:
            hint = _did_you_mean(key, types)
            raise QkvError(f"{origin}: unknown key {section}.{key}{hint}")
        checked[key] = _coerce(f"{section}.{key}", value, types[key], origin)
    try:
        return section_cls(**checked)
    except TypeError as exc:  # a value of a type the checks above did not foresee
        raise QkvError(f"{origin}: bad value in [{section}]: {exc}") from None


def _coerce(name: str, value: Any, expected: type, origin: str) -> Any:
    """Accept a value of the field's own type; ints stand for floats; None only if unset.

    NaN and infinity are refused: no setting means anything with them.
    """
    if value is None and expected is type(None):
        return None
    if expected is type(None):  # a field whose default is None (model.vocab_size)
        expected = int
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, float) and not math.isfinite(value):
        raise QkvError(f"{origin}: {name} must be a finite number, got {value}")
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise QkvError(
        f"{origin}: {name} must be {expected.__name__}, got {type(value).__name__} {value!r}"
    )


def _parse_override(item: str, sections: dict[str, type]) -> tuple[str, str, str]:
    if "=" not in item:
        raise QkvError(f"override {item!r} must look like key=value, e.g. model.n_layer=6")
    key, raw = item.split("=", 1)
    key = key.strip()
    if "." in key:
        section, name = key.split(".", 1)
        if section not in sections:
            raise QkvError(
                f"override {item!r}: unknown table {section!r}, use one of {list(sections)}"
            )
        if name not in _field_types(sections[section]):
            hint = _did_you_mean(name, _field_types(sections[section]))
            raise QkvError(f"override {item!r}: unknown key {key}{hint}")
        return section, name, raw
    owners = [s for s, cls in sections.items() if key in _field_types(cls)]
    if len(owners) == 1:
        return owners[0], key, raw
    if owners:
        raise QkvError(f"override {item!r}: {key} is in {owners}; write e.g. {owners[0]}.{key}")
    every_key = [f"{s}.{k}" for s, cls in sections.items() for k in _field_types(cls)]
    every_key += [k for cls in sections.values() for k in _field_types(cls)]
    raise QkvError(f"override {item!r}: unknown key {key}{_did_you_mean(key, every_key)}")


def _parse_value(raw: str) -> Any:
    """Read a command-line value as TOML would (numbers, true/false, quoted strings), else text."""
    raw = raw.strip()
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _did_you_mean(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise QkvError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QkvError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise QkvError(f"config file {path} is not valid TOML: {exc}") from None


def read_json_config(path: Path, missing_hint: str, what: str = "JSON config") -> dict[str, Any]:
    """The JSON object in `path`; a missing, unreadable or malformed file is a one-line
    QkvError (`missing_hint` follows "is missing:", e.g. "is DIR a qkv checkpoint?"; `what`
    names the kind of file in the message)."""
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QkvError(f"{path} is missing: {missing_hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QkvError(f"{path} is not a readable {what}: {exc}") from None
    if not isinstance(tree, dict):
        raise QkvError(f"{path} must hold a JSON object")
    return tree
