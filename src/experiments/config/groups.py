"""The config groups, named once in experiments.groups (a module without torch, for the report);
here for the config's code, job.py and the tests."""

from experiments.groups import CONFIG_GROUPS, NAMED_GROUPS

__all__ = ["CONFIG_GROUPS", "NAMED_GROUPS"]
