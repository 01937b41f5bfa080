"""The one table of model kinds: what each kind is built from, and what it can do.

A checkpoint's config.json records its kind (`"kind": "gpt"` or `"seq2seq"`; a file without
one is a GPT, as every file was before the field); `kind_of` looks it up here, and every
verb asks the kind, never the model, what it may do. Adding a kind is one row: its config
tree, its model class, its training recipe, and the library functions behind the verbs it
supports (docs/architecture.md walks through one). The classes are named as
"module:attribute" and imported on first use, so reading the table, like reading a config,
does not import torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from qkv.config.gpt import RunConfig
from qkv.config.seq2seq import SEQ2SEQ_PRESETS, Seq2SeqRunConfig
from qkv.config.tree import ConfigTree
from qkv.errors import QkvError


@dataclass(frozen=True)
class ModelKind:
    """One row of the table."""

    name: str
    summary: str  # what it learns, for help texts and error messages
    run_config: type[ConfigTree]
    model: str  # "module:Class" of the nn.Module, built from run_config().model
    recipe: str  # "module:Class" of its training recipe (qkv.training.recipe.Recipe)
    verbs: dict[str, str] = field(default_factory=dict)  # verb -> "module:function"
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> model fields

    def model_class(self) -> type:
        return _resolve(self.model)

    def recipe_class(self) -> type:
        return _resolve(self.recipe)

    def verb(self, name: str, where: str = "this checkpoint") -> Any:
        """The function behind `qkv <name>` for this kind; a kind without it is a QkvError."""
        if name not in self.verbs:
            own = " or ".join(f"qkv {verb}" for verb in list(self.verbs)[:2])
            able = " and ".join(k.name for k in KINDS.values() if name in k.verbs)
            raise QkvError(
                f"{where} holds a {self.name} model: use {own} ({self.summary}); qkv {name} "
                f"works on {able} checkpoints"
            )
        return _resolve(self.verbs[name])

    def preset_values(self, name: str) -> dict[str, Any]:
        """{"model.field": value} for a named preset, as overrides."""
        if name not in self.presets:
            choices = sorted(self.presets) or "none"
            raise QkvError(f"unknown {self.name} preset {name!r}; choose one of {choices}")
        return {f"model.{key}": value for key, value in self.presets[name].items()}


KINDS: dict[str, ModelKind] = {
    "gpt": ModelKind(
        name="gpt",
        summary="a decoder-only language model of a text",
        run_config=RunConfig,
        model="qkv.models.gpt:GPT",
        recipe="qkv.training.lm:LanguageModelRecipe",
        verbs={
            "sample": "qkv.decoding.sampling:stream_samples",
            "eval": "qkv.evaluate:evaluate_language_model",
            "attention": "qkv.viz.maps:gpt_attention_maps",
            "positions": "qkv.viz.positions:checkpoint_positions",
            "export-hf": "qkv.interop.hf_checkpoint:export_hf",
        },
    ),
    "seq2seq": ModelKind(
        name="seq2seq",
        summary="an encoder-decoder that maps source strings to target strings",
        run_config=Seq2SeqRunConfig,
        model="qkv.models.seq2seq:Seq2SeqTransformer",
        recipe="qkv.training.translation:TranslationRecipe",
        verbs={  # the first two are named when another kind's verb is asked for
            "translate": "qkv.decoding.translate:translate_texts",
            "eval": "qkv.evaluate:evaluate_translation",
            "attention": "qkv.viz.maps:seq2seq_attention_maps",
        },
        presets=SEQ2SEQ_PRESETS,
    ),
}
DEFAULT_KIND = "gpt"


def kind_named(name: str) -> ModelKind:
    if name not in KINDS:
        raise QkvError(f"unknown model kind {name!r}; choose one of {sorted(KINDS)}")
    return KINDS[name]


def kind_of(tree: dict[str, Any], origin: str) -> ModelKind:
    """The kind a saved config tree declares (no "kind": a GPT, as before the field)."""
    name = tree.get("kind", DEFAULT_KIND)
    if name not in KINDS:
        raise QkvError(f"{origin}: unknown model kind {name!r}; qkv knows {sorted(KINDS)}")
    return KINDS[name]


def _resolve(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)
