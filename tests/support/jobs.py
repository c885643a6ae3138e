"""Jobs run in the test process: no interpreter start-up (8 s of imports on a 2-core machine),
the same code as `python train.py`.

- `train_here(cfg, out)`: `experiments.job.train` on a composed config, as the task function
  calls it once the directory is claimed (direct tests of the fit and its files);
- `run_here(overrides, out)`: the task function itself, `experiments.job.run`, with Hydra's
  runtime config set as Hydra's `run_job` sets it (the claim, refusals, summaries, exit codes).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict, read_write

import experiments.config  # noqa: F401  (registers the schemas and resolvers with Hydra)
from experiments.config.checks import check_config
from experiments.job import JobInfo, train
from experiments.report.job_summary import SummaryFile
from experiments.task import run
from experiments.training.checkpoint import Checkpoint

CONF = Path(__file__).resolve().parents[2] / "conf"


def train_here(cfg, out: Path, name: str = "job", overrides=()) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    job = JobInfo(out, name, None, {}, list(overrides), False, 0)
    options = check_config(cfg)
    record = OmegaConf.to_container(cfg, resolve=True)
    return train(cfg, options, job, record, Checkpoint(out, record, options.resume), SummaryFile(job))


def run_here(overrides, out: Path, multirun: bool = False, num: int = 0) -> float:
    """What `python train.py OVERRIDES hydra.run.dir=OUT` runs (a job of a sweep with
    `multirun`), in this process. Raises SystemExit where the command would exit non-zero."""
    return run(task_config(overrides, out, multirun, num))


def task_config(overrides, out: Path, multirun: bool = False, num: int = 0):
    """The config the task function gets from `python train.py OVERRIDES hydra.run.dir=OUT`,
    Hydra's runtime config set as Hydra's `run_job` sets it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    with read_write(cfg.hydra):
        with open_dict(cfg.hydra):
            cfg.hydra.runtime.output_dir = str(Path(out).resolve())
            cfg.hydra.runtime.cwd = os.getcwd()
            cfg.hydra.mode = RunMode.MULTIRUN if multirun else RunMode.RUN
            cfg.hydra.job.num = num
    HydraConfig.instance().set_config(cfg)
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task
