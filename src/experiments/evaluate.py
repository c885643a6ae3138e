"""Evaluate a finished job anywhere: its tested weights (`model.pt`) with its own config (model,
input size, normalization: what the weights were trained to take), on its own test set or on
another dataset with the same classes.

    python -m experiments.evaluate JOB_DIR                          # the job's test set
    python -m experiments.evaluate JOB_DIR split=val trainer.tta=flip
    python -m experiments.evaluate JOB_DIR data=folder data.root=~/cifar10-style-images

Overrides are the job's keys: `data=NAME` takes that data option (composed as `python train.py
data=NAME` would, then the `data.*` overrides), other `KEY=VALUE`s change the job's resolved
config. `split` (or `data.split`) is test (default), val or train. Writes
`eval-<data>-<split>.json` beside the job's summary.json and prints the accuracy and loss.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

import experiments.config  # noqa: F401  (registers the schemas and resolvers with Hydra)
from experiments.atomic import atomic_write
from experiments.data import load_splits
from experiments.errors import ConfigError, UserError
from experiments.job import build_loaders, build_model
from experiments.report.job_summary import CONFIG_FILE
from experiments.training.backends import resolve_device, resolve_precision, unwrap
from experiments.training.options import TrainerOptions
from experiments.training.trainer import evaluate

CONF = Path(__file__).resolve().parent / "conf"
SPLITS = ("test", "val", "train")


def job_config(job_dir: Path, overrides: list[str]):
    """The job's resolved config with `overrides`, and the split to evaluate."""
    if not (job_dir / CONFIG_FILE).exists() or not (job_dir / "model.pt").exists():
        raise UserError(f"{job_dir} holds no finished job (its {CONFIG_FILE} and model.pt)")
    cfg = OmegaConf.load(job_dir / CONFIG_FILE)
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
    if data_option is not None:  # another dataset, composed as train.py composes it
        data_keys = [o for o in rest if o.startswith("data.")]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            other = compose(config_name="train", overrides=[f"data={data_option}", *data_keys])
        with open_dict(cfg):
            cfg.data = OmegaConf.create(OmegaConf.to_container(other.data, resolve=True))
        rest = [o for o in rest if not o.startswith("data.")]
    with open_dict(cfg):
        for item in rest:
            key, _, value = item.partition("=")
            OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None, merge=True)
        cfg.trainer = OmegaConf.merge(OmegaConf.structured(TrainerOptions), cfg.trainer)  # typed again
    return cfg, split


def run(job_dir: Path, overrides: list[str]) -> dict:
    trained = OmegaConf.load(job_dir / CONFIG_FILE) if (job_dir / CONFIG_FILE).exists() else None
    cfg, split = job_config(job_dir, overrides)
    if cfg.data.num_classes != trained.data.num_classes:
        raise ConfigError(f"data={cfg.data.name} has {cfg.data.num_classes} classes, the job's model "
                          f"{trained.data.num_classes} ({trained.data.name}): evaluate it on data with "
                          "the same classes")
    options = OmegaConf.to_object(cfg.trainer)  # (the training-time checks do not apply)
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
    report = {"job": str(job_dir), "data": cfg.data.name, "split": split, "images": batches.num_images,
              "classes": cfg.data.num_classes, "device": str(device), **result,
              "overrides": overrides}
    out = job_dir / f"eval-{cfg.data.name}-{split}.json"
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
