"""Checks of the `model` group's values, at the top of each constructor (so Python users get
them too); a ConfigError names the key to change."""

import difflib

import timm

from experiments.errors import ConfigError
from experiments.values import integer

WIDTH = integer(1, "a positive integer (the first stage's channels)")


def check_width(width) -> None:
    WIDTH.check("model.width", width)


def check_timm_name(name) -> None:
    if not (isinstance(name, str) and timm.is_model(name)):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=5)
        raise ConfigError(
            f"model.name={name!r}: timm has no such model{f' (close: {close})' if close else ''}. "
            "List the names "
            "with: python -c \"import timm; print(timm.list_models('*resnet*'))\"")
