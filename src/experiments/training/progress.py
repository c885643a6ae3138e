"""What a person watching a job sees: one bar over each epoch's training steps, and where there is
no terminal (a log file, Slurm's output) a short line now and then instead.

The bar is tqdm's, over the epoch's images: its rate is images/s and its ETA the epoch's; its
description says which epoch of how many, its postfix the job's ETA (the mean epoch so far times
the epochs left). It is left off the screen when the epoch ends: the epoch's one-line summary
(job.py's `log_epoch`, printed above the bar through tqdm.contrib.logging) stays instead.

Without a terminal a carriage-return bar would write every refresh as a line of its own: a line
every `LINE_EVERY_S` seconds instead, through the log (console only; train.log gets the epochs).
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

LINE_EVERY_S = 60.0  # without a terminal: a progress line at most this often
CONSOLE_ONLY = {"console_only": True}  # a log record's `extra`: not for train.log


def interactive() -> bool:
    return sys.stderr.isatty()


def duration(seconds: float) -> str:
    """3.2 s, 4m12s, 1h05m."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class EpochBar:
    """`update(images)` after every optimizer step; `close()` at the epoch's end."""

    def __init__(self, epoch: int, epochs: int, images: int, *, enabled: bool = True,
                 job_eta_s: float | None = None, terminal: bool | None = None):
        self.epoch, self.epochs, self.images = epoch, epochs, images
        self.enabled = enabled
        self.terminal = interactive() if terminal is None else terminal
        self.started = self.last_line = time.perf_counter()
        self.done = 0
        self.bar = None
        if enabled and self.terminal:
            self.bar = tqdm(total=images, desc=f"epoch {epoch}/{epochs}", unit="img",
                            unit_scale=True, leave=False, dynamic_ncols=True, smoothing=0.1,
                            postfix=f"job ETA {duration(job_eta_s)}" if job_eta_s is not None else None)

    def update(self, images: int) -> None:
        self.done += images
        if self.bar is not None:
            self.bar.update(images)
        elif self.enabled:
            now = time.perf_counter()
            if now - self.last_line >= LINE_EVERY_S:
                self.last_line = now
                rate = self.done / (now - self.started)
                left = (self.images - self.done) / rate if rate else 0.0
                log.info("epoch %d/%d  %d%%  %.0f img/s  epoch ETA %s", self.epoch, self.epochs,
                         100 * self.done // max(1, self.images), rate, duration(left),
                         extra=CONSOLE_ONLY)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


FILE_ONLY = {"file_only": True}  # a log record's `extra`: for train.log, not the console


class Destination(logging.Filter):
    """A handler's filter (conf/hydra/default.yaml gives one to each of Hydra's two): the console
    drops the records marked FILE_ONLY (an epoch's every metric by its full name), train.log the
    ones marked CONSOLE_ONLY (the short epoch line, progress lines)."""

    def __init__(self, handler: str):
        super().__init__()
        self.drop = "file_only" if handler == "console" else "console_only"

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, self.drop, False)


class ConsoleFormatter(logging.Formatter):
    """The console's records: the time and the message (`14:02:11 epoch 3/30  loss ...`), with the
    level where it matters (WARNING, ERROR); train.log keeps Hydra's full format (date, logger)."""

    def __init__(self):
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            stamp, _, message = text.partition(" ")
            text = f"{stamp} {record.levelname} {message}"
        return text
