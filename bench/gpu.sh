#!/usr/bin/env bash
# GPU speed check, < 8 minutes on an H100/H200-class GPU, no network needed:
#   1. experiments.bench on the GPU (augmentation, load, framework step overhead);
#   2. epoch time of preact and resnet18 at batch 512, bf16, on both data paths;
#   3. a 4-epoch 8-job grid (model x optim x aug), timed end to end.
# Synthetic CIFAR-100-sized data (50k train / 10k test) and logger=tensorboard only.
#
#   bash bench/gpu.sh [OUT_DIR]        (default: bench-gpu/)
#   SMOKE=1 bash bench/gpu.sh /tmp/x   (tiny sizes on the CPU: checks the script itself)
#
# hydra-core, omegaconf and antlr4-python3-runtime must be importable; on a machine without
# them, put their wheels in .whl/ and this script installs them into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ! $PY -c "import hydra, omegaconf" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "hydra-core is not installed and .whl/ has no wheels"; exit 1; }
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1

if [ "${SMOKE:-0}" = 1 ]; then
  SIZE="data.train_size=600 data.test_size=200 data.val_size=100 model.width=8"
  BENCH="--quick --device cpu"; EPOCHS=2; GRID_EPOCHS=1; BATCH=64
else
  SIZE="data.train_size=50000 data.test_size=10000 data.val_size=5000"
  BENCH="--device cuda"; EPOCHS=4; GRID_EPOCHS=4; BATCH=512
fi
COMMON="data=synthetic $SIZE logger=tensorboard trainer.progress=false trainer.batch_size=$BATCH"

$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
$PY -m experiments.bench $BENCH --out "$OUT/bench.json"

$PY train.py -m model=preact,resnet18 loader=device,dataloader $COMMON trainer.epochs=$EPOCHS \
  "hydra.sweep.dir=$OUT/epochs" > "$OUT/epochs.log" 2>&1 || { tail -30 "$OUT/epochs.log"; exit 1; }

start=$(date +%s.%N)
$PY train.py -m model=resnet18,preact optim=sgd,adamw aug=basic,advanced $COMMON \
  trainer.epochs=$GRID_EPOCHS "hydra.sweep.dir=$OUT/grid" > "$OUT/grid.log" 2>&1 \
  || { tail -30 "$OUT/grid.log"; exit 1; }
grid_s=$(echo "$(date +%s.%N) - $start" | bc)

$PY - "$OUT" "$grid_s" <<'PYEOF'
import csv, json, statistics, sys
from pathlib import Path
out, grid_s = Path(sys.argv[1]), float(sys.argv[2])

def epoch_times(job):
    rows = list(csv.DictReader(open(job / "metrics.csv")))
    times = [float(r["time/epoch_s"]) for r in rows]
    return times, statistics.median(times[1:] or times)  # epoch 1 pays for warm-up

print("\n| job | epoch 1 (s) | later epochs, median (s) | img/s | best val acc |")
print("| --- | --- | --- | --- | --- |")
for sweep in ("epochs", "grid"):
    for job in sorted((out / sweep).iterdir(), key=lambda p: p.name):
        if (job / "summary.json").exists():
            s = json.loads((job / "summary.json").read_text())
            times, steady = epoch_times(job)
            loader = s["choices"].get("loader", "")
            print(f"| {sweep}/{job.name} {loader} | {times[0]:.2f} | {steady:.2f} | "
                  f"{s['images_per_s']:,.0f} | {s['best_val_acc']:.3f} |")
print(f"\n8-job grid wall time: {grid_s:.1f} s")
PYEOF
