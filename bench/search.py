"""What a search's pruner and its workers buy, smoke-sized on a CPU (docs/search.md#measured).

1. Pruning: a 16-trial search with hydra/sweeper/pruner=asha against none, the same sampler seed:
   the epochs trained, the wall time, the best validation accuracy found.
2. Workers: two workers against one on a study whose trials differ in length (trainer.epochs in
   the search space), on PostgreSQL: the wall time, and the share of each worker's time in which
   it ran no trial (its start-up, and waiting at the end).

    python bench/search.py [OUT_DIR [pruning|workers]]   (default: bench-search/, both;
                       PostgreSQL from tests/support/postgres.sh, or the server at $SEARCH_BENCH_DB)

Each job computes on one thread (OMP_NUM_THREADS=1), so two workers use two cores. Run it on a
quiet machine: it prints `uptime` before and after, to tell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["hparams_search=optuna", "experiment=smoke", "logger=none", "trainer.progress=false"]


def train(*args: str, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    log = open(out.with_suffix(".log"), "w")
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def summaries(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]


def pruning(out: Path, trials: int = 16, epochs: int = 6) -> None:
    print(f"\n1. {trials} trials of {epochs} epochs, TPE seed 1234, pruner none vs asha")
    print("| pruner | trials completed / pruned | epochs trained | wall | best val acc |")
    print("| --- | --- | --- | --- | --- |")
    for pruner in ("none", "asha"):
        sweep = out / f"pruner-{pruner}"
        started = time.monotonic()
        code = train(*SMOKE, f"hydra/sweeper/pruner={pruner}", f"trainer.epochs={epochs}",
                     f"hydra.sweeper.n_trials={trials}", f"hydra.sweep.dir={sweep}", out=sweep).wait()
        wall = time.monotonic() - started
        jobs = summaries(sweep)
        assert code == 0 and len(jobs) == trials, f"{pruner}: exit {code}, {len(jobs)} jobs ({sweep}.log)"
        done = sum(j["status"] == "completed" for j in jobs)
        print(f"| {pruner} | {done} / {len(jobs) - done} | {sum(j['epochs_completed'] for j in jobs)} "
              f"| {wall:.0f} s | {100 * max(j['best_val_acc'] for j in jobs):.1f}% |", flush=True)


def database() -> str:
    server = os.environ.get("SEARCH_BENCH_DB") or subprocess.run(
        ["bash", str(ROOT / "tests" / "support" / "postgres.sh"), "start"], capture_output=True, text=True,
        check=True).stdout.strip().splitlines()[-1]
    import psycopg2

    name = f"bench_{uuid.uuid4().hex[:8]}"
    connection = psycopg2.connect(server)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + f"/{name}"


def workers(out: Path, trials: int = 12) -> None:
    print(f"\n2. {trials} trials of trainer.epochs=choice(1,2,4), one worker against two (PostgreSQL)")
    print("| workers | wall | trials per worker | each worker's time idle: start-up + waiting |")
    print("| --- | --- | --- | --- |")
    for n in (1, 2):
        url, sweep = database(), out / f"workers-{n}"
        command = [*SMOKE, "trainer.epochs=choice(1,2,4)", "hydra.sweeper.sampler.seed=1234",
                   f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.storage={url}",
                   "hydra.sweeper.study_name=bench", f"hydra.sweep.dir={sweep}"]
        started = time.time()  # (the clock Optuna's trial times are on)
        processes = [train(*command, out=sweep.with_name(f"{sweep.name}-worker{i}")) for i in range(n)]
        lived = {}  # each worker's time, from the start to its exit
        for p in processes:
            assert p.wait() == 0, f"a worker failed ({sweep}-worker*.log)"
            lived[p.pid] = time.time() - started
        # the time each worker held a trial (asked .. told), by the worker each trial records;
        # its start-up: until it asked for its first trial (Python, torch, Hydra, Optuna)
        busy, first, trials_of = ({pid: v for pid in lived} for v in (0.0, float("inf"), 0))
        for t in optuna.load_study(study_name="bench", storage=url).trials:
            pid = int(t.system_attrs["worker"].rsplit(":", 1)[1])
            busy[pid] += (t.datetime_complete - t.datetime_start).total_seconds()
            first[pid] = min(first[pid], t.datetime_start.timestamp() - started)
            trials_of[pid] += 1
        idle = ", ".join(f"{100 * (1 - busy[p] / lived[p]):.0f}% ({100 * first[p] / lived[p]:.0f}% + "
                         f"{100 * (1 - (busy[p] + first[p]) / lived[p]):.0f}%)" for p in lived)
        print(f"| {n} | {max(lived.values()):.0f} s | {list(trials_of.values())} | {idle} |", flush=True)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-search").resolve() / time.strftime("run-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; uptime: {os.popen('uptime').read().strip()}")
    parts = sys.argv[2:] or ["pruning", "workers"]
    if "pruning" in parts:
        pruning(out)
    if "workers" in parts:
        workers(out)
    print(f"\nuptime: {os.popen('uptime').read().strip()}\n(runs in {out})")


if __name__ == "__main__":
    main()
