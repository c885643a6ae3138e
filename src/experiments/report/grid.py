"""The sweep's grid: test accuracy per combination of the swept factors' levels, laid out as one
table (rows: the leading factors, columns: the others), which summary.md writes
(experiments.report.markdown) and plots/grid.png draws (experiments.report.plots).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from experiments.report.analysis import SweepAnalysis
from experiments.report.effects import completed, levels

JOINER = " / "  # between the levels of several factors in one row's (or column's) label


@dataclass
class Grid:
    """Test accuracy (fractions, as summary.json) per cell: `mean`, `std` (NaN with one job) and
    `count` (completed jobs) are arrays of len(row_keys) x len(column_keys); a cell nobody
    completed has count 0 and a NaN mean."""

    rows: list[str]  # the factors of the rows
    columns: list[str]  # the factors of the columns (none: one column)
    row_keys: list[tuple]  # each row's levels, in the sweep's order
    column_keys: list[tuple]
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    balanced: bool

    @property
    def row_labels(self) -> list[str]:
        return [JOINER.join(map(str, key)) for key in self.row_keys]

    @property
    def column_labels(self) -> list[str]:
        return [JOINER.join(map(str, key)) for key in self.column_keys] if self.columns else ["test accuracy (%)"]

    @property
    def several_seeds(self) -> bool:
        return bool((self.count > 1).any())


def split(sizes: list[int]) -> int:
    """How many of the factors (of these numbers of levels) go to the rows: the leading ones,
    leaving the columns no more than the rows and the table as square as that allows (one
    column factor when no split does: a table grows down better than across)."""
    if len(sizes) < 2:
        return len(sizes)
    fits = [k for k in range(1, len(sizes)) if math.prod(sizes[k:]) <= math.prod(sizes[:k])]
    if not fits:
        return len(sizes) - 1
    return min(fits, key=lambda k: (abs(math.log(math.prod(sizes[:k]) / math.prod(sizes[k:]))), -k))


def sweep_grid(result: SweepAnalysis) -> Grid | str | None:
    """The grid of `result`'s factors; None when there is none (no factor, or no completed job);
    a sentence saying why not when fewer than half of the combinations have a completed job
    (a random search: the job table says more)."""
    factors, df = result.analysis.factors, result.df
    done = completed(df)
    if not factors or done.empty:
        return None
    stats = done.groupby(factors)["test_acc"].agg(["mean", "std", "count"])
    sizes = [len(levels(df, f)) for f in factors]
    if len(stats) < math.prod(sizes) / 2:
        return (f"Not shown: only {len(stats)} of the {math.prod(sizes)} combinations of "
                f"{', '.join(factors)} have a completed job.")
    by_cell = {(key if isinstance(key, tuple) else (key,)): row
               for key, row in zip(stats.index, stats.to_dict("records"))}
    k = split(sizes)
    rows, columns = factors[:k], factors[k:]
    row_keys = list(itertools.product(*(levels(df, f) for f in rows)))
    column_keys = list(itertools.product(*(levels(df, f) for f in columns)))  # [()] without columns

    def table(stat: str, missing: float) -> np.ndarray:
        return np.array([[by_cell.get(r + c, {}).get(stat, missing) for c in column_keys] for r in row_keys],
                        dtype=float)

    count = np.nan_to_num(table("count", 0.0)).astype(int)
    return Grid(rows, columns, row_keys, column_keys, table("mean", np.nan), table("std", np.nan), count,
                result.analysis.balanced)


def corner(grid: Grid) -> str:
    """The table's top-left cell: `rows \\ columns`."""
    rows = JOINER.join(grid.rows)
    return f"{rows} \\ {JOINER.join(grid.columns)}" if grid.columns else rows


def frame(grid: Grid, cell) -> pd.DataFrame:
    """The grid as a table of strings, `cell(mean, std, count)` in each cell."""
    values = [[cell(m, s, n) for m, s, n in zip(*row)] for row in zip(grid.mean, grid.std, grid.count)]
    table = pd.DataFrame(values, columns=grid.column_labels)
    table.insert(0, corner(grid), grid.row_labels)
    return table
