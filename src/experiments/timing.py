"""Where a job's wall time goes: `summary.json`'s `time_s`.

At 1-2 s per epoch (the speed presets) the framework's own costs decide the result, so every job
says how its wall time divides: start-up (imports for the first job of a process, the data, the
model, resuming), warm-up (the job's first optimizer step: compile, cuDNN's autotuning, the
allocator's first blocks), training passes, validation, checkpointing (model.pt included), test,
logging (TensorBoard, W&B, metrics.csv, summary.json while running, the console), profile
(trainer.profile: collecting and writing its trace; training/profile.py), shutdown
(under trainer.devices=N, rank 0 waiting for the ranks it started to exit) and the rest (what no
section claims: Python between them). The sections add up to `wall` by construction;
what the accounting is worth is how small `rest` stays (tests/test_speed_presets.py checks it).

Each section ends at a point where the GPU has finished its work (the trainer synchronizes after
a training pass; validation and checkpoints read their results back), so a section is charged
for its own kernels, not for the previous section's queue.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext

SECTIONS = ("startup", "warmup", "train", "validation", "checkpoint", "test", "logging", "profile",
            "shutdown")

_process_start: float | None = None


def process_started(at: float) -> None:
    """train.py's first line: the first job of this process counts its imports as start-up."""
    global _process_start
    _process_start = at


def take_process_start() -> float | None:
    """The process's start, once (the first job's); later jobs of a multirun start with theirs."""
    global _process_start
    at, _process_start = _process_start, None
    return at


class JobClock:
    """`with clock("validation"): ...` charges the block's seconds to a section; `startup` is
    what passed from the job's start until `started_fit`. Sections nest: an inner section's
    time is taken out of the outer one's (a checkpoint written inside a training pass is
    checkpointing, not training)."""

    def __init__(self, started: float | None = None):
        self.started = started if started is not None else time.perf_counter()
        self.seconds = dict.fromkeys(SECTIONS, 0.0)
        self.open: list[list] = []  # [section, its start, seconds of inner sections]
        self.fit_started: float | None = None

    @contextmanager
    def __call__(self, section: str):
        assert section in SECTIONS, section
        entry = [section, time.perf_counter(), 0.0]
        self.open.append(entry)
        try:
            yield
        finally:
            self.open.pop()
            spent = time.perf_counter() - entry[1]
            self.seconds[section] += spent - entry[2]
            if self.open:
                self.open[-1][2] += spent

    @contextmanager
    def around(self, section: str, manager, entering: bool = True):
        """`with clock.around("logging", tracker) as t:` charges the manager's entering and
        leaving (a W&B run's start and finish) to `section`, not what runs inside; with
        `entering=False` its leaving only (the entering stays with the enclosing section)."""
        with self(section) if entering else nullcontext():
            value = manager.__enter__()
        try:
            yield value
        except BaseException as err:
            with self(section):
                if not manager.__exit__(type(err), err, err.__traceback__):
                    raise
        else:
            with self(section):
                manager.__exit__(None, None, None)

    def started_fit(self) -> None:
        """Start-up ends here (the first call only: a job builds once)."""
        if self.fit_started is None:
            self.fit_started = time.perf_counter()
            self.seconds["startup"] += self.fit_started - self.started - sum(self.seconds.values())

    def move(self, seconds: float, source: str, to: str) -> None:
        """Re-charge time measured inside one section to another (the warm-up step, timed
        inside the training pass)."""
        self.seconds[source] -= seconds
        self.seconds[to] += seconds

    def summary(self) -> dict[str, float]:
        """Every section's seconds, `rest` and `wall`, rounded to milliseconds."""
        wall = time.perf_counter() - self.started
        rest = wall - sum(self.seconds.values())
        return {**{k: round(v, 3) for k, v in self.seconds.items()}, "rest": round(rest, 3),
                "wall": round(wall, 3)}


class NoClock(JobClock):
    """A trainer used directly (tests, notebooks): nothing to account to."""

    @contextmanager
    def __call__(self, section: str):
        yield

    def move(self, seconds: float, source: str, to: str) -> None:
        pass
