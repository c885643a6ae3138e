"""A job's directory: who owns it, what it already holds, and Hydra's record of the run.

One process trains a job directory at a time: `JobDir` holds an exclusive `flock` on the
directory itself for as long as the job runs. The kernel drops the lock when the process ends,
however it ends (`kill -9` included), so a dead owner never blocks a rerun and nothing has to be
cleaned up; a second live process is refused with the owner's pid and host, read from the
running summary.json. Forked children (DataLoader workers) close their copy of the lock at once:
a worker outliving a killed job by the seconds it takes to notice would otherwise hold it.

Everything a rerun checks (the owner, a completed result, a checkpoint) is read before anything
is written: a refused rerun leaves every file of the directory as it was. That is also why
Hydra's own copy of the run (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`) is written
here, after those checks, rather than by Hydra before the task function starts
(conf/hydra/default.yaml sets `hydra.output_subdir: null`); with secrets masked.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiments.atomic import atomic_write
from experiments.config.secrets import redact_overrides, redact_secrets
from experiments.errors import Refusal
from experiments.report.job_summary import RUNNING, SUMMARY_FILE, pid_alive, read_summary
from experiments.training.checkpoint import CHECKPOINT_FILE

log = logging.getLogger(__name__)

HYDRA_DIR = ".hydra"  # where Hydra keeps its record of a run (what the sweep report reads)
HELD: set[int] = set()  # this process's lock descriptors


def close_inherited_locks() -> None:
    """In a forked child: drop the copies of the parent's locks (closing, not unlocking: the
    parent's descriptor keeps the lock)."""
    for fd in HELD:
        os.close(fd)
    HELD.clear()


os.register_at_fork(after_in_child=close_inherited_locks)


class JobDir:
    """`with JobDir(path) as job_dir:` owns `path` for the block, or raises a Refusal."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def __enter__(self) -> JobDir:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Refusal(f"{self.path} is being trained by another process "
                          f"({self.owner()}): two processes would train one job twice into one "
                          "directory. Wait for it to finish (rerunning then returns its result), "
                          "or stop it and rerun to resume from its checkpoint.") from None
        except OSError as err:  # a filesystem without flock (some network mounts)
            os.close(fd)
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                raise
            self.check_owner_by_pid()
            return self
        self.fd = fd
        HELD.add(fd)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            HELD.discard(self.fd)
            os.close(self.fd)  # releases the lock
            self.fd = None

    def summary(self) -> dict[str, Any] | None:
        """summary.json; None when absent or torn (then the checkpoint, if any, says where to
        resume)."""
        return read_summary(self.path)

    def holds_a_job(self) -> str | None:
        """What the directory holds ("a completed job", "an interrupted job", ...), or None
        when no job has written its state here yet (Hydra's train.log alone is no job's)."""
        status = (self.summary() or {}).get("status")
        if status:
            return f"{'an' if status[0] in 'aeiou' else 'a'} {status} job"
        if any((self.path / name).exists() for name in (SUMMARY_FILE, CHECKPOINT_FILE, "model.pt")):
            return "a job's files"  # a torn summary, or a checkpoint without one
        return None

    def owner(self) -> str:
        summary = self.summary() or {}
        if summary.get("status") != RUNNING:
            return "its summary.json does not say which"
        return f"pid {summary.get('pid')} on {summary.get('host')}, since {summary.get('started_at')}"

    def check_owner_by_pid(self) -> None:
        """Without flock: a running summary written by a live process of this host owns the
        directory; a dead pid here is a stale owner, taken over. Another host cannot be asked."""
        summary = self.summary() or {}
        if summary.get("status") != RUNNING or summary.get("host") != socket.gethostname():
            return
        if summary.get("pid") != os.getpid() and pid_alive(summary.get("pid", -1)):
            raise Refusal(f"{self.path} is being trained by another process ({self.owner()}).")

    def write_hydra_record(self, cfg: DictConfig) -> None:
        """Hydra's three files, as Hydra writes them, with secret-looking values masked."""
        hydra = HydraConfig.instance().cfg
        overrides = redact_overrides(list(HydraConfig.get().overrides.task))
        hydra_record = OmegaConf.to_container(hydra, resolve=False)
        hydra_record["hydra"]["overrides"]["task"] = overrides
        files = {"config.yaml": redact_secrets(OmegaConf.to_container(cfg, resolve=False)),
                 "hydra.yaml": redact_secrets(hydra_record), "overrides.yaml": overrides}
        for name, content in files.items():
            with atomic_write(self.path / HYDRA_DIR / name) as tmp:
                OmegaConf.save(OmegaConf.create(content), tmp)
