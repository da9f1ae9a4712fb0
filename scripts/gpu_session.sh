#!/usr/bin/env bash
# One step of a session on the lent GPU machine (see docs in bench/README.md, "On a lent GPU").
#
# The machine has PyTorch with CUDA, numpy, OpenCV, safetensors and pytest, but no ROS and
# no network: the core, the GPU tests, the benchmark and training run from the checkout with
# PYTHONPATH. Results go to $OUT (the device tool brings that folder back).
#
#   scripts/gpu_session.sh check          # GPU, torch, CUDA tests (test/test_gpu.py)
#   scripts/gpu_session.sh bench          # bench_segmenter on CUDA, JSON to $OUT
#   scripts/gpu_session.sh train ARGS...  # enet-train train, resumable; needs data/camvid
#                                         # (tar xf ../shared/data/camvid_jpeg.tar -C data)
#                                         # carried, and runs/gpu carried back in on resume
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/training${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo 'gpu_session.sh: CUDA is not available here (this script is for the lent GPU machine)' >&2
    exit 3
fi

step=${1:-check}
shift || true
case "$step" in
    check)
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
        "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
"cudnn", torch.backends.cudnn.version())' | tee -a "$OUT/gpu.txt"
        "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts='' test/test_gpu.py \
            test/test_cuda_path_cpu.py 2>&1 | tee "$OUT/test_gpu.txt"
        ;;
    bench)
        "$PYTHON" bench/bench_segmenter.py --device cuda --frames 200 \
            --json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench_cuda.txt"
        ;;
    train)
        if [ ! -d data/camvid ]; then
            echo 'gpu_session.sh: data/camvid is missing: tar xf ../shared/data/camvid_jpeg.tar -C data,' \
                 'then name data/camvid in the run call'"'"'s carry' >&2
            exit 2
        fi
        mkdir -p runs/gpu
        # Each call trains until the device's per-call limit stops it; checkpoint.pth is
        # written every epoch, so the next call (carrying runs/gpu) resumes where it ended.
        timeout --signal=INT "${TRAIN_SECONDS:-540}" "$PYTHON" -m enet_training.cli train \
            --data data/camvid --out runs/gpu --resume auto "$@" || true
        cp runs/gpu/checkpoint.pth runs/gpu/train.log "$OUT/" 2>/dev/null || true
        cp runs/gpu/best.safetensors "$OUT/" 2>/dev/null || true
        ;;
    *)
        echo "gpu_session.sh: unknown step '$step' (check, bench, train)" >&2
        exit 2
        ;;
esac
