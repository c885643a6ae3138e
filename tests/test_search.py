"""A search that scales (experiments/search): the sweeper's loop with a stand-in launcher (the
plugin's trials for today's command, n_jobs slots without batches, n_trials counted over the
study, a race past it, pruned and failed trials, refusals), the pruner group, passwords in
storage URLs; then real searches: pruning in the sweep's process and its rerun, pruning through
a PostgreSQL study from joblib workers, a worker stopped by SIGTERM and one killed with kill -9
(its trial retried in its directory by the next worker), and two Slurm workers on one study.

The PostgreSQL tests need Debian's postgresql (tests/support/postgres.sh starts it on loopback;
.ci/run installs it) and are skipped with the reason without it; the Slurm test as
tests/test_cluster.py's. The sqlite test of a continued study is tests/test_reports.py's."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, ROOT, run_train, start_service, start_train
from experiments.config.secrets import hide_argv_secrets, redact_overrides, redact_secrets, redact_url
from experiments.errors import ConfigError
from experiments.search.sweeper import Search, Worker
from experiments.search.trial import Pruned
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

optuna.logging.set_verbosity(optuna.logging.WARNING)

PARAMS = {"optim.lr": "tag(log, interval(0.01, 0.5))", "optim.weight_decay": "tag(log, interval(1e-5, 1e-2))",
          "trainer.batch_size": "choice(64, 128, 256)"}  # conf/hparams_search/optuna.yaml's


# --- the sweeper's loop, with a stand-in launcher ----------------------------------------------

class StandIn:
    """A launcher: each job "runs" for `seconds(number)`, writes a metrics.csv of two validated
    epochs, and returns the value `value(params)`, or raises what `outcome(number)` gives."""

    def __init__(self, tmp_path: Path, seconds=lambda n: 0.0, outcome=lambda n: None):
        self.tmp_path, self.seconds, self.outcome = tmp_path, seconds, outcome
        self.calls: list[tuple[int, list[str]]] = []
        self.times: dict[int, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def launch(self, job_overrides, initial_job_idx):
        [overrides] = job_overrides
        trial = [o.split("=")[1].strip("'") for o in overrides if "EXPERIMENTS_TRIAL=" in o]
        number = int(trial[0]) if trial else initial_job_idx  # (the plugin's jobs: their index)
        started = time.monotonic()
        with self.lock:
            self.calls.append((initial_job_idx, [o for o in overrides if not o.startswith("++hydra")]))
        time.sleep(self.seconds(number))
        params = dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith("++"))
        value = float(params.get("optim.lr", 0.1)) * 10 % 1  # any number, from the parameters
        out = self.tmp_path / f"{initial_job_idx}-job"
        out.mkdir(exist_ok=True)
        (out / "metrics.csv").write_text(f"epoch,val/acc\n1,{value / 2}\n2,{value}\n")
        self.times[number] = (started, time.monotonic())
        raised = self.outcome(number)
        hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(out)}}})
        if raised is not None:
            return [JobReturn(overrides=overrides, hydra_cfg=hydra_cfg, status=JobStatus.FAILED,
                              _return_value=raised)]
        return [JobReturn(overrides=overrides, hydra_cfg=hydra_cfg, status=JobStatus.COMPLETED,
                          _return_value=value)]


class InProcessStandIn(StandIn, BasicLauncher):
    """The same, as Hydra's basic launcher: the sweeper runs its jobs in its own process."""


def sweeper(cls, tmp_path, launcher, **options):
    options = {"n_trials": 4, "n_jobs": 1, "storage": None, "study_name": "s", **options}
    search = cls(sampler=optuna.samplers.TPESampler(seed=1234, n_startup_trials=3), direction="maximize",
                 max_failure_rate=options.pop("max_failure_rate", 0.0), search_space=None,
                 custom_search_space=None, params=OmegaConf.create(PARAMS), **options)
    search.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "data": {"val_size": 256},
                                      "trainer": {"monitor": "val/acc", "devices": 1}})
    search.launcher, search.hydra_context = launcher, None
    return search


def stored(storage: str, name: str = "s") -> list:
    return optuna.load_study(study_name=name, storage=storage).trials


def test_todays_command_asks_the_plugins_trials_in_its_directories(tmp_path):
    """n_jobs=1, the basic launcher, a study in memory: the same trials as hydra-optuna-sweeper's
    loop, past TPE's random start-up, each in the job number (the directory) of its trial."""
    ours, theirs = InProcessStandIn(tmp_path / "ours"), InProcessStandIn(tmp_path / "theirs")
    for launcher in (ours, theirs):
        launcher.tmp_path.mkdir()
    sweeper(Search, tmp_path / "ours", ours, n_trials=6).sweep([])
    plugin = sweeper(OptunaSweeperImpl, tmp_path / "theirs", theirs, n_trials=6)
    plugin.hydra_context = object()  # (asserted, not used)
    plugin.sweep([])
    assert ours.calls == theirs.calls and [n for n, _ in ours.calls] == [0, 1, 2, 3, 4, 5]
    results = yaml.safe_load((tmp_path / "ours" / "optimization_results.yaml").read_text())
    assert results["best_trial"]["directory"] == f"{results['best_trial']['number']}-job"
    assert results["trials"]["completed"] == 6


def test_n_jobs_slots_start_a_trial_as_soon_as_one_ends(tmp_path):
    """Trial 0 takes long: trials 1-3 run one after another beside it in the second slot, where
    the plugin's batches of 2 would start trial 2 only after trial 0."""
    launcher = StandIn(tmp_path, seconds=lambda n: 1.5 if n == 0 else 0.2)
    sweeper(Search, tmp_path, launcher, n_trials=4, n_jobs=2).sweep([])
    end_of_0 = launcher.times[0][1]
    assert all(launcher.times[n][0] < end_of_0 for n in (1, 2, 3)), launcher.times


def test_pruned_trials_count_as_finished_and_a_failure_ends_the_search(tmp_path):
    # trial 1 pruned (told PRUNED, its epochs from metrics.csv), trial 2 failed: the search ends
    # after telling it (max_failure_rate=0, the plugin's default), trials 0-2 in the study
    db = f"sqlite:///{tmp_path / 's.db'}"
    outcomes = {1: Pruned(2, 0.5, "val/acc"), 2: RuntimeError("diverged")}
    search = sweeper(Search, tmp_path, InProcessStandIn(tmp_path, outcome=outcomes.get), storage=db)
    with pytest.raises(RuntimeError, match="diverged"):
        search.sweep([])
    trials = stored(db)
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "FAIL"]
    assert set(trials[1].intermediate_values) == {1, 2}  # reported from the job's metrics.csv
    # tolerated failures: n_trials counts the finished ones (completed or pruned) of the study
    sweeper(Search, tmp_path, InProcessStandIn(tmp_path, outcome=outcomes.get), storage=db,
            study_name="s2", max_failure_rate=0.5).sweep([])
    states = [t.state.name for t in stored(db, "s2")]
    assert states.count("COMPLETE") + states.count("PRUNED") == 4 and states.count("FAIL") == 1


def test_a_worker_stopped_by_a_signal_queues_its_trial_again_for_its_rerun(tmp_path):
    """SIGTERM during trial 1 (a job's Interrupts checkpoint it, then hand the signal on to the
    worker): the worker exits 143, trial 1 failed and queued again with its parameters; the
    rerun runs the retry first, in trial 1's directory, and counts it once."""
    db = f"sqlite:///{tmp_path / 's.db'}"

    class Signalled(InProcessStandIn):
        def launch(self, job_overrides, initial_job_idx):
            if initial_job_idx == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().launch(job_overrides, initial_job_idx)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        sweeper(Search, tmp_path, Signalled(tmp_path), storage=db).sweep([])
    assert stopped.value.code == 128 + signal.SIGTERM and signal.getsignal(signal.SIGTERM) is before
    trials = stored(db)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "WAITING"]
    assert trials[2].params == trials[1].params and trials[2].system_attrs["failed_trial"] == 1
    rerun = InProcessStandIn(tmp_path)
    sweeper(Search, tmp_path, rerun, storage=db).sweep([])
    assert [n for n, _ in rerun.calls] == [1, 3, 4]  # the retry in trial 1's directory first
    states = [t.state.name for t in stored(db)]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]


def test_workers_of_one_seed_draw_different_trials_and_the_same_study_again(tmp_path):
    """Two workers started with one command (one sampler seed) on one stored study: each trial's
    draw is seeded by the seed and its number, so none repeats another's, and a new study of the
    same seed draws the same trials."""
    def two_workers(db: str) -> list[dict]:
        workers = []
        for _ in range(2):
            search = sweeper(Search, tmp_path, StandIn(tmp_path), storage=db)
            study = optuna.create_study(study_name="s", storage=db, sampler=search.sampler,
                                        direction="maximize", load_if_exists=True)
            workers.append(Worker(search, study, *search.distributions([])))
        drawn = []
        for number in range(4):  # the workers take turns
            worker = workers[number % 2]
            trial = worker.next_trial()
            worker.seeds.before(trial.number)
            worker.search._configure_trials([trial], worker.space, worker.fixed)
            worker.study.tell(trial, 0.5)
            drawn.append(trial.params)
        return drawn

    drawn = two_workers(f"sqlite:///{tmp_path / 'a.db'}")
    assert len({tuple(sorted(p.items())) for p in drawn}) == 4
    assert two_workers(f"sqlite:///{tmp_path / 'b.db'}") == drawn


def test_a_trial_asked_in_a_race_past_n_trials_never_runs(tmp_path):
    """Two workers see room for one more trial and both ask: the one whose trials ahead already
    fill n_trials is failed, marked surplus, before it runs."""
    search = sweeper(Search, tmp_path, StandIn(tmp_path), n_trials=2)
    study = optuna.create_study(sampler=search.sampler)
    study.tell(study.ask(), 0.5)
    worker = Worker(search, study, {}, {})
    ask = study.ask
    study.ask = lambda: (ask(), ask())[1]  # another worker's trial 1 comes first, still running
    assert worker.next_trial() is None
    surplus = study.trials[2]
    assert surplus.state.name == "FAIL" and surplus.system_attrs["surplus"] is True
    assert [t.state.name for t in study.trials[:2]] == ["COMPLETE", "RUNNING"]


def test_sqlite_shared_by_workers_is_warned_about(tmp_path, caplog):
    db = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=db)
    study.ask().set_system_attr("worker", "otherhost:1")  # another worker's trial, running
    worker = Worker(sweeper(Search, tmp_path, StandIn(tmp_path), storage=db), study, {}, {})
    with caplog.at_level(logging.WARNING):
        assert worker.next_trial() is not None
    assert "SQLite" in caplog.text and "PostgreSQL" in caplog.text


def test_workers_opening_an_empty_database_at_once_all_get_the_study(tmp_path, monkeypatch):
    """Workers started together on an empty database all create Optuna's tables; all but one fail
    with an IntegrityError (2 workers on PostgreSQL 15, bench/search.py): the others open it
    again, once the tables are there."""
    from sqlalchemy.exc import IntegrityError

    from experiments.search import sweeper as module

    opened = []

    def racing(url, **kwargs):
        opened.append(url)
        if len(opened) == 1:  # another worker created the tables first
            raise IntegrityError("CREATE TABLE studies", {}, Exception("duplicate key value"))
        return optuna.storages.RDBStorage(url, **kwargs)

    monkeypatch.setattr(module, "RDBStorage", racing)
    monkeypatch.setattr(module.time, "sleep", lambda s: None)
    storage = module.open_storage(f"sqlite:///{tmp_path / 's.db'}", None, None, 3)
    assert isinstance(storage, optuna.storages.RDBStorage) and len(opened) == 2


@pytest.mark.parametrize("case, message", [
    ({"data": {"val_size": 0}}, "data.val_size=0 leaves no validation split"),
    ({"trainer": {"monitor": "val/loss"}}, "trainer.monitor=val/loss (lower is better)"),
    ({"trainer": {"devices": 2}}, "a DDP trial (2 processes)"),
    ({"launcher": "elsewhere"}, "Give the study a storage"),
])
def test_a_pruner_the_trials_cannot_feed_is_refused_before_any_trial(tmp_path, case, message):
    launcher = StandIn(tmp_path) if case.pop("launcher", None) else InProcessStandIn(tmp_path)
    search = sweeper(Search, tmp_path, launcher, pruner=optuna.pruners.MedianPruner())
    search.config = OmegaConf.merge(search.config, case)
    with pytest.raises(ConfigError, match=re.escape(message)):
        search.check(["maximize"])


def test_the_pruner_options_scale_with_the_epochs(compose_cfg):
    def pruner(*overrides):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", ["hparams_search=optuna", *overrides], return_hydra_config=True)
        return instantiate(cfg.hydra.sweeper.pruner)

    assert isinstance(pruner(), optuna.pruners.NopPruner)  # the default: today's searches
    asha = pruner("hydra/sweeper/pruner=asha", "trainer.epochs=200")
    assert (type(asha).__name__, asha._min_resource, asha._reduction_factor) == ("SuccessiveHalvingPruner", 20, 3)
    band = pruner("hydra/sweeper/pruner=hyperband", "trainer.epochs=30")
    assert (band._min_resource, band._max_resource) == (3, 30)
    median = pruner("hydra/sweeper/pruner=median", "trainer.epochs=4")
    assert (median._n_startup_trials, median._n_warmup_steps) == (5, 1)


def test_a_storage_urls_password_is_masked_wherever_it_is_written(monkeypatch):
    url = "postgresql://bob:Pa55word@db.lab:5432/optuna"
    assert redact_url(url) == "postgresql://bob:***@db.lab:5432/optuna"
    assert redact_url("postgresql://bob@db.lab/optuna") == "postgresql://bob@db.lab/optuna"  # (~/.pgpass)
    assert redact_secrets({"hydra": {"sweeper": {"storage": url}}})["hydra"]["sweeper"]["storage"] == redact_url(url)
    assert redact_overrides([f"hydra.sweeper.storage={url}"]) == [f"hydra.sweeper.storage={redact_url(url)}"]
    monkeypatch.setattr(os, "environ", dict(os.environ))
    [hidden] = hide_argv_secrets([f"hydra.sweeper.storage={url}"])  # what Hydra then records
    assert "Pa55word" not in hidden and os.environ[hidden.split("oc.env:")[1].rstrip("}")] == url


# --- real searches ---------------------------------------------------------------------------

SMOKE = ["hparams_search=optuna", "experiment=smoke", "logger=none", "trainer.progress=false"]
# a trial of lr 1e-6 cannot learn (val/acc near chance, 10%, after epoch 1); one of lr 0.1 is at
# 24-28% there: a threshold of 15% prunes exactly the first. TPE's random start-up draws 0.1, 0.1,
# 1e-6 for trials 0-2 with seed 7 in memory, with seed 2 in a stored study (sweeper.TrialSeeds)
PRUNE_SLOW_LEARNERS = ["optim.lr=choice(1e-6,0.1)", "trainer.batch_size=64",
                       "++hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:0.15}"]
IN_MEMORY_SEED, STORED_SEED = "hydra.sweeper.sampler.seed=7", "hydra.sweeper.sampler.seed=2"


def summaries(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))}


def test_a_pruner_stops_a_weak_trial_in_the_sweeps_process_and_its_rerun_returns_it(tmp_path):
    sweep = tmp_path / "sweep"
    command = [*SMOKE, *PRUNE_SLOW_LEARNERS, IN_MEMORY_SEED, "trainer.epochs=2", "hydra.sweeper.n_trials=3",
               f"hydra.sweep.dir={sweep}"]
    done = run_train(*command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = summaries(sweep)
    [(name, pruned)] = [(n, s) for n, s in jobs.items() if s["status"] == "pruned"]
    assert name.startswith("2-lr=1e-6") and pruned["epochs_completed"] == 1
    first = (sweep / name / "metrics.csv").read_text().splitlines()[1].split(",")
    assert pruned["pruned_value"] == float(first[-1]) < 0.15  # val/acc, metrics.csv's last column
    assert (sweep / name / "checkpoint.pt").exists() and not (sweep / name / "model.pt").exists()
    assert [s["status"] for n, s in jobs.items() if n != name] == ["completed"] * 2
    assert "job 3/3 2-lr=1e-6" in done.stdout + done.stderr  # its place in the study
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["trials"] == {"completed": 2, "pruned": 1, "running": 0, "waiting": 0, "failed": 0,
                                 "retried": 0}
    # the rerun (a new study in memory, the same seed): every trial returned as it ended
    again = run_train(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert summaries(sweep) == jobs and yaml.safe_load((sweep / "optimization_results.yaml").read_text()) == results
    assert "already pruned" in (sweep / name / "train.log").read_text()
    assert all((sweep / n / "metrics.csv").read_text().count("\n") == 1 + s["epochs_completed"]
               for n, s in jobs.items())  # no epoch trained again


def test_a_trial_is_judged_after_every_epoch_but_its_last_which_completes_it():
    """Pruning after the last epoch would save nothing and drop the trial's test: it is reported
    (the pruner has its value for the trials after it), and the trial completes."""
    from experiments.search.trial import TrialReport

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    report = TrialReport(study.ask(), "val/acc")
    history = [{"epoch": 1, "val/acc": 0.6}]
    assert not report.should_stop(history)  # above the threshold
    history.append({"epoch": 2, "val/acc": 0.2})
    assert report.should_stop(history) and str(report.pruned()) == "pruned after epoch 2 (val/acc 0.2)"
    last = TrialReport(study.ask(), "val/acc")
    assert not last.should_stop([{"epoch": 1, "val/acc": 0.2}], last=True)
    assert last.trial.storage.get_trial(last.trial._trial_id).intermediate_values == {1: 0.2}


def test_an_unreachable_storage_is_one_message_naming_its_host_before_any_trial(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_train(*SMOKE, "hydra.sweeper.storage=postgresql://bob:Pa55word@127.0.0.1:1/optuna",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "127.0.0.1:1" in line and "Connection refused" in line and "Pa55word" not in line, done.stderr
    assert not [p for p in sweep.iterdir() if p.is_dir()] if sweep.exists() else True


# --- PostgreSQL --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def postgres() -> str:
    """A server's URL (tests/support/postgres.sh: loopback, trust authentication)."""
    return start_service("postgres.sh", "PostgreSQL", timeout=120)


def database(server: str, password: str = "") -> str:
    """A new database on the server, its URL (with `password`: trust accepts any)."""
    import psycopg2

    name = f"t_{uuid.uuid4().hex[:12]}"
    connection = psycopg2.connect(server)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    connection.close()
    user = f"postgres:{password}" if password else "postgres"
    return server.replace("postgres@", f"{user}@").rsplit("/", 1)[0] + f"/{name}"


def files_with(folder: Path, text: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_joblib_workers_prune_through_a_postgresql_study_and_its_password_reaches_no_file(postgres, tmp_path):
    """Two trials at a time in joblib's worker processes: their jobs open the study in its
    storage, report, and the pruner stops the slow learner there."""
    url, sweep = database(postgres, password="Pa55word"), tmp_path / "sweep"
    done = run_train(*SMOKE, *PRUNE_SLOW_LEARNERS, STORED_SEED, "trainer.epochs=2", "hydra.sweeper.n_trials=3",
                     "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
                     f"hydra.sweeper.storage={url}", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                     timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="resnet18-sgd", storage=url)
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED"}, states
    assert study.trials[2].intermediate_values.keys() == {1}  # reported by the job, in its process
    assert summaries(sweep)[study.trials[2].system_attrs["directory"]]["status"] == "pruned"
    assert not files_with(tmp_path, "Pa55word") and "Pa55word" not in done.stdout + done.stderr


def stop_in_trial(job, sweep: Path, signum: int, number: int = 0) -> None:
    """`signum` to the worker once its trial `number` checkpointed an epoch."""
    deadline = time.monotonic() + 120
    while not list(sweep.glob(f"{number}-*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.1)
    job.send_signal(signum)
    job.wait(timeout=60)


def test_a_worker_killed_with_kill_9_loses_nothing(postgres, tmp_path):
    """Its trial stops beating; after the grace period the next worker fails it and retries it:
    same parameters, same directory, resumed from its checkpoint; the study counts it once."""
    url, sweep = database(postgres), tmp_path / "sweep"
    command = [*SMOKE, "trainer.epochs=2", "trainer.batch_size=64", "hydra.sweeper.n_trials=1",
               f"hydra.sweeper.storage={url}", "hydra.sweeper.heartbeat_interval=1",
               "hydra.sweeper.grace_period=2", f"hydra.sweep.dir={sweep}"]
    stop_in_trial(start_train(*command, cwd=tmp_path), sweep, signal.SIGKILL)
    time.sleep(3)  # the grace period (Optuna counts whole seconds past it)
    done = run_train(*command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [(name, job)] = summaries(sweep).items()
    assert job["status"] == "completed" and job["resumed_from_epoch"] == 1, job
    trials = optuna.load_study(study_name="resnet18-sgd", storage=url).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == trials[0].params and trials[1].system_attrs["failed_trial"] == 0
    assert trials[1].system_attrs["directory"] == name and name.startswith("0-")


def test_a_worker_stopped_by_sigterm_queues_its_trial_and_its_rerun_continues_it(tmp_path):
    db, sweep = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "sweep"
    command = [*SMOKE, "trainer.epochs=2", "trainer.batch_size=64", "hydra.sweeper.n_trials=1",
               f"hydra.sweeper.storage={db}", f"hydra.sweep.dir={sweep}"]
    worker = start_train(*command, cwd=tmp_path)
    stop_in_trial(worker, sweep, signal.SIGTERM)
    assert worker.poll() == 128 + signal.SIGTERM, worker.output()[1][-3000:]
    assert [t.state.name for t in stored(db, "resnet18-sgd")] == ["FAIL", "WAITING"]
    done = run_train(*command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [job] = summaries(sweep).values()
    assert job["status"] == "completed" and job["resumed_from_epoch"] == 1
    assert [t.state.name for t in stored(db, "resnet18-sgd")] == ["FAIL", "COMPLETE"]


# --- Slurm ---------------------------------------------------------------------------------------

@pytest.mark.timeout(600)
def test_two_slurm_workers_share_one_postgresql_study(slurm, postgres, tmp_path):
    """slurm/search.sbatch as an array of 2: each worker asks for trials until the study has
    n_trials, each trial in its own directory, on its worker's one core."""
    url, sweep = database(postgres), tmp_path / "sweep"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1", f"--output={tmp_path}/%A_%a.out",
         str(ROOT / "slurm" / "search.sbatch"), *SMOKE, "trainer.epochs=1", "hydra.sweeper.n_trials=4",
         f"hydra.sweeper.storage={url}", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, check=True)
    job = submitted.stdout.strip()
    try:
        deadline = time.monotonic() + 400
        while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
            assert time.monotonic() < deadline, "the workers did not end"
            time.sleep(1)
    finally:
        subprocess.run(["scancel", job], check=False)
    logs = "".join(p.read_text() for p in tmp_path.glob("*.out"))
    trials = optuna.load_study(study_name="resnet18-sgd", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4, logs[-3000:]
    assert len({t.system_attrs["worker"] for t in trials}) == 2  # both workers ran trials
    jobs = summaries(sweep)
    assert sorted(name.split("-")[0] for name in jobs) == ["0", "1", "2", "3"]
    assert all(j["status"] == "completed" and j["threads"] == 1 for j in jobs.values())
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_trial"]["directory"] in jobs
