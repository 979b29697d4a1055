#!/usr/bin/env bash
# Every GPU measurement the suite promises, in one run of under 8 minutes on one GPU:
#   1. evaluation engine vs the reference loop, deeplabv3_resnet101 (random weights), 512x512 (+ profile)
#   2. the same at VOC sizes (a synthetic tree of PASCAL VOC's common image sizes, or --voc ROOT)
#   3. training step: baseline / binding / segmix (benchmarks/train_speed.py)
#   4. per-image attack throughput vs the cospgd package's loop (benchmarks/attack_speed.py)
#   5. corruption throughput vs the reference package (benchmarks/corruption_speed.py, when present)
#   6. GPU busy fraction: nvidia-smi sampled every 0.5 s in the background, per step
# Writes OUT/gpu_check.json and OUT/gpu_check.md (benchmarks/gpu_summary.py), plus each benchmark's JSON
# and log. Every step has a time limit; a failed step is recorded and the next one runs.
#
#   bash benchmarks/gpu_check.sh                    # GPU, results in $OUT (or benchmarks/results/gpu-check)
#   bash benchmarks/gpu_check.sh --out DIR --voc /data/VOCdevkit/VOC2012
#   bash benchmarks/gpu_check.sh --device cpu --tiny   # every step with tiny sizes (< 2 min): the script's test
#
# Environment: uses .venv/bin/python when it imports torch, else python3 when it does (the package is
# put on PYTHONPATH: no install needed), else makes .venv-gpu (python3 -m venv, pip install torch
# torchvision numpy scipy pandas matplotlib rich pillow; needs a package index).
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
DEVICE=cuda
TINY=0
VOC=""
DEST="${OUT:-$ROOT/benchmarks/results/gpu-check}"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny|--dry-run) TINY=1; shift ;;
    --out) DEST="$2"; shift 2 ;;
    --voc) VOC="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$DEST" || { echo "gpu_check: cannot create $DEST" >&2; exit 2; }
DEST="$(cd "$DEST" && pwd)"
cd "$ROOT"
START=$(date +%s)

# --- environment ------------------------------------------------------------------------------------
has_torch() { "$1" -c "import torch, torchvision" >/dev/null 2>&1; }
PY=""
for cand in "$ROOT/.venv/bin/python" "$(command -v python3 || true)"; do
  if [ -n "$cand" ] && [ -x "$cand" ] && has_torch "$cand"; then PY="$cand"; break; fi
done
if [ -z "$PY" ]; then
  echo "gpu_check: no python with torch found; creating $ROOT/.venv-gpu" >&2
  python3 -m venv --system-site-packages "$ROOT/.venv-gpu" && PY="$ROOT/.venv-gpu/bin/python"
  "$PY" -m pip install -q torch torchvision numpy scipy pandas matplotlib rich pillow \
    || { echo "gpu_check: pip install failed (no package index reachable?): carry a venv or preinstall torch" >&2; exit 3; }
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# peers the benchmarks compare against (cospgd, imagecorruptions-imaug): a machine with no package
# index gets them as wheels carried in $ROOT/.whl (benchmarks/gpu_wheels.sh downloads them here)
if ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rbseg-site "$ROOT"/.whl/*.whl >&2 \
    && export PYTHONPATH="$PYTHONPATH:/tmp/rbseg-site" \
    || echo "gpu_check: could not install the carried wheels in $ROOT/.whl (peer comparisons may be skipped)" >&2
fi
MISSING=$("$PY" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("numpy", "scipy", "pandas", "matplotlib", "rich", "PIL") if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$MISSING" ]; then
  echo "gpu_check: installing missing modules: $MISSING" >&2
  "$PY" -m pip install -q $(echo "$MISSING" | sed 's/PIL/pillow/') >&2 \
    || { echo "gpu_check: cannot install $MISSING (no package index?)" >&2; exit 3; }
fi
"$PY" - > "$DEST/environment.json" <<EOF
import json, platform, torch, torchvision
d = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
     "interpreter": "$PY", "cuda_available": torch.cuda.is_available(), "device_arg": "$DEVICE", "tiny": bool($TINY)}
if torch.cuda.is_available():
    d["gpu"] = torch.cuda.get_device_name(0); d["cuda"] = torch.version.cuda
print(json.dumps(d, indent=1))
EOF
cat "$DEST/environment.json"
if [ "$DEVICE" != cpu ] && ! "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: --device $DEVICE but torch sees no GPU (use --device cpu --tiny to test the script)" >&2; exit 4
fi

# --- sizes -------------------------------------------------------------------------------------------
if [ "$TINY" = 1 ]; then
  EVAL_MODEL=deeplabv3_tiny; EVAL_512="--size 64x64 --images 4"; VOC_N=4; VOC_SCALE=0.2
  EVAL_OPTS="--perturbations 1 --repeats 1 --peak-seconds 0.2 --batch-size 2"
  TRAIN_OPTS="--arch deeplabv3_tiny --crop 48 --batch-size 2 --steps 1 --warmup 1 --repeats 1"
  ATTACK_OPTS="--model deeplabv3_tiny --size 32x32 --images 2 --steps 2 --repeats 1"
  CORR_OPTS="--images 2 --size 32x32"; LIMIT=100; BUDGET=${GPU_CHECK_BUDGET:-300}
else
  EVAL_MODEL=deeplabv3_resnet101; EVAL_512="--size 512x512 --images 48"; VOC_N=64; VOC_SCALE=1
  EVAL_OPTS="--perturbations 5 --repeats 2 --batch-size 16"
  TRAIN_OPTS="--arch deeplabv3_resnet101 --crop 321 --batch-size 8 --steps 20 --warmup 5 --repeats 1"
  ATTACK_OPTS="--model deeplabv3_resnet101 --size 512x512 --images 8 --steps 10 --repeats 2"
  CORR_OPTS="--images 16 --size 512x512"; LIMIT=150; BUDGET=${GPU_CHECK_BUDGET:-460}  # 7m40s
fi

# --- GPU busy sampler --------------------------------------------------------------------------------
SAMPLER=""
if [ "$DEVICE" != cpu ] && command -v nvidia-smi >/dev/null 2>&1; then
  ( while :; do
      echo "$(date +%s.%N) $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits | head -1 | tr -d ' ')"
      sleep 0.5
    done ) > "$DEST/gpu_util.log" 2>/dev/null &
  SAMPLER=$!
fi
cleanup() { [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null; }
trap cleanup EXIT
: > "$DEST/steps.tsv"

# step NAME SECONDS CMD... : run with a time limit, log, record start/end/rc
# the whole run stays within BUDGET seconds: a step gets at most what is left, none starts with < 15 s
step() {
  local name="$1" limit="$2"; shift 2
  local t0 t1 rc left
  left=$(( START + BUDGET - $(date +%s) ))
  if [ "$left" -lt 15 ]; then
    printf '%s	-	-	skipped
' "$name" >> "$DEST/steps.tsv"; echo "gpu_check: $name skipped (time budget)" >&2; return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*" >&2
  t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$DEST/$name.log" 2>&1; rc=$?
  t1=$(date +%s.%N)
  printf '%s\t%s\t%s\t%s\n' "$name" "$t0" "$t1" "$rc" >> "$DEST/steps.tsv"
  [ "$rc" = 0 ] || { echo "gpu_check: step $name failed (rc $rc), see $DEST/$name.log:" >&2; tail -3 "$DEST/$name.log" >&2; }
}

B="$ROOT/benchmarks"
step eval_512 "$LIMIT" "$PY" "$B/eval_speed.py" --model "$EVAL_MODEL" $EVAL_512 $EVAL_OPTS --device "$DEVICE" --profile \
  --json "$DEST/eval_512.json"

if [ -n "$VOC" ]; then
  VOC_ROOT="$VOC"; VOC_DESC="real VOC val ($VOC), first $VOC_N images"
else
  VOC_ROOT="$DEST/voc-sizes/VOC2012"
  "$PY" "$B/gpu_summary.py" voc-tree "$DEST/voc-sizes" --images "$VOC_N" --scale "$VOC_SCALE" >&2
  VOC_DESC="synthetic tree of PASCAL VOC's common image sizes"
fi
step eval_voc "$LIMIT" "$PY" "$B/eval_speed.py" --model "$EVAL_MODEL" --data "$VOC_ROOT" --images "$VOC_N" $EVAL_OPTS \
  --device "$DEVICE" --json "$DEST/eval_voc.json"

step train "$((LIMIT + 30))" "$PY" "$B/train_speed.py" $TRAIN_OPTS --configs baseline,binding,segmix --device "$DEVICE" \
  --out "$DEST/train.json"

step attack "$LIMIT" "$PY" "$B/attack_speed.py" $ATTACK_OPTS --device "$DEVICE" --json "$DEST/attack.json"

if [ -f "$B/corruption_speed.py" ]; then
  # its options are read from its --help: only those it has are passed
  HELP=$("$PY" "$B/corruption_speed.py" --help 2>/dev/null || true)
  OPTS=(--device "$DEVICE")
  set -- $CORR_OPTS
  while [ $# -gt 0 ]; do
    if echo "$HELP" | grep -q -- "$1"; then OPTS+=("$1" "$2"); fi; shift 2
  done
  if echo "$HELP" | grep -q -- "--json"; then OPTS+=(--json "$DEST/corruption.json")
  elif echo "$HELP" | grep -q -- "--out"; then OPTS+=(--out "$DEST/corruption.json"); fi
  step corruption "$LIMIT" "$PY" "$B/corruption_speed.py" "${OPTS[@]}"
else
  printf 'corruption\t-\t-\tabsent\n' >> "$DEST/steps.tsv"
fi

cleanup; SAMPLER=""
"$PY" "$B/gpu_summary.py" summarize "$DEST" --voc-desc "$VOC_DESC" --wall "$(( $(date +%s) - START ))"
