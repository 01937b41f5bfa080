"""The trainer: exact resume, overfitting, the learning-rate schedule, AdamW groups, limits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import qkv
from qkv.checkpoint import load_trainer_state
from qkv.config import GPTConfig, TrainConfig
from qkv.models.gpt import GPT
from qkv.training.lm import learning_rate
from qkv.training.optim import make_optimizer


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def train_losses(records: list[dict]) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]


def val_losses(records: list[dict]) -> list[tuple[int, float]]:
    return [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]


# -- resuming -------------------------------------------------------------------------------


def test_resume_reproduces_the_uninterrupted_run_exactly(cli, text_file, tiny, tmp_path):
    # dropout > 0 makes every step consume the global RNG, so its state must be restored too
    common = [
        "--data",
        text_file,
        "--no-progress",
        *tiny,
        "train.max_time=0",
        "train.decay_steps=8",
        "train.eval_interval=4",
        "model.dropout=0.1",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli("train", "--out", straight, "--max-steps", 8, *common).code == 0
    assert cli("train", "--out", resumed, "--max-steps", 4, *common).code == 0
    assert load_trainer_state(resumed)["step"] == 4
    result = cli("train", "--out", resumed, "--resume", "--max-steps", 8, "--no-progress")
    assert result.code == 0, result.err

    expected, got = read_metrics(straight), read_metrics(resumed)
    assert [step for step, _ in train_losses(got)] == list(range(1, 9))
    assert train_losses(got) == train_losses(expected)  # exact float equality
    assert val_losses(got) == val_losses(expected)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert load_trainer_state(resumed)["step"] == 8


# -- optimisation ---------------------------------------------------------------------------


def overfit(model: GPT, optimizer, x: torch.Tensor, y: torch.Tensor, steps: int):
    """Train on the one batch (x, y) for `steps` steps -> (loss before, loss after)."""
    _, first = model(x, y)
    for _ in range(steps):
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _, last = model(x, y)
    return first, last


def test_gpt_overfits_one_fixed_batch_with_the_trainers_optimizer():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = GPT(config)
    cfg = TrainConfig(lr=1e-2, weight_decay=0.0, warmup_steps=0, max_time=0)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    batch = torch.randint(0, 20, (4, 17))
    x, y = batch[:, :-1], batch[:, 1:]
    first, last = overfit(model, optimizer, x, y, steps=150)
    assert first.item() > 2.5  # about ln(20) at initialisation
    assert last.item() < 0.1 * first.item()


def test_adamw_decays_matrices_only_and_holds_every_parameter_once():
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32))
    cfg = TrainConfig(optimizer="adamw", weight_decay=0.1)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.AdamW)
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len(set(grouped))  # no parameter twice (the tied lm_head included)
    assert set(grouped) == {id(p) for p in model.parameters()}
    decayed = [p for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    plain = [p for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert decayed and plain
    assert all(p.dim() >= 2 for p in decayed)
    assert all(p.dim() < 2 for p in plain)
    assert {g["weight_decay"] for g in optimizer.param_groups if g["params"]} == {0.0, 0.1}


# -- the learning-rate schedule -------------------------------------------------------------


def schedule(cfg: TrainConfig, steps: range, elapsed: float = 0.0) -> list[float]:
    return [learning_rate(cfg, step, elapsed) for step in steps]


def test_warmup_is_linear_and_peaks_at_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=20, max_time=0)
    warm = schedule(cfg, range(cfg.warmup_steps))
    steps = torch.tensor(warm, dtype=torch.float64)
    rises = steps.diff()
    assert (rises > 0).all()
    torch.testing.assert_close(rises, torch.full_like(rises, rises[0].item()), rtol=1e-9, atol=0)
    whole = schedule(cfg, range(cfg.schedule_steps + 1))
    assert max(whole) == pytest.approx(cfg.lr, rel=1e-9)
    peak = whole.index(max(whole))
    after = whole[peak:]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))  # then only decays


def test_cosine_runs_from_lr_to_min_lr_over_schedule_steps():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=0, max_steps=50, max_time=0)
    assert cfg.schedule_steps == 50
    assert learning_rate(cfg, 0, 0.0) == pytest.approx(cfg.lr, rel=1e-12)
    assert learning_rate(cfg, 25, 0.0) == pytest.approx((cfg.lr + cfg.min_lr) / 2, rel=1e-12)
    assert learning_rate(cfg, 50, 0.0) == pytest.approx(cfg.min_lr, rel=1e-12)
    assert learning_rate(cfg, 80, 0.0) == pytest.approx(cfg.min_lr, rel=1e-12)  # stays there
    # decay_steps, when set, is the schedule's length instead of max_steps
    cfg = TrainConfig(
        lr=1e-3, min_lr=1e-4, warmup_steps=0, max_steps=50, decay_steps=20, max_time=0
    )
    assert learning_rate(cfg, 20, 0.0) == pytest.approx(cfg.min_lr, rel=1e-12)
    assert learning_rate(cfg, 10, 0.0) == pytest.approx((cfg.lr + cfg.min_lr) / 2, rel=1e-12)


def test_time_budget_drives_the_schedule_when_it_is_ahead():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=0, max_steps=1000, max_time=100.0)
    mid = (cfg.lr + cfg.min_lr) / 2
    assert learning_rate(cfg, 10, 50.0) == pytest.approx(mid, rel=1e-12)  # time is ahead
    assert learning_rate(cfg, 500, 1.0) == pytest.approx(mid, rel=1e-12)  # steps are ahead
    assert learning_rate(cfg, 10, 100.0) == pytest.approx(cfg.min_lr, rel=1e-12)
    assert learning_rate(cfg, 10, 250.0) == pytest.approx(cfg.min_lr, rel=1e-12)
    # with no time limit, elapsed time plays no part
    cfg.max_time = 0.0
    assert learning_rate(cfg, 10, 1e6) == learning_rate(cfg, 10, 0.0) > mid


# -- stopping, metrics, best ----------------------------------------------------------------


def test_max_time_stops_cleanly_with_a_checkpoint(cli, text_file, tiny, tmp_path):
    run = tmp_path / "run"
    result = cli(
        "train",
        "--data",
        text_file,
        "--out",
        run,
        "--max-time",
        0.5,
        "--max-steps",
        10**9,
        "--no-progress",
        *tiny,
        "train.eval_interval=1000000",
    )
    assert result.code == 0, result.err
    assert result.out.splitlines()[-1].startswith("done: step ")
    records = read_metrics(run)
    steps = train_losses(records)
    assert 0 < len(steps) < 10**9
    assert records[-1]["step"] == steps[-1][0]
    assert math.isfinite(records[-1]["val_loss"])  # a final evaluation happened
    assert steps[-1][0] == load_trainer_state(run)["step"]
    elapsed = [r["elapsed"] for r in records if "train_loss" in r]
    assert elapsed[-1] >= 0.5  # stopped at the first step past the budget, not before
    assert all(e <= 0.5 for e in elapsed[:-1])
    model, tokenizer = qkv.load(run)
    assert tokenizer.vocab_size == model.config.vocab_size


def test_metrics_lines_are_json_and_best_loads(trained_run):
    lines = (trained_run.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert all("step" in r for r in records)
    trains = [r for r in records if "train_loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in trains] == list(range(1, trained_run.steps + 1))
    assert [r["step"] for r in evals] == [10, 20]
    assert all(math.isfinite(r["train_loss"]) and r["train_loss"] > 0 for r in trains)
    assert all(math.isfinite(r["val_loss"]) and r["val_loss"] > 0 for r in evals)
    assert trains[-1]["train_loss"] < trains[0]["train_loss"]  # it learned something
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]  # so the last eval is the best one
    assert load_trainer_state(trained_run.run_dir)["best_val"] == evals[-1]["val_loss"]

    best_dir = trained_run.run_dir / "best"
    assert best_dir.is_dir()
    best, tokenizer = qkv.load(best_dir)
    final, _ = qkv.load(trained_run.run_dir)
    for a, b in zip(best.state_dict().values(), final.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert tokenizer.vocab_size == best.config.vocab_size
