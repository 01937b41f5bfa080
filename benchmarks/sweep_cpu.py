"""Time-to-quality sweep: which configuration learns tinyshakespeare best in a fixed time?

Each configuration runs as a user would run it, in a fresh process:

    qkv train --data tinyshakespeare --max-time SECONDS --out DIR key=value ...
    qkv eval --checkpoint DIR

and one row per configuration (val loss from `qkv eval`, training tokens/s, steps) is printed
as a Markdown table and appended to a JSONL file. Run it on an otherwise idle machine: the
other processes' load shows up directly in the losses.

    QKV_DATA_DIR=../shared/data python benchmarks/sweep_cpu.py --max-time 75
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# name -> overrides on top of qkv's defaults
CONFIGS: dict[str, list[str]] = {
    "defaults": [],
    "adamw": ["train.optimizer=adamw"],
    "muon": ["train.optimizer=muon"],
    "muon-lr4e-3": ["train.optimizer=muon", "train.lr=4e-3"],
    "muon-lr5e-3": ["train.optimizer=muon", "train.lr=5e-3"],
    "muon-2L": ["train.optimizer=muon", "model.n_layer=2"],
    "muon-ctx64-b24": ["train.optimizer=muon", "model.block_size=64", "train.batch_size=24"],
    "muon-b12": ["train.optimizer=muon", "train.batch_size=12"],
    "muon-2L-lr5e-3": ["train.optimizer=muon", "model.n_layer=2", "train.lr=5e-3"],
    "muon-2L-ctx128-b12": [
        "train.optimizer=muon",
        "model.n_layer=2",
        "model.block_size=128",
        "train.batch_size=12",
    ],
    "muon-2L-ctx128": ["train.optimizer=muon", "model.n_layer=2", "model.block_size=128"],
    "muon-2L-ctx192-b8": [
        "train.optimizer=muon",
        "model.n_layer=2",
        "model.block_size=192",
        "train.batch_size=8",
    ],
    "muon-2L-lr7e-3": ["train.optimizer=muon", "model.n_layer=2", "train.lr=7e-3"],
    "muon-2L-w160-lr5e-3": [
        "train.optimizer=muon",
        "model.n_layer=2",
        "model.n_embd=160",
        "train.lr=5e-3",
    ],
    "w96-3L": ["model.n_layer=3", "model.n_embd=96", "model.n_head=3"],
    "w96-3L-h2": ["model.n_layer=3", "model.n_embd=96", "model.n_head=2"],
    "w96-2L": ["model.n_layer=2", "model.n_embd=96", "model.n_head=3"],
    "w128-2L": ["model.n_layer=2", "model.n_embd=128", "model.n_head=4"],
    "nanogpt-cpu": [
        "model.n_layer=4",
        "model.n_head=4",
        "model.n_embd=128",
        "model.block_size=64",
        "model.activation=gelu",
        "train.batch_size=12",
        "train.lr=1e-3",
        "train.min_lr=1e-4",
        "train.precision=float32",
    ],
    "gelu-4L-128": ["model.activation=gelu"],
    "3L-ctx96-lr3e-3": ["model.n_layer=3", "model.block_size=96", "train.lr=3e-3"],
    "3L-ctx128-lr3e-3": ["model.n_layer=3", "train.lr=3e-3"],
    "4L-lr3e-3": ["train.lr=3e-3"],
    "4L-ctx96-lr3e-3": ["model.block_size=96", "train.lr=3e-3"],
    "2L-w192-lr3e-3": ["model.n_layer=2", "model.n_embd=192", "model.n_head=6", "train.lr=3e-3"],
    "3L-nobias-lr3e-3": ["model.n_layer=3", "model.bias=false", "train.lr=3e-3"],
    "3L-b32-lr4e-3": [
        "model.n_layer=3",
        "model.block_size=96",
        "train.batch_size=32",
        "train.lr=4e-3",
    ],
    "3L-b8-lr2e-3": [
        "model.n_layer=3",
        "model.block_size=96",
        "train.batch_size=8",
        "train.lr=2e-3",
    ],
    "3L-ctx96-rope": [
        "model.n_layer=3",
        "model.block_size=96",
        "train.lr=3e-3",
        "model.positional=rotary",
    ],
    "3L-ctx96-rope-rms": [
        "model.n_layer=3",
        "model.block_size=96",
        "train.lr=3e-3",
        "model.positional=rotary",
        "model.norm_type=rmsnorm",
    ],
    "3L-ctx96-swiglu": [
        "model.n_layer=3",
        "model.block_size=96",
        "train.lr=3e-3",
        "model.activation=swiglu",
    ],
    "3L-ctx96-lr5e-3": ["model.n_layer=3", "model.block_size=96", "train.lr=5e-3"],
    "3L-ctx64-b24-lr3e-3": [
        "model.n_layer=3",
        "model.block_size=64",
        "train.batch_size=24",
        "train.lr=3e-3",
    ],
    "2L-ctx96-lr3e-3": ["model.n_layer=2", "model.block_size=96", "train.lr=3e-3"],
    "3L-ctx96-rope-lr5e-3": [
        "model.n_layer=3",
        "model.block_size=96",
        "train.lr=5e-3",
        "model.positional=rotary",
    ],
    "2L-ctx96-rope-lr5e-3": [
        "model.n_layer=2",
        "model.block_size=96",
        "train.lr=5e-3",
        "model.positional=rotary",
    ],
    "2L-ctx64-b24-rope-lr5e-3": [
        "model.n_layer=2",
        "model.block_size=64",
        "train.batch_size=24",
        "train.lr=5e-3",
        "model.positional=rotary",
    ],
    "3L-ctx64-b24-rope-lr5e-3": [
        "model.n_layer=3",
        "model.block_size=64",
        "train.batch_size=24",
        "train.lr=5e-3",
        "model.positional=rotary",
    ],
}


def run(cmd: list[str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{result.stderr[-2000:]}")
    return result.stdout


def measure(
    name: str, overrides: list[str], data: str, max_time: float, max_steps: int, root: Path
) -> dict:
    out = root / name
    qkv = [sys.executable, "-m", "qkv"]
    train_out = run(
        [
            *qkv,
            "train",
            "--data",
            data,
            "--max-time",
            str(max_time),
            "--max-steps",
            str(max_steps),
            "--out",
            str(out),
            "--overwrite",
            "--no-progress",
            *overrides,
        ]
    )
    eval_out = run([*qkv, "eval", "--checkpoint", str(out)])
    val_loss = float(re.search(r"val_loss=([0-9.]+)", eval_out).group(1))
    tok_s = float(re.search(r"([0-9,]+) tokens/s", train_out).group(1).replace(",", ""))
    steps = int(re.search(r"done: step (\d+)", train_out).group(1))
    return {
        "name": name,
        "overrides": overrides,
        "max_time": max_time,
        "max_steps": max_steps,
        "val_loss": val_loss,
        "tokens_per_s": tok_s,
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-time", type=float, default=75.0)
    parser.add_argument(
        "--max-steps",
        type=int,
        default=1_000_000,
        help="a step budget instead (with --max-time 0): compares recipes step for step",
    )
    parser.add_argument("--data", default="tinyshakespeare")
    parser.add_argument("--only", nargs="*", help="names of the configurations to run")
    parser.add_argument("--log", default="sweep.jsonl", help="append each row here")
    args = parser.parse_args()
    names = args.only or list(CONFIGS)
    print("| config | overrides | val loss | tokens/s | steps |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        for name in names:
            row = measure(name, CONFIGS[name], args.data, args.max_time, args.max_steps, Path(root))
            print(
                f"| {name} | {' '.join(row['overrides']) or '-'} | {row['val_loss']:.4f} "
                f"| {row['tokens_per_s']:,.0f} | {row['steps']} |",
                flush=True,
            )
            with open(args.log, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
