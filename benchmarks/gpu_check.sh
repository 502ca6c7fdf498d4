#!/bin/bash
# The GPU checks of issue 16 in one script, for a CUDA machine with this repository's tree.
#
#   bash benchmarks/gpu_check.sh            # DEV=cuda; results and logs under $OUT (default /tmp/gpu-check)
#   DEV=cpu SKIP_INSTALL=1 PY=.venv/bin/python bash benchmarks/gpu_check.sh   # a dry run of the script itself
#
# 1. installs featsurv (and any wheels in .whl/, for packages the machine lacks) into $SITE;
# 2. tests/test_cuda.py (the device paths against the CPU paths and scipy);
# 3. the embedded default audited on the CPU and on $DEV (float32), compared feature by feature
#    (benchmarks/compare_devices.py);
# 4. bench_limit.py on $DEV in float32 (interleaved + widths);
# 5. where the audit makes the host wait for the device (benchmarks/cuda_syncs.py);
# 6. the embedded default and bench_limit.py (interleaved) on $DEV in bfloat16.
# Each step has its own time limit and writes to $OUT as it goes, so a cut-off run keeps what it did.
set -u
DEV=${DEV:-cuda}
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-check}
SITE=${SITE:-/tmp/site}
WORK=${WORK:-/tmp/fb}
TOKENS=${TOKENS:-8192}
REPS=${REPS:-2}
BENCH_TOKENS=${BENCH_TOKENS:-4096}
WIDTHS=${WIDTHS:-4096,16384,65536}
mkdir -p "$OUT"
step() { echo; echo "== $(date +%T) $*"; }
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if [ -z "${SKIP_INSTALL:-}" ]; then
  step install
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
  fi
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target "$SITE" . || exit 1
  export PYTHONPATH=$SITE PATH=$SITE/bin:$PATH
fi
FS=$(command -v featsurv || echo "$(dirname "$PY")/featsurv")

step versions
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
$PY -c "import torch, transformers, sae_lens, featsurv; print('torch', torch.__version__, 'transformers', transformers.__version__,
'sae_lens', sae_lens.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))" 2>&1 | tail -2

step "tests/test_cuda.py on $DEV"
FEATSURV_TEST_DEVICE=$DEV timeout 90 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py -W ignore::DeprecationWarning \
  > "$OUT/tests.log" 2>&1
echo "rc=$?"; tail -15 "$OUT/tests.log"

emb() {  # DEVICE DTYPE: the embedded default, rtn 8,6,4
  local s=$(date +%s%N)
  timeout 60 "$FS" audit rtn -p bits=8,6,4 --tokens "$TOKENS" --device "$1" --dtype "$2" --out "/tmp/emb-$1-$2" -q \
    > "$OUT/emb-$1-$2.log" 2>&1
  echo "$1 $2: rc=$? wall $(( ($(date +%s%N) - s) / 1000000 )) ms; timings $($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['timings'])" /tmp/emb-$1-$2/run.json 2>/dev/null)"
}
step "embedded default: cpu and $DEV, float32 ($TOKENS tokens, rtn 8,6,4)"
emb cpu float32
emb "$DEV" float32
$PY benchmarks/compare_devices.py /tmp/emb-cpu-float32 "/tmp/emb-$DEV-float32" | tee "$OUT/compare_float32.json"
echo "rc=$?"

step "bench_limit.py --device $DEV float32"
timeout 240 $PY benchmarks/bench_limit.py --device "$DEV" --parts interleaved,widths --widths "$WIDTHS" --reps "$REPS" \
  --tokens "$BENCH_TOKENS" --work "$WORK" --json "$OUT/bench_${DEV}_float32.json" > "$OUT/bench_float32.log" 2>&1
echo "rc=$?"; tail -22 "$OUT/bench_float32.log"

if [ "$DEV" != "cpu" ]; then
  step "host waits for the device in one audit"
  timeout 60 $PY benchmarks/cuda_syncs.py rtn -p bits=8,4 --tokens "$TOKENS" --device "$DEV" --out /tmp/syncs -q \
    2> "$OUT/syncs.err" | tail -1 | tee "$OUT/syncs.json"
fi

step "embedded default on $DEV in bfloat16 (against the float32 CPU run: each is measured against its own FP model)"
emb "$DEV" bfloat16
$PY benchmarks/compare_devices.py /tmp/emb-cpu-float32 "/tmp/emb-$DEV-bfloat16" --max-r-diff 1 | tee "$OUT/compare_bfloat16.json"

step "bench_limit.py --device $DEV bfloat16"
timeout 120 $PY benchmarks/bench_limit.py --device "$DEV" --dtype bfloat16 --quick --reps "$REPS" --tokens "$BENCH_TOKENS" \
  --work "$WORK" --json "$OUT/bench_${DEV}_bfloat16.json" > "$OUT/bench_bfloat16.log" 2>&1
echo "rc=$?"; tail -16 "$OUT/bench_bfloat16.log"
step done
