"""Training on several processes with PyTorch's own engine: torchrun, DDP and FSDP2.

`torchrun` starts one process (a rank) per GPU, or per CPU slot, on every machine and tells
each where it stands through the environment: RANK (0 .. WORLD_SIZE - 1 over the whole job),
LOCAL_RANK (its place on its machine, which picks its GPU), WORLD_SIZE, MASTER_ADDR/PORT.
The processes meet in a process group: NCCL between GPUs, Gloo between CPUs.

Data parallelism (DDP; Li et al., 2020, "PyTorch Distributed"). Every rank holds the whole
model and runs it on its own slice of the global batch; backward all-reduces the gradients,

    g = (1/W) sum_r g_r,      g_r the gradient of rank r's mean loss over its B rows,

which, with equal slices, is the gradient of the mean loss over all W x B rows: every rank
takes the step one process would take on the global batch. With gradient accumulation the
all-reduce waits for the last micro-step (`gradient_sync`); before it the ranks only add up
their own gradients.

Fully sharded data parallelism (FSDP2, `fully_shard`; Zhao et al., 2023, after ZeRO,
Rajbhandari et al., 2020). Each rank keeps 1/W of every parameter, its gradient and its AdamW
moments; a block's parameters are all-gathered just before the block runs (forward and
backward) and freed after, and gradients are reduce-scattered so each rank updates its own
shard. Memory per rank falls roughly by W; the step is the same as DDP's.

Checkpoints are always whole: `full_state` gathers an unsharded state dict (on the CPU, to
rank 0) in the single-process format, so any run directory resumes with any world size.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.parallel import DistributedDataParallel

from qkv.errors import QkvError
from qkv.nn.blocks import TransformerBlock

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class World:
    """This process's place in the job; the default is a single process on its own."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    launched: bool = False  # started by torchrun: there is a process group to join

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, metrics, checkpoints and shows the progress bar."""
        return self.rank == 0


SINGLE = World()  # a process on its own


def world_from_env() -> World:
    """The World torchrun describes in the environment, or a single process without it."""
    if not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return SINGLE
    rank, local_rank, size = (int(os.environ[name]) for name in TORCHRUN_VARIABLES)
    return World(rank=rank, local_rank=local_rank, size=size, launched=True)


def is_main_process() -> bool:
    """True unless torchrun says this process is not rank 0 (usable outside a group)."""
    return world_from_env().is_main


def rank_device(device: torch.device, world: World) -> torch.device:
    """Each rank of a CUDA job drives the GPU of its LOCAL_RANK."""
    if not world.launched:
        return device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise QkvError(
                f"rank {world.rank} wants GPU {world.local_rank} but this machine has "
                f"{torch.cuda.device_count()}: lower torchrun's --nproc_per_node"
            )
        return torch.device("cuda", world.local_rank)
    if device.type != "cpu":
        raise QkvError(
            f"training on several processes runs on CUDA (nccl) or the CPU (gloo), not "
            f"{device.type}; use --device cuda or --device cpu"
        )
    return device


@contextmanager
def process_group(world: World, device: torch.device, timeout_s: float) -> Iterator[None]:
    """Join the job's process group for the duration of the block, and always leave it.

    `timeout_s` bounds how long a collective waits for a peer that stopped answering; a peer
    that dies outright is noticed sooner (torchrun ends the other ranks).
    """
    if not world.launched:
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        timeout=timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield
    finally:
        gc.collect()  # free what still holds the group (a DDP reducer in a cycle) first
        dist.destroy_process_group()


def is_peer_failure(exc: BaseException) -> bool:
    """Whether a collective failed because another rank died or stopped answering."""
    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or "gloo" in text or "nccl" in text


def short_reason(exc: BaseException) -> str:
    """The first sentence of a backend's error, without its source-file prefix."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    return text.split(". ")[0].rstrip(".")


# -- wrapping the model -------------------------------------------------------------------


def parallelize(model: nn.Module, world: World, fsdp: bool) -> nn.Module:
    """The module the training step calls: DDP around `model`, or `model` sharded in place.

    FSDP2 shards each Transformer block (a GPT's, an encoder's or a decoder's) as one unit
    (gathered when it runs), then the root, which keeps the rest (embeddings, the tied head,
    the last norm). The tied head and embedding stay one parameter: sharding replaces it
    once, under both names.
    """
    if fsdp:
        fully_shard = _fully_shard()
        for block in [m for m in model.modules() if isinstance(m, TransformerBlock)]:
            fully_shard(block)
        fully_shard(model)
        return model
    if not world.launched:
        return model
    device_ids = [model_device(model)] if model_device(model).type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise QkvError(
            f"--fsdp needs torch >= 2.6 (FSDP2's fully_shard); this is torch {torch.__version__}"
        ) from None
    return fully_shard


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def gradient_sync(module: nn.Module, sync: bool):
    """Within: backward all-reduces (reduce-scatters) gradients only if `sync`; otherwise
    each rank adds to its own local gradients (the first micro-steps of accumulation)."""
    if sync:
        return nullcontext()
    if isinstance(module, DistributedDataParallel):
        return module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # an FSDP2 module
        return _fsdp_no_sync(module)
    return nullcontext()


@contextmanager
def unsharded(module: nn.Module) -> Iterator[None]:
    """Within: every parameter of an FSDP2-sharded model is whole on every rank, so code
    that uses a block's weights outside its `forward` (an encoder-decoder's step-by-step
    decoding projects the source once per layer) can run, as evaluation needs. Every rank
    must enter it together. A plain module is left as it is."""
    units = [m for m in module.modules() if hasattr(m, "unshard")]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:  # as FSDP2 sets them: the blocks reshard, the root keeps its own
            unit.reshard()
            unit.set_reshard_after_forward(unit is not module, recurse=False)


@contextmanager
def _fsdp_no_sync(module: nn.Module) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


# -- agreeing across ranks ----------------------------------------------------------------


def _all_reduce(values: list[float], op: dist.ReduceOp, device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def mean(value: float, world: World, device: torch.device) -> float:
    """The mean of a number over the ranks (Gloo has no AVG: a sum, divided)."""
    if not world.launched:
        return value
    return _all_reduce([value], dist.ReduceOp.SUM, device)[0] / world.size


def largest(values: list[float], world: World, device: torch.device) -> list[float]:
    """Each value's maximum over the ranks, in one collective."""
    if not world.launched:
        return values
    return _all_reduce(values, dist.ReduceOp.MAX, device)


def total(value: float, world: World, device: torch.device) -> float:
    """The sum of a number over the ranks."""
    if not world.launched:
        return value
    return _all_reduce([value], dist.ReduceOp.SUM, device)[0]


def all_ranks(flag: bool, world: World, device: torch.device) -> bool:
    """True only if `flag` holds on every rank, so all ranks take the same branch."""
    if not world.launched:
        return flag
    return bool(_all_reduce([float(flag)], dist.ReduceOp.MIN, device)[0])


def local(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor: this rank's shard of a DTensor (FSDP2), or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def replicated(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a replicated DTensor (a gradient norm under FSDP2)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


# -- whole state dicts from sharded ones, and back -----------------------------------------

FULL_ON_CPU = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, sharded: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unsharded model and optimizer state dicts, with parameters named by their path.

    Sharded: every rank must call this (it gathers); rank 0 gets the tensors, on the CPU,
    the other ranks empty dicts. The optimizer state is keyed by parameter name, not by
    position, so it loads into a model sharded any way, or not at all.
    """
    optimizers = _parts(optimizer)
    if sharded:
        model_state = get_model_state_dict(model, options=FULL_ON_CPU)
        return model_state, get_optimizer_state_dict(model, optimizers, options=FULL_ON_CPU)
    return model.state_dict(), get_optimizer_state_dict(model, optimizers)


def full_model_state(model: nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """The whole model state dict: the module's own, or (sharded) gathered on rank 0's CPU,
    with empty dicts on the other ranks (every rank must call it)."""
    if sharded:
        return get_model_state_dict(model, options=FULL_ON_CPU)
    return model.state_dict()


@torch.no_grad()
def load_full_model_state(
    model: nn.Module, state: dict[str, torch.Tensor], sharded: bool, world: World = SINGLE
) -> None:
    """Load a whole state dict into the model: as it is, or (sharded) rank 0's tensors
    scattered to every rank's shards. Each parameter is written once, under its first name,
    so tied weights (an encoder-decoder's shared embedding) stay tied."""
    if not sharded:
        model.load_state_dict(state)
        return
    from torch.distributed.tensor import distribute_tensor

    for name, param in model.named_parameters():  # a tied parameter appears once
        whole = state[name] if world.is_main else torch.empty(param.shape, dtype=param.dtype)
        whole = whole.to(device=param.device, dtype=param.dtype)
        shard = distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=0)
        param.to_local().copy_(shard.to_local())


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a whole optimizer state dict (from `full_state`) into a plain or sharded model's
    optimizer; each rank keeps the part that belongs to its shards."""
    if state["state"] and all(isinstance(key, int) for key in state["state"]):
        state = _by_name(model, optimizer, state)  # a trainer.pt written before names
    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, _parts(optimizer), optim_state_dict=state, options=options)


def _parts(optimizer: Any) -> torch.optim.Optimizer | tuple[torch.optim.Optimizer, ...]:
    """torch's own optimizers inside a combined one (`qkv.optim.MuonWithAdamW`), or itself."""
    return getattr(optimizer, "parts", optimizer)


def _by_name(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> dict[str, Any]:
    """torch's positional optimizer layout (ids 0, 1, ... in param-group order) -> names."""
    names = {id(param): name for name, param in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    groups = [
        {**group, "params": [order[i] for i in group["params"]]} for group in state["param_groups"]
    ]
    return {"state": {order[i]: s for i, s in state["state"].items()}, "param_groups": groups}
