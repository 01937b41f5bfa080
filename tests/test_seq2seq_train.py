"""The paper's recipe: label smoothing, the learning-rate schedule, and learning a task."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.config.seq2seq import PAD_ID, Seq2SeqRunConfig
from qkv.data.pairs import collate
from qkv.decoding import greedy_decode
from qkv.training.loop import Trainer
from qkv.training.translation import inverse_sqrt_lr, label_smoothed_loss


def test_label_smoothed_loss_matches_its_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[3, 4, 2, PAD_ID], [5, 2, PAD_ID, PAD_ID]])
    eps = 0.1
    log_p = torch.log_softmax(logits, dim=-1)
    total, count = 0.0, 0
    for b in range(2):
        for t in range(4):
            y = int(targets[b, t])
            if y == PAD_ID:
                continue  # padding is never scored
            # q = (1 - eps) onehot(y) + eps / V;  loss = -sum_k q_k log p_k
            q = torch.full((7,), eps / 7)
            q[y] += 1 - eps
            total += float(-(q * log_p[b, t]).sum())
            count += 1
    assert label_smoothed_loss(logits, targets, eps).item() == pytest.approx(total / count)
    plain = torch.nn.functional.cross_entropy(logits[targets != PAD_ID], targets[targets != PAD_ID])
    assert label_smoothed_loss(logits, targets, 0.0).item() == pytest.approx(plain.item())


@pytest.mark.parametrize("step", [1, 2, 50, 399, 400, 401, 1000, 10**5])
def test_schedule_matches_the_papers_formula(step):
    d_model, warmup, scale = 512, 400, 2.0
    expected = scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
    assert inverse_sqrt_lr(step, d_model, warmup, scale) == pytest.approx(expected)


def test_schedule_rises_linearly_peaks_at_warmup_then_decays_as_one_over_sqrt_step():
    lr = [inverse_sqrt_lr(s, 512, 4000) for s in range(1, 20001)]
    assert max(range(len(lr)), key=lr.__getitem__) + 1 == 4000
    assert lr[1999] == pytest.approx(2 * lr[999])  # linear before the peak
    assert lr[15999] == pytest.approx(lr[3999] / 2)  # 1/sqrt(step) after it
    assert lr[3999] == pytest.approx(512**-0.5 * 4000**-0.5)


def copy_config(tmp_path, **values) -> Seq2SeqRunConfig:
    settings = {
        "model.n_encoder_layer": 1, "model.n_decoder_layer": 1, "model.n_embd": 64,
        "model.n_head": 4, "model.d_ff": 128, "model.dropout": 0.0, "model.max_len": 16,
        "data.source": "copy", "data.n_train": 3000, "data.n_val": 50, "data.n_test": 100,
        "data.synthetic_len": 5, "train.out_dir": str(tmp_path / "copy"), "train.max_time": 0.0,
        "train.max_steps": 600, "train.batch_size": 64, "train.warmup_steps": 100,
        "train.lr_scale": 0.3, "train.eval_interval": 600, "train.eval_examples": 50,
        "train.device": "cpu", "train.seed": 0, "train.log_interval": 50,
    }  # fmt: skip
    settings.update(values)
    return Seq2SeqRunConfig().with_values(settings)


def test_the_copy_task_is_learned_to_100_percent_in_a_short_cpu_run(tmp_path):
    trainer = Trainer(copy_config(tmp_path), progress=False)
    result = trainer.fit()
    from qkv.data.pairs import encode_pairs
    from qkv.data.tasks import pair_splits

    test = encode_pairs(pair_splits(trainer.config.data).test, trainer.tokenizer, 16, "copy")
    src, _, _ = collate(test)
    outputs = greedy_decode(trainer.model.eval(), src)
    assert [o == t for o, (_, t) in zip(outputs, test, strict=True)] == [True] * len(test)
    assert result.metrics["val_exact_match"] == 1.0
    assert math.isfinite(result.val_loss)


def test_resuming_continues_exactly_where_the_run_stopped(tmp_path):
    straight = Trainer(copy_config(tmp_path, **{"train.max_steps": 6}), progress=False)
    straight.fit()
    config = copy_config(tmp_path, **{"train.out_dir": str(tmp_path / "b"), "train.max_steps": 3})
    Trainer(config, progress=False).fit()
    longer = config.with_values({"train.max_steps": 6})
    resumed = Trainer(longer, resume=True, progress=False)
    assert resumed.step == 3
    resumed.fit()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_the_final_model_averages_the_last_snapshots(tmp_path):
    from qkv.checkpoint import load_trainer_state

    values = {"train.max_steps": 6, "train.average_every": 2, "train.average_last": 2}
    averaged = Trainer(copy_config(tmp_path, **values), progress=False)
    averaged.fit()
    values.update({"train.average_last": 0, "train.out_dir": str(tmp_path / "plain")})
    plain = Trainer(copy_config(tmp_path, **values), progress=False)
    weights = {}
    for step in range(1, 7):
        plain.train_step()
        weights[step] = {k: v.clone() for k, v in plain.model.state_dict().items()}
    trained = load_trainer_state(averaged.out_dir)["model"]
    for name, value in averaged.model.state_dict().items():
        torch.testing.assert_close(value, (weights[4][name] + weights[6][name]) / 2)
        torch.testing.assert_close(trained[name], weights[6][name])  # what --resume goes on from


def test_resuming_a_finished_run_averages_what_it_averaged(tmp_path):
    from safetensors.torch import load_file

    values = {"train.max_steps": 7, "train.average_every": 2, "train.average_last": 3}
    Trainer(copy_config(tmp_path, **values), progress=False).fit()
    run_dir = tmp_path / "copy"
    first = load_file(run_dir / "model.safetensors")  # the mean of steps 4, 6 and 7
    # no step left to take: the run only evaluates and saves again, the same average
    Trainer(copy_config(tmp_path, **values), resume=True, progress=False).fit()
    for name, value in load_file(run_dir / "model.safetensors").items():
        torch.testing.assert_close(value, first[name], rtol=0, atol=0)
