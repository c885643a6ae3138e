# Sourced (from the repo root) by bench/gpu.sh and bench/gpu_accuracy.sh: sets PY and PYTHONPATH
# so that `$PY train.py` runs. On a machine without hydra-core (a bare GPU image with torch,
# torchvision, timm and tensorboard, and no network) it first installs the wheels in .whl/,
# made by `bash bench/prepare_wheels.sh` on a machine that reaches the package index.
PY=${PYTHON:-python3}
if ! $PY -c "import hydra, omegaconf" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "hydra-core is not installed and .whl/ has no wheels: run 'bash bench/prepare_wheels.sh'" \
      "where pip reaches the package index, and bring .whl/ along with the repo" >&2
    exit 1
  fi
  # --target: no virtualenv and no root needed; --no-deps: torch & co. are already there
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
