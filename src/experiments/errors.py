"""Errors that mean "the user asked for something we cannot do": shown as one clear message."""


class UserError(Exception):
    """A problem the user can fix (bad config value, missing data). No traceback is shown."""


class ConfigError(UserError):
    """A config value is of the wrong type or out of range."""


class DataError(UserError):
    """A dataset file is missing, corrupt or cannot be downloaded."""
