#!/usr/bin/env bash
# The GPU training plan of issue 34, resumable across calls (scripts/gpu_session.sh train).
#
# Each call does as much of the plan as fits in TRAIN_SECONDS (default 540: a 600 s device
# call less copying), stopping cleanly after a whole epoch and its checkpoint
# (enet-train --time-limit), and leaves everything in $OUT/runs_gpu.tar. To go on, unpack it
# here (mkdir -p runs && tar xf <files_at>/runs_gpu.tar -C runs) and carry runs/gpu (and
# data) on the next call, which resumes where this one stopped. Stages, in order:
#
#   1. timing   training/scripts/bench_pipeline.py: loader (the per-frame pipeline, 8
#               workers) against device (frames on the GPU) at the round-7 recipe's batch
#               5, neither compiled, one process: runs/gpu/timing.json (once; the scratch
#               run's epochs then time batch TRAIN_BATCH compiled)
#   2. scratch  the round-7 recipe from scratch on train for TRAIN_EPOCHS (300), with the
#               device pipeline at batch TRAIN_BATCH (10; --lr 5e-4 for batch 5, sqrt-scaled),
#               validated on val every TRAIN_VAL_INTERVAL (10) epochs: runs/gpu/scratch
#   3. twin     only if scratch's last validation beats TRAIN_BEAT (0.6581, the shipped
#               recipe's val mIoU): the same on train+val (runs/gpu/twin), then
#               $OUT/enet_camvid_candidate.safetensors exported from its last checkpoint
#
# Arguments are more enet-train train flags for stages 2 and 3 (they win over the recipe's).
# Selection is on val only; the test split is not on the machine. TRAIN_DRY_RUN=1 runs the
# plan on the CPU (no CUDA check; a few frames of TRAIN_DATA, 2 epochs, 2 steps an epoch,
# twin always) to check the plumbing.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/training${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}
start=$(date +%s)
budget=${TRAIN_SECONDS:-540}
data=${TRAIN_DATA:-data/camvid}
epochs=${TRAIN_EPOCHS:-300}
batch=${TRAIN_BATCH:-10}
val_interval=${TRAIN_VAL_INTERVAL:-10}
beat=${TRAIN_BEAT:-0.6581}
runs=runs/gpu
device=cuda
extra=()
timing_steps=${TRAIN_TIMING_STEPS:-30}
timing_extra=(--workers 8 --compile off)
if [ -n "${TRAIN_DRY_RUN:-}" ]; then
    device=cpu
    epochs=2 val_interval=1 beat=0 batch=2 timing_steps=3
    timing_extra=(--workers 1 --batch-size 2)
    extra=(--max-iterations 2)
    # A few frames of the real data, so validation and the BatchNorm pass are quick.
    tiny=$(mktemp -d)
    for split in train val; do
        mkdir -p "$tiny/$split" "$tiny/${split}annot"
        for frame in $(ls "$data/$split" | head -4); do
            ln -s "$(realpath "$data/$split/$frame")" "$tiny/$split/$frame"
            ln -s "$(realpath "$data/${split}annot/${frame%.*}.png")" \
                "$tiny/${split}annot/${frame%.*}.png"
        done
    done
    data=$tiny
elif ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo 'gpu_session_train.sh: CUDA is not available here (TRAIN_DRY_RUN=1 for the CPU)' >&2
    exit 3
fi
if [ ! -d "$data/train" ]; then
    echo "gpu_session_train.sh: $data is missing: tar xf ../shared/data/camvid_jpeg.tar -C data," \
         'then name data in the run call'"'"'s carry' >&2
    exit 2
fi
mkdir -p "$runs"

left() { echo $((budget - ($(date +%s) - start))); }

save() {
    # Everything needed to resume, and the records; not the TensorBoard events.
    tar cf "$OUT/runs_gpu.tar" --exclude=tensorboard -C runs gpu
    cat "$runs/status.txt" 2>/dev/null || true
}
trap save EXIT

# The round-7 recipe (training/README.md), at the batch and pipeline of a GPU run.
recipe=(--data "$data" --device "$device" --epochs "$epochs" --batch-size "$batch"
        --lr 5e-4 --lr-scaling sqrt --lr-base-batch 5 --lr-schedule poly --seed 9
        --scale 0.75 1.5 --ema 0.999 --loss ce+lovasz --val-interval "$val_interval"
        --pipeline device --workers 0 --progress off --resume auto "${extra[@]}" "$@")

# epochs_done RUN: the epochs its checkpoint holds; last_val RUN: its last val mIoU (or -1).
epochs_done() {
    "$PYTHON" - "$1" <<'EOF'
import sys, pathlib, torch
path = pathlib.Path(sys.argv[1]) / 'checkpoint.pth'
print(torch.load(path, map_location='cpu', weights_only=True)['epoch'] if path.exists() else 0)
EOF
}
last_val() {
    "$PYTHON" - "$1" <<'EOF'
import sys, pathlib, torch
path = pathlib.Path(sys.argv[1]) / 'checkpoint.pth'
history = torch.load(path, map_location='cpu', weights_only=True)['history'] if path.exists() else []
print(next((r['val_miou'] for r in reversed(history) if 'val_miou' in r), -1))
EOF
}

train_stage() {  # NAME EXTRA...: train runs/gpu/NAME until done or out of time
    local name=$1
    shift
    local limit
    limit=$(left)
    if [ "$limit" -lt 60 ]; then
        echo "$name: $limit s left, not started" | tee -a "$runs/status.txt"
        return 1
    fi
    # --time-limit stops after an epoch; timeout is the backstop (the checkpoint of the
    # last whole epoch stays).
    timeout --signal=INT $((limit + 20)) "$PYTHON" -m enet_training.cli train \
        --out "$runs/$name" --time-limit "$limit" "${recipe[@]}" "$@" \
        > "$runs/$name.stdout" 2>&1 || echo "$name: exit $? (see $name.stdout)" >> "$runs/status.txt"
    local done_epochs
    done_epochs=$(epochs_done "$runs/$name")
    echo "$name: $done_epochs of $epochs epochs, last val mIoU $(last_val "$runs/$name")," \
         "$(date -u +%FT%TZ)" | tee -a "$runs/status.txt"
    [ "$done_epochs" -ge "$epochs" ]
}

# 1. timing (once)
if [ ! -f "$runs/timing.txt" ]; then  # once, even if it failed
    timeout $(($(left) / 3)) "$PYTHON" training/scripts/bench_pipeline.py --data "$data" \
        --device "$device" --iterations "$timing_steps" --trials 1 --json "$runs/timing.json" \
        -- "${timing_extra[@]}" > "$runs/timing.txt" 2>&1 \
        || echo "timing: exit $? (see timing.txt)" >> "$runs/status.txt"
    tail -3 "$runs/timing.txt" | tee -a "$runs/status.txt"
fi

# 2. from scratch on train, selected on val
train_stage scratch || exit 0
score=$(last_val "$runs/scratch")
if ! "$PYTHON" -c "import sys; sys.exit(0 if $score > $beat else 1)"; then
    echo "scratch: last val mIoU $score does not beat $beat: no twin" | tee -a "$runs/status.txt"
    exit 0
fi

# 3. the train+val twin, exported from its last epoch (its val scores are on seen frames)
# One validation, after the last epoch: it recomputes the average's BatchNorm statistics
# that the checkpoint then keeps (--ema-bn recompute).
train_stage twin --train-split train+val --val-interval "$epochs" || exit 0
"$PYTHON" -m enet_training.cli export "$runs/twin/checkpoint.pth" \
    --out "$OUT/enet_camvid_candidate.safetensors" 2>&1 | tee -a "$runs/status.txt"
echo "twin exported: train-only twin's last val mIoU $score" | tee -a "$runs/status.txt"
