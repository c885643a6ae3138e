"""Rebuild a sweep's tables and plots from its directory: finished, partial or still running.

    python -m experiments.summarize multirun/2026-11-29/10-00-00
    experiments-summarize multirun/2026-11-29/10-00-00 multirun/2026-11-30/09-00-00 --out both/

One directory: summary.md (the report), summary.csv, effects.csv (+ summary_by_config.csv with
repeated seeds) and plots/*.png are written into it. Several: one combined report, to --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.report.sweep_report import terminal_table, write_tables


def summarize(roots: list[Path], out_dir: Path, plots: bool = True) -> str:
    return terminal_table(write_tables(roots, out_dir, plots=plots))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep (or single-run) directories")
    parser.add_argument("--out", type=Path, help="where to write (default: the one sweep directory)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.sweeps if not p.is_dir()]
    if missing:
        parser.error(f"not a directory: {', '.join(missing)}")
    if len(args.sweeps) > 1 and args.out is None:
        parser.error("several sweeps give one combined table: say where with --out DIR")
    out_dir = args.out or args.sweeps[0]
    print(summarize(args.sweeps, out_dir, plots=not args.no_plots))
    print(f"written to {out_dir}/summary.md, summary.csv, effects.csv"
          + ("" if args.no_plots else ", plots/"))
    return 0
