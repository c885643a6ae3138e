"""What produced a result: the code (git commit, dirty flag, hash of the diff), the library
versions, the device, the data and the command line. Recorded in every job's summary.json, W&B
config and TensorBoard text, so a number in a report can be traced back to what made it.

Cheap on purpose: a job runs `git` twice and stats one file. The data's cache is identified by
its path, size and modification time, not by re-reading (and hashing) gigabytes of images.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from experiments.command_line import command_line
from experiments.config.secrets import redact_command

log = logging.getLogger(__name__)

PACKAGES = ("torch", "torchvision", "timm", "hydra-core")
CODE_KEYS = ("commit", "dirty", "diff_sha256")  # what a resumed job must share with its checkpoint


def sha256(data: bytes | str, length: int = 16) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:length]


def git(*args: str, cwd: Path) -> bytes | None:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def code_state() -> dict[str, Any]:
    """The git state of the checkout this package was imported from. Read once per process:
    the jobs of a multirun run the modules imported when it started, even if the files change
    afterwards. Untracked files count by name only (their content is not read)."""
    here = Path(__file__).resolve().parent
    commit = git("rev-parse", "HEAD", cwd=here)
    if commit is None:  # not a git checkout (e.g. installed from a wheel)
        return {"commit": None, "dirty": None, "diff_sha256": None}
    diff = (git("diff", "HEAD", "--binary", cwd=here) or b"") + \
        (git("ls-files", "--others", "--exclude-standard", cwd=here) or b"")
    return {"commit": commit.decode().strip(), "dirty": bool(diff),
            "diff_sha256": sha256(diff) if diff else None}


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    # the CUDA/cuDNN runtime torch ships with (also reported by a CPU-only machine's CUDA build)
    found["cuda"] = torch.version.cuda
    found["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    return found


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            lines = Path("/proc/cpuinfo").read_text().splitlines()
            model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
            return f"cpu: {model}"
        except (OSError, StopIteration):
            return f"cpu: {platform.processor() or platform.machine()}"
    return device.type


def data_source(data_cfg, source, classes: list[str] | None = None) -> dict[str, Any]:
    """The dataset's name and where it comes from (its URL, or its folder; synthetic data is
    generated from the config), its class names (label k is classes[k]), and its decode-once
    cache (of `source`, the data's Source).
    `cache_id` hashes the cache file's path, size and modification time: it changes whenever
    the cache is rewritten, without reading the file."""
    info = {"name": data_cfg.name, "source": data_cfg.get("url") or data_cfg.get("root") or "generated",
            "classes": list(classes) if classes is not None else None, "cache": None, "cache_id": None}
    path = source.cache_path if source is not None else None
    if path is not None and path.exists():
        st = path.stat()
        info.update(cache=str(path.resolve()),
                    cache_id=sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"))
    return info


def collect(cfg, device: torch.device, source, classes: list[str] | None = None) -> dict[str, Any]:
    """Everything above for one job (call it after the data is loaded, so its cache exists)."""
    return {"code": code_state(), "versions": versions(), "device_name": device_name(device),
            "data": data_source(cfg.data, source, classes), "command": redact_command(command_line())}


def resumed_code_change(checkpoint: dict, code: dict[str, Any]) -> dict[str, Any] | None:
    """When a checkpoint was written by other code than the code now resuming it: both states,
    warned about loudly (the result mixes two versions of the code). A change found at an
    earlier resume is carried forward, so it is not forgotten by the next one."""
    earlier = checkpoint.get("code_changed")
    recorded = checkpoint.get("code")
    if recorded is None:  # written before the code was recorded: nothing to compare
        return earlier
    if all(recorded.get(k) == code.get(k) for k in CODE_KEYS):
        return earlier
    change = {"checkpoint": recorded, "now": dict(code),
              "after_epoch": checkpoint.get("fit", {}).get("epoch"), "earlier": earlier}
    log.warning("!" * 78)
    log.warning("RESUMING WITH DIFFERENT CODE: the checkpoint was written by commit %s%s, the code "
                "is now commit %s%s. Epochs before and after %s come from two versions of the code; "
                "start the job over (delete its checkpoint) for a result of one version.",
                recorded.get("commit"), describe_dirty(recorded), code.get("commit"),
                describe_dirty(code), change["after_epoch"])
    log.warning("!" * 78)
    return change


def describe_dirty(code: dict[str, Any]) -> str:
    return f" (dirty, diff {code.get('diff_sha256')})" if code.get("dirty") else ""
