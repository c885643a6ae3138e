"""Entry point: `python train.py [overrides]`, or `python train.py -m ...` for a sweep.

The job itself is wired in src/experiments/job.py; the configs live in conf/.
"""

import sys

import hydra
from omegaconf import DictConfig

from experiments.config.secrets import hide_argv_secrets
from experiments.task import run
from experiments.training.distributed import agree_on_run_time


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return run(cfg)


if __name__ == "__main__":
    sys.argv = hide_argv_secrets(sys.argv)  # before Hydra records the command line anywhere
    agree_on_run_time()  # torchrun: every rank names the same run directory
    main()
