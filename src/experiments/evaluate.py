"""Evaluate a finished job anywhere: its tested weights (`model.pt`) with its own config (model,
input size, normalization: what the weights were trained to take), on its own test set or on
another dataset with the same classes.

    python -m experiments.evaluate JOB_DIR                          # the job's test set
    python -m experiments.evaluate JOB_DIR split=val trainer.tta=flip
    python -m experiments.evaluate JOB_DIR data=folder data.root=~/cifar10-style-images

Overrides are the job's keys: `data=NAME` takes that data option (composed as `python train.py
data=NAME` would, run from here, then the `data.*` and `paths.*` overrides), other `KEY=VALUE`s
change the job's resolved config. `split` (or `data.split`) is test (default), val or train.
Writes `eval-<data>-<split>.json` (`eval-<data>-<split>-<tta>.json` with trainer.tta; <data> is
`folder-<its folder's name>` for data=folder) beside the job's summary.json and prints the
accuracy and loss.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

import experiments.config  # noqa: F401  (registers the schemas and resolvers with Hydra)
from experiments.atomic import atomic_write
from experiments.config.checks import check_mirroring, trainer_options
from experiments.data import load_splits
from experiments.errors import ConfigError, UserError, user_error_in
from experiments.job import build_loaders, build_model
from experiments.report.job_summary import CONFIG_FILE
from experiments.training.backends import resolve_device, resolve_precision, unwrap
from experiments.training.options import TrainerOptions
from experiments.training.trainer import evaluate

CONF = Path(__file__).resolve().parent / "conf"
SPLITS = ("test", "val", "train")


@contextmanager
def hydra_runtime(job_dir: Path, overrides: list[str]):
    """The train config composed with `overrides`, while Hydra's runtime is set as `python
    train.py` run from here would set it (the job's directory as its output directory): what
    `${hydra:...}` interpolations read (paths.root_dir, hence every data.root under
    paths.data_dir). Whatever runtime was set before (a notebook's, a test's) is restored."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with read_write(composed.hydra), open_dict(composed.hydra):
        composed.hydra.runtime.cwd = os.getcwd()
        composed.hydra.runtime.output_dir = str(job_dir.resolve())
    runtime = HydraConfig.instance()
    before = runtime.cfg
    runtime.set_config(composed)
    try:
        yield composed
    finally:
        runtime.cfg = before


def job_config(job_dir: Path, overrides: list[str]):
    """The job's config as it trained (the model and input it built), that config with
    `overrides` (what is evaluated), and the split to evaluate; both resolved. A key, value or
    interpolation that cannot be had is one ConfigError naming it, as train.py's checks are."""
    if not (job_dir / CONFIG_FILE).exists() or not (job_dir / "model.pt").exists():
        raise UserError(f"{job_dir} holds no finished job (its {CONFIG_FILE} and model.pt)")
    split, data_option, rest = "test", None, []
    for item in overrides:
        key, _, value = item.partition("=")
        if key in ("split", "data.split"):
            split = value
        elif key == "data":
            data_option = value
        else:
            rest.append(item)
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: one of {', '.join(SPLITS)}")
    # another dataset is composed as train.py composes it, with the data.* and paths.* overrides
    composing = [f"data={data_option}", *(o for o in rest if o.startswith(("data.", "paths.")))] \
        if data_option is not None else []
    try:
        with hydra_runtime(job_dir, composing) as composed:
            # (to_container resolves every interpolation while Hydra's runtime is set; its errors
            # name the key, OmegaConf.resolve's do not)
            trained = OmegaConf.create(OmegaConf.to_container(OmegaConf.load(job_dir / CONFIG_FILE),
                                                              resolve=True))
            cfg = trained.copy()
            with open_dict(cfg):
                if data_option is not None:  # (resolved in its own config: its paths are here's)
                    cfg.data = OmegaConf.create(OmegaConf.to_container(composed.data, resolve=True))
                    rest = [o for o in rest if not o.startswith("data.")]
                for item in rest:
                    key, _, value = item.partition("=")
                    OmegaConf.update(cfg, key, yaml_value(item, value), merge=True)
            cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        cfg.trainer = OmegaConf.merge(OmegaConf.structured(TrainerOptions), cfg.trainer)  # typed again
    except (HydraException, OmegaConfBaseException) as err:
        found = user_error_in(err)
        raise found if isinstance(found, UserError) else ConfigError(config_message(err)) from None
    return trained, cfg, split


def yaml_value(item: str, value: str):
    """KEY=VALUE's value as YAML reads it, as Hydra's overrides read theirs (null when empty)."""
    try:
        return yaml.safe_load(value) if value else None
    except yaml.YAMLError as err:
        raise ConfigError(f"{item}: its value is not YAML ({getattr(err, 'problem', None) or err})") from None


def config_message(err: Exception) -> str:
    """What could not be composed or resolved, in one message: Hydra's as train.py shows it (a
    missing option lists the options there are), OmegaConf's first line with the key it is about."""
    message = str(err).split("\nConfig search path")[0]
    key = getattr(err, "full_key", None)
    if isinstance(err, OmegaConfBaseException):
        message = message.splitlines()[0]
        if key and key not in message:
            message = f"{key}: {message}"
    return message


def report_name(data, split: str, tta: str) -> str:
    """What was evaluated names the file, so that another evaluation is another file, not an
    overwritten one: the dataset (a data=folder by its folder's name too: `folder` says nothing
    of which), the split and the TTA."""
    name = f"folder-{Path(data.root).name}" if data.name == "folder" else data.name
    return f"eval-{name}-{split}{'' if tta == 'none' else '-' + tta}.json"


def run(job_dir: Path, overrides: list[str]) -> dict:
    trained, cfg, split = job_config(job_dir, overrides)
    if cfg.data.num_classes != trained.data.num_classes:
        raise ConfigError(f"data={cfg.data.name} has {cfg.data.num_classes} classes, the job's model "
                          f"{trained.data.num_classes} ({trained.data.name}): evaluate it on data with "
                          "the same classes")
    options = trainer_options(cfg)  # (the training-time checks across groups do not apply)
    check_mirroring(cfg.data, flip=False, tta=options.tta)  # but a mirrored digit is another one
    device = resolve_device(options.device)
    if trained.model.get("pretrained"):  # its weights are model.pt's: no download
        trained.model.pretrained = False
    model, model_input = build_model(trained, device, channels_last=False)  # what it was trained to take
    unwrap(model).load_state_dict(torch.load(job_dir / "model.pt", map_location=device, weights_only=True))
    splits = load_splits(cfg.data)
    chosen = getattr(splits, split)
    if chosen is None:
        raise ConfigError(f"data={cfg.data.name} has no {split} split here (data.val_size=0?)")
    # the chosen split served as evaluation serves the test set: every image once, unaugmented
    batches = build_loaders(cfg, options, dataclasses.replace(splits, test=chosen), model_input, device,
                            channels_last=False).test
    result = evaluate(model, batches, device=device, amp_dtype=resolve_precision(options.precision, device))
    if options.tta != "none":
        result["tta_acc"] = evaluate(model, batches, device=device, tta=options.tta,
                                     amp_dtype=resolve_precision(options.precision, device))["acc"]
    report = {"job": str(job_dir), "data": cfg.data.name, "split": split, "tta": options.tta,
              "images": batches.num_images, "classes": cfg.data.num_classes, "device": str(device),
              **result, "overrides": overrides}
    out = job_dir / report_name(cfg.data, split, options.tta)
    with atomic_write(out) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{cfg.data.name} {split}: acc={result['acc']:.4f} loss={result['loss']:.4f}"
          + (f" tta_acc={result['tta_acc']:.4f}" if "tta_acc" in result else "")
          + f" ({batches.num_images} images) -> {out}")
    return report


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if args else 2)
    try:
        run(Path(args[0]), args[1:])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
