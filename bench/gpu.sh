#!/usr/bin/env bash
# GPU speed check, < 8 minutes on an H100/H200-class GPU, no network needed:
#   1. experiments.bench on the GPU (augmentation, load, framework step overhead);
#   2. epoch time of preact and resnet18 at batch 512, precision=auto, on both data paths;
#   3. where several GPUs are visible, the preact job on all of them (trainer.devices=N, DDP);
#   4. a 4-epoch 8-job grid (model x optim x aug), timed end to end;
#   5. the speed presets, experiment=speedrun and experiment=airbench, at full size: train_time_s
#      (training passes, as the speed runs publish theirs) and where the rest of the wall went;
#   6. the smoke-size 8-job grid with 1, 2 and 4 jobs at once on the GPU (joblib n_jobs): jobs
#      per hour, what a sweep's user waits for (small CIFAR jobs leave a large GPU mostly idle).
# Synthetic data of the real shapes (50k train / 10k test) and logger=tensorboard only: times,
# not accuracies (bench/gpu_accuracy.sh DATA_ROOT speedrun measures those, on the real data).
#
#   bash bench/gpu.sh [OUT_DIR]        (default: bench-gpu/)
#   SMOKE=1 bash bench/gpu.sh /tmp/x   (tiny sizes on the CPU: checks the script itself)
#
# Every run measures afresh, in a new folder OUT_DIR/run-<time>/ (with trainer.resume=false):
# a re-run never returns an earlier run's stored results. On a machine without hydra-core, the
# wheels in .whl/ are installed first (bench/_env.sh; make them with bench/prepare_wheels.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/_env.sh
OUT=${1:-bench-gpu}/run-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"

if [ "${SMOKE:-0}" = 1 ]; then
  SIZE="data.train_size=600 data.test_size=200 data.val_size=100 model.width=8"
  BENCH="--quick --device cpu"; EPOCHS=2; GRID_EPOCHS=1; BATCH=64
  PRESET_SIZE="data.train_size=2048 data.test_size=256 model.width=8 trainer.epochs=2 trainer.compile=false"
  PARALLEL="1 2"
else
  SIZE="data.train_size=50000 data.test_size=10000 data.val_size=5000"
  BENCH="--device cuda"; EPOCHS=4; GRID_EPOCHS=4; BATCH=512
  PRESET_SIZE="data.train_size=50000 data.test_size=10000"
  PARALLEL="1 2 4"
fi
COMMON="data=synthetic $SIZE logger=tensorboard trainer.progress=false trainer.resume=false"
COMMON="$COMMON trainer.batch_size=$BATCH"
now() { $PY -c "import time; print(time.time())"; }

$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
echo "results in $OUT"
$PY -m experiments.bench $BENCH --out "$OUT/bench.json"

$PY train.py -m model=preact,resnet18 loader=device,dataloader $COMMON trainer.epochs=$EPOCHS \
  "hydra.sweep.dir=$OUT/epochs" > "$OUT/epochs.log" 2>&1 || { tail -30 "$OUT/epochs.log"; exit 1; }

# DDP: the same preact job on every visible GPU (trainer.devices=N), where there are several
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -gt 1 ]; then
  $PY train.py -m model=preact $COMMON trainer.epochs=$EPOCHS trainer.devices=$GPUS \
    "hydra.sweep.dir=$OUT/ddp" > "$OUT/ddp.log" 2>&1 || { tail -30 "$OUT/ddp.log"; exit 1; }
else
  echo "trainer.devices row: not run ($GPUS GPU visible; DDP needs 2 or more)"
fi

start=$(now)
$PY train.py -m model=resnet18,preact optim=sgd,adamw aug=basic,advanced $COMMON \
  trainer.epochs=$GRID_EPOCHS "hydra.sweep.dir=$OUT/grid" > "$OUT/grid.log" 2>&1 \
  || { tail -30 "$OUT/grid.log"; exit 1; }
end=$(now)

# the speed presets on data of their real shapes (the recipe's own sizes and settings otherwise)
PRESETS="data=synthetic $PRESET_SIZE logger=tensorboard trainer.progress=false trainer.resume=false"
$PY train.py experiment=speedrun data.num_classes=100 $PRESETS "hydra.run.dir=$OUT/presets/speedrun" \
  > "$OUT/speedrun.log" 2>&1 || { tail -30 "$OUT/speedrun.log"; exit 1; }
$PY train.py experiment=airbench $PRESETS "hydra.run.dir=$OUT/presets/airbench" \
  > "$OUT/airbench.log" 2>&1 || { tail -30 "$OUT/airbench.log"; exit 1; }

# several smoke-size jobs at once on one GPU: the 8-job grid under joblib, n_jobs 1, 2, 4
for n in $PARALLEL; do
  t0=$(now)
  $PY train.py -m model=resnet18,preact optim=sgd,adamw aug=basic,advanced size=smoke \
    logger=tensorboard trainer.progress=false trainer.resume=false hydra/launcher=joblib \
    hydra.launcher.n_jobs=$n "hydra.sweep.dir=$OUT/parallel-$n" > "$OUT/parallel-$n.log" 2>&1 \
    || { tail -30 "$OUT/parallel-$n.log"; exit 1; }
  echo "$n $t0 $(now)" >> "$OUT/parallel.txt"
done

$PY - "$OUT" "$start" "$end" <<'PYEOF'
import csv, json, statistics, sys
from pathlib import Path
from experiments.training.metrics import EPOCH_S
out, grid_s = Path(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2])

def epoch_times(job):
    rows = list(csv.DictReader(open(job / "metrics.csv")))
    times = [float(r[EPOCH_S]) for r in rows]
    return times, statistics.median(times[1:] or times)  # epoch 1 pays for warm-up

print("\n| job | precision | epoch 1 (s) | later epochs, median (s) | img/s | best val acc |")
print("| --- | --- | --- | --- | --- | --- |")
for sweep in ("epochs", "ddp", "grid"):
    for job in sorted((out / sweep).iterdir() if (out / sweep).exists() else [], key=lambda p: p.name):
        if (job / "summary.json").exists():
            s = json.loads((job / "summary.json").read_text())
            times, steady = epoch_times(job)
            loader = s["choices"].get("loader", "") + (f" x{s['world_size']} ranks"
                                                          if s.get("world_size", 1) > 1 else "")
            print(f"| {sweep}/{job.name} {loader} | {s['precision']} | {times[0]:.2f} | "
                  f"{steady:.2f} | {s['images_per_s']:,.0f} | {s['best_val_acc']:.3f} |")
print(f"\n8-job grid wall time: {grid_s:.1f} s")

published = {"speedrun": "25.8 s on an A100 (70.76%, CIFAR-100)", "airbench": "3.83 s on an A100 (94.01% with TTA, CIFAR-10)"}
print("\n| preset | train_time_s | wall (s) | startup | warmup (compile) | test | checkpoint | logging | rest | published |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for name in ("speedrun", "airbench"):
    s = json.loads((out / "presets" / name / "summary.json").read_text())
    t = s["time_s"]
    print(f"| {name} | {s['train_time_s']:.2f} | {t['wall']:.1f} | {t['startup']:.1f} | {t['warmup']:.1f} | "
          f"{t['test']:.2f} | {t['checkpoint']:.2f} | {t['logging']:.2f} | {t['rest']:.2f} | {published[name]} |")

print("\n| jobs at once (joblib n_jobs) | 8-job smoke grid wall (s) | jobs per hour |")
print("| --- | --- | --- |")
for line in (out / "parallel.txt").read_text().split("\n"):
    if line:
        n, t0, t1 = line.split()
        wall = float(t1) - float(t0)
        print(f"| {n} | {wall:.1f} | {8 * 3600 / wall:,.0f} |")
PYEOF
