#!/usr/bin/env bash
# The paper preset on a GPU, as one prepared run (what a session with a lent device runs; ~5 min on one
# H200 once pydicom is importable there):
#   1. bench_train (b): one ResNet50 + [512-512-1024]x2 step at 1152x896, batch 2, then 20 timed steps
#      -> images/s and peak GPU memory (the paper fit in 8 GB);
#   2. the whole `mammo-train run --preset paper` pipeline (S10 patches -> 3-stage patch classifier ->
#      2-stage whole-image classifier -> evaluation) on a small synthetic CBIS-DDSM cohort at paper
#      size, one epoch per stage: proves the CUDA/AMP paths end to end, not the AUC.
#
#   bash benchmarks/gpu_smoke.sh [OUTDIR [--set KEY=VALUE ...]]   (OUTDIR: default $OUT when set, else
#   runs/gpu_smoke; the --set options go to mammo-train run)
# Environment: PYTHON (default python3), PATIENTS (default 40), DEVICE (default auto), STEPS (default 21).
# Without a venv: run from the repository root; the repository goes on PYTHONPATH. pydicom must be
# importable (carry its wheel; flwr is not needed here).
set -euo pipefail
out=${1:-${OUT:-runs/gpu_smoke}}
shift $(( $# > 0 ? 1 : 0 ))
py=${PYTHON:-python3}
patients=${PATIENTS:-40}
device=${DEVICE:-auto}
steps=${STEPS:-21}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"

if ! "$py" -c "import pydicom" 2>/dev/null; then
    echo "gpu_smoke: pydicom is not importable by $py (install it or carry its wheel)" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1. paper-preset step: memory and throughput"
"$py" benchmarks/bench_train.py --skip-throughput --paper-steps "$steps" --threads 0 --device "$device" \
    --json "$out/paper_step.json"

echo "== 2. mammo-train run --preset paper on $patients synthetic patients at 1152x896 (1 epoch per stage)"
start=$(date +%s)
"$py" -m common.cli.data synth --layout cbis-ddsm --out "$out/data/raw" --patients "$patients" --seed 0 \
    --conspicuity 1.5 --lesion-scale 1.5 --quiet
"$py" -m common.cli.data index --format cbis-ddsm --out "$out/data/index" "$out/data/raw"
"$py" -m common.cli.data split --index "$out/data/index" --seed 0
"$py" -m common.cli.train run --preset paper --data "$out/data/index" --out "$out/run" --device "$device" --quiet \
    --set patch_train.stage1.epochs=1 --set patch_train.stage2.epochs=1 --set patch_train.stage3.epochs=1 \
    --set whole_train.stage1.epochs=1 --set whole_train.stage2.epochs=1 --set evaluate.bootstrap=200 "$@"
echo "pipeline wall time: $(( $(date +%s) - start )) s"
"$py" -c "import json,sys; m=json.load(open(sys.argv[1])); print({k: m[k] for k in ('test_auc', 'val_auc') if k in m})" \
    "$out/run/metrics.json"
