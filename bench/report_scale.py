"""The sweep report at scale: time and peak memory of `python -m experiments.summarize` on a
made-up sweep of 16 configurations x SEEDS seeds (job directories as train.py leaves them,
tests/support/sweeps.py), tables and plots.

    python bench/report_scale.py                 # 1,024 jobs (64 seeds), in a temporary directory
    python bench/report_scale.py --seeds 16      # 256 jobs
    python bench/report_scale.py --dir /tmp/big  # keep the sweep (made once, reused after)

It prints the report's wall time and its process's peak resident memory (what `/usr/bin/time -v`
calls "Maximum resident set size"); the same by hand:

    /usr/bin/time -v python -m experiments.summarize /tmp/big
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from support.sweeps import grid_sweep  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=64, help="seeds per configuration (16 configurations)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs in each job's metrics.csv")
    parser.add_argument("--dir", type=Path, help="the sweep directory (made when it has no jobs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep = args.dir or Path(tmp) / "sweep"
        if not sweep.is_dir() or not any(sweep.iterdir()):
            start = time.perf_counter()
            jobs = grid_sweep(sweep, args.seeds, epochs=args.epochs)
            print(f"made {len(jobs)} jobs in {sweep} ({time.perf_counter() - start:.1f} s)")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "experiments.summarize", str(sweep)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB on Linux
        pngs = sorted(p.name for p in (sweep / "plots").glob("*.png"))
        print(f"report of {sweep}: {seconds:.1f} s, peak resident memory {peak_mb:.0f} MB; plots: {' '.join(pngs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
