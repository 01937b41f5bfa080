"""A third model kind in about a hundred lines: docs/architecture.md's worked example.

An encoder-only classifier (the GPT's block without the causal mask, mean-pooled, a linear
head) learns which letter is in the majority in strings of nine a's and b's. It needs a
config tree, a model, a recipe and one row in the table of kinds; the one training loop,
checkpoints, resuming and `qkv.load` then work for it unchanged.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qkv
from qkv.config import KINDS, ConfigTree, LoopConfig, ModelKind
from qkv.nn.blocks import TransformerBlock, block_options, make_norm
from qkv.nn.positional import LearnedPositionalEmbedding
from qkv.tokenizer import CharTokenizer
from qkv.training.distributed import SINGLE
from qkv.training.loop import Trainer
from qkv.training.recipe import Recipe

LENGTH = 9  # odd: there is always a majority


@dataclass
class ClassifierConfig:
    vocab_size: int | None = None
    n_layer: int = 1
    n_embd: int = 32
    n_head: int = 2
    n_kv_head: int | None = None
    activation: str = "relu"
    norm: str = "pre"
    norm_type: str = "layernorm"
    bias: bool = True
    dropout: float = 0.0


@dataclass
class MajorityData:
    n_train: int = 2000
    n_val: int = 200
    seed: int = 0


@dataclass
class ClassifierTrain(LoopConfig):
    optimizer: str = "adamw"
    lr: float = 3e-3
    eval_interval: int = 50


@dataclass
class ClassifierRunConfig(ConfigTree):
    KIND: ClassVar[str] = "classifier"
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    data: MajorityData = field(default_factory=MajorityData)
    train: ClassifierTrain = field(default_factory=ClassifierTrain)


class Classifier(nn.Module):
    """logits = W mean_t(Encoder(E[ids] + P)_t): bidirectional blocks, mean-pooled."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.positions = LearnedPositionalEmbedding(LENGTH, config.n_embd)
        options = block_options(config)
        self.blocks = nn.ModuleList(
            TransformerBlock(config.n_embd, config.n_head, causal=False, **options)
            for _ in range(config.n_layer)
        )
        self.norm = make_norm(config.norm_type, config.n_embd, config.bias)
        self.head = nn.Linear(config.n_embd, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> logits (B, 2): is "a" or "b" in the majority?"""
        x = self.embed(ids) + self.positions(torch.arange(ids.size(1), device=ids.device))
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        return self.head(self.norm(x).mean(dim=1))


class MajorityRecipe(Recipe):
    """Random strings of a and b, labelled by their majority letter; a constant lr."""

    def __init__(self, config, tokenizer, device, world=SINGLE) -> None:
        self.tokenizer = tokenizer or CharTokenizer("ab")
        model = dataclasses.replace(config.model, vocab_size=self.tokenizer.vocab_size)
        self.config, self.device, self.world = (
            dataclasses.replace(config, model=model),
            device,
            world,
        )
        rng = random.Random(config.data.seed)
        self.train_set = self._examples(rng, config.data.n_train)
        self.val_set = self._examples(rng, config.data.n_val)
        self.generator = torch.Generator().manual_seed(config.train.seed)

    def _examples(self, rng: random.Random, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        texts = ["".join(rng.choice("ab") for _ in range(LENGTH)) for _ in range(n)]
        ids = torch.tensor([self.tokenizer.encode(t) for t in texts])
        return ids, torch.tensor([int(t.count("b") > LENGTH // 2) for t in texts])

    def learning_rate(self, step, elapsed):
        return self.config.train.lr

    def next_batch(self):
        size, b = self.world.size, self.config.train.batch_size
        rows = torch.randint(len(self.train_set[1]), (size * b,), generator=self.generator)
        rows = rows[self.world.rank * b : (self.world.rank + 1) * b]
        return tuple(t[rows].to(self.device) for t in self.train_set), len(rows)

    def loss(self, forward, batch):
        return F.cross_entropy(forward(batch[0]), batch[1])

    @torch.no_grad()
    def evaluate(self, model):
        logits = model(self.val_set[0].to(self.device))
        labels = self.val_set[1].to(self.device)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return {"val_loss": F.cross_entropy(logits, labels).item(), "val_accuracy": accuracy.item()}

    def describe(self, model):
        return f"classifier, {len(self.train_set[1])} train strings"

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


CLASSIFIER = ModelKind(
    name="classifier",
    summary="an encoder that labels strings",
    run_config=ClassifierRunConfig,
    model="test_third_kind:Classifier",
    recipe="test_third_kind:MajorityRecipe",
)
MajorityRecipe.kind = CLASSIFIER


@pytest.fixture
def classifier_kind(monkeypatch):
    monkeypatch.setitem(KINDS, "classifier", CLASSIFIER)


def config(tmp_path, steps: int) -> ClassifierRunConfig:
    values = {"train.out_dir": str(tmp_path / "run"), "train.max_steps": steps}
    values |= {"train.max_time": 0.0, "train.device": "cpu", "train.batch_size": 32}
    return ClassifierRunConfig().with_values(values)


def test_a_third_kind_trains_saves_loads_and_resumes_through_the_one_loop(
    tmp_path, classifier_kind
):
    result = Trainer(config(tmp_path, 150), progress=False).fit()
    assert result.metrics["val_accuracy"] > 0.9  # chance is 0.5
    model, tokenizer = qkv.load(tmp_path / "run")
    assert isinstance(model, Classifier) and tokenizer.vocab_size == 2
    ids = torch.tensor([tokenizer.encode("bbbbbaaaa"), tokenizer.encode("aaaaabbbb")])
    assert model(ids).argmax(-1).tolist() == [1, 0]
    resumed = Trainer(config(tmp_path, 160), resume=True, progress=False)
    assert resumed.step == 150
    assert resumed.fit().step == 160


def test_qkv_train_offers_a_registered_kind(tmp_path, classifier_kind, cli):
    out = tmp_path / "cli-run"
    args = ["--model", "classifier", "--out", out, "--max-steps", 20, "--max-time", 0]
    result = cli("train", *args, "--device", "cpu", "--no-progress", "train.batch_size=16")
    assert result.code == 0, result.err
    assert "val accuracy" in result.out
    result = cli("eval", "--checkpoint", out)
    assert result.code == 2 and "holds a classifier model" in result.err
