"""The OmegaConf resolvers the config tree uses (job directories and their names, data=folder's
class count)."""

from __future__ import annotations

import copy
import functools
import logging
import os
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from experiments.command_line import command_line
from experiments.config.groups import NAMED_GROUPS
from experiments.config.optuna import swept_keys, trial_subdir
from experiments.config.secrets import recorded
from experiments.identity import claim_job_dir, job_identity

log = logging.getLogger(__name__)


def job_dir(number, label: str, *, _root_: DictConfig) -> str:
    """conf/hydra/default.yaml's hydra.sweep.subdir: the directory of the sweep that holds this
    job's config already (a finished job returns its result there, an interrupted one continues),
    else a new one, `<number>-<label>`, numbered by the job's place in this run's grid where no
    directory has that number yet (experiments/identity.py). Evaluated by Hydra in the job's own
    process (a joblib worker, a Slurm task), before the job's directory is made."""
    try:
        fp = job_identity(recorded(task_config(_root_)))
    except Exception as err:  # noqa: BLE001  (a config that does not resolve: the job fails on it)
        log.warning("this job's config does not resolve (%s; the job says why), so it is not "
                    "looked for among the sweep's jobs: named by its place in the grid", type(err).__name__)
        return f"{number}-{label}"
    return claim_job_dir(Path(str(_root_.hydra.sweep.dir)), fp, int(number), label)


def task_config(root: DictConfig) -> DictConfig:
    """The job's config as the task function gets it (experiments/task.py): without `hydra`;
    `paths.output_dir`, being decided now, stands in (not part of the fingerprint)."""
    task = copy.deepcopy(root)
    with read_write(task), open_dict(task):
        del task["hydra"]
        if "output_dir" in (task.get("paths") or {}):
            task.paths.output_dir = "<the job's directory>"
    return task


def job_suffix(task_overrides) -> str:
    """`-key=value,...` for this job's values of the swept keys its name does not show yet.

    Constant overrides (`experiment=smoke`, `data.root=...`) would only make every name longer.
    """
    swept = swept_keys(command_line()[1:]) - set(NAMED_GROUPS)
    parts = [o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") in swept]
    return "-" + ",".join(parts).replace("/", "_") if parts else ""


def trial_name(task_overrides, params) -> str:
    """An Optuna trial's sampled values, `lr=0.0123-wd=3e-4-bs=64` (experiments.config.optuna):
    conf/hparams_search/optuna.yaml names its trials' directories by them."""
    return trial_subdir(task_overrides, params)


def folder_classes(root: str) -> int:
    """`data=folder`'s class count, read from the folder names under ROOT/train."""
    from experiments.data.folder import class_names

    return len(class_names(root))


def named_choices(choices) -> str:
    """`model-optim-aug`: the options of NAMED_GROUPS, in a job directory's name."""
    return "-".join(str(choices[group]) for group in NAMED_GROUPS)


def smoke_width(value, *, _root_):
    """size=smoke's model.width: `value` for a model with a width knob trained from scratch;
    null (its standard size, said once in the log) for a pretrained model, whose weights fix its
    size, and for a timm architecture that has no width setting (EfficientNet, ViT, ...)."""
    from experiments.models.pretrained import wants_pretrained  # here: timm only when it is used
    from experiments.models.resnet import has_width

    model = _root_.get("model") or {}
    if wants_pretrained(model):
        return None
    if not has_width(model):
        log_standard_size(str(model.get("name")))
        return None
    return value


@functools.lru_cache(maxsize=None)
def log_standard_size(name: str) -> None:
    """Once per model: a resolver runs each time its value is read."""
    log.info("size=smoke: timm's %s has no width setting, so it keeps its standard size", name)


@functools.lru_cache(maxsize=None)
def started() -> datetime:
    """The run's start: the time every rank of a job agreed on (EXPERIMENTS_RUN_TIME, set under
    torchrun by experiments.training.distributed), else this process's first read of it."""
    agreed = os.environ.get("EXPERIMENTS_RUN_TIME")
    return datetime.fromisoformat(agreed) if agreed else datetime.now()


def run_time(pattern: str) -> str:
    """${run_time:%H-%M-%S}: the run's start, formatted as Hydra's ${now:...} formats now."""
    return started().strftime(pattern)


# ImageNet's per-channel statistics (what photos are normalized with unless data.mean/std say
# otherwise), and for grey images the mean over the three channels
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def imagenet_stats(which: str, channels: int) -> list[float]:
    """`data=folder`'s default mean or std for its `data.channels` (3, or 1 for grey)."""
    values = IMAGENET[which]
    return list(values) if channels == 3 else [round(sum(values) / 3, 4)] * channels


def batch_scaled(value: float, at_batch: int, batch: int) -> float:
    """${batch_scaled:VALUE,AT_BATCH,${trainer.batch_size}}: VALUE at batch AT_BATCH, in
    proportion to the batch elsewhere (a learning rate set per image, on the batch's mean loss)."""
    return value * batch / at_batch


def epochs_share(share: float, *, _root_) -> int:
    """${epochs_share:0.1}: that share of trainer.epochs, in whole epochs (at least 1): a search
    pruner's warm-up or first rung, in proportion to the trials' budget
    (conf/hydra/sweeper/pruner/)."""
    return max(1, round(share * _root_.trainer.epochs))


def register_resolvers() -> None:
    for name, fn in (("job_dir", job_dir), ("job_suffix", job_suffix), ("folder_classes", folder_classes),
                     ("named_choices", named_choices), ("smoke_width", smoke_width),
                     ("imagenet_stats", imagenet_stats), ("run_time", run_time),
                     ("trial_name", trial_name), ("batch_scaled", batch_scaled),
                     ("epochs_share", epochs_share)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
