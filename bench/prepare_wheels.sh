#!/usr/bin/env bash
# Fill .whl/ with the wheels a bare GPU machine lacks to run train.py, for bench/gpu.sh and
# bench/gpu_accuracy.sh to install there. Run it here, where pip reaches the package index; then
# bring .whl/ along with the repo (it is gitignored: copy it, or name it in the device tool's
# `carry`).
#
#   bash bench/prepare_wheels.sh                  # hydra-core, omegaconf, antlr4-python3-runtime
#   bash bench/prepare_wheels.sh wandb==0.19.1    # plus more (each with its own missing needs)
#
# The GPU image is assumed to have torch, torchvision, timm (which brings pyyaml, tqdm),
# tensorboard, numpy, pillow and matplotlib: train.py imports nothing else at module level
# (W&B only when logger.wandb is enabled; run there with logger=tensorboard). Binary wheels are
# for CPython $PY_VERSION (default 3.12) on manylinux x86_64.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PY_VERSION=${PY_VERSION:-3.12}
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done

# one version of each package, or the install there stops: start from an empty folder
mkdir -p .whl
rm -f .whl/*.whl
# the versions in pyproject.toml's ranges that the test suite runs with
$PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
  --implementation cp "${PLATFORMS[@]}" -d .whl hydra-core==1.3.8 omegaconf==2.3.1 "$@"
# omegaconf needs antlr4-python3-runtime 4.9.*, published only as a source package, which
# `pip download --only-binary` refuses: build its (pure-Python) wheel here instead
$PY -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -1 .whl
