"""How many completed trials the report's parameter importances need: random searches of
conf/hparams_search/optuna.yaml's space (learning rate, weight decay, batch size) whose value only
the learning rate decides (tests/support/searches.py: `lr_decides`), each given to the report's
own importances (experiments.report.search: Optuna's fANOVA), counting how often the learning
rate comes out first (behind experiments.report.search.MIN_IMPORTANCE_TRIALS), and the CPU
time each search's importances take (the study rebuilt, the forest fit, fANOVA).

    python bench/search_importance.py                       # 3 to 30 trials, 30 searches each
    python bench/search_importance.py --trials 10 20 --searches 50 --noise 0.02
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from experiments.report.job_summary import COMPLETED  # noqa: E402
from experiments.report.search import Search, Trial, importances, search_space  # noqa: E402
from support.searches import SPACE, lr_decides, sample  # noqa: E402


def search_of(trials: int, seed: int, noise: float) -> Search:
    """`trials` completed random trials, as the report reads them from disk."""
    rng, space = random.Random(seed), search_space({"params": SPACE}, None)
    drawn = []
    for n in range(trials):
        params = sample(rng)
        drawn.append(Trial(n, f"{n}-trial", COMPLETED, params, lr_decides(params, rng, noise), 10, None, None))
    return Search("bench", "best_val_acc", "maximize", "RandomSampler", space, drawn)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[3, 5, 10, 15, 20, 30])
    parser.add_argument("--searches", type=int, default=30, help="random searches per number of trials")
    parser.add_argument("--noise", type=float, default=0.005,
                        help="std of the value's noise (the learning rate moves it by up to 0.15)")
    args = parser.parse_args()
    import optuna.importance  # noqa: F401  (imported before the clock starts)
    import sklearn.ensemble  # noqa: F401

    for trials in args.trials:
        start, first, shares = time.process_time(), 0, []
        for seed in range(args.searches):
            search = search_of(trials, seed, args.noise)
            found, _ = importances(search, min_trials=2)  # (Optuna's own minimum: the report's is higher)
            first += bool(found) and max(found, key=found.get) == "optim.lr"
            shares.append(found.get("optim.lr", 0.0))
        print(f"{trials:3d} trials: optim.lr first in {first:2d} of {args.searches} searches, its importance "
              f"median {statistics.median(shares):.2f} (min {min(shares):.2f}); "
              f"{(time.process_time() - start) / args.searches:.2f} s of CPU a search")
    return 0


if __name__ == "__main__":
    sys.exit(main())
