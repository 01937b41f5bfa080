"""Shared fixtures: a private cache, small generated texts, tiny model settings, the CLI.

Everything here is offline, CPU-only and deterministic. Texts are generated from a fixed
seed; models are tiny (one layer, 32 channels, context 16) so a training run takes a second.

No silent skips: pytest reports every skip with its reason (`-rs` in pyproject.toml), and in
CI (the CI variable set, as `.ci/run` does) a skipped test fails the run, since there every
test's requirements (the test extras, Chromium) are installed.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from qkv.checkpoint import TRAINER_FILE, load_trainer_state
from qkv.cli import main

# Overrides for a model and a run small enough to train in about a second on a laptop CPU.
TINY = [
    # float32 on every CPU, so that the equalities the tests assert hold with or without AMX
    "train.precision=float32",
    "model.n_layer=1",
    "model.n_embd=32",
    "model.n_head=2",
    "model.block_size=16",
    "train.batch_size=4",
    "train.eval_iters=2",
    "train.warmup_steps=2",
    "train.log_interval=1",
    "train.device=cpu",
]

_LINES = [
    "To be, or not to be: that is the question.",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles,",
    "And by opposing end them. To die: to sleep;",
    "ROMEO: But, soft! what light through yonder window breaks?",
    "JULIET: O Romeo, Romeo! wherefore art thou Romeo?",
    "HAMLET: Alas, poor Yorick! I knew him, Horatio.",
    "All the world's a stage, and all the men and women merely players;",
]


def make_text(n_lines: int = 120, seed: int = 0) -> str:
    """A few KB of Shakespeare-like lines, the same for the same arguments."""
    rng = random.Random(seed)
    return "\n".join(rng.choice(_LINES) for _ in range(n_lines)) + "\n"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI, a run with any skipped test fails: a skip there means a requirement is missing."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if os.environ.get("CI") and skipped and exitstatus == 0:
        reporter.write_line(f"CI: {len(skipped)} skipped test(s) fail the run (see -rs above)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def qkv_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own QKV_CACHE_DIR, so no test reads or writes ~/.cache."""
    cache = tmp_path / "qkv-cache"
    monkeypatch.setenv("QKV_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def tiny() -> list[str]:
    """Overrides for a tiny model and run (a fresh list each time)."""
    return list(TINY)


@pytest.fixture
def text() -> str:
    return make_text()


@pytest.fixture
def text_file(tmp_path: Path, text: str) -> Path:
    """A ~5 KB UTF-8 text file of generated Shakespeare-like lines."""
    path = tmp_path / "play.txt"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `qkv ARGS...` in-process: -> CliResult(exit code, stdout, stderr)."""

    def run(*argv: object) -> CliResult:
        capsys.readouterr()  # drop whatever came before
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@dataclass
class TrainedRun:
    run_dir: Path
    text_file: Path
    text: str
    steps: int


TRAINED_STEPS = 20


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """One tiny run, trained once per session. Treat it as read-only: copy it to modify it."""
    root = tmp_path_factory.mktemp("trained")
    text = make_text()
    data = root / "play.txt"
    data.write_text(text, encoding="utf-8")
    run_dir = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QKV_CACHE_DIR", str(root / "qkv-cache"))
        code = main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(run_dir),
                "--max-steps",
                str(TRAINED_STEPS),
                "--max-time",
                "0",
                "--seed",
                "1",
                "--no-progress",
                *TINY,
                "train.eval_interval=10",
                "train.lr=1e-2",
            ]
        )
    assert code == 0
    return TrainedRun(run_dir, data, text, TRAINED_STEPS)


@pytest.fixture
def run_copy(trained_run: TrainedRun, tmp_path: Path) -> Path:
    """A private copy of the trained run directory, free to modify."""
    return Path(shutil.copytree(trained_run.run_dir, tmp_path / "run-copy"))


# -- waiting on a run in another process ---------------------------------------------------

# Seconds a test waits for something another process will do before it calls that process
# stuck. A failsafe, never a measure: on an idle machine every wait ends in a few seconds.
FAILSAFE_S = 120.0


def saved_step(run_dir: Path) -> int:
    """The step of the run's last complete snapshot, -1 before the first one: trainer.pt is
    written last in a save and replaced in one atomic rename, so once it names a step, the
    save of that step has finished (wait on this, not on metrics.jsonl: a step's metrics
    line is written before its save begins)."""
    return load_trainer_state(run_dir)["step"] if (run_dir / TRAINER_FILE).exists() else -1


def wait_until(
    condition: Callable[[], bool],
    processes: Iterable[subprocess.Popen],
    what: str,
    timeout: float = FAILSAFE_S,
) -> None:
    """Poll `condition` until it holds. Fails at once if one of `processes` exits first (it
    never will do what is awaited), and after `timeout` seconds, as a failsafe only."""
    processes = list(processes)
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            if process.poll() is not None:  # its output (if piped) says why
                pytest.fail(
                    f"exited with {process.returncode} before {what}: {process.communicate()}"
                )
        assert time.monotonic() < deadline, f"still waiting after {timeout:.0f} s for {what}"
        time.sleep(0.05)
