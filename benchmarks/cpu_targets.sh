#!/usr/bin/env bash
# Issue 14's speed targets on this machine's CPU, in one run, on 2 cores (taskset) where it has more:
#  1. ONNX Runtime: the alnett-s bundle and the paper-scale alnett bundle (random weights), each with its
#     checkpoint on PyTorch eager, against MobileNetV3-Small: ratios to the anchor and to eager;
#  2. LiteRT/XNNPACK: the rpi5 fp32 bundle against MobileNetV3-Small fp32 and int8 converted the way the
#     rpi5 export converts (benchmarks/litert_anchor.py --keep), with the batching each one chose;
#  3. verify of both ONNX bundles (int8 made on another CPU: the same answers here?);
#  4. the daemon on the BCCD frames at 0.093 um/px, unpaced and paced at 30 fps, with its RSS;
#  then each of issue 14's targets with its figure, met or not (benchmarks/cpu_targets_summary.py).
# Usage: bash benchmarks/cpu_targets.sh [WORK] (default runs/cpu-targets; reports land there)
# Inputs (env, defaults as benchmarks/runtime.py and benchmarks/compression.py leave them):
#   CKPT=runs/bench-compress-s/train/best.safetensors  XS=runs/bench-runtime/alnett-s
#   ALNETT=runs/bench-runtime/alnett-random.safetensors  XA=runs/bench-runtime/alnett
#   ANCHORS=../shared/anchors  RUNS=100 ROUNDS=3 MAXS=6 SECS=30 PY=.venv/bin/python
# WORK/rpi5-fp32 (exported from CKPT) and WORK/lite (the LiteRT anchors) are made when missing.
set -uo pipefail
WORK=${1:-runs/cpu-targets}
PY=${PY:-.venv/bin/python}; RUNS=${RUNS:-100}; ROUNDS=${ROUNDS:-3}; MAXS=${MAXS:-6}; SECS=${SECS:-30}
CKPT=${CKPT:-runs/bench-compress-s/train/best.safetensors}; XS=${XS:-runs/bench-runtime/alnett-s}
ALNETT=${ALNETT:-runs/bench-runtime/alnett-random.safetensors}; XA=${XA:-runs/bench-runtime/alnett}
ANCHORS=${ANCHORS:-../shared/anchors}
export PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS:-100}
AE=("$PY" -m alnett_edge)
PIN=(); [ "$(nproc)" -gt 2 ] && command -v taskset >/dev/null && PIN=(taskset -c 0,1)
for f in "$CKPT" "$XS" "$ALNETT" "$XA" "$ANCHORS/mobilenet_v3_small.onnx"; do
  [ -e "$f" ] || { echo "missing $f (see the header of $0)" >&2; exit 2; }
done
mkdir -p "$WORK"
step() { echo; echo "== $1"; shift; local t0=$SECONDS; "$@"; echo "-- rc=$? in $((SECONDS - t0)) s"; }
[ -d "$WORK/rpi5-fp32" ] || "${AE[@]}" export "$CKPT" --target rpi5 --precision fp32 --out "$WORK/rpi5-fp32" >/dev/null
[ -d "$WORK/lite" ] || "$PY" benchmarks/litert_anchor.py --keep "$WORK/lite" --rounds 1 >/dev/null
echo "cores used: ${PIN[*]:-all $(nproc)}"
step "ONNX Runtime, ratios to MobileNetV3-Small and to PyTorch eager" "${PIN[@]}" "${AE[@]}" bench "$XS" "$CKPT" "$XA" \
  "$ALNETT" --anchor "$ANCHORS/mobilenet_v3_small.onnx" --threads 2 --batch 1,8 --runs "$RUNS" --rounds "$ROUNDS" \
  --max-seconds "$MAXS" --random --json "$WORK/ort.json"
L="$WORK/lite"
step "LiteRT, rpi5 fp32 bundle; anchors MobileNetV3-Small fp32, alnett-s int8, MobileNetV3-Small int8" \
  "${PIN[@]}" "${AE[@]}" bench "$WORK/rpi5-fp32" --backend litert --anchor "$L/mobilenet_v3_small.fp32.tflite" \
  --anchor "$L/alnett-s.int8.tflite" --anchor "$L/mobilenet_v3_small.int8.tflite" --threads 2 --batch 1,8 \
  --runs "$RUNS" --rounds "$ROUNDS" --max-seconds "$MAXS" --json "$WORK/litert.json"
for b in "$XS" "$XA"; do step "verify $b" "${PIN[@]}" "${AE[@]}" verify "$b"; done
step "daemon, BCCD 640x480 at 0.093 um/px, unpaced then 30 fps" "${PIN[@]}" "$PY" benchmarks/daemon.py "$XS" \
  --videos bccd --seconds "$SECS" --um-per-px 0.093 --out "$WORK/daemon"
echo; echo "== issue 14's targets (the artifacts each export selected)"
"$PY" benchmarks/cpu_targets_summary.py "$WORK"
