"""Errors that mean "the user asked for something we cannot do": shown as one clear message."""

from hydra.errors import CompactHydraException



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
