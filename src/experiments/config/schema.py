"""Structured configs: the dataclasses that are config groups' options, registered with Hydra's
ConfigStore, so that Hydra itself refuses a wrong type or an unknown key while composing (with
its usual message). The dataclass holds the defaults: no YAML repeats them.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from experiments.training.options import TrainerOptions

SCHEMAS = {"trainer": TrainerOptions}  # config group -> its schema, stored as <group>/default


def register_schemas() -> None:
    store = ConfigStore.instance()
    for group, node in SCHEMAS.items():
        store.store(group=group, name="default", node=node)
