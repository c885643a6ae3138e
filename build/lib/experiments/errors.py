"""Errors that mean "the user asked for something we cannot do": shown as one clear message."""

from hydra.errors import CompactHydraException, InstantiationException
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException


class UserError(Exception):
    """A problem the user can fix (bad config value, missing data). No traceback is shown."""


class ConfigError(UserError):
    """A config value is of the wrong type or out of range."""


class DataError(UserError):
    """A dataset file is missing, corrupt or cannot be downloaded."""


class JobFailed(CompactHydraException):
    """Raised to Hydra for a failed job of a sweep: its message only (the traceback is in the
    job's log), so the exception holds no reference to the job's model or data, and Hydra
    prints it as one line (a CompactHydraException) when the sweep ends."""


def user_error_in(err: BaseException) -> BaseException:
    """The user's mistake that `err` wraps, else `err` itself.

    Hydra's instantiate wraps what a `_target_` raises (a bad `aug.erase_p`, an unknown timm
    model) in an InstantiationException, as its __cause__; OmegaConf wraps what a resolver raises
    (`data=folder` with a missing `data.root`), and a required `???` value left unset, in
    errors that keep only their __context__. Only these wrappers are looked through.
    """
    inner = err
    while isinstance(inner, (InstantiationException, OmegaConfBaseException)):
        if isinstance(inner, MissingMandatoryValue) and not inner.__context__:
            # "Missing mandatory value: data.root" (raised inside a resolution, full_key is unset)
            key = inner.full_key or str(inner).splitlines()[0].rpartition(": ")[2]
            return ConfigError(f"{key} is required (its config says ???): set it on the command "
                               f"line, e.g. {key}=...")
        inner = inner.__cause__ or inner.__context__
        if isinstance(inner, UserError):
            return inner
    return err
