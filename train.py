"""Entry point: `python train.py [overrides]`, or `python train.py -m ...` for a sweep.

The job itself is wired in src/experiments/job.py; the configs live in conf/.
"""

import time

started = time.perf_counter()  # before the imports: the first job's start-up counts them

import sys

import hydra
from omegaconf import DictConfig

from experiments import command_line
from experiments.config.secrets import hide_argv_secrets
from experiments.task import run
from experiments.timing import process_started
from experiments.training.distributed import agree_on_run_time


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return run(cfg)


if __name__ == "__main__":
    process_started(started)
    sys.argv = hide_argv_secrets(sys.argv)  # before Hydra records the command line anywhere
    command_line.record(sys.argv)  # the jobs' own, wherever a launcher starts them
    agree_on_run_time()  # torchrun: every rank names the same run directory
    main()
