"""The CPU speedrun: val loss against wall-clock time, and the ablations of benchmarks/LOG.md.

Every run is what a user would type, in a fresh process:

    qkv train --data DATA --max-time SECONDS --seed S --out DIR key=value ...
    qkv eval --checkpoint DIR           # val loss over every token of the val split

Two modes:

    python benchmarks/speedrun.py curve [--quick]          # qkv's default vs nanoGPT's CPU
        recipe at 75 s, 5 min and 30 min (--quick: 75 s only; --budgets S...: those); a
        table, a PNG, a JSONL. Only the clock ends a run (train.max_steps is lifted).
    python benchmarks/speedrun.py ablate --only relu2 qk-norm --seeds 1 2 3
        each named experiment at 75 s over the seeds: mean and spread of val loss

nanoGPT's CPU recipe (its README: `--device=cpu --compile=False --eval_iters=20 --block_size=64
--batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
--dropout=0.0` on train_shakespeare_char: AdamW lr 1e-3 -> 1e-4, beta2 0.99, warm-up 100,
weight decay 0.1, clip 1.0, GELU, learned positions, no biases) is rebuilt here from qkv's
options. nanoGPT stops at 2,000 iterations; here its cosine ends at each time budget
instead, as qkv's own does, so both recipes get the same wall-clock.

Run it on an otherwise idle machine with 2 threads: another process's load shows up directly
in the losses. Set QKV_DATA_DIR or pass --data.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

NANOGPT_CPU = [
    "model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.block_size=64",
    "model.positional=learned", "model.activation=gelu", "model.bias=false",
    "model.dropout=0.0", "train.batch_size=12", "train.optimizer=adamw", "train.lr=1e-3",
    "train.min_lr=1e-4", "train.warmup_steps=100", "train.beta2=0.99",
    "train.weight_decay=0.1", "train.grad_clip=1.0", "train.eval_iters=20",
    # nanoGPT autocasts on CUDA only: on a CPU its forward pass is float32, AMX or not
    "train.precision=float32",
]  # fmt: skip

# name -> overrides on top of qkv's defaults (benchmarks/LOG.md has every result)
EXPERIMENTS: dict[str, list[str]] = {
    "baseline": [],
    "relu2": ["model.activation=relu2"],
    "qk-norm": ["model.qk_norm=true"],
    "qk-norm-lr6e-3": ["model.qk_norm=true", "train.lr=6e-3"],
    "zero-init": ["model.zero_init_proj=true"],
    "untied": ["model.tie_embeddings=false"],
    "softcap15": ["model.logit_softcap=15"],
    "value-embeddings": ["model.value_embeddings=true"],
    "x0-mix": ["model.x0_mix=true"],
    "trapezoid": ["train.schedule=trapezoid"],
    "trapezoid-cool0.6": ["train.schedule=trapezoid", "train.cooldown_fraction=0.6"],
    "wd0": ["train.weight_decay=0"],
    "rmsnorm": ["model.norm_type=rmsnorm"],
    "embed-lr3": ["train.embed_lr_scale=3"],
    "embed-lr10": ["train.embed_lr_scale=10"],
    "warmup20": ["train.warmup_steps=20"],
    "batch12": ["train.batch_size=12"],
    "muon-ns3": ["train.muon_ns_steps=3"],
    "muon-momentum0.9": ["train.muon_momentum=0.9"],
    "wd0-warmup20-trapezoid": [
        "train.weight_decay=0",
        "train.warmup_steps=20",
        "train.schedule=trapezoid",
        "train.cooldown_fraction=0.6",
    ],
    "nanogpt-cpu": NANOGPT_CPU,
    # fourth sweep: the shape and the schedule at today's tokens/s (benchmarks/LOG.md)
    "eval-every-1000": ["train.eval_interval=1000"],
    "block128": ["model.block_size=128"],
    "batch24": ["train.batch_size=24"],
    "batch32": ["train.batch_size=32"],
    "lr4.5e-3": ["train.lr=4.5e-3"],
    "lr2e-3": ["train.lr=2e-3"],
    "eval1000-lr4.5e-3": ["train.eval_interval=1000", "train.lr=4.5e-3"],
    "layers4": ["model.n_layer=4"],
    "width128": ["model.n_embd=128", "model.n_head=4"],
    # seventh sweep: rows growing from 32 to the context over the first 30% / 50% of the run
    "seq-warmup0.3": ["train.seq_warmup=0.3", "train.seq_start=32"],
    "seq-warmup0.5": ["train.seq_warmup=0.5", "train.seq_start=32"],
    # eleventh sweep: batches growing from 4 rows to 16 over the first 20% / 40% of the run
    "batch-warmup0.2": ["train.batch_warmup=0.2", "train.batch_start=4"],
    "batch-warmup0.4": ["train.batch_warmup=0.4", "train.batch_start=4"],
    # twelfth sweep: the forward pass in float32 against auto (bfloat16 autocast on AMX CPUs)
    "float32": ["train.precision=float32"],
    "bfloat16": ["train.precision=bfloat16"],
    # thirteenth sweep: what bfloat16's cheaper matmuls buy (AMX CPUs); lr4.5e-3 is above
    "batch32-lr4.5e-3": ["train.batch_size=32", "train.lr=4.5e-3"],
    # the first sweep's small winners together (benchmarks/LOG.md, second sweep)
    "zero-softcap-trapezoid": [
        "model.zero_init_proj=true", "model.logit_softcap=15", "train.schedule=trapezoid",
    ],
    "modern": [
        "model.zero_init_proj=true", "model.logit_softcap=15", "train.schedule=trapezoid",
        "model.tie_embeddings=false", "model.value_embeddings=true", "model.x0_mix=true",
    ],
}  # fmt: skip

CURVE = {"qkv default": [], "nanoGPT CPU recipe": NANOGPT_CPU}
BUDGETS = (75.0, 300.0, 1800.0)
# train.max_steps (default 5,000) would end a long budget early, and with it the schedule,
# whose progress is the larger of the step and time fractions: the clock alone ends a run.
NO_STEP_LIMIT = ["train.max_steps=1000000000"]


def run_overrides(overrides: list[str]) -> list[str]:
    """What a run sets on top of qkv's defaults: no step limit, then the recipe's own."""
    return [*NO_STEP_LIMIT, *overrides]


def run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-2000:]}")
    return result.stdout


def measure(overrides: list[str], data: str, budget: float, seed: int, out: Path) -> dict:
    """One training run and its full evaluation: val loss, steps, tokens/s, its eval curve."""
    qkv = [sys.executable, "-m", "qkv"]
    train = [*qkv, "train", "--data", data, "--max-time", str(budget), "--seed", str(seed)]
    flags = ["--out", str(out), "--overwrite", "--no-progress", *run_overrides(overrides)]
    train_out = run([*train, *flags])
    eval_out = run([*qkv, "eval", "--checkpoint", str(out)])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["elapsed"], r["val_loss"]) for r in records if "val_loss" in r]
    return {
        "overrides": overrides,
        "max_time": budget,
        "seed": seed,
        "val_loss": float(re.search(r"val_loss=([0-9.]+)", eval_out).group(1)),
        "tokens_per_s": float(re.search(r"([0-9,]+) tokens/s", train_out)[1].replace(",", "")),
        "steps": int(re.search(r"done: step (\d+)", train_out).group(1)),
        "curve": curve,
    }


def append(log: Path, row: dict) -> None:
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f}"


def ablate(args: argparse.Namespace) -> None:
    """Round-robin over the experiments, seed by seed, so that a change in the machine's
    speed during the sweep falls on every experiment alike; the table comes at the end."""
    names = args.only or list(EXPERIMENTS)
    rows: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as root:
        for seed in args.seeds:
            for name in names:
                out = Path(root) / "run"
                row = measure(EXPERIMENTS[name], args.data, args.max_time, seed, out)
                rows[name].append({"name": name, **row})
                append(args.log, rows[name][-1])
                print(f"{name} seed {seed}: {row['val_loss']:.4f}", flush=True)
    print("| experiment | overrides | seeds | val loss (mean ± sd) | steps | tokens/s |")
    print("|---|---|---|---|---|---|")
    for name in names:
        losses = [r["val_loss"] for r in rows[name]]
        steps = statistics.fmean(r["steps"] for r in rows[name])
        tokens = statistics.fmean(r["tokens_per_s"] for r in rows[name])
        overrides = " ".join(EXPERIMENTS[name]) or "-"
        seeds = ",".join(map(str, args.seeds))
        print(
            f"| {name} | {overrides} | {seeds} | {spread(losses)} | {steps:,.0f} | {tokens:,.0f} |"
        )


def curve(args: argparse.Namespace) -> None:
    budgets = args.budgets or (BUDGETS[:1] if args.quick else BUDGETS)
    results: dict[str, list[dict]] = {name: [] for name in CURVE}
    print("| recipe | budget | val loss | steps | tokens/s |\n|---|---|---|---|---|")
    for budget in budgets:
        for name, overrides in CURVE.items():
            with tempfile.TemporaryDirectory() as root:
                row = measure(overrides, args.data, budget, args.seeds[0], Path(root) / "run")
            results[name].append(row)
            append(args.log, {"name": name, **row})
            print(
                f"| {name} | {budget:.0f} s | {row['val_loss']:.4f} | {row['steps']:,} "
                f"| {row['tokens_per_s']:,.0f} |",
                flush=True,
            )
    plot(results, args.png)
    print(f"wrote {args.png}")


def plot(results: dict[str, list[dict]], png: Path) -> None:
    """Each recipe's final val loss at each budget (points) and, faint, the eval-batch
    estimates logged during its longest run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for (name, rows), color in zip(results.items(), ("tab:blue", "tab:orange"), strict=False):
        longest = max(rows, key=lambda r: r["max_time"])
        if longest["curve"]:
            times, losses = zip(*longest["curve"], strict=True)
            axes.plot(times, losses, color=color, alpha=0.35, label=f"{name}, during the run")
        budgets = [r["max_time"] for r in rows]
        axes.plot(budgets, [r["val_loss"] for r in rows], "o-", color=color, label=name)
    axes.set(xscale="log", xlabel="training time (s, 2 CPU threads)", ylabel="val loss (nats)")
    axes.set_title("tinyshakespeare, character level: val loss against wall-clock")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(png, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("curve", "ablate"))
    parser.add_argument("--data", default="tinyshakespeare")
    parser.add_argument("--quick", action="store_true", help="curve: the 75-s budget only")
    parser.add_argument("--max-time", type=float, default=75.0, help="ablate: the budget")
    budgets_help = "curve: the budgets in seconds (default: 75 300 1800)"
    parser.add_argument("--budgets", type=float, nargs="+", help=budgets_help)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337])
    parser.add_argument("--only", nargs="*", help="ablate: the experiments to run")
    parser.add_argument("--log", type=Path, default=Path("speedrun.jsonl"))
    parser.add_argument("--png", type=Path, default=Path("benchmarks/speedrun.png"))
    args = parser.parse_args()
    unknown = sorted(set(args.only or []) - set(EXPERIMENTS))
    if unknown:
        raise SystemExit(f"unknown experiments {unknown}; choose from {sorted(EXPERIMENTS)}")
    (curve if args.mode == "curve" else ablate)(args)


if __name__ == "__main__":
    main()
