"""Entry point: `python train.py [overrides]`, or `python train.py -m ...` for a sweep.

The job itself is wired in src/experiments/job.py; the configs live in conf/.
"""

import hydra
from omegaconf import DictConfig

from experiments.job import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return run(cfg)


if __name__ == "__main__":
    main()
