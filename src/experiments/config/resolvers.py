"""The OmegaConf resolvers the config tree uses (job directory names, data=folder's class count),
and the masking of secrets before a config is logged or saved."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from experiments.config.groups import NAMED_GROUPS


SECRET_NAME = re.compile(r"api[_-]?key|token|secret|passw(or)?d|credential", re.IGNORECASE)


def redact_secrets(config: Any) -> Any:
    """Mask values that look secret before any config is logged or saved: keys named like
    secrets, and any value equal to a secret-named environment variable (e.g. WANDB_API_KEY)."""
    secrets = {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 6}

    def clean(node, key=""):
        if isinstance(node, dict):
            return {k: clean(v, str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [clean(v, key) for v in node]
        if node is not None and (SECRET_NAME.search(key) or (isinstance(node, str) and node in secrets)):
            return "***"
        return node

    return clean(config)


def swept_keys(argv: list[str]) -> set[str]:
    """The keys the command line sweeps (`optim.lr=0.05,0.1`, `seed=range(3)`, ...)."""
    try:
        parsed = OverridesParser.create().parse_overrides(
            [a for a in argv if "=" in a and not a.startswith("-")])
    except Exception:  # not a Hydra command line (e.g. the compose API in tests)
        return set()
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def job_suffix(task_overrides) -> str:
    """`-key=value,...` for this job's values of the swept keys its name does not show yet.

    Constant overrides (`experiment=smoke`, `data.root=...`) would only make every name longer.
    """
    swept = swept_keys(sys.argv[1:]) - set(NAMED_GROUPS)
    parts = [o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") in swept]
    return "-" + ",".join(parts).replace("/", "_") if parts else ""


def folder_classes(root: str) -> int:
    """`data=folder`'s class count, read from the folder names under ROOT/train."""
    from experiments.data.folder import class_names

    return len(class_names(root))


def named_choices(choices) -> str:
    """`model-optim-aug`: the options of NAMED_GROUPS, in a job directory's name."""
    return "-".join(str(choices[group]) for group in NAMED_GROUPS)


def from_scratch_only(value, *, _root_):
    """`value` for a model trained from scratch, null for a pretrained one: its weights fix its
    size, so size=smoke narrows every model but a pretrained one."""
    from experiments.models.pretrained import wants_pretrained  # here: timm only when it is used

    return None if wants_pretrained(_root_.get("model") or {}) else value


def register_resolvers() -> None:
    for name, fn in (("job_suffix", job_suffix), ("folder_classes", folder_classes),
                     ("named_choices", named_choices), ("from_scratch_only", from_scratch_only)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
