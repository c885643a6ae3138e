#!/usr/bin/env bash
# Train an accuracy preset on a GPU with CIFAR-100 data you provide, and print its test
# accuracies: final weights, best-validation weights (the reported one), and flip TTA.
#
#   bash bench/gpu_accuracy.sh DATA_ROOT [PRESET] [extra overrides...]
#   bash bench/gpu_accuracy.sh /data/cifar best                # experiment=best (400 epochs)
#   bash bench/gpu_accuracy.sh /data/cifar seed_report model=preact optim=sgd aug=basic
#   bash bench/gpu_accuracy.sh /data/cifar finetune model.pretrained_file=/weights/resnet50.pth
#   bash bench/gpu_accuracy.sh /data/pets finetune data=folder data.image_size=256 \
#       model.name=resnet50 model.pretrained_file=/weights/resnet50.pth    # Oxford-IIIT Pet in folders
#
# finetune reads the weights from model.pretrained_file, or else from the Hugging Face cache
# (HF_HOME; the GPU machine has no network: copy the cache or a weights file along).
# DATA_ROOT holds cifar-100-python.tar.gz (or its decoded cache); nothing is downloaded if it is
# there. The decoded cache and its lock go next to it, or, when DATA_ROOT is not writable (a
# read-only mount), to bench-accuracy/cache/ (or pass data.cache_dir=DIR). Results go to
# bench-accuracy/<preset>-<time>/ (summary.json, metrics.csv, tb/). On a machine without
# hydra-core, the wheels in .whl/ are installed first (bench/_env.sh, bench/prepare_wheels.sh).
set -euo pipefail
DATA_ROOT=${1:?usage: bash bench/gpu_accuracy.sh DATA_ROOT [PRESET] [overrides...]}
DATA_ROOT=$(cd "$DATA_ROOT" && pwd)  # absolute, before the cd below
PRESET=${2:-best}
shift $(( $# >= 2 ? 2 : 1 ))
cd "$(dirname "$0")/.."
source bench/_env.sh
OUT=bench-accuracy/$PRESET-$(date +%Y%m%d-%H%M%S)
CACHE=()
[ -w "$DATA_ROOT" ] || CACHE=("data.cache_dir=$PWD/bench-accuracy/cache")
$PY train.py experiment="$PRESET" data.root="$DATA_ROOT" ${CACHE[@]+"${CACHE[@]}"} logger=tensorboard \
  trainer.progress=false "hydra.run.dir=$OUT" "$@"
$PY - "$OUT/summary.json" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}%"
print(f"weights: {s.get('pretrained') or 'from scratch'}")
print(f"status {s['status']}, {s['epochs_completed']} epochs, {s['train_time_s']:.0f} s of training, "
      f"{s['precision']} on {s['device']}")
print(f"test accuracy, final weights:          {pct(s['test_acc_final'])}")
print(f"test accuracy, best-validation weights: {pct(s['test_acc'])}   (epoch {s['best_epoch']}, val {pct(s['best_val_acc'])})")
print(f"test accuracy, + flip TTA:             {pct(s['test_tta_acc'])}")
PYEOF
