#!/usr/bin/env bash
# GPU speed check, < 8 minutes on an H100/H200-class GPU, no network needed:
#   1. experiments.bench on the GPU (augmentation, load, framework step overhead);
#   2. epoch time of preact and resnet18 at batch 512, precision=auto, on both data paths;
#   3. where several GPUs are visible, the preact job on all of them (trainer.devices=N, DDP);
#   4. a 4-epoch 8-job grid (model x optim x aug), timed end to end.
# Synthetic CIFAR-100-sized data (50k train / 10k test) and logger=tensorboard only.
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
else
  SIZE="data.train_size=50000 data.test_size=10000 data.val_size=5000"
  BENCH="--device cuda"; EPOCHS=4; GRID_EPOCHS=4; BATCH=512
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
PYEOF
