"""Secrets never reach a file a job or sweep writes.

Two layers:
- `hide_argv_secrets` (train.py, before Hydra parses the command line): a secret-looking value
  typed on the command line (`+logger.wandb.api_key=...`) is moved into an environment variable
  of this process and the override rewritten to read it (`${oc.env:EXPERIMENTS_SECRET_0}`).
  Hydra's own copies of the run (`multirun.yaml`, `.hydra/*`), launcher pickles and W&B's record
  of sys.argv then hold only the variable's name. Launchers start their jobs with this
  process's environment (joblib, submitit locally, and Slurm's sbatch exports it), so jobs in
  other processes resolve it too.
- `redact_secrets` / `redact_overrides` / `redact_command`: before any config, override list or
  command line is logged or saved, keys named like secrets and values equal to a secret-named
  environment variable (`WANDB_API_KEY`, the variables above) become `***`, and a URL's password
  (`postgresql://user:PASSWORD@host/db`, a search's storage) becomes `***` in the URL.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Any

from omegaconf import OmegaConf

SECRET_NAME = re.compile(r"api[_-]?key|token|secret|passw(or)?d|credential", re.IGNORECASE)
# well-known token shapes, whatever the key: Hugging Face, OpenAI-style, GitHub, Slack, AWS
SECRET_VALUE = re.compile(r"^(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|gh[opsur]_[A-Za-z0-9]{20,}"
                          r"|xox[abposr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})$")
# a URL with a password: `postgresql://user:PASSWORD@host/db` (an Optuna storage, experiments/search)
URL_PASSWORD = re.compile(r"^(?P<user>[A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*:)(?P<password>[^@\s/]+)(?P<host>@.*)$",
                          re.DOTALL)
MASK = "***"
ENV_PREFIX = "EXPERIMENTS_SECRET_"
MIN_SECRET_LENGTH = 6  # shorter environment values ("1", "true") are not worth masking


def env_secrets() -> set[str]:
    return {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH}


def looks_secret(key: str, value: Any, known: set[str]) -> bool:
    if value is None:
        return False
    leaf = key.rsplit(".", 1)[-1]
    return bool(SECRET_NAME.search(leaf)) or (isinstance(value, str) and (
        value in known or bool(SECRET_VALUE.match(value)) or bool(URL_PASSWORD.match(value))))


def redact_url(url: str) -> str:
    """`postgresql://user:***@host/db`: the URL with its password masked (the rest as it was)."""
    return URL_PASSWORD.sub(lambda m: f"{m['user']}{MASK}{m['host']}", url)


def redact_secrets(config: Any) -> Any:
    """`config` (nested dicts and lists) with secret-looking values masked."""
    known = env_secrets()

    def clean(node, key=""):
        if isinstance(node, dict):
            return {k: clean(v, str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [clean(v, key) for v in node]
        if isinstance(node, str) and URL_PASSWORD.match(node):
            return redact_url(node)
        return MASK if looks_secret(key, node, known) else node

    return clean(config)


def recorded(cfg) -> dict:
    """A job's config as it is recorded (config.yaml, the checkpoint, W&B) and fingerprinted
    (experiments/identity.py): resolved, with secret-looking values masked."""
    return redact_secrets(OmegaConf.to_container(cfg, resolve=True))


def split_override(text: str) -> tuple[str, str] | None:
    """`+a.b=v` -> ("a.b", "v"); None for a flag or an override without a value (`~a.b`)."""
    if text.startswith("-") or "=" not in text:
        return None
    key, value = text.split("=", 1)
    return key.lstrip("+~"), value


def redact_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides with secret-looking values (and the variables that hold the ones
    `hide_argv_secrets` moved) shown as `***`."""
    known, out = env_secrets(), []
    for text in overrides:
        pair = split_override(text)
        if pair and URL_PASSWORD.match(pair[1]):
            text = f"{text.split('=', 1)[0]}={redact_url(pair[1])}"
        elif pair and (looks_secret(*pair, known) or ENV_PREFIX in pair[1]):
            text = f"{text.split('=', 1)[0]}={MASK}"
        out.append(text)
    return out


def redact_command(argv: list[str]) -> str:
    return shlex.join(["python", *redact_overrides(list(argv))])


def hide_argv_secrets(argv: list[str]) -> list[str]:
    """`argv` with each secret-looking override value moved into an environment variable."""
    known, out = env_secrets(), []
    for text in argv:
        pair = split_override(text)
        if pair and looks_secret(*pair, known) and not pair[1].startswith("${"):
            name = f"{ENV_PREFIX}{sum(k.startswith(ENV_PREFIX) for k in os.environ)}"
            os.environ[name] = pair[1]
            text = f"{text.split('=', 1)[0]}=${{oc.env:{name}}}"
        out.append(text)
    return out
