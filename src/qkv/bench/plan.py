"""What `qkv bench` measures and how long: `Plan`, its training cases, and the two plans.

`full_plan` holds the sizes of the table in benchmarks/RESULTS.md, `quick_plan` tiny sizes
that run every code path in a few seconds (what the tests use). Training cases are moved
to the nearest config GPT-2 can represent, so that the HF peer can run the same model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qkv.config import GPTConfig, TrainConfig
from qkv.interop import nearest_gpt2


@dataclass(frozen=True)
class TrainCase:
    label: str
    model: GPTConfig
    batch_size: int


@dataclass(frozen=True)
class DecodeCase:
    """A model `qkv bench --decode` decodes with random weights, in every mode."""

    label: str
    model: GPTConfig


@dataclass(frozen=True)
class Plan:
    """What to measure and how long: `full_plan` for the table, `quick_plan` for tests."""

    matmul_n: int
    train_cases: tuple[TrainCase, ...]
    muon_model: GPTConfig
    gen_model: GPTConfig
    gen_prompts: tuple[int, ...]
    gen_new_tokens: int
    attn_lengths: tuple[int, ...]
    attn_heads: int = 4
    attn_head_size: int = 64
    rounds: int = 7  # alternating rounds per row; each row reports the fastest
    min_round_s: float = 1.0  # a training round repeats the step until it lasts this long
    gen_rounds: int = 3
    matmul_repeats: int = 10
    decode_cases: tuple[DecodeCase, ...] = ()  # qkv bench --decode
    decode_batches: tuple[int, ...] = (1, 8)
    decode_modes: tuple[str, ...] = ("fp32", "bf16", "int8")
    decode_new_tokens: int = 64  # per timed run
    decode_rounds: int = 3
    agree_steps: int = 256  # greedy tokens compared with float32's
    bandwidth_mib: int = 1024  # the tensor summed to measure streaming bandwidth


def _describe(m: GPTConfig, batch_size: int) -> str:
    return f"{m.n_layer}L/{m.n_embd}C/{m.n_head}H ctx{m.block_size} B{batch_size} {m.activation}"


def _train_case(name: str, model: GPTConfig, batch_size: int) -> TrainCase:
    """A case GPT-2 can run: the nearest representable config, with what changed in the label."""
    model, changes = nearest_gpt2(model)
    changed = f", {', '.join(changes)}" if changes else ""
    return TrainCase(f"{name} {_describe(model, batch_size)}{changed}", model, batch_size)


def _decode_case(model: GPTConfig) -> DecodeCase:
    model = nearest_gpt2(model)[0]
    return DecodeCase(f"{model.n_layer}L/{model.n_embd}C vocab {model.vocab_size}", model)


GPT2_SMALL = GPTConfig(
    vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, activation="gelu"
)


def full_plan() -> Plan:
    """The sizes of the table in benchmarks/RESULTS.md (about 2 minutes on 2 CPU cores;
    the decode rows of `qkv bench --decode`, about 5 more)."""
    default = GPTConfig(vocab_size=65)  # qkv's defaults, tinyshakespeare's 65 characters
    target = dataclasses.replace(default, n_layer=6, n_embd=384, n_head=6, block_size=256)
    decode_6l = dataclasses.replace(target, block_size=512, activation="gelu")
    return Plan(
        matmul_n=2048,
        train_cases=(
            _train_case("default", default, TrainConfig().batch_size),
            _train_case("target", target, 8),
        ),
        muon_model=default,
        gen_model=nearest_gpt2(dataclasses.replace(default, block_size=1024))[0],
        gen_prompts=(16, 512),
        gen_new_tokens=256,
        attn_lengths=(256, 512, 1024, 2048, 4096, 8192),
        decode_cases=(_decode_case(decode_6l), _decode_case(GPT2_SMALL)),
        decode_modes=("fp32", "bf16", "int8", "int4"),
    )


def quick_plan() -> Plan:
    """Tiny sizes: every code path in a few seconds."""
    tiny = GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_embd=32, n_head=2)
    tiny = nearest_gpt2(tiny)[0]
    return Plan(
        matmul_n=128,
        train_cases=(_train_case("tiny", tiny, 2),),
        muon_model=tiny,
        gen_model=dataclasses.replace(tiny, block_size=32),
        gen_prompts=(4,),
        gen_new_tokens=8,
        attn_lengths=(32, 64),
        attn_heads=2,
        attn_head_size=16,
        rounds=2,
        min_round_s=0.0,
        gen_rounds=1,
        matmul_repeats=2,
        decode_cases=(_decode_case(dataclasses.replace(tiny, vocab_size=64, block_size=32)),),
        decode_batches=(1, 2),
        decode_new_tokens=4,
        decode_rounds=1,
        agree_steps=8,
        bandwidth_mib=16,
    )
