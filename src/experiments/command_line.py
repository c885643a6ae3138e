"""The command line a job was started with, wherever the job runs.

A launcher that starts its jobs in new processes runs them under a command line of its own
(submitit, locally or on Slurm: `python -m submitit.core._submit ...`), where the keys the user's
command line sweeps (which a job's directory name shows) and the command its provenance records
are not to be found. train.py records the user's command line, its secrets already hidden
(config/secrets.py), in an environment variable of its process, which those jobs inherit as they
inherit the secrets' variables (joblib, submitit locally, Slurm's sbatch exporting it).
"""

from __future__ import annotations

import json
import os
import sys

VARIABLE = "EXPERIMENTS_COMMAND_LINE"


def record(argv: list[str]) -> None:
    """train.py, once its secrets are hidden: this is the command line of every job it starts."""
    os.environ[VARIABLE] = json.dumps(list(argv))


def command_line() -> list[str]:
    """The user's command line (`train.py` and its arguments, as sys.argv has them): the one
    train.py recorded, else this process's own."""
    recorded = os.environ.get(VARIABLE)
    return json.loads(recorded) if recorded else list(sys.argv)
