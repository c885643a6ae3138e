"""Structured configs: the dataclasses that type config groups, registered with Hydra's
ConfigStore, so that Hydra itself refuses a wrong type or an unknown key while composing (with its
usual message). A group's default file names its schema first: `defaults: [schema, _self_]`.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from experiments.training.options import TrainerOptions

SCHEMAS = {"trainer": TrainerOptions}  # config group -> its schema, stored as <group>/schema


def register_schemas() -> None:
    store = ConfigStore.instance()
    for group, node in SCHEMAS.items():
        store.store(group=group, name="schema", node=node)
