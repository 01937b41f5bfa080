"""Muon beside AdamW: which parameters each one owns, the orthogonalised step, state and resume."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from qkv.checkpoint import load_trainer_state
from qkv.config import GPTConfig, TrainConfig
from qkv.errors import QkvError
from qkv.models.gpt import GPT
from qkv.training import optim
from qkv.training.optim import GroupedMuon, MuonWithAdamW, hidden_matrices, make_optimizer
from test_train import overfit

CPU = torch.device("cpu")


def small_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32, **overrides))


def muon_config(**overrides) -> TrainConfig:
    return TrainConfig(optimizer="muon", max_time=0, **overrides)


def test_muon_takes_the_block_matrices_and_adamw_everything_else():
    model = small_gpt()
    optimizer = make_optimizer(model, muon_config(), CPU)
    assert isinstance(optimizer, MuonWithAdamW)
    in_muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in optimizer.adamw.param_groups for p in g["params"]}
    assert not in_muon & in_adamw
    assert in_muon | in_adamw == {id(p) for p in model.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = sorted(names[i] for i in in_muon)
    # per block: fused W_Q|W_K|W_V, the attention output, and the feed-forward's two matrices
    assert len(muon_names) == 2 * 4
    assert all(n.startswith("transformer.h.") and n.endswith(".weight") for n in muon_names)
    adamw_names = {names[i] for i in in_adamw}
    assert "transformer.wte.weight" in adamw_names  # the embedding, tied to the output head
    assert all(names[i] in adamw_names for i in in_adamw if model.get_parameter(names[i]).dim() < 2)


def test_hidden_matrices_need_two_dimensions_inside_a_block():
    model = small_gpt()
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = {names[id(p)] for p in hidden_matrices(model)}
    assert "transformer.h.0.mlp.c_fc.weight" in hidden
    assert "transformer.h.0.mlp.c_fc.bias" not in hidden
    assert "transformer.wte.weight" not in hidden
    assert model.lm_head.weight is model.transformer.wte.weight  # so the head is not either


def test_hidden_matrices_of_an_encoder_decoder_are_its_blocks_matrices():
    from qkv.config import Seq2SeqConfig
    from qkv.models.seq2seq import Seq2SeqTransformer

    model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=20, n_embd=16, n_head=2, d_ff=32))
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = sorted(names[id(p)] for p in hidden_matrices(model))
    # per encoder block: c_attn, attn c_proj, c_fc, mlp c_proj; a decoder block adds two more
    assert len(hidden) == 2 * 4 + 2 * 6
    assert "decoder.0.cross_attn.c_attn.weight" in hidden
    assert not any("embed" in n or "ln_" in n or n.endswith(".bias") for n in hidden)


def test_a_muon_step_moves_every_direction_of_a_matrix_by_about_the_same_amount():
    # Muon's update is the orthogonalised momentum: its singular values are close to one
    # (five Newton-Schulz steps with these coefficients land in roughly [0.7, 1.2], not
    # exactly 1, and the very smallest directions of the gradient are not lifted all the way),
    # while the raw gradient's spread over orders of magnitude.
    model = small_gpt()
    optimizer = make_optimizer(model, muon_config(weight_decay=0.0, lr=1e-2), CPU)
    weight = model.transformer.h[0].mlp.c_fc.weight  # (4C, C) = (128, 32)
    x = torch.randint(0, 20, (4, 16))
    _, loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    grad_spread = torch.linalg.svdvals(weight.grad)
    before = weight.detach().clone()
    optimizer.step()
    scale = 1e-2 * 0.2 * max(weight.shape) ** 0.5  # lr, matched to AdamW's update size
    singular = torch.linalg.svdvals((before - weight.detach()) / scale)
    assert grad_spread.max() / grad_spread.min() > 10
    near_one = ((singular > 0.5) & (singular < 1.5)).float().mean()
    assert singular.max() < 1.5 and near_one >= 0.9
    top = grad_spread[: int(0.9 * len(grad_spread))]
    assert top.max() / top.min() > 5  # the gradient's own top 90% are far from equal


def test_muon_trains_a_tiny_gpt_to_overfit_one_batch():
    model = small_gpt()
    optimizer = make_optimizer(model, muon_config(lr=1e-2, weight_decay=0.0), CPU)
    batch = torch.randint(0, 20, (4, 17), generator=torch.Generator().manual_seed(1))
    x, y = batch[:, :-1], batch[:, 1:]
    first, last = overfit(model, optimizer, x, y, steps=100)
    assert last.item() < 0.1 * first.item()


def test_state_dict_round_trip_continues_identically():
    def run(steps: int, model: GPT, optimizer) -> None:
        generator = torch.Generator().manual_seed(steps)
        for _ in range(steps):
            batch = torch.randint(0, 20, (4, 17), generator=generator)
            _, loss = model(batch[:, :-1], batch[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    cfg = muon_config(lr=1e-2)
    a = small_gpt()
    opt_a = make_optimizer(a, cfg, CPU)
    run(3, a, opt_a)
    b = small_gpt()
    b.load_state_dict(a.state_dict())
    opt_b = make_optimizer(b, cfg, CPU)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as if saved and read back
    run(2, a, opt_a)
    run(2, b, opt_b)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("adjust_lr_fn", ["match_rms_adamw", "original"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_grouped_muon_steps_as_torch_muon_does(adjust_lr_fn, nesterov, monkeypatch):
    # torch.optim.Muon runs Newton-Schulz in bfloat16 on every device; ours does on
    # accelerators (on CPUs in float32, tested below), so here it runs as on a GPU
    monkeypatch.setattr(optim, "newton_schulz_dtype", lambda device: torch.bfloat16)
    # shapes as in a block (tall, square, wide, the FFN's pair shares a group) and a loner
    shapes = [(96, 32), (32, 32), (128, 32), (32, 128)] * 2 + [(24, 10)]
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(0.02 * torch.randn(shape)) for shape in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    settings = dict(lr=3e-2, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    grouped, reference = GroupedMuon(ours, **settings), torch.optim.Muon(theirs, **settings)
    for _ in range(4):
        before = [p.detach().clone() for p in ours]
        for p, q in zip(ours, theirs, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        grouped.step()
        reference.step()
        for p, q, start in zip(ours, theirs, before, strict=True):
            step, expected = p.detach() - start, q.detach() - start
            # equal up to bfloat16 rounding inside Newton-Schulz: a batched and a single matmul
            # may round differently (on this data they happen to agree bit for bit)
            assert (step - expected).abs().max() <= 1e-2 * expected.abs().max(), p.shape
    state, reference_state = grouped.state_dict(), reference.state_dict()
    assert state["param_groups"] == reference_state["param_groups"]
    for i, saved in state["state"].items():
        torch.testing.assert_close(
            saved["momentum_buffer"], reference_state["state"][i]["momentum_buffer"]
        )


def test_muon_momentum_and_newton_schulz_steps_reach_the_update(monkeypatch):
    # train.muon_momentum / train.muon_ns_steps: the Muon part steps as torch.optim.Muon with
    # those settings does (Newton-Schulz in bfloat16 as torch runs it), not with its defaults
    monkeypatch.setattr(optim, "newton_schulz_dtype", lambda device: torch.bfloat16)
    model = small_gpt()
    cfg = muon_config(lr=3e-2, muon_momentum=0.8, muon_ns_steps=2)
    muon = make_optimizer(model, cfg, CPU).muon
    ours = hidden_matrices(model)
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    settings = dict(lr=3e-2, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw")
    reference = torch.optim.Muon(theirs, momentum=0.8, ns_steps=2, **settings)
    default = torch.optim.Muon([torch.nn.Parameter(p.detach().clone()) for p in ours], **settings)
    torch.manual_seed(1)
    for _ in range(3):
        before = [p.detach().clone() for p in ours]
        for p, q, r in zip(ours, theirs, default.param_groups[0]["params"], strict=True):
            p.grad = torch.randn_like(p)
            q.grad, r.grad = p.grad.clone(), p.grad.clone()
        muon.step(), reference.step(), default.step()
        for p, q, start in zip(ours, theirs, before, strict=True):
            step, expected = p.detach() - start, q.detach() - start
            assert (step - expected).abs().max() <= 1e-2 * expected.abs().max(), p.shape
    with_defaults = default.param_groups[0]["params"]  # the same steps at momentum 0.95, 5 steps
    pairs = zip(ours, with_defaults, strict=True)
    assert not any(torch.allclose(p, r, rtol=0, atol=1e-4) for p, r in pairs)


def test_newton_schulz_runs_in_float32_on_a_cpu():
    # bfloat16 matmuls are emulated, 20x slower, on CPUs without bfloat16 arithmetic (AVX2)
    torch.manual_seed(0)
    updates = torch.randn(3, 24, 40)
    coefficients = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's defaults
    got = optim.orthogonalise(updates, coefficients, steps=5, eps=1e-7)
    x = updates.double() / updates.double().norm(dim=(-2, -1), keepdim=True)
    a, b, c = coefficients
    for _ in range(5):  # the same iteration in float64, written out
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), x, rtol=0, atol=1e-5)  # bfloat16 is ~1e-2 off


def test_the_muon_of_make_optimizer_groups_its_matrices():
    assert isinstance(make_optimizer(small_gpt(), muon_config(), CPU).muon, GroupedMuon)


def test_loading_an_adamw_state_into_muon_is_one_clear_error():
    model = small_gpt()
    adamw = make_optimizer(model, TrainConfig(optimizer="adamw"), CPU)
    muon = make_optimizer(model, muon_config(), CPU)
    with pytest.raises(QkvError, match="optimizer"):
        muon.load_state_dict(adamw.state_dict())


def test_unknown_optimizer_is_refused_by_the_config():
    with pytest.raises(QkvError, match="optimizer"):
        TrainConfig(optimizer="sgd")


def test_training_with_muon_resumes_exactly(cli, text_file, tiny, tmp_path):
    common = [
        "--data",
        text_file,
        "--no-progress",
        *tiny,
        "train.optimizer=muon",
        "train.max_time=0",
        "train.decay_steps=6",
        "train.eval_interval=3",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli("train", "--out", straight, "--max-steps", 6, *common).code == 0
    assert cli("train", "--out", resumed, "--max-steps", 3, *common).code == 0
    result = cli("train", "--out", resumed, "--resume", "--max-steps", 6, "--no-progress")
    assert result.code == 0, result.err
    a, b = load_trainer_state(straight), load_trainer_state(resumed)
    assert a["optimizer_kind"] == "muon"
    state = a["optimizer"]["state"]  # keyed by parameter name
    assert set(state["transformer.h.0.mlp.c_fc.weight"]) == {"momentum_buffer"}
    assert {"exp_avg", "exp_avg_sq"} <= set(state["transformer.wte.weight"])
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_muon_learning_rate_follows_the_schedule_with_adamw():
    model = small_gpt()
    optimizer = make_optimizer(model, dataclasses.replace(muon_config(), lr=5e-3), CPU)
    assert {g["lr"] for g in optimizer.param_groups} == {5e-3}
    for group in optimizer.param_groups:
        group["lr"] = 1e-4
    assert optimizer.muon.param_groups[0]["lr"] == optimizer.adamw.param_groups[0]["lr"] == 1e-4


def test_resuming_with_another_optimizer_is_one_clear_error(cli, text_file, tiny, tmp_path):
    run = tmp_path / "run"
    common = ["--data", text_file, "--no-progress", *tiny, "train.max_time=0"]
    assert cli("train", "--out", run, "--max-steps", 2, *common, "train.optimizer=adamw").code == 0
    result = cli("train", "--out", run, "--resume", "--max-steps", 4, "train.optimizer=muon")
    assert result.code == 2
    assert "train.optimizer=adamw" in result.err and len(result.err.strip().splitlines()) == 1


def test_a_saved_config_without_an_optimizer_field_means_adamw(tmp_path):
    from qkv.config import RunConfig, config_from_json

    tree = RunConfig().to_dict()
    del tree["train"]["optimizer"]  # as written before the field existed
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tree), encoding="utf-8")
    assert config_from_json(path).train.optimizer == "adamw"


def test_muon_with_fsdp_is_refused_in_one_line(cli, text_file, tiny, tmp_path):
    result = cli(
        "train", "--out", tmp_path / "run", "--data", text_file, "--fsdp", *tiny,
        "train.optimizer=muon",
    )  # fmt: skip
    assert result.code == 2
    assert "--fsdp" in result.err and len(result.err.strip().splitlines()) == 1
