"""Shared helpers: composing the real config tree, running train.py as a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The suite runs on two pytest workers (pyproject.toml: -n 2), each test on one thread, and so do
# the jobs it starts: two workers of two spinning OpenMP threads would oversubscribe 2 cores
# (a 16 s test took minutes). Measured on 2 cores, 2026-12-01: 525 s on two workers, 769 s on one.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from hydra import compose, initialize_config_dir

import experiments.config  # noqa: F401  (registers the schemas and resolvers with Hydra)

torch.set_num_threads(1)  # (in case torch was loaded before the variable was set)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides) -> the DictConfig that `python train.py <overrides>` would get."""

    def _compose(overrides=()):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides))

    return _compose


def run_train(*args: str, cwd: Path, timeout: int = 300, env: dict[str, str] | None = None,
              fresh: bool = False) -> subprocess.CompletedProcess:
    """Run `python train.py ARGS` the way a user does, with no network for W&B (and `env` added
    to this process's environment): its exit code, stdout and stderr.

    In a forked copy of this process, which has imported torch, timm and Hydra already: a new
    interpreter spends 7-9 s on them here before the job starts, and the suite starts dozens.
    The child runs train.py as `__main__` with its own argv, working directory, environment and
    output files, then the exit hooks registered during the run, and exits. `fresh`: a new
    interpreter instead (what only a new process shows: its start-up, python -O, ...)."""
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [sys.executable, str(ROOT / "train.py"), *args]
    if fresh:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return forked_train(command, Path(cwd), env, timeout)


def forked_train(command: list[str], cwd: Path, env: dict[str, str], timeout: float):
    import atexit
    import runpy
    import signal
    import tempfile
    import time
    import traceback

    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test
        code = 1
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, closefd=False)
            sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False)
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            hooks = []  # what the run registers to run at exit (a sweep's final report)
            atexit.register = lambda fn, *a, **k: hooks.append((fn, a, k)) or fn
            from hydra.core.global_hydra import GlobalHydra

            GlobalHydra.instance().clear()
            sys.argv = command[1:]
            try:
                runpy.run_path(command[1], run_name="__main__")
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            for fn, a, k in reversed(hooks):
                fn(*a, **k)
            import multiprocessing.util

            multiprocessing.util._exit_function()  # (its own exit hook: children and finalizers)
        except BaseException:  # noqa: BLE001  (reported on the child's stderr)
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise subprocess.TimeoutExpired(command, timeout)
        time.sleep(0.05)
    texts = []
    for f in (out, err):
        f.seek(0)
        texts.append(f.read().decode(errors="replace"))
        f.close()
    return subprocess.CompletedProcess(command, os.waitstatus_to_exitcode(status), *texts)
