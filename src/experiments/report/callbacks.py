"""Hydra callbacks: a sweep's summary kept current, and an output directory checked up front.

After every job (completed or failed) the sweep's report (summary.md, summary.csv, effects.csv)
is rebuilt from disk, so it is complete even when a job fails: Hydra then skips
`on_multirun_end`. The plots (matplotlib takes seconds: drawn once), the final report and the
printed table come from an exit hook registered when the multirun starts, which runs whichever
way the sweep ends.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from experiments.ranks import launched_ranks

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    def __init__(self, plots: bool = True):
        self.plots = plots

    def on_multirun_start(self, config, **kwargs) -> None:
        if rank_0():
            atexit.register(self.final_report, Path(config.hydra.sweep.dir))

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if rank_0() and config.hydra.mode is not None and str(config.hydra.mode).endswith("MULTIRUN"):
            from experiments.report.sweep_report import write_tables

            try:
                write_tables([Path(config.hydra.sweep.dir)], Path(config.hydra.sweep.dir))
            except Exception as err:  # a summary must never fail a training job
                log.warning("could not update the sweep summary: %s", err)

    def final_report(self, sweep_dir: Path) -> None:
        from experiments.report.command import summarize

        if not sweep_dir.is_dir():
            return
        try:
            table = summarize([sweep_dir], sweep_dir, plots=self.plots)
        except Exception as err:
            print(f"could not summarize {sweep_dir}: {err}")
            return
        print(f"\n{table}\nSweep summary: {sweep_dir}/summary.md (plots in {sweep_dir}/plots/)",
              flush=True)


def rank_0() -> bool:
    """Whether this process writes the sweep's report: every process but the other ranks of a
    job a launcher started as several (torchrun, Slurm tasks), which run the same sweep."""
    ranks = launched_ranks()
    return ranks is None or ranks.main


class WritableOutput(Callback):
    """Check the run or sweep directory before Hydra creates it, so an unwritable location gives
    one clear line instead of a traceback from inside Hydra."""

    def on_run_start(self, config, **kwargs) -> None:
        self.check(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self.check(Path(config.hydra.sweep.dir), "hydra.sweep.dir")

    @staticmethod
    def check(path: Path, key: str) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as err:
            print(f"cannot write the output directory {path} ({err.strerror or err}). "
                  f"Choose a writable one with {key}=...", file=sys.stderr)
            sys.exit(2)
