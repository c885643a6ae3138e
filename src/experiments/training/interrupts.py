"""Stopping at a signal, and checkpoints inside an epoch.

Clusters preempt and time out: Slurm sends SIGTERM (and, with --signal, SIGUSR2 ahead of the
end, which submitit treats as preemption or timeout); a user presses Ctrl-C (SIGINT). A handler
here only records the signal. The trainer asks after every optimizer step (`poll`): the step
in progress finishes, the job writes a checkpoint that records its place inside the epoch, marks
its summary `interrupted` and exits; rerunning the same command continues from that step, to
the same numbers as an uninterrupted run. A second signal while it saves is noted and ignored
(the checkpoint is written atomically either way).

After the last epoch the job asks between the passes of its test (the final checkpoint is its
place: a stop there redoes the test on rerun); a signal during the test's last pass, or while the
job writes its result, lets the result be saved, then ends the process all the same. Between the
jobs of a sweep that runs them in one process (Hydra's basic launcher), and after its last,
`BetweenJobs` ends the process at once: no job is running then. A process forked from the job
(a DataLoader worker) leaves the signals to the job.

`trainer.checkpoint_every_min` asks for the same mid-epoch checkpoint on a clock, and goes on.
Under DDP rank 0's answer rules: every rank stops, or checkpoints, at the same step.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

GO_ON, SAVE = 0, 1  # poll's answers; a stop is the signal's number (> 1)


class Interrupted(Exception):
    """The job stopped at a signal, after checkpointing where it was."""

    def __init__(self, signum: int, where: str):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name} {where}: checkpointed; "
                         "rerun the same command to continue from there")


class Interrupts:
    """`with Interrupts(names, every_min):` records the first of the signals `names` (SIGTERM,
    SIGUSR2, SIGINT by default) while the job runs; the previous handlers come back at the end,
    and `chain()` hands the signal on to the one it replaced (submitit's, which requeues)."""

    def __init__(self, names=("SIGTERM", "SIGUSR2", "SIGINT"), every_min: float | None = None):
        self.signals = [signal.Signals[name] for name in names]
        self.every_s = every_min * 60 if every_min else None
        self.signum: int | None = None
        self.previous: dict[int, object] = {}
        self.last_save = time.monotonic()
        self.pid = os.getpid()

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():  # (Python's rule for handlers)
            self.pid = os.getpid()
            for sig in self.signals:
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:
            # a forked child (a DataLoader worker) inherits this handler until it sets its own:
            # the job decides, and ends it
            return
        if self.signum is None:
            self.signum = signum
            log.warning("%s: finishing this step, then checkpointing and stopping",
                        signal.Signals(signum).name)
        else:
            log.warning("%s again: already stopping (the checkpoint is being written)",
                        signal.Signals(signum).name)

    def poll(self) -> int:
        """GO_ON, SAVE (a checkpoint is due on the clock) or the signal to stop at."""
        if self.signum is not None:
            return self.signum
        if self.every_s is not None and time.monotonic() - self.last_save >= self.every_s:
            return SAVE
        return GO_ON

    def saved(self) -> None:
        """A checkpoint was written (at an epoch's end, or on the clock): the clock restarts."""
        self.last_save = time.monotonic()

    def chain(self) -> None:
        """Hand the signal to the handler this one replaced, when it was a Python function:
        under submitit, its handler resubmits the job (requeue) and exits."""
        chain(self.previous.get(self.signum), self.signum)


def chain(previous, signum: int) -> None:
    """Call `previous`, the handler a stop handler replaced, when it is a Python function other
    than Python's own Ctrl-C one (KeyboardInterrupt) and this module's `BetweenJobs` (which
    stands for the one it replaced in turn)."""
    while isinstance(getattr(previous, "__self__", None), BetweenJobs):
        previous = previous.__self__.previous.get(signum)
    if callable(previous) and previous is not signal.default_int_handler:
        previous(signum, None)


class BetweenJobs:
    """The stop signals while no job of this process is running: after a job's result is
    saved, before the next job of a sweep claims its directory (Hydra's basic launcher runs a
    sweep's jobs in one process), during the sweep's report. Nothing is left to checkpoint, so
    the process ends at once: the signal goes on to the handler it replaced (submitit's), then
    SystemExit(128 + its number) stops the sweep (its exit hooks, the report, still run). A
    job's own `Interrupts` take over while it runs, and hand back to this when it ends.

    Installed for the rest of the process by `install` (a Hydra callback, when a run or a
    sweep of the basic launcher starts: experiments/report/callbacks.py). Once the process's
    exit handlers run (the sweep's final report), where a SystemExit would be ignored, the
    process ends with os._exit."""

    def __init__(self, names=("SIGTERM", "SIGUSR2", "SIGINT")):
        self.signals = [signal.Signals[name] for name in names]
        self.previous: dict[int, object] = {}
        self.pid = os.getpid()
        self.exiting = False

    def install(self) -> BetweenJobs:
        if threading.current_thread() is threading.main_thread():
            self.pid = os.getpid()
            for sig in self.signals:
                self.previous[sig] = signal.signal(sig, self.handle)
            # (exit handlers run last registered first: this, before those registered earlier)
            atexit.register(setattr, self, "exiting", True)
        return self

    def handle(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:  # a forked child: not a job's process
            return
        name = signal.Signals(signum).name
        if not self.exiting:
            log.warning("%s while no job was running: stopping (every job that ended has its "
                        "result saved; rerun the same command to run the rest)", name)
            chain(self.previous.get(signum), signum)
            raise SystemExit(128 + signum)
        log.warning("%s at the end: stopping (every job's result is saved; `python -m "
                    "experiments.summarize SWEEP_DIR` writes a sweep's report)", name)
        chain(self.previous.get(signum), signum)
        logging.shutdown()
        os._exit(128 + signum)


NEVER = Interrupts(names=())  # what a trainer asks when no job installed any (direct use)
