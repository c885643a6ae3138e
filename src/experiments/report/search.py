"""An Optuna search read back from its trials' directories, and what the report says about it:
the best value so far against the trial number (plots/search.png), each searched parameter's
importance, and the epochs that pruning saved (summary.md's Search section, the printed table).

A sweep is an Optuna search when its jobs' `.hydra/hydra.yaml` names the Optuna sweeper
(`hydra.sweeper._target_`). What it searched is what the sweeper searched: `hydra.sweeper.params`
followed by the command line's overrides (the job's recorded command, `provenance.command`),
parsed by hydra-optuna-sweeper's own parser. A trial's number is its directory's
(`<trial number>-<values>`: the study's own, also in a continued study), its sampled values are
its `.hydra/overrides.yaml`, and its value is its summary.json's `optimized_metric` (what the
task returned to Optuna).

optuna, and scikit-learn for the importances, are imported only to report an Optuna search:
never by a job, nor by a grid's report. In a notebook, `load_study("multirun/...")` gives the
trials as an in-memory optuna.Study, for Optuna's own plots (optuna.visualization.matplotlib).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from experiments.identity import job_number
from experiments.report.job_summary import COMPLETED, FAILED, PRUNED
from experiments.report.sweep import SAFE_LOADER, Job, load_sweeps
from experiments.report.tables import fmt

log = logging.getLogger(__name__)

SWEEPERS = ("optuna", "experiments_sweeper")  # in hydra.sweeper._target_: an Optuna search
DEFAULT_METRIC = "best_val_acc"  # optimized_metric where a job's config does not say (conf/train.yaml)
# fANOVA fits a random forest to the completed trials: below this many, its ranking is mostly
# noise. Of three parameters, the learning rate alone deciding the value, 30 random searches of
# n trials each ranked the learning rate first this often: n=3: 4 times, 5: 18 (10 by chance),
# 10: 24, 15: 27, 20: 30 (python bench/search_importance.py, 2026-12-07)
MIN_IMPORTANCE_TRIALS = 10
IMPORTANCE_SEED = 0  # the forest's: the same trials give the same importances in every rebuild
# Optuna's default depth (64) lets each of its 64 trees grow with the trials, and its fANOVA
# (pure Python) with them: 0.9 s of CPU for 100 trials, 3.0 s for 200, 11.1 s for 500. At depth 8
# (up to 256 leaves: the same importances within 0.002 at 100, 200 and 500 trials) 0.8, 1.8 and
# 3.5 s, 5.2 s for 1,000 (python bench/search_importance.py --trials 100 200 500 1000, 2026-12-07)
IMPORTANCE_MAX_DEPTH = 8


@dataclass
class Trial:
    number: int  # the study's trial number: the directory's number prefix
    job: str  # the directory's name
    status: str  # completed, pruned, failed, running, interrupted or unknown
    params: dict[str, Any]  # its sampled values, typed as the search space's (those that fit it)
    value: float | None  # a completed trial's optimized_metric: what Optuna was told
    epochs_completed: int
    epochs: int | None  # trainer.epochs in its config: what it trains unless pruned (read for pruned ones)
    pruned_value: float | None  # a pruned trial's monitored value at the report that pruned it


@dataclass
class Search:
    """One sweep directory's Optuna trials, by number, and what the report computes from them."""

    sweep: str  # the sweep directory's name
    metric: str  # optimized_metric
    direction: str  # maximize or minimize
    sampler: str  # e.g. TPESampler
    space: dict[str, Any]  # each searched parameter's optuna distribution
    trials: list[Trial]
    importances: dict[str, float] = field(default_factory=dict)  # largest first; sum to 1
    importance_note: str = ""  # why there are none

    @property
    def maximize(self) -> bool:
        return self.direction != "minimize"

    def with_status(self, status: str) -> list[Trial]:
        return [t for t in self.trials if t.status == status]

    @property
    def valued(self) -> list[Trial]:
        """The completed trials with a value: the ones Optuna ranks, and importances use."""
        return [t for t in self.with_status(COMPLETED) if t.value is not None]

    @property
    def best(self) -> Trial | None:
        """The best completed trial in the search's direction (the first of equals, as Optuna)."""
        valued = self.valued
        if not valued:
            return None
        pick = max if self.maximize else min
        return pick(valued, key=lambda t: t.value)

    def counts(self) -> str:
        """`14 completed, 5 pruned, 1 failed`: the trials by status, most first."""
        statuses = pd.Series([t.status for t in self.trials], dtype=object).value_counts()
        return ", ".join(f"{n} {status}" for status, n in statuses.items())


# --- is it a search, and what did it search --------------------------------------------------

def read_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(), Loader=SAFE_LOADER)
    except (OSError, yaml.YAMLError):
        return None


def sweeper_of(jobs: list[Job]) -> dict | None:
    """hydra.sweeper as the first job that recorded it has it (every job of a sweep has the same)."""
    for job in jobs:
        hydra = read_yaml(job.path / ".hydra" / "hydra.yaml")
        if isinstance(hydra, dict) and isinstance(hydra.get("hydra"), dict):
            sweeper = hydra["hydra"].get("sweeper")
            return sweeper if isinstance(sweeper, dict) else None
    return None


def is_optuna(sweeper: dict | None) -> bool:
    target = str((sweeper or {}).get("_target_", ""))
    return any(name in target for name in SWEEPERS)


def command_overrides(command: str | None) -> list[str]:
    """The task's overrides on a recorded command line (`key=value` words; Hydra's own `hydra.*`
    and the flags left out), as the sweeper got them."""
    try:
        words = shlex.split(command or "")
    except ValueError:  # unbalanced quotes: nothing to read
        return []
    return [w for w in words if "=" in w and not w.startswith("-")
            and not w.lstrip("+~").startswith(("hydra.", "hydra/"))]


def search_space(sweeper: dict, command: str | None) -> dict[str, Any]:
    """{parameter: optuna distribution}: hydra.sweeper.params, then the command line's sweeps,
    through the plugin's own parser; a fixed value (`optim.lr=0.05` on the command line) takes
    its parameter out of the search, as in the sweeper. An override the parser refuses (a masked
    secret) is left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.hydra_optuna_sweeper._impl import (
        create_optuna_distribution_from_config,
        create_params_from_overrides,
    )

    base = {}  # hydra.sweeper.search_space, the plugin's older form, used when there are no params
    if not sweeper.get("params") and isinstance(sweeper.get("search_space"), dict):
        try:
            base = {str(k): create_optuna_distribution_from_config(v) for k, v in sweeper["search_space"].items()}
        except Exception:  # noqa: BLE001  (one the plugin refuses too)
            base = {}
    parser, arguments = OverridesParser.create(), []
    for argument in [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()] + command_overrides(command):
        try:
            parser.parse_override(argument)
        except Exception:  # noqa: BLE001  (Hydra's parse errors have no common base)
            continue
        arguments.append(argument)
    try:
        distributions, fixed = create_params_from_overrides(arguments)
    except Exception:  # noqa: BLE001  (a sweep the sweeper itself refuses: no space to read)
        return {}
    return {name: d for name, d in {**base, **distributions}.items() if name not in fixed}


MISSING = object()


def sampled(distribution, text: str) -> Any:
    """A trial's override value in the search space's type, or MISSING when it does not fit the
    space (a study continued with other ranges)."""
    from optuna.distributions import CategoricalDistribution, IntLogUniformDistribution, IntUniformDistribution

    try:
        if isinstance(distribution, CategoricalDistribution):  # written as str(choice)
            value = next(c for c in distribution.choices if str(c) == text)
        elif isinstance(distribution, (IntUniformDistribution, IntLogUniformDistribution)):
            value = int(text)
        else:
            value = float(text)
        fits = distribution._contains(distribution.to_internal_repr(value))
    except (StopIteration, ValueError, TypeError):
        return MISSING
    return value if fits else MISSING


# --- the trials ------------------------------------------------------------------------------

def number(value: Any) -> float | None:
    """A finite number, or None (null, NaN: Optuna was told no value)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def configured_epochs(job: Job) -> int | None:
    epochs = (job.config.get("trainer") or {}).get("epochs")  # (its config.yaml, read once)
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def read_trial(job: Job, space: dict[str, Any], metric: str) -> Trial | None:
    n = job_number(job.name)
    if n is None:
        return None
    s, status = job.summary, job.summary.get("status", "unknown")
    params = {k: sampled(d, job.overrides[k]) for k, d in space.items() if k in job.overrides}
    return Trial(n, job.name, status, {k: v for k, v in params.items() if v is not MISSING},
                 number(s.get(metric)) if status == COMPLETED else None, int(s.get("epochs_completed") or 0),
                 configured_epochs(job) if status == PRUNED else None, number(s.get("pruned_value")))


def optimized_metric(jobs: list[Job]) -> str:
    for job in jobs:
        if job.config:  # (its config.yaml, read once)
            return str(job.config.get("optimized_metric") or DEFAULT_METRIC)
    return DEFAULT_METRIC


def direction_of(sweeper: dict) -> str:
    """`maximize` or `minimize` (hydra.sweeper.direction: a name, or a list of one)."""
    direction = sweeper.get("direction", "minimize")  # the plugin's default
    if isinstance(direction, list):
        direction = direction[0] if direction else "minimize"
    return "minimize" if "min" in str(direction).lower() else "maximize"


def read_search(jobs: list[Job]) -> Search | None:
    """The Optuna search of one sweep directory's jobs; None when they are no Optuna search."""
    sweeper = sweeper_of(jobs)
    if not is_optuna(sweeper):
        return None
    command = next((j.summary["provenance"].get("command") for j in jobs
                    if isinstance(j.summary.get("provenance"), dict)), None)
    space, metric = search_space(sweeper, command), optimized_metric(jobs)
    trials = sorted((t for t in (read_trial(j, space, metric) for j in jobs) if t is not None),
                    key=lambda t: t.number)
    if not trials:  # no directory named by a trial number
        return None
    sampler = str((sweeper.get("sampler") or {}).get("_target_", "")).rsplit(".", 1)[-1]
    search = Search(jobs[0].path.parent.name, metric, direction_of(sweeper), sampler, space, trials)
    search.importances, search.importance_note = importances(search)
    return search


def searches(jobs: list[Job]) -> list[Search]:
    """The Optuna searches among the jobs' sweep directories, in their order. One that cannot be
    read is left out with a warning: the rest of the report stands without it."""
    by_sweep: dict[Path, list[Job]] = {}
    for job in jobs:
        by_sweep.setdefault(job.path.parent, []).append(job)
    found = []
    for sweep, group in by_sweep.items():
        try:
            found.append(read_search(group))
        except Exception as err:  # noqa: BLE001  (e.g. an Optuna the report does not know)
            log.warning("%s: its Optuna search could not be read back (%s: %s)", sweep, type(err).__name__, err)
    return [s for s in found if s is not None]


# --- what the report shows -------------------------------------------------------------------

def history(search: Search) -> pd.DataFrame:
    """One row per trial, by number: `status`, `value` (a completed trial's), `best` (the best
    value of the completed trials up to this one: pruned and failed ones keep the best as it
    was; NaN before the first) and a pruned trial's `pruned_value`."""
    table = pd.DataFrame([{"trial": t.number, "job": t.job, "status": t.status, "value": t.value,
                           "pruned_value": t.pruned_value} for t in search.trials],
                         columns=["trial", "job", "status", "value", "pruned_value"])
    values = pd.to_numeric(table["value"]).astype(float)
    table["value"], table["pruned_value"] = values, pd.to_numeric(table["pruned_value"]).astype(float)
    table["best"] = (values.cummax() if search.maximize else values.cummin()).ffill()
    return table


@dataclass
class Pruning:
    pruned: int  # trials
    saved: int  # epochs: each pruned trial's trainer.epochs minus the epochs it trained
    trained: int  # epochs every trial of the search trained (pruned ones' included)
    unknown: int  # pruned trials without a trainer.epochs in their config (not counted)

    @property
    def unpruned(self) -> int:
        """What the search would have trained had every trial run to its end."""
        return self.trained + self.saved

    @property
    def share(self) -> float | None:
        return self.saved / self.unpruned if self.unpruned else None


def pruning(search: Search) -> Pruning:
    pruned = search.with_status(PRUNED)
    known = [t for t in pruned if t.epochs is not None]
    return Pruning(len(pruned), sum(max(0, t.epochs - t.epochs_completed) for t in known),
                   sum(t.epochs_completed for t in search.trials), len(pruned) - len(known))


EDGE = 0.02  # of a range's width (on its scale: log for a log range): the best value is at its edge


def at_edge(search: Search) -> dict[str, str]:
    """The best trial's values at the edge of their range, `top` or `bottom`: the best may lie
    beyond it, where the search never looked."""
    from optuna.distributions import CategoricalDistribution

    best, edges = search.best, {}
    for name, value in (best.params if best else {}).items():
        d = search.space[name]
        if isinstance(d, CategoricalDistribution) or d.high <= d.low:
            continue
        scale = math.log if "Log" in type(d).__name__ else float
        where = (scale(value) - scale(d.low)) / (scale(d.high) - scale(d.low))
        if where <= EDGE or where >= 1 - EDGE:
            edges[name] = "bottom" if where <= EDGE else "top"
    return edges


# --- the study, rebuilt, and its importances -------------------------------------------------

STATES = {COMPLETED: "COMPLETE", PRUNED: "PRUNED", FAILED: "FAIL"}  # the trials a study holds


@contextlib.contextmanager
def quiet_optuna():
    """No "A new study created in memory" line, nor experimental-API warnings, from the study
    rebuilt here; Optuna's verbosity is put back after (the sweep's own study logs on)."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield optuna
    finally:
        optuna.logging.set_verbosity(verbosity)


def study(search: Search):
    """The trials as an in-memory optuna.Study: completed ones with their value (one without is
    failed, as Optuna takes a NaN), pruned and failed ones with their sampled values; each
    trial's own number and directory in its user_attrs `trial` and `job` (the study numbers
    them from 0)."""
    with quiet_optuna() as optuna:
        rebuilt = optuna.create_study(direction=search.direction)
        frozen = []
        for t in search.trials:
            if t.status not in STATES:  # still running, or killed: no outcome yet
                continue
            state = STATES[t.status] if t.status != COMPLETED or t.value is not None else "FAIL"
            frozen.append(optuna.trial.create_trial(
                state=optuna.trial.TrialState[state], value=t.value if state == "COMPLETE" else None,
                params=t.params, distributions={k: search.space[k] for k in t.params},
                user_attrs={"trial": t.number, "job": t.job}))
        rebuilt.add_trials(frozen)
    return rebuilt


def node_value(tree, node_index: int) -> float:
    return float(tree._tree.value[node_index].reshape(-1)[0])


@contextlib.contextmanager
def fanova_reads_floats():
    """Optuna 2.10's fANOVA puts a tree node's value, the (1, 1) array scikit-learn stores, where
    a float goes, which NumPy 2 refuses ("setting an array element with a sequence": every call
    failed here, NumPy 2.4, scikit-learn 1.9). Optuna 3.0 reads the float instead
    (optuna/optuna#3818), but hydra-optuna-sweeper 1.3 pins optuna<3: the same one-line fix,
    for the call only."""
    try:
        from optuna.importance._fanova._tree import _FanovaTree
    except ImportError:  # another Optuna's layout: its own reading
        yield
        return
    original = _FanovaTree._get_node_value
    _FanovaTree._get_node_value = node_value
    try:
        yield
    finally:
        _FanovaTree._get_node_value = original


def importances(search: Search, min_trials: int = MIN_IMPORTANCE_TRIALS) -> tuple[dict[str, float], str]:
    """Each searched parameter's importance for the value, Optuna's `get_param_importances`
    (fANOVA: the share of the value's variance over the completed trials that a random forest
    fit to them attributes to each parameter alone), largest first; or none, and why."""
    n = len(search.valued)
    if not search.space:
        return {}, "no searched parameter was recorded (a custom search space?)"
    if n < min_trials:
        return {}, (f"{n} completed trial{'' if n == 1 else 's'} with a value: too few to estimate them "
                    f"(from {min_trials}; below that the ranking is mostly noise)")
    rebuilt = study(search)
    with quiet_optuna() as optuna, fanova_reads_floats():
        evaluator = optuna.importance.FanovaImportanceEvaluator(max_depth=IMPORTANCE_MAX_DEPTH, seed=IMPORTANCE_SEED)
        try:
            found = optuna.importance.get_param_importances(rebuilt, evaluator=evaluator)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. the value never varied
            return {}, f"not estimated: {err}"
    return {k: float(v) for k, v in found.items()}, ""


def load_study(*roots: str | Path):
    """The Optuna search of a sweep directory as an in-memory optuna.Study (the first, with
    several)."""
    found = searches(load_sweeps([Path(r) for r in roots]))
    if not found:
        raise ValueError(f"no Optuna search in {', '.join(map(str, roots))}")
    return study(found[0])


# --- in words --------------------------------------------------------------------------------

def describe(distribution) -> str:
    """A distribution as the report shows it: `log [0.01, 0.5]`, `one of 64, 128, 256`."""
    from optuna import distributions as d

    if isinstance(distribution, d.CategoricalDistribution):
        return "one of " + ", ".join(map(str, distribution.choices))
    log = isinstance(distribution, (d.LogUniformDistribution, d.IntLogUniformDistribution))
    whole = isinstance(distribution, (d.IntUniformDistribution, d.IntLogUniformDistribution))
    step = getattr(distribution, "q", None) or (getattr(distribution, "step", 1) if whole else None)
    text = f"{'log ' if log else ''}[{distribution.low:g}, {distribution.high:g}]"
    return text + (" integers" if whole and step == 1 else f" step {step:g}" if step else "")


def value_text(metric: str, value: float) -> str:
    """A value of `metric` as the report writes it: an accuracy in %."""
    return fmt(metric, value) + ("%" if "acc" in metric.split("_") else "")


def headline(search: Search) -> str:
    """`20 trials (14 completed, 5 pruned, 1 failed) of TPESampler, maximizing best_val_acc`."""
    return (f"{len(search.trials)} trials ({search.counts()}) of {search.sampler or 'the sampler'}, "
            f"{search.direction[:-1]}ing {search.metric}")


def best_text(search: Search) -> str:
    """`best trial 7 (7-lr=0.0412-...): best_val_acc 63.20%; optim.lr=0.0412 ...`."""
    best = search.best
    if best is None:
        return f"no completed trial has a value of {search.metric} yet"
    values = " ".join(f"{k}={fmt(k, v) if isinstance(v, float) else v}" for k, v in best.params.items())
    return (f"best trial {best.number} ({best.job}): {search.metric} {value_text(search.metric, best.value)}"
            + (f"; {values}" if values else ""))


def edge_sentence(search: Search) -> str:
    """`optim.lr is at the top of its range [0.01, 0.5]: the best may lie beyond it; widen it.`"""
    edges = at_edge(search)
    if not edges:
        return ""
    said = " and ".join(f"{k} at the {where} of its range {describe(search.space[k])}" for k, where in edges.items())
    return (f"The best trial has {said}: the best may lie beyond, where the search never looked; widen "
            f"{'them' if len(edges) > 1 else 'it'}.")


def pruning_sentence(p: Pruning, trials: int) -> str:
    if not p.pruned:
        return ""
    share = "" if p.share is None else f" ({100 * p.share:.0f}% of the {p.unpruned} epochs it would have trained)"
    unknown = (f"; {p.unknown} pruned trial{'s' if p.unknown > 1 else ''} without trainer.epochs in "
               "config.yaml not counted") if p.unknown else ""
    return (f"{p.pruned} of {trials} trials were pruned, saving {p.saved} epochs against running every "
            f"trial to its trainer.epochs{share}{unknown}.")
