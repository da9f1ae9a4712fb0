#!/bin/sh
# The issue #30 table: every CPU runtime mode at 480x360, idle and beside one busy process per
# core, each mode in a process of its own, all modes run 3 times in turns; medians over the
# runs to bench/results/load-480x360.json (and a Markdown table on stdout). Run it on a quiet
# machine (nothing else busy: check `uptime`), from anywhere; about 20 minutes on 2 cores.
# Options after the script's name override its own (the last one wins), e.g. a short check:
#   bench/load_table.sh --frames 30 --repeat 1 --json /tmp/load-check.json
set -e
cd "$(dirname "$0")/.."
if [ -z "$PYTHON" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
MODES='torch default'
MODES="$MODES,torch default [GOMP_SPINCOUNT=1000]"
MODES="$MODES,torch default [OMP_WAIT_POLICY=PASSIVE]"
MODES="$MODES,torch default [ENET_ROS_OPENMP_WAIT=adaptive-wait]"
MODES="$MODES,torch default [ENET_ROS_OPENMP_WAIT=adaptive]"
MODES="$MODES,torch default [threads=1]"
MODES="$MODES,openvino fp32 all threads"
MODES="$MODES,openvino fp32 all threads [threads=1]"
MODES="$MODES,onnxruntime fp32 index-free"
MODES="$MODES,node default"
exec "$PYTHON" bench/bench_segmenter.py --device cpu --sizes 480x360 --frames 100 \
    --load "$(nproc)" --repeat 3 --modes "$MODES" --json bench/results/load-480x360.json "$@"
