"""Errors that mean "the user asked for something we cannot do": shown as one clear message."""

import errno
import shutil
from pathlib import Path

from hydra.errors import CompactHydraException, InstantiationException
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException


class UserError(Exception):
    """A problem the user can fix (bad config value, missing data). No traceback is shown."""


class ConfigError(UserError):
    """A config value is of the wrong type or out of range."""


class DataError(UserError):
    """A dataset file is missing, corrupt or cannot be downloaded."""


class Refusal(UserError):
    """The job's directory holds what this run must not touch (another config's results or
    checkpoint, or a live process's training): nothing was written, the directory is as it was."""


class DiskFull(UserError):
    """A write failed for want of space: where, and how much is left."""

    def __init__(self, path):
        self.path = Path(path)
        super().__init__(
            f"no space left on the device while writing {self.path} ({free_space(self.path)}). "
            "Free some space, or run into a disk with room (hydra.run.dir=..., hydra.sweep.dir=..., "
            "data.cache_dir=...); rerunning the same command resumes from the last checkpoint.")


def free_space(path: Path) -> str:
    """`X MiB free on /mount` for the filesystem that holds `path`."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    mount = folder.resolve()
    while not mount.is_mount() and mount != mount.parent:
        mount = mount.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:,.1f} MiB free on {mount}"


OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


def out_of_space(err: BaseException) -> OSError | None:
    """The OSError of a full disk (or quota) in `err` or what it wraps, else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in OUT_OF_SPACE:
            return err
        err = err.__cause__ or err.__context__
    return None


class JobFailed(CompactHydraException):
    """Raised to Hydra for a failed job of a sweep: its message only (the traceback is in the
    job's log), so the exception holds no reference to the job's model or data, and Hydra
    prints it as one line (a CompactHydraException) when the sweep ends."""


class JobRefused(JobFailed):
    """A job of a sweep that wrote nothing (a Refusal): its directory is as it was."""


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
