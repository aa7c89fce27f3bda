#!/usr/bin/env bash
# The CUDA side of training, on a machine with an NVIDIA GPU (run by hand; CI has no GPU).
# Trains alnett-s on CUDA (AMP), resumes it, runs 2-fold CV and a 1-process NCCL torchrun, evaluates
# the checkpoint on the GPU and on the CPU, and leaves the checkpoints and logs in $OUT (default
# /tmp/gpu-check) so the workstation can export and gate them. Uses the python on PATH with
# PYTHONPATH=src (the image's torch may differ from the pinned one: the torch version is printed).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
W=$(mktemp -d)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
PY=${PY:-python3}; DEV=${DEV:-cuda}; N=${N:-600}
mkdir -p "$OUT"
step() { echo "== $1"; local t0=$SECONDS; shift; "$@"; local rc=$?; echo "-- rc=$rc in $((SECONDS - t0)) s"; }
nvidia-smi -L || true
$PY -c "import torch; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', torch.version.cuda, ok and torch.cuda.get_device_name(0),
'bf16', ok and torch.cuda.is_bf16_supported())"
grep -m1 'model name' /proc/cpuinfo; nproc
step synth $PY -m alnett_edge data synth --out "$W/cells" --n $N --format png --cells-per-patient 15 --seed 1
step train-cuda $PY -m alnett_edge -v train --data "$W/cells" --model alnett-s --out "$W/cuda" --epochs 6 \
    --device $DEV --workers 4 2>&1 | grep -v "^$" | tail -25
step resume-cuda bash -c "$PY -m alnett_edge train --data $W/cells --out $W/res --epochs 4 --device $DEV --stop-after 2 >/dev/null && \
    $PY -m alnett_edge train --data $W/cells --out $W/res --epochs 4 --device $DEV --resume | tail -4"
step train-cpu $PY -m alnett_edge train --data "$W/cells" --model alnett-s --out "$W/cpu" --epochs 6 --device cpu \
    --workers 4 2>&1 | tail -6
for d in $DEV cpu; do
  step "evaluate-$d" $PY -m alnett_edge evaluate "$W/cuda/best.safetensors" --data "$W/cells" --split val \
      --out "$W/eval-$d" --device $d 2>&1 | tail -4
done
$PY - "$W" <<'PY'
import json, sys, pathlib
w = pathlib.Path(sys.argv[1])
rep = {p.parent.name: json.loads(p.read_text()) for p in sorted(w.glob("eval-*/report.json"))}
for name, r in rep.items():
    m = r["metrics"]
    print(name, {k: round(m[k], 4) for k in ("accuracy", "sensitivity", "specificity", "f1", "auc") if k in m})
if len(rep) == 2:
    a, b = ([p["prob_all"] for p in r["predictions"]] for r in rep.values())
    print("max |prob difference| GPU vs CPU evaluation:", max(abs(x - y) for x, y in zip(a, b)))
PY
step torchrun-nccl $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m alnett_edge train --data "$W/cells" --out "$W/ddp" \
    --epochs 2 --device $DEV 2>&1 | tail -5
step cv-cuda $PY -m alnett_edge train --data "$W/cells" --out "$W/cv" --folds 2 --epochs 3 --device $DEV 2>&1 | tail -8
cp "$W/cuda/best.safetensors" "$OUT/cuda-best.safetensors"; cp "$W/cpu/best.safetensors" "$OUT/cpu-best.safetensors"
cp "$W"/cuda/*.json "$OUT/" 2>/dev/null; ls -la "$OUT"
