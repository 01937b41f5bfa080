"""`train`: the call that runs a training run of any kind, in one process or under torchrun."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from qkv.config import ConfigTree
from qkv.errors import JobBroken
from qkv.runtime import STOP_SIGNALS, resolve_device
from qkv.training import distributed
from qkv.training.distributed import World
from qkv.training.loop import Trainer
from qkv.training.progress import TrainResult


def train(
    config: ConfigTree,
    *,
    resume: bool = False,
    progress: bool = True,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train (or resume) the run that `config` describes, of whatever kind; see `Trainer`.

    Under torchrun every process calls this; they meet in a process group for the run.
    """
    from qkv.viz.curves import plot_after_training  # before the run, never after it

    world = distributed.world_from_env()
    device = distributed.rank_device(resolve_device(config.train.device), world)
    with distributed.process_group(world, device, config.train.dist_timeout):
        try:
            result = _fit_once(config, resume, progress, init_from, world)
        except RuntimeError as exc:
            if not (world.launched and distributed.is_peer_failure(exc)):
                raise
            _ignore_stop_signals()
            reason = distributed.short_reason(exc)
            raise JobBroken(
                f"rank {world.rank}: lost the other processes of the job ({reason}); the last "
                f"checkpoint in {config.train.out_dir} is whole: resume it with --resume"
            ) from None
    if world.is_main:
        plot_after_training(result.out_dir)  # curves.png; a failure to draw only warns
    return result


def _ignore_stop_signals() -> None:
    """SIGINT and SIGTERM do nothing from here on (set in the main thread only).

    For a rank whose job is over: torchrun soon sends it SIGTERM (when the rendezvous host
    dies with the lost peer, its launcher notices and stops its workers), and the default
    action, back since `fit` returned, would end the process silently while it leaves the
    process group, before the one line that says what happened.
    """
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def _fit_once(
    config: ConfigTree, resume: bool, progress: bool, init_from: str | Path | None, world: World
) -> TrainResult:
    """A Trainer that is gone when this returns: its DDP or FSDP state must be freed before
    the process group it uses is destroyed (the other way round can hang at exit)."""
    trainer = Trainer(config, resume=resume, progress=progress, init_from=init_from, world=world)
    return trainer.fit()
