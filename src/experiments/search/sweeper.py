"""The search's sweeper: hydra-optuna-sweeper's keys, params syntax and samplers (`Search`
subclasses its OptunaSweeperImpl and reuses its search-space parsing), with its own loop.

The plugin runs trials in synchronous batches of n_jobs: every trial of a batch waits for the
slowest, and its trial numbering and stopping rule assume one process per study. Here each
worker (one process of `python train.py -m hparams_search=optuna ...`):

- asks the study for a trial as soon as one of its slots is free (`n_jobs` slots, each a thread
  calling the launcher for one job, when the launcher runs jobs elsewhere: joblib, submitit; the
  basic launcher runs its one trial at a time in this process), and starts none once the study's
  finished (COMPLETE or PRUNED) trials plus its running ones reach `n_trials`: whichever worker
  ran them, and a trial asked for in a race past that count is dropped before it runs;
- draws each trial of a stored study from a random state seeded by the sampler's seed and the
  trial's number (`TrialSeeds`): workers of one seed draw different trials, and the same seed the
  same study (a study in memory draws as the plugin's, to the same trials);
- launches the trial as job number = its number in the study, so its directory
  `<number>-<values>` is unique across workers and reruns; a retried trial keeps the number, and
  so the directory, of the trial it retries (Optuna's RetryFailedTrialCallback records it as
  `failed_trial`), and its job resumes from the checkpoint there;
- tells the study how the job ended: COMPLETE with the job's `optimized_metric`, PRUNED (the job
  raised `Pruned`, experiments/search/trial.py), or FAIL; the monitored metric of each epoch
  is reported from the job's metrics.csv where the study lacks it (a stored result returned by
  a rerun, a job in another process whose reports this process's cache does not see);
- with `heartbeat_interval`, beats for each of its running trials (Optuna's RDB heartbeat), and
  before each ask fails the trials whose worker stopped beating for `grace_period`: each is
  queued again, same parameters, same directory, up to `max_retry` times; a worker stopped by a
  signal (its trial checkpointed) queues its own trials at once, so its rerun continues them;
- at its end writes optimization_results.yaml: the study's best, with its trial's number and
  directory, whichever worker ran it.

Refused before any trial, with one message: a pruner the trials cannot feed (no validation
split, a metric against the study's direction, DDP trials), an in-memory study with a launcher
that runs jobs elsewhere (their reports could not reach it), a storage that cannot be opened
(naming its host). Warned: SQLite shared by more than one worker.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import random
import signal
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.exceptions import ExperimentalWarning
from optuna.pruners import NopPruner
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.trial import TrialState

from experiments.atomic import atomic_write
from experiments.config.optuna import POSITION, STUDY, TRIAL
from experiments.config.secrets import redact_url
from experiments.errors import ConfigError
from experiments.report.sweep import read_metrics
from experiments.search.trial import IN_PROCESS, Pruned, check_prunable
from experiments.training.metrics import EPOCH
from experiments.training.progress import duration
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
RESULTS_FILE = "optimization_results.yaml"
SCHEMA_ATTEMPTS = 5  # opening a storage whose tables another worker is creating at that moment


class Search(OptunaSweeperImpl):
    """`hydra.sweeper` of conf/hparams_search/optuna.yaml: the plugin's keys, and `pruner`,
    `heartbeat_interval`, `grace_period`, `max_retry` (hydra_plugins/experiments_sweeper.py)."""

    def __init__(self, sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate,
                 search_space, custom_search_space, params, pruner=None, heartbeat_interval=None,
                 grace_period=None, max_retry=3):
        super().__init__(sampler, direction, storage, study_name, n_trials, n_jobs,
                         max_failure_rate, search_space, custom_search_space, params)
        self.pruner = pruner if pruner is not None else NopPruner()
        self.heartbeat_interval, self.grace_period, self.max_retry = heartbeat_interval, grace_period, max_retry

    def sweep(self, arguments: list[str]) -> None:
        space, fixed = self.distributions(arguments)
        directions = self._get_directions()
        try:
            self.check(directions)
        except ConfigError as err:
            refuse(str(err))
        storage = open_storage(self.storage, self.heartbeat_interval, self.grace_period, self.max_retry)
        study = optuna.create_study(study_name=self.study_name, storage=storage, sampler=self.sampler,
                                    pruner=self.pruner, directions=directions, load_if_exists=True)
        log.info("study %s (%s): %s; sampler %s, pruner %s, %s", study.study_name,
                 redact_url(str(self.storage)) if self.storage else "in memory",
                 progress(study, self.n_trials), type(study.sampler).__name__,
                 type(self.pruner).__name__, directions)
        IN_PROCESS[study.study_name] = (study._storage, study.pruner)  # for its jobs in this process
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        try:
            Worker(self, study, space, fixed).run()
        finally:
            IN_PROCESS.pop(study.study_name, None)
            write_results(study, sweep_dir / RESULTS_FILE)

    def distributions(self, arguments: list[str]) -> tuple[dict, dict]:
        """The distributions Optuna samples and the fixed values, from hydra.sweeper.params and
        the command line, parsed as the plugin parses them (a GridSampler is made here, over its
        grid, and n_trials capped at the grid's size, as the plugin does)."""
        self._process_searchspace_config()
        space, fixed = create_params_from_overrides(self._parse_sweeper_params_config() + list(arguments))
        space = {**(self.search_space_distributions or {}), **space}
        if getattr(self.sampler, "func", None) is optuna.samplers.GridSampler:  # a partial
            grid = {name: self._to_grid_sampler_choices(d) for name, d in space.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
            log.info("GridSampler: n_trials=%d", self.n_trials)
        return {k: v for k, v in space.items() if k not in fixed}, fixed

    def check(self, directions: list[str]) -> None:
        """What can be refused before any trial starts."""
        cfg = self.config
        pruning = not isinstance(self.pruner, NopPruner)
        if pruning:
            check_prunable(cfg.data.val_size, cfg.trainer.monitor, cfg.trainer.devices, directions)
            if self.storage is None and not runs_here(self.launcher):
                raise ConfigError(
                    f"a pruner with {type(self.launcher).__name__}: its trials run in other "
                    "processes, which cannot reach a study in this one's memory. Give the study a "
                    "storage, e.g. hydra.sweeper.storage=postgresql://user@host/db (docs/search.md)")
        if self.heartbeat_interval is not None and self.storage is None:
            raise ConfigError("hydra.sweeper.heartbeat_interval needs a storage (Optuna's RDB "
                              "heartbeat), e.g. hydra.sweeper.storage=postgresql://user@host/db")


def refuse(message: str) -> None:
    """End the sweep before any trial, with one line (2: the user's to fix)."""
    print(message, file=sys.stderr, flush=True)
    sys.exit(2)


def runs_here(launcher) -> bool:
    """Whether the launcher runs jobs in this process (Hydra's basic launcher), one at a time.
    By name: Hydra's plugin discovery executes the launcher's module again, so a BasicLauncher
    imported before it is another class than the one it instantiates."""
    return any((c.__module__, c.__name__) == (BasicLauncher.__module__, "BasicLauncher")
               for c in type(launcher).__mro__)


# --- the study's storage ---------------------------------------------------------------------

def open_storage(url: str | None, heartbeat_interval: int | None, grace_period: int | None,
                 max_retry: int | None):
    """None (in memory), or the RDB storage at `url`, connected now: a wrong or unreachable URL
    is one message naming its host, before any trial. With a heartbeat, a stale trial's
    `failed_trial_callback` queues it again (same parameters, and system attrs, which hold its
    directory's number)."""
    if url is None:
        return None
    if not isinstance(url, str):  # a storage Hydra built from its own config: as it is
        return url
    from sqlalchemy.engine import make_url

    try:
        where = make_url(url)
        described = (f"{where.get_backend_name()} database {where.database!r} at "
                     f"{where.host or 'localhost'}:{where.port or 'default port'}"
                     if where.get_backend_name() != "sqlite" else f"sqlite file {where.database}")
    except Exception:  # noqa: BLE001  (not a URL at all: said below)
        described = redact_url(url)
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    try:
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)  # (2.9's "experimental")
                    retry = RetryFailedTrialCallback(max_retry) if heartbeat_interval else None
                    return RDBStorage(url, heartbeat_interval=heartbeat_interval,
                                      grace_period=grace_period, failed_trial_callback=retry)
            except (IntegrityError, ProgrammingError):
                # workers started together on an empty database all create Optuna's tables, and
                # all but one fail ("duplicate key value violates unique constraint
                # pg_type_typname_nsp_index", measured with 2 workers on PostgreSQL 15): the tables
                # are there a moment later
                if attempt == SCHEMA_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 + random.random())
    except Exception as err:  # noqa: BLE001  (sqlalchemy's errors, a driver's ImportError, ...)
        reason = redact_url(str(getattr(err, "orig", None) or err).strip().splitlines()[0])
        refuse(f"cannot open the study's storage, the {described} "
               f"(hydra.sweeper.storage={redact_url(url)}): {type(err).__name__}: {reason}. Check "
               "the URL's host, port, database and user, and that the server runs and lets this "
               "machine in (docs/search.md#storage).")


def sampler_states(sampler) -> list:
    """The sampler and its inner samplers that draw from a numpy RandomState `_rng` (TPE, random,
    CMA-ES, NSGA-II; TPE's start-up trials come from its `_random_sampler`)."""
    inner = (getattr(sampler, name, None) for name in ("_random_sampler", "_independent_sampler"))
    return [s for s in (sampler, *inner) if isinstance(getattr(s, "_rng", None), np.random.RandomState)]


class TrialSeeds:
    """A stored study's samplers draw each trial from a random state seeded by the sampler's seed
    and the trial's number: the workers of one command (one seed) would otherwise draw the same
    trials, and a continued study its first ones again; this way every trial differs and the same
    seed still draws the same study. A study in memory (one process) draws as the plugin's."""

    def __init__(self, sampler, stored: bool):
        self.states = sampler_states(sampler) if stored else []
        self.seed = int(self.states[0]._rng.randint(2**31)) if self.states else None
        if stored and not self.states:
            sampler.reseed_rng()  # (a sampler of another kind: at least each worker's own draws)

    def before(self, number: int) -> None:
        for i, s in enumerate(self.states):
            s._rng = np.random.RandomState([self.seed, number, i])


def counts(study) -> dict[str, int]:
    """The study's trials: completed, pruned, running, waiting (queued), failed, and retried
    (failed, then queued again: each retry names the trial it retries); a surplus trial, failed
    before it ran, is none of them."""
    trials = [t for t in study.get_trials(deepcopy=False) if not t.system_attrs.get("surplus")]
    n = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    n["retried"] = sum("failed_trial" in t.system_attrs for t in trials)
    return {"completed": n["complete"], "pruned": n["pruned"], "running": n["running"],
            "waiting": n["waiting"], "failed": n["fail"] - n["retried"], "retried": n["retried"]}


def finished(n: dict[str, int]) -> int:
    return n["completed"] + n["pruned"]


def progress(study, n_trials: int) -> str:
    """`6/20 finished (2 pruned), 2 running, 1 failed, 1 retried`."""
    n = counts(study)
    pruned = f" ({n['pruned']} pruned)" if n["pruned"] else ""
    return ", ".join([f"{finished(n)}/{n_trials} finished{pruned}",
                      *(f"{n[k]} {k}" for k in ("running", "waiting", "failed", "retried") if n[k])])


# --- one worker's trials ---------------------------------------------------------------------

class Worker:
    """This process's part of the study: up to `slots` trials at once, each started as soon as
    a slot is free, until the study has its n_trials."""

    def __init__(self, search: Search, study, space: dict, fixed: dict):
        self.search, self.study, self.space, self.fixed = search, study, space, fixed
        self.n_trials = search.n_trials
        self.in_process = runs_here(search.launcher)
        self.slots = 1 if self.in_process else max(1, search.n_jobs)
        if self.in_process and search.n_jobs > 1:
            log.warning("hydra.sweeper.n_jobs=%d with the basic launcher: its trials run in this "
                        "process, one at a time (hydra/launcher=joblib or a Slurm launcher runs "
                        "n_jobs at once)", search.n_jobs)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.running: dict[int, Any] = {}  # trial number -> optuna Trial
        self.ended: queue.Queue = queue.Queue()  # (trial, JobReturn or the launcher's exception)
        self.heartbeat = Heartbeat(study) if study._storage.is_heartbeat_enabled() else None
        self.seeds = TrialSeeds(study.sampler, stored=search.storage is not None)
        self.failures: list[BaseException] = []
        self.told = 0
        self.shared_sqlite_warned = False
        # the study's pace since this worker started, whoever finished its trials: the ETA
        self.started, self.finished_before = time.monotonic(), finished(counts(study))

    def run(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.start()
        handlers = self.stop_on_signals()
        try:
            while True:
                while len(self.running) < self.slots and not self.too_many_failures():
                    trial = self.next_trial()
                    if trial is None:
                        break
                    self.start(trial)
                if not self.running:
                    if self.others_may_need_a_retry():
                        time.sleep(self.heartbeat.interval)
                        continue
                    break
                trial, outcome = self.ended.get()
                self.end(trial, outcome)
        except BaseException:  # a signal (its job checkpointed), Ctrl-C, a launcher's error
            for trial in list(self.running.values()):
                self.queue_again(trial, "this worker stopped")
            raise
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            if self.heartbeat is not None:
                self.heartbeat.stop()
        if self.too_many_failures():
            log.error("%d of this worker's %d trials failed (hydra.sweeper.max_failure_rate=%s)",
                      len(self.failures), self.told, self.search.max_failure_rate)
            raise self.failures[0]

    def stop_on_signals(self) -> dict:
        """SIGTERM and SIGUSR2 (Slurm's, ahead of a time limit or a preemption) end this worker
        between trials as they end a job inside one (its Interrupts checkpoint it first, then
        hand the signal on here): with an exit, so that its running trials are queued again.
        The handlers they replace, to restore."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def stop(signum, frame):
            log.warning("%s: this worker stops; its running trials are queued again", signal.Signals(signum).name)
            raise SystemExit(128 + signum)

        return {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGUSR2)}

    def too_many_failures(self) -> bool:
        return bool(self.failures) and len(self.failures) / max(1, self.told) > self.search.max_failure_rate

    # --- asking -------------------------------------------------------------------------------

    def next_trial(self):
        """A new trial (or a queued retry) while the study has room for one, else None."""
        if self.heartbeat is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)  # each one queued again (a retry)
        trials = self.study.get_trials(deepcopy=False)
        self.warn_shared_sqlite(trials)
        if sum(t.state in (*FINISHED, TrialState.RUNNING) for t in trials) >= self.n_trials:
            return None
        trial = self.study.ask()
        # several workers asking at once may pass n_trials: the trials ahead of this one decide
        ahead = sum(t.state in (*FINISHED, TrialState.RUNNING) and t.number < trial.number
                    for t in self.study.get_trials(deepcopy=False))
        if ahead >= self.n_trials:
            trial.set_system_attr("surplus", True)  # asked in a race past n_trials: never run
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        self.running[trial.number] = trial  # (from here on, a signal queues it again)
        if self.heartbeat is not None:
            self.heartbeat.add(trial._trial_id)  # (from here on, a kill leaves it to go stale)
        trial.set_system_attr("worker", self.name)
        trial.set_system_attr("position", ahead + 1)
        return trial

    def warn_shared_sqlite(self, trials) -> None:
        url = str(self.search.storage or "")
        others = any(t.state == TrialState.RUNNING and t.system_attrs.get("worker") not in (None, self.name)
                     for t in trials)
        if url.startswith("sqlite") and (others or self.slots > 1) and not self.shared_sqlite_warned:
            self.shared_sqlite_warned = True
            log.warning("this SQLite study has more than one worker: SQLite locks the whole file "
                        "for every write, so workers wait on each other and fail with 'database "
                        "is locked' as they grow, and on a network file system its locks are not "
                        "safe; Optuna's documentation advises against it for parallel workers. "
                        "Use PostgreSQL (docs/search.md#storage).")

    # --- running ------------------------------------------------------------------------------

    def start(self, trial) -> None:
        """Launch the trial's job: here, to its end (the basic launcher), or in a thread that
        waits for the launcher's job elsewhere."""
        self.seeds.before(trial.number)
        [overrides] = self.search._configure_trials([trial], self.space, self.fixed)
        directory = directory_number(trial)
        position = f"{trial.system_attrs['position']}/{self.n_trials}"
        overrides = (*overrides, *env_set({TRIAL: trial.number, STUDY: self.study.study_name,
                                           POSITION: position}))
        retry = f", a retry of trial {directory} in its directory" if directory != trial.number else ""
        log.info("trial %d (%s)%s: %s", trial.number, position, retry,
                 " ".join(f"{k}={v}" for k, v in trial.params.items()))

        def launch() -> None:
            try:
                [job] = self.search.launcher.launch([list(overrides)], initial_job_idx=directory)
                self.ended.put((trial, job))
            except Exception as err:  # noqa: BLE001  (the launcher's own failure: told below)
                self.ended.put((trial, err))

        if self.in_process:
            launch()  # (a signal's SystemExit goes through: `run` queues the trial again)
        else:
            threading.Thread(target=launch, name=f"trial {trial.number}", daemon=True).start()

    def end(self, trial, outcome: JobReturn | Exception) -> None:
        """Tell the study how the trial's job ended."""
        del self.running[trial.number]
        if self.heartbeat is not None:
            self.heartbeat.remove(trial._trial_id)
        self.told += 1
        if isinstance(outcome, Exception):  # the launcher failed, not the job: it may run again
            log.error("trial %d: the launcher failed: %s", trial.number, outcome)
            self.failures.append(outcome)
            self.queue_again(trial, f"the launcher failed ({type(outcome).__name__})")
            return
        try:
            self.tell_outcome(trial, outcome)
        except RuntimeError as err:  # the database's: "Cannot change attributes of finished trial"
            if "finished trial" not in str(err):
                raise
            log.warning("trial %d ended after another worker had failed it (its heartbeats stopped "
                        "for longer than grace_period) and queued it again: its retry returns "
                        "this result from its directory", trial.number)

    def tell_outcome(self, trial, outcome: JobReturn) -> None:
        if outcome.hydra_cfg is not None:
            job_dir = Path(outcome.hydra_cfg.hydra.runtime.output_dir)
            trial.set_system_attr("directory", job_dir.name)
            self.report_epochs(trial, job_dir)
        returned = outcome._return_value  # (JobReturn.return_value re-raises a failure)
        if outcome.status == JobStatus.COMPLETED:
            values = job_values(returned, len(self.study.directions))
            if values is None:
                self.fail(trial, ValueError(f"the job returned {returned!r}: no number to optimize "
                                            "(optimized_metric)"))
                return
            self.tell(trial, TrialState.COMPLETE, values)
            log.info("trial %d completed: %s; %s", trial.number, ", ".join(f"{v:.4g}" for v in values),
                     self.standing())
        elif isinstance(returned, Pruned):
            self.tell(trial, TrialState.PRUNED)
            log.info("trial %d %s; %s", trial.number, returned, self.standing())
        else:
            self.fail(trial, returned)

    def tell(self, trial, state: TrialState, values: list[float] | None = None) -> None:
        try:
            self.study.tell(trial, values=values, state=state)
        except RuntimeError as err:  # GridSampler stops the study once its grid is done
            if "Study.stop" not in str(err):
                raise

    def fail(self, trial, error: BaseException) -> None:
        self.failures.append(error)
        self.tell(trial, TrialState.FAIL)
        log.warning("trial %d failed: %s; %s", trial.number, error, self.standing())

    def standing(self) -> str:
        """`study: 6/20 finished (2 pruned), 2 running; best 0.913 (trial 4); ETA 12m`."""
        text = f"study: {progress(self.study, self.n_trials)}"
        done = finished(counts(self.study))
        if done > self.finished_before and done < self.n_trials:
            pace = (time.monotonic() - self.started) / (done - self.finished_before)
            text += f"; ETA {duration(pace * (self.n_trials - done))}"
        try:
            best = self.study.best_trial
        except (ValueError, RuntimeError):  # no trial completed yet, or several objectives
            return text
        return f"{text}; best {best.value:.4g} (trial {best.number})"

    def report_epochs(self, trial, job_dir: Path) -> None:
        """The monitored metric of every epoch of the job's metrics.csv that the study does not
        have for this trial (a stored result returned at once; a job in another process, whose
        reports this process's cache of the study does not see)."""
        monitor = self.search.config.trainer.monitor
        known = self.study._storage.get_trial(trial._trial_id).intermediate_values
        validated = [(int(row[EPOCH]), row[monitor]) for row in read_metrics(job_dir) if monitor in row]
        for epoch, value in validated:
            if epoch not in known:  # (through the storage: Trial.report warns after the job's own)
                self.study._storage.set_trial_intermediate_value(trial._trial_id, epoch, value)

    def queue_again(self, trial, why: str) -> None:
        """Fail a trial of this worker that did not end, and queue it again as Optuna queues a
        stale one: same parameters, same directory (its job resumes from the checkpoint)."""
        self.running.pop(trial.number, None)
        frozen = self.study._storage.get_trial(trial._trial_id)
        if frozen.state.is_finished():
            return
        self.study.tell(trial, state=TrialState.FAIL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            RetryFailedTrialCallback(self.search.max_retry)(self.study, self.study._storage.get_trial(trial._trial_id))
        log.warning("trial %d: %s; queued again, to resume in its directory", trial.number, why)

    def others_may_need_a_retry(self) -> bool:
        """With heartbeats, this worker waits while the study lacks trials and others' are still
        running: a worker killed now leaves its trial to be retried once its grace period ends."""
        if self.heartbeat is None or self.too_many_failures():
            return False
        n = counts(self.study)
        return n["running"] > 0 and finished(n) < self.n_trials


def directory_number(trial) -> int:
    """The number of the trial's directory: its own, or the first failed trial's it retries."""
    return int(trial.system_attrs.get("failed_trial", trial.number))


def env_set(values: dict[str, Any]) -> list[str]:
    """Overrides of the job's hydra.job.env_set (Hydra's config of the job, not the job's config:
    a retry's fingerprint is its first run's)."""
    quoted = {key: str(value).replace("'", "\\'") for key, value in values.items()}  # (Hydra's quoting)
    return [f"++hydra.job.env_set.{key}='{value}'" for key, value in quoted.items()]


def job_values(returned, objectives: int) -> list[float] | None:
    try:
        values = [float(returned)] if objectives == 1 else [float(v) for v in returned]
    except (TypeError, ValueError):
        return None
    return values if len(values) == objectives and all(math.isfinite(v) for v in values) else None


class Heartbeat:
    """Optuna's RDB heartbeat for each trial this worker runs, from one thread (Optuna's own loop
    beats from a thread per trial, `_record_heartbeat`): a killed worker's trials stop beating."""

    def __init__(self, study):
        self.storage = study._storage
        self.interval = self.storage.get_heartbeat_interval()
        self.trial_ids: set[int] = set()
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self.beat, name="heartbeat", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()

    def add(self, trial_id: int) -> None:
        self.storage.record_heartbeat(trial_id)  # at once: a trial without a beat is never stale
        with self.lock:
            self.trial_ids.add(trial_id)

    def remove(self, trial_id: int) -> None:
        with self.lock:
            self.trial_ids.discard(trial_id)

    def beat(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as err:  # noqa: BLE001  (the database away for a while: go on)
                    log.warning("heartbeat of trial id %d: %s", trial_id, err)


# --- the results -----------------------------------------------------------------------------

def write_results(study, path: Path) -> None:
    """optimization_results.yaml as the plugin writes it (best_params, best_value), for the whole
    study whichever worker ran its trials, and the best trial's number and directory, and the
    study's counts; rewritten by each worker as it ends."""
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "trials": counts(study)}
    try:
        if len(study.directions) == 1:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value,
                           best_trial={"number": best.number,
                                       "directory": best.system_attrs.get("directory")})
            log.info("best: trial %d, %s = %.4g, %s", best.number, best.system_attrs.get("directory"),
                     best.value, best.params)
        else:
            results["solutions"] = [{"params": t.params, "values": t.values, "number": t.number,
                                     "directory": t.system_attrs.get("directory")} for t in study.best_trials]
    except ValueError:  # no completed trial yet
        log.warning("no trial of study %s has completed yet", study.study_name)
    try:
        with atomic_write(path) as tmp:
            OmegaConf.save(OmegaConf.create(results), tmp)
    except OSError as err:
        log.error("could not write %s: %s", path, err)
