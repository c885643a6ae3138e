"""A job's identity: what it computes (the fingerprint of its resolved config), and the directory
of a sweep that holds it.

A sweep's job is found again by what it is, not by its place in the grid. When a sweep is run
again into its directory (reordered, extended, narrowed, a swept key added, or the same config
reached by other overrides: `seed=0` or no seed override), each job goes to the directory that
already holds its fingerprint, so a finished job returns its result and an interrupted one
continues from its checkpoint; a job no directory holds gets a new directory, numbered by its
place in this run's grid when no directory of the sweep has that number yet, else one past the
highest (conf/hydra/default.yaml's hydra.sweep.subdir, through `claim_job_dir`).

The claim is made under a lock on the sweep (two processes adding jobs to one sweep at once
never take one number twice), and writes the fingerprint into the new directory
(FINGERPRINT_FILE), so the job is found again before it has written anything else. Directories
of older versions, which have no such file, are identified by their config.yaml, else by their
completed summary's fingerprint; where such a sweep holds one job twice (it put a job at
each of its places in the grid), `preference` decides which copy a rerun continues and which
one the report reads.

The fingerprint leaves out the keys that do not change what a job computes (NOT_IN_FINGERPRINT):
a checkpoint resumes across them, and a sweep that varies only them runs one job, but for
trainer.devices, which a job's identity keeps (`job_identity`): a speed comparison over it runs a
job per device count.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from pathlib import Path

import yaml
from filelock import FileLock, Timeout

from experiments.atomic import atomic_write

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"  # the job's status and results (experiments.report.job_summary)
CONFIG_FILE = "config.yaml"  # the job's resolved config (secrets masked): every value it ran with
FINGERPRINT_FILE = ".fingerprint"  # written when a sweep's job claims its directory
LOCK_FILE = ".jobs.lock"  # in the sweep directory, held while a job finds or claims its directory
# a claim holds the lock for a fraction of a second; past this (a filesystem whose locks hang),
# the job claims without it, and says so
LOCK_TIMEOUT_S = 60

# keys that do not change what a job computes: they may differ between a run and its resume
# (trainer.devices: the batch is global whatever the number of ranks; resuming with another is
# allowed, with a note: not bit-identical)
NOT_IN_FINGERPRINT = ("logger", "paths", "data.root", "data.cache_dir", "data.download",
                      "data.download_timeout_s", "trainer.progress", "trainer.resume",
                      "trainer.keep_checkpoint", "trainer.devices", "trainer.checkpoint_every_min",
                      "trainer.checkpoint_every", "trainer.profile", "trainer.stop_signals")

# libyaml's loader when PyYAML has it: 7x faster than the pure-Python one, the same safe subset
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def semantic_config(config: dict) -> dict:
    """The resolved config without the keys in NOT_IN_FINGERPRINT, each value written the one
    way its meaning has (`canonical`)."""
    config = json.loads(json.dumps(config, default=str))
    for key in NOT_IN_FINGERPRINT:
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return canonical(config)


def canonical(config: dict) -> dict:
    """A lookahead that is off is null, however the config wrote it: since 2026-12-07 it is a
    node with `every: null` (so that `trainer.lookahead.every=5` merges into it), and before it
    was null. The checkpoints and completed results of jobs run before then still match their
    rerun, and resume."""
    trainer = config.get("trainer")
    if isinstance(trainer, dict) and isinstance(trainer.get("lookahead"), dict):
        if trainer["lookahead"].get("every") is None:
            trainer["lookahead"] = None
    return config


def fingerprint(config: dict) -> str:
    text = json.dumps(semantic_config(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def job_identity(config: dict) -> str:
    """What a sweep's job is (the directory that holds it is found by this): its fingerprint,
    and the number of devices it trains on when that is not 1. The fingerprint leaves
    trainer.devices out so that a checkpoint resumes on another device count; a sweep over
    `trainer.devices=1,2` (a speed comparison) still runs two jobs."""
    devices = (config.get("trainer") or {}).get("devices", 1)
    return fingerprint(config) + (f"-devices{devices}" if devices not in (1, None) else "")


# --- what a directory holds ------------------------------------------------------------------

def job_number(name: str) -> int | None:
    """The number a job directory's name starts with (`3-resnet18-sgd-basic`: 3)."""
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or torn by a killed writer of an older version
        return None
    return data if isinstance(data, dict) else None


def read_config(job_dir: Path) -> dict | None:
    """The job's config.yaml (None when absent or unreadable)."""
    try:
        config = yaml.load((Path(job_dir) / CONFIG_FILE).read_text(), Loader=SAFE_LOADER)
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def held_fingerprint(job_dir: Path, summary: dict | None = None) -> str | None:
    """The identity (`job_identity`) of the job a directory holds: the one its claim wrote, else
    its config.yaml's (a directory of an older version), else its completed summary's
    fingerprint (`summary`, when the caller has read it); None when nothing says (a job that
    stopped before writing its config)."""
    job_dir = Path(job_dir)
    try:
        claimed = (job_dir / FINGERPRINT_FILE).read_text().strip()
    except OSError:
        claimed = ""
    if claimed:
        return claimed
    config = read_config(job_dir)
    if config is not None:
        return job_identity(config)
    summary = read_json(job_dir / SUMMARY_FILE) if summary is None else summary
    return str(summary["fingerprint"]) if summary and summary.get("fingerprint") else None


def preference(summary: dict | None) -> tuple:
    """Which of several directories holding one job counts (the smallest): a completed one, else
    the one furthest along; the first of equals."""
    summary = summary or {}
    return (summary.get("status") != "completed", -(summary.get("epochs_completed") or 0))


def job_dirs(sweep: Path) -> list[Path]:
    """The directories of a sweep that may hold a job, in the order of their numbers."""
    try:
        found = [d for d in Path(sweep).iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError:
        return []
    return sorted(found, key=lambda d: (job_number(d.name) is None, job_number(d.name) or 0, d.name))


def find_job(sweep: Path, fp: str) -> Path | None:
    """The directory of `sweep` holding the job of this fingerprint (the preferred copy when
    several do), or None."""
    held = [d for d in job_dirs(sweep) if held_fingerprint(d) == fp]
    return min(held, key=lambda d: preference(read_json(d / SUMMARY_FILE))) if held else None


# --- a sweep's job takes its directory -------------------------------------------------------

def claim_job_dir(sweep: Path, fp: str, number: int, label: str) -> str:
    """The name of the directory of `sweep` for the job of fingerprint `fp`: the one that
    holds it already, or a new one, `<number>-<label>` (`number` is the job's place in this
    run's grid; one past the highest in the sweep when a directory has it), created with the
    fingerprint in it."""
    sweep = Path(sweep)
    with sweep_lock(sweep):
        found = find_job(sweep, fp)
        if found is not None:
            return found.name
        while True:
            taken = {job_number(entry.name) for entry in sweep.iterdir()} - {None}
            if number in taken:
                number = max(taken) + 1
            name = f"{number}-{label}"
            try:
                (sweep / name).mkdir()
                break
            except FileExistsError:  # (made at this moment by a process without the lock)
                continue
        with atomic_write(sweep / name / FINGERPRINT_FILE) as tmp:
            tmp.write_text(fp + "\n")
        return name


@contextmanager
def sweep_lock(sweep: Path):
    """Held while a job finds or claims its directory of `sweep` (and while the sweep's progress
    is counted: experiments/report/callbacks.py), by one process at a time, for milliseconds."""
    sweep.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(sweep / LOCK_FILE), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except (Timeout, OSError) as err:  # (a filesystem without working locks)
        log.warning("could not lock %s (%s): going on without the lock", sweep / LOCK_FILE, err)
        yield
        return
    try:
        yield
    finally:
        lock.release()
