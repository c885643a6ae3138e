"""`python train.py ARGS` as a process forked from a server that has imported torch, timm, Hydra,
W&B and this package already (multiprocessing's forkserver, with those modules preloaded).

Why: a new interpreter spends 7-9 s on those imports on this 2-core machine before a job starts
(W&B's first `init` alone imports pydantic for 2.6 s), and the suite starts dozens of jobs.
Measured on 2026-12-01: one smoke job, 25.4 s as a new `python train.py`, 14.0 s of it start-up.

Why a server and not a fork of the test process: a pytest-xdist worker runs threads (execnet),
and a fork of a threaded process can inherit a lock another thread held; a joblib sweep forked
that way hung. The server only imports: it has one thread and has run no torch op, so a child
starts as a new interpreter would after its imports, and its own children (DDP ranks, loky
workers, DataLoader workers) are its own, never the test process's.

The child runs train.py as `__main__` with its argv, working directory, environment, PYTHONPATH
and output files, then the interpreter's exit handlers (a sweep's final report is one), and exits
with the code `python train.py` would. What only a new interpreter shows (its imports counted in
`time_s.startup`, `python -O`, ...) needs `run_train(..., fresh=True)`.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

PRELOAD = [
    "torch", "torchvision", "timm", "hydra", "omegaconf", "wandb",
    "wandb.sdk.launch.inputs.internal",  # (what wandb.init imports on every run: pydantic, 2.6 s)
    "torch.utils.tensorboard", "experiments.task", "experiments.job", "experiments.report.callbacks",
    "experiments.report.command",  # (the report a multirun writes: pandas, scipy; 0.5 s a sweep)
    "hydra._internal.core_plugins.basic_launcher", "hydra_plugins.hydra_joblib_launcher.joblib_launcher",
    "experiments.search.sweeper",  # (a search's sweeper: Optuna, 2-3 s of imports, and SQLAlchemy)
]


FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(PRELOAD)  # (read when the server starts: this process's first job)


class Started:
    """A job started in the background: the part of `subprocess.Popen` the tests use, and its
    output once it has ended (`output()`)."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], new_session: bool):
        self.command, self._outputs = command, tempfile.TemporaryDirectory()
        self._out, self._err = Path(self._outputs.name) / "stdout", Path(self._outputs.name) / "stderr"
        args = (command[1:], str(cwd), env, str(self._out), str(self._err), new_session)
        self._process = FORKSERVER.Process(target=_main, args=args)
        self._process.start()
        self.pid = self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.command, timeout)
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def output(self) -> tuple[str, str]:
        return tuple(p.read_text(errors="replace") if p.exists() else "" for p in (self._out, self._err))


def start(command: list[str], cwd: Path, env: dict[str, str], new_session: bool = False) -> Started:
    """`subprocess.Popen(command, cwd=cwd, env=env, start_new_session=new_session)` for
    `command` = [python, train.py, *args], its output kept for `Started.output()`."""
    return Started(command, cwd, env, new_session)


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """What `subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
    timeout=timeout)` returns for `command` = [python, train.py, *args]."""
    job = start(command, cwd, env)
    try:
        code = job.wait(timeout)
    except subprocess.TimeoutExpired:
        job.kill()
        job.wait()
        raise
    return subprocess.CompletedProcess(command, code, *job.output())


def _main(argv: list[str], cwd: str, env: dict[str, str], out: str, err: str, new_session: bool) -> None:
    """The child: `python ARGV` from here on, as far as the job can tell."""
    if new_session:
        os.setsid()  # its own process group, which the ranks it spawns join (killed as one)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, closefd=False)  # line-buffered, as -u
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False)
    # multiprocessing's default as a new interpreter has it (fork, on Linux), not this child's
    # (forkserver): a job's DataLoader workers then start from the job, not from a new server
    multiprocessing.set_start_method(None, force=True)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    script = os.path.abspath(argv[0])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = [os.path.dirname(script), *paths]  # as a new interpreter's sys.path starts
    sys.argv = [script, *argv[1:]]
    code: object = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code
    except BaseException:  # noqa: BLE001  (printed as the interpreter would, then exit code 1)
        traceback.print_exc()
        code = 1
    # what the interpreter does at its exit, in its order, which multiprocessing's child does not:
    # join the threads and run their exit hooks (joblib's loky shuts its workers down there), then
    # the atexit handlers (a sweep's final report; multiprocessing's, which joins the children)
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.exit(code)  # (multiprocessing turns it into the exit code as Python does)
