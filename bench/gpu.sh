#!/usr/bin/env bash
# archc against PyTorch on one NVIDIA GPU (H100/H200): one JSON + one markdown table.
#
#   bash bench/gpu.sh --fetch-wheels        # HERE, once, with PyPI: the wheels the device lacks -> .whl/
#   bash bench/gpu.sh [--out DIR]           # ON THE DEVICE (default DIR: $OUT, else /tmp/archc_gpu_bench)
#   bash bench/gpu.sh --dry-run [--out DIR] # anywhere, CPU only: every piece assembles (~1-2 min)
#
# What it measures (bench/gpu_bench.py, built on bench/harness.py's train_runner, bench/peers.py's
# runners and bench/detection_train_step.py's measure): ResNet-50's training step (bf16 and fp32,
# batch 256) and inference (batch 256), EfficientNet-B0's training step and inference (bf16,
# batch 256) and SSD300-VGG16's detection training step (bf16, batch 32), each for archc (XLA,
# GPU autotuning on), PyTorch eager (channels_last, autocast bf16 in the bf16 rows) and
# torch.compile (Inductor). Output: DIR/gpu_bench.json and DIR/gpu_bench.md. It stops starting new
# measurements at --budget seconds' shares (default 450 s, whole run < 8 min); what it had to skip
# is listed as skipped.
#
# Where the CUDA jaxlib plugin and CUDA torch come from: NOT from this repository. The device
# machines reach no package index and the CUDA wheels (jax-cuda13-plugin/pjrt ~ 400 MiB, torch+cu130
# ~ 900 MiB) are far over the 64 MiB a device run may carry. The device's image ('cuda', see
# /work/.library/device/KINDS.md) already holds them in its python3 (/opt/torch/.venv):
# jax 0.11.2 + jax-cuda13-plugin/pjrt 0.11.2, torch 2.11.0+cu130, torchvision 0.26, flax, optax,
# orbax-checkpoint, onnx, onnxruntime, scipy, safetensors. archc itself runs from this tree
# (PYTHONPATH, no install); what the image lacks travels as pure-Python wheels in .whl/ (ignored by
# git; a device run names it in `carry`): lark (archc's parser), and flax at this project's tested
# version, installed only where the image's is older than archc's flax>=0.12. `--fetch-wheels`
# downloads them here (~1 MiB).
#
# A device run (the `device` tool's `run`), after `bash bench/gpu.sh --fetch-wheels` here:
#   run(command="bash bench/gpu.sh --out $OUT", carry=[".whl"], timeout_s=540)
# then copy $OUT/gpu_bench.md into BENCHMARKS.md with the card named.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-/tmp/archc_gpu_bench}
MODE=full
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) MODE=dry; ARGS+=(--dry-run) ;;
    --fetch-wheels) MODE=fetch ;;
    --out) OUT_DIR=$2; shift ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done

# pure-Python wheels the device's image lacks or may have too old (pinned to this project's tested versions)
WHEELS=(lark==1.3.1 flax==0.12.8)
if [ "$MODE" = fetch ]; then
  mkdir -p .whl
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
  ls -l .whl
  exit 0
fi

if [ "$MODE" = full ] && compgen -G ".whl/*.whl" >/dev/null; then
  # lark always; flax only where the image's is older than archc needs (>= 0.12): a newer one stays
  FLAX_OK=$("$PY" -c "from importlib.metadata import version as v; print(tuple(map(int, v('flax').split('.')[:2])) >= (0, 12))" 2>/dev/null || echo False)
  WANT=(.whl/lark-*.whl)
  [ "$FLAX_OK" = True ] || WANT+=(.whl/flax-*.whl)
  SITE=$(mktemp -d /tmp/archc_site.XXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${WANT[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "gpu.sh: installed from .whl: ${WANT[*]}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if [ "$MODE" = full ]; then
  # XLA's GPU autotuning (level 4: every candidate conv/GEMM algorithm timed at compile time, results checked)
  export XLA_FLAGS="--xla_gpu_autotune_level=4 ${XLA_FLAGS:-}"
  # preflight: say plainly what is missing before spending the lease
  if ! "$PY" - <<'PY'
import importlib, sys
missing = [m for m in ("jax", "flax", "optax", "lark", "torch", "torchvision", "archc") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu.sh: missing on this machine: {', '.join(missing)} (lark/flax: bash bench/gpu.sh --fetch-wheels "
             "here, then carry .whl; jax/torch with CUDA must be the image's own)")
import jax, torch
print("jax", jax.__version__, jax.devices(), "| torch", torch.__version__, "cuda", torch.cuda.is_available(), flush=True)
if jax.default_backend() != "gpu" or not torch.cuda.is_available():
    sys.exit("gpu.sh: JAX or PyTorch sees no GPU (need jax-cuda*-plugin and a CUDA torch in this python)")
PY
  then
    exit 2
  fi
fi
mkdir -p "$OUT_DIR"
exec "$PY" bench/gpu_bench.py --out "$OUT_DIR" "${ARGS[@]}"
