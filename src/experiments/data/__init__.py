"""Datasets as uint8 tensors, split into train / validation / test.

Each conf/data/NAME.yaml names its source class with `_target_` (a `Source`: cifar.Cifar,
mnist.Mnist, folder.Folder, synthetic.Synthetic); `load_splits` builds it and carves the
validation split from its training set. A new dataset is one module with a `Source` subclass
and one conf/data/NAME.yaml whose `_target_` names it.
"""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from experiments.data.base import ImageData, Source, Split, Splits, split_validation
from experiments.errors import ConfigError, UserError, user_error_in

__all__ = ["ImageData", "Source", "Split", "Splits", "load_splits", "make_source"]


def make_source(cfg) -> Source:
    """The dataset of a data config, built from it by Hydra (every key is a field of the class)."""
    if not cfg.get("_target_"):
        raise ConfigError("the data config has no _target_ naming its source class (e.g. "
                          "_target_: experiments.data.cifar.Cifar); choose a dataset with data=NAME.")
    try:
        built = instantiate(cfg, _convert_="all")
    except InstantiationException as err:
        inner = user_error_in(err)  # e.g. the ConfigError of an unknown data.name
        if isinstance(inner, UserError):
            raise inner from None
        raise
    if not isinstance(built, Source):
        raise ConfigError(f"data._target_={cfg._target_} is not a dataset source (a subclass of "
                          "experiments.data.Source); choose a dataset with data=NAME.")
    return built


def load_splits(cfg) -> Splits:
    src = make_source(cfg)
    data = src.load()
    train, val = split_validation(data.train, src.val_size, src.split_seed)
    return Splits(train, val, data.test, data.classes, src)
