"""What a sweep's grid says: means over seeds, the pick, and the effect of each swept factor.

A *factor* is a configuration column that varies between jobs (a config group's option or an
overridden key); `seed` is the replicate, never a factor. The effect of a factor is measured on
*pairs*: two completed jobs that differ only in that factor (same other choices, same seed), so
an unbalanced grid or a failed job removes pairs instead of biasing the comparison (the plain
per-level means do mix in the other factors when the grid is unbalanced). With two or more
seeds the mean paired difference gets a 95% t-interval; with one seed it gets none, because
the spread between pairs then says nothing about seed noise.

All differences are in percentage points of accuracy; frames hold fractions, as summary.json.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import pandas as pd
from scipy import stats

from experiments.report.job_summary import chosen
from experiments.report.sweep import SEED

METRICS = chosen("test_acc", "best_val_acc")  # what effects are measured on
AGGREGATED = chosen("test_acc", "best_val_acc", "train_time_s")  # averaged per configuration
CONFIDENCE = 0.95
MAX_LEVELS = 12  # more levels than this: a search (Optuna), not a grid; no per-level effects
CSV_COLUMNS = ["factor", "level", "n_jobs", "n_failed", *[f"mean_{m}" for m in METRICS], "vs",
               "n_pairs", "n_seeds", "n_better", "n_worse",
               *[f"diff_{m}{s}" for m in METRICS for s in ("", "_low", "_high")]]


def completed(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "completed"]


def swept(df: pd.DataFrame, columns: list[str]) -> list[str]:
    """The configuration columns that take more than one value."""
    return [c for c in columns if df[c].astype(str).nunique() > 1]


def levels(df: pd.DataFrame, factor: str) -> list[str]:
    """In the order of the sweep's jobs: the command line's order."""
    return list(pd.unique(df[factor]))


# --- per configuration, over seeds -----------------------------------------------------------

def by_config(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Completed jobs grouped by configuration (every column but the seed): the count, the seeds,
    and mean and sample standard deviation (NaN with one seed) of each metric. Sorted by mean
    test accuracy, for reading: `pick` never looks at this order."""
    done = completed(df)
    if done.empty:
        return pd.DataFrame(columns=[*columns, "n", "seeds"])
    groups = done.groupby(list(columns), sort=False, dropna=False)
    out = groups.agg(n=("job", "size"), seeds=(SEED, lambda s: " ".join(sorted(s, key=seed_order))),
                     **{f"{m}_{f}": (m, f) for m in AGGREGATED if m in done for f in ("mean", "std")})
    return out.reset_index().sort_values("test_acc_mean", ascending=False, kind="stable",
                                         na_position="last", ignore_index=True)


def seed_order(seed: str) -> tuple:
    return (len(seed), seed)  # "2" before "10"


def sweep_order(df: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Each job's configuration as a number in the sweep's order: 0 for the configuration of the
    first job (failed ones included), 1 for the next new one, and so on."""
    return df.groupby(list(columns), sort=False, dropna=False).ngroup()


def candidates(df: pd.DataFrame) -> pd.DataFrame:
    """The jobs a configuration is chosen on: completed, with a validation accuracy."""
    return completed(df).dropna(subset=["best_val_acc"]) if "best_val_acc" in df else df[:0]


def common_seeds(jobs: pd.DataFrame, config_id: pd.Series) -> set[str]:
    """The seeds that every configuration (`config_id`: each job's) has a job of."""
    return set.intersection(*(set(seeds) for _, seeds in jobs.groupby(config_id)[SEED]))


def config_row(configs: pd.DataFrame, config: dict) -> pd.Series:
    """The row of `by_config`'s table for one configuration."""
    return configs[(configs[list(config)] == pd.Series(config)).all(axis=1)].iloc[0]


def pick(df: pd.DataFrame, configs: pd.DataFrame, columns: list[str]) -> dict | None:
    """The configuration with the best mean validation accuracy, never chosen on test.

    A mean over seeds {0, 1, 2} against one over {0, 1} (a failed seed) is not like for like,
    so the candidates are compared over the seeds every one of them completed (over all seeds
    when there is no such seed). A tie goes to the first in the sweep's order: any order that
    involved test accuracy would let it choose. Returns `config`; its `row` of `configs` (its
    means over all its completed jobs, the numbers reported); how many other configurations
    `ties` with it; the `seeds` compared over (empty: none is common, all were used); and how
    many candidate jobs, of other seeds, were `left_out` of the choice."""
    scored = candidates(df)
    if scored.empty:
        return None
    config_id = sweep_order(df, columns)[scored.index]
    seeds = common_seeds(scored, config_id)
    compared = scored[scored[SEED].isin(seeds)] if seeds else scored
    means = compared.groupby(config_id[compared.index])["best_val_acc"].mean()  # in sweep order
    best = means.idxmax()  # the first of equal means
    config = scored.loc[config_id == best, list(columns)].iloc[0].to_dict()
    return {"config": config, "row": config_row(configs, config),
            "ties": int((means == means[best]).sum()) - 1,
            "seeds": sorted(seeds, key=seed_order), "left_out": len(scored) - len(compared)}


# --- paired differences ----------------------------------------------------------------------

@dataclass
class Comparison:
    """`level` minus `vs` over the pairs, in points."""

    factor: str
    level: str
    vs: str
    metric: str
    n_pairs: int
    n_seeds: int
    n_better: int  # pairs where `level` scored higher
    n_worse: int
    mean: float | None
    low: float | None  # the 95% interval, only with two or more seeds (and pairs)
    high: float | None


def interval(diffs: pd.Series, n_seeds: int) -> tuple[float | None, float | None]:
    """The t-interval of the mean; none with one seed or one pair."""
    n = len(diffs)
    if n_seeds < 2 or n < 2:
        return None, None
    if diffs.std(ddof=1) == 0:  # scipy gives (nan, nan) for a zero spread; the mean is exact
        return float(diffs.mean()), float(diffs.mean())
    low, high = stats.t.interval(CONFIDENCE, n - 1, loc=diffs.mean(), scale=stats.sem(diffs))
    return float(low), float(high)


def compare(diffs: pd.Series, factor: str, level: str, vs: str, metric: str) -> Comparison:
    """`diffs` is indexed by (the other factors..., seed)."""
    n_seeds = diffs.index.get_level_values(SEED).nunique() if len(diffs) else 0
    low, high = interval(diffs, n_seeds)
    return Comparison(factor, level, vs, metric, len(diffs), n_seeds, int((diffs > 0).sum()),
                      int((diffs < 0).sum()), float(diffs.mean()) if len(diffs) else None, low, high)


def cells(df: pd.DataFrame, factors: list[str]) -> pd.DataFrame:
    """Each metric per (factors..., seed) over completed jobs; a repeated job is averaged."""
    metrics = [m for m in METRICS if m in df]
    return completed(df).groupby([*factors, SEED])[metrics].mean() * 100


def paired(table: pd.DataFrame, factor: str, level: str, vs: str, metric: str) -> pd.Series:
    wide = table[metric].unstack(factor)
    if level not in wide.columns or vs not in wide.columns:
        return pd.Series(dtype=float, index=wide.index[:0])
    return (wide[level] - wide[vs]).dropna()


def paired_differences(df: pd.DataFrame, factor: str, factors: list[str] | None = None,
                       table: pd.DataFrame | None = None) -> list[Comparison]:
    """Every pair of levels of `factor` (in sweep order), on every metric. `factors` must match
    within a pair (default: every swept configuration column); `table`: their cells, if known."""
    if table is None:
        table = cells(df, factors or swept(df, df.attrs["config_columns"]))
    return [compare(paired(table, factor, a, b, m), factor, a, b, m)
            for a, b in itertools.combinations(levels(df, factor), 2) for m in table.columns]


@dataclass
class Interaction:
    """How much `factor`'s effect (a1 - a2) changes between the two levels of `other`."""

    factor: str
    other: str
    a: tuple[str, str]
    b: tuple[str, str]
    at_b1: float
    at_b2: float
    diff: Comparison  # (a1 - a2 at b1) - (a1 - a2 at b2), over the complete quartets


def interaction(table: pd.DataFrame, df: pd.DataFrame, factor: str, other: str) -> Interaction:
    (a1, a2), (b1, b2) = levels(df, factor), levels(df, other)
    wide = table["test_acc"].unstack([factor, other])
    quartet = [(a1, b1), (a2, b1), (a1, b2), (a2, b2)]
    if any(q not in wide.columns for q in quartet):
        wide = pd.DataFrame(columns=pd.MultiIndex.from_tuples(quartet), index=wide.index[:0],
                            dtype=float)
    complete = wide[quartet].dropna()  # the other choices and seeds with all four jobs
    at_b1 = complete[(a1, b1)] - complete[(a2, b1)]
    at_b2 = complete[(a1, b2)] - complete[(a2, b2)]
    return Interaction(factor, other, (a1, a2), (b1, b2), at_b1.mean(), at_b2.mean(),
                       compare(at_b1 - at_b2, f"{factor} x {other}", a1, a2, "test_acc"))


# --- the whole analysis ----------------------------------------------------------------------

@dataclass
class Effects:
    factors: list[str] = field(default_factory=list)  # swept, with few enough levels
    searched: list[str] = field(default_factory=list)  # swept, with too many levels
    levels: pd.DataFrame = field(default_factory=pd.DataFrame)  # per (factor, level)
    comparisons: list[Comparison] = field(default_factory=list)
    interactions: list[Interaction] = field(default_factory=list)
    sentences: list[str] = field(default_factory=list)
    balanced: bool = True
    csv: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CSV_COLUMNS))


def level_means(df: pd.DataFrame, factor: str) -> pd.DataFrame:
    done = completed(df)
    out = pd.DataFrame({"factor": factor, "level": levels(df, factor)}).set_index("level", drop=False)
    out["n_jobs"] = done.groupby(factor).size()
    out["n_failed"] = df[df["status"] == "failed"].groupby(factor).size()
    out[["n_jobs", "n_failed"]] = out[["n_jobs", "n_failed"]].fillna(0).astype(int)
    for metric in METRICS:
        out[f"mean_{metric}"] = done.groupby(factor)[metric].mean() * 100 if metric in done else None
    return out.reset_index(drop=True)


def is_balanced(df: pd.DataFrame, factors: list[str]) -> bool:
    """Every combination of the factors' levels has the same number of completed jobs."""
    counts = completed(df).groupby(factors).size()
    return len(counts) == math.prod(len(levels(df, f)) for f in factors) and counts.nunique() <= 1


def estimate(df: pd.DataFrame, columns: list[str], searched: list[str] = ()) -> Effects:
    """`searched`: columns a search sampled (Optuna's parameters), never factors."""
    all_swept = swept(df, columns)
    factors = [f for f in all_swept if len(levels(df, f)) <= MAX_LEVELS and f not in searched]
    result = Effects(factors, [f for f in all_swept if f not in factors])
    if not factors or completed(df).empty:
        return result
    table = cells(df, all_swept)
    result.levels = pd.concat([level_means(df, f) for f in factors], ignore_index=True)
    result.comparisons = [c for f in factors for c in paired_differences(df, f, table=table)]
    two_level = [f for f in factors if len(levels(df, f)) == 2]
    result.interactions = [interaction(table, df, a, b) for a, b in itertools.combinations(two_level, 2)]
    result.sentences = [sentence(f, [c for c in result.comparisons if c.factor == f
                                     and c.metric == "test_acc"], result.interactions) for f in factors]
    result.balanced = is_balanced(df, factors)
    result.csv = effects_csv(result.levels, result.comparisons)
    return result


def effects_csv(level_table: pd.DataFrame, comparisons: list[Comparison]) -> pd.DataFrame:
    """One row per (factor, level): its means, and its paired difference against `vs`, the
    factor's first level in the sweep (empty on that level's own row)."""
    rows = []
    for row in level_table.to_dict("records"):
        first = level_table.loc[level_table["factor"] == row["factor"], "level"].iloc[0]
        out = {**row, "vs": "" if row["level"] == first else first}
        for metric in METRICS:
            c = next((c for c in comparisons if (c.factor, c.level, c.vs, c.metric)
                      == (row["factor"], first, row["level"], metric)), None)
            if c is not None:  # stored as first - level: flip it to level - first
                if metric == "test_acc":
                    out.update(n_pairs=c.n_pairs, n_seeds=c.n_seeds, n_better=c.n_worse,
                               n_worse=c.n_better)
                out.update({f"diff_{metric}": neg(c.mean), f"diff_{metric}_low": neg(c.high),
                            f"diff_{metric}_high": neg(c.low)})
        rows.append(out)
    out = pd.DataFrame(rows).reindex(columns=CSV_COLUMNS)
    counts = ["n_pairs", "n_seeds", "n_better", "n_worse"]
    out[counts] = out[counts].astype("Int64")  # empty on the first level's row, not 3.0
    return out.round(4)


def neg(x: float | None) -> float | None:
    return None if x is None else -x


# --- in words --------------------------------------------------------------------------------

def clause(c: Comparison) -> str:
    """One comparison in words, claiming no more than the numbers show."""
    if c.n_pairs == 0:
        return (f"no two completed jobs differ only in {c.factor} between {c.level} and {c.vs}, "
                "so this difference is not separated from the other factors")
    win, lose, mean, low, high, wins = c.level, c.vs, c.mean, c.low, c.high, c.n_better
    if mean < 0:
        win, lose, mean, wins = c.vs, c.level, -mean, c.n_worse
        low, high = neg(c.high), neg(c.low)
    if mean == 0:
        return f"{c.level} and {c.vs} tie on average over {c.n_pairs} pairs"
    ties = c.n_pairs - c.n_better - c.n_worse
    pairs = f"{wins} of {c.n_pairs} pair{'s' if c.n_pairs > 1 else ''}" + (f", {ties} tied" if ties else "")
    if low is None:
        why = "one seed" if c.n_seeds < 2 else "one pair"
        return (f"{win} scored {mean:.1f} points above {lose} on average, {pairs}; {why}, so no "
                "interval: the difference may be seed noise")
    if low > 0:
        return f"{win} beats {lose} by {mean:.1f} points on average, {pairs}, 95% interval [{low:.1f}, {high:.1f}]"
    return (f"no clear difference between {win} and {lose}: {win} is {mean:.1f} points ahead on "
            f"average ({pairs}), but the 95% interval [{low:.1f}, {high:.1f}] includes 0")


def depends(factor: str, interactions: list[Interaction], effect: float) -> str:
    """The interactions of `factor` that its average `effect` hides: clear (95% interval excluding
    0) and at least as large as the effect, so it is at least three times as large at one of the
    other factor's levels as at the other, or reverses."""
    text = ""
    for i in interactions:
        d = i.diff
        if factor not in (i.factor, i.other) or d.low is None or d.low <= 0 <= d.high:
            continue
        size, low, high = (d.mean, d.low, d.high) if d.mean > 0 else (-d.mean, -d.high, -d.low)
        if size < abs(effect):
            continue
        other = i.other if i.factor == factor else i.factor
        text += (f"; but it depends on {other}: the difference changes by {size:.1f} points between "
                 f"{other}'s levels (95% interval [{low:.1f}, {high:.1f}]; see Interactions)")
    return text


def sentence(factor: str, comparisons: list[Comparison], interactions: list[Interaction] = ()) -> str:
    if all(c.n_pairs == 0 for c in comparisons):
        return (f"{factor}: no two completed jobs differ only in {factor}, so its effect is not "
                "separated from the other factors'.")
    caveat = depends(factor, list(interactions), comparisons[0].mean) if len(comparisons) == 1 else ""
    return f"{factor}: " + "; ".join(clause(c) for c in comparisons) + caveat + "."
