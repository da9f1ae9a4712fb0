#!/usr/bin/env python3
"""
Benchmark the Segmenter's execution paths: one table per machine, modes interleaved.

For every frame size and mode, the time of a whole ``Segmenter.segment`` call
(HxWx3 uint8 frame in, HxW uint8 labels out, on the host) over ``--frames``
timed frames after warm-up, and separately the bare network forward on a
preprocessed input. Modes run round-robin in blocks of ``--block`` frames, so
load from other processes hits every mode alike and the ratios between modes
come from the same run.

Modes (``--modes`` picks some; ``--list-modes`` names them):

* ``baseline fp32``: the unoptimised model as trained (plain ENet forward,
  ``torch.argmax(dim=1)``) with the Segmenter's pre- and post-processing. The
  reference of the CPU target (optimised >= 1.8x faster).
* ``eager fp32``, ``eager fp16``: ``Segmenter(optimize=False)``.
* ``uncompiled fp32``, ``uncompiled bf16``: ``torch_compile=False``, the
  folded channels_last network run eagerly (the path when compiling fails).
* CPU, folded BatchNorm, channels_last, torch.compile: ``compiled fp32`` (the
  default before bf16 and freezing; the "x prev" column is relative to it),
  ``frozen fp32`` (inductor weight freezing), ``compiled bf16``, ``frozen
  bf16`` (bf16 modes only on CPUs with bf16), each also ``... index-free``
  (masks instead of max-pool indices), and ``default`` (``Segmenter()`` as it
  ships: ``precision='auto'`` and the path's defaults).
* CPU backends: ``torch default`` (``Segmenter(inference_backend='torch')``:
  the default before OpenVINO, the reference of ``--load``'s ratios), ``openvino
  fp32`` / ``openvino bf16`` (``inference_backend='openvino'``: the package's
  OpenVINO path, normalisation and ArgMax in the graph; auto threads: all of
  torch's, or half when timed faster), ``openvino fp32 all threads`` (the same
  with ``cpu_threads`` fixed at torch's count: OpenVINO without the timed
  choice; ``[threads=1]`` fixes one); ``default`` decides by CPU features.
  Every other torch mode names ``inference_backend='torch'``.
* ``--load N``: each mode idle, then beside N busy processes, median and p90
  side by side, each mode in a process of its own (``bench_load.py``; modes
  may carry their process's environment: ``torch default
  [OMP_WAIT_POLICY=PASSIVE]``, ``node default``).
* CPU peers, where installed: ``onnxruntime fp32 index-free`` and
  ``onnxruntime fp32 indices`` (the export as is, ScatterND), ``opencv fp32
  index-free`` (``cv2.dnn``), ``openvino fp32 index-free`` and ``openvino bf16
  index-free`` (its CPU plugin, latency hint, bf16 through its inference
  precision hint): ENet folded and exported to ONNX, with the
  Segmenter's pre- and post-processing around the runtime's forward. They
  are interleaved with the torch modes; ONNX Runtime's threads do not
  spin-wait between runs unless ``--ort-spin`` (spinning threads would take
  the cores from the next mode's).
* CUDA: ``eager fp32`` and ``eager fp16`` (the model as trained), ``folded
  fp16`` (BatchNorm folded, cuDNN autotuning, no graphs), ``captured fp32``,
  ``captured fp16`` (the default: folded, fp16, cuDNN autotuning, the whole
  frame in a CUDA graph) and ``captured fp16 channels_last``; on request
  (``--modes``; compiling takes a minute, autotuning several):
  ``compiled captured fp16`` (and ``... channels_last``), the folded network
  through ``torch.compile`` (inductor, default mode) inside the Segmenter's
  graph; ``max-autotune fp16``, ``torch.compile(mode='max-autotune')`` of
  the folded network (inductor's own CUDA graphs for the forward) with the
  Segmenter's pre- and post-processing run eagerly around it; and
  ``max-autotune captured fp16``, mode ``max-autotune-no-cudagraphs`` inside
  the Segmenter's graph.

Results do not depend on the weights; by default a seeded random model is
built in memory (``--model`` takes a model file instead). With ``--input-size``
the network input stays fixed and frames are resized to it and back, as on a
robot whose camera is larger than the network input.

The code, by what it does: ``segmenter_modes.py`` (the modes and how each
is built), ``bench_timing.py`` (the round-robin timing harness, one row per
mode), ``bench_load.py`` (``--load N`` and ``--repeat R``: each mode in a
process of its own, idle and beside busy processes from ``cpu_load.py``),
``bench_output.py`` (machine, tables, JSON); this file parses the options
and runs them.

Example (enet_ros installed, e.g. ``pip install -e .``):
``python bench/bench_segmenter.py --device cpu --sizes 480x360 --frames 50``.

Forward columns: GFLOP/s counts 2 FLOPs a multiply-accumulate of the
convolutions (torch's FLOP counter on the network at that input size) and
"% peak" divides by ``--peak-gflops`` (default 233: the fp32 FMA peak of the
2-core machine these tables come from, 2 cores x 32 FLOP/cycle x 3.64 GHz; bf16
modes are measured against the same fp32 figure).
"""

import argparse
import os
import sys
from typing import Dict, Tuple

import bench_load
from bench_output import format_markdown, format_table, machine_info, write_json
from bench_timing import run_size
from enet_ros.model_file import load_model_file, LoadedModel
from enet_ros.segmenter import Segmenter
from segmenter_modes import CUDA_COMPILED_MODES, mode_names, PREVIOUS_DEFAULT, random_model
import torch


DEFAULT_SIZES = '480x360,1024x512,1280x720,1920x1080'


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--sizes', default=DEFAULT_SIZES,
                        help=f'frame sizes WxH, comma-separated (default {DEFAULT_SIZES})')
    parser.add_argument('--frames', type=int, default=200,
                        help='timed frames per mode and size (default 200)')
    parser.add_argument('--forward-frames', type=int, default=None,
                        help='timed bare forwards per mode and size (default: --frames)')
    parser.add_argument('--warmup', type=int, default=10, help='untimed frames per mode first')
    parser.add_argument('--block', type=int, default=10,
                        help='frames per mode per round-robin turn (default 10)')
    parser.add_argument('--input-size', default=None,
                        help='fixed network input WxH (default: the frame size)')
    parser.add_argument('--model', default=None,
                        help='model file (default: a seeded random ENet built in memory)')
    parser.add_argument('--modes', default=None,
                        help='comma-separated subset of the modes (default: all for the device)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads for the CPU (default: torch default)')
    parser.add_argument('--peak-gflops', type=float, default=233.0,
                        help='fp32 peak GFLOP/s of the machine for the "%% peak" column '
                             '(default 233: 2 cores x 32 FLOP/cycle x 3.64 GHz)')
    parser.add_argument('--ort-spin', action='store_true',
                        help="let ONNX Runtime's threads spin-wait between runs (default off)")
    parser.add_argument('--load', type=int, default=0,
                        help='also time every mode beside N busy processes (default 0: idle '
                             'only); each mode then runs in a process of its own')
    parser.add_argument('--load-seconds', type=float, default=900.0,
                        help='the busy processes end by themselves after this long')
    parser.add_argument('--load-nice', type=int, default=0,
                        help='niceness of the busy processes (default 0, the same priority as '
                             'the benchmark; e.g. 10: the node given priority over the rest)')
    parser.add_argument('--repeat', type=int, default=1,
                        help='run the modes this many times, each mode in a process of its own '
                             'per run, in turns; the figures are medians over the runs')
    parser.add_argument('--same-process', action='store_true',
                        help='with --load, run all modes in this process, interleaved')
    parser.add_argument('--list-modes', action='store_true', help='print the modes and exit')
    parser.add_argument('--json', default=None, help='also write the results here')
    return parser


def parse_size(text: str) -> Tuple[int, int]:
    """``'640x480'`` to ``(640, 480)`` (width, height)."""
    width, _, height = text.lower().partition('x')
    return int(width), int(height)


def main(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table (and write JSON with ``--json``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    # Every compiled mode keeps its own ENet alive, and dynamo caches all of them under the
    # one code object of ENet.forward: past its default limit of 8 entries later modes would
    # silently run eagerly. Raise it, and make hitting it an error rather than a wrong row.
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    probe = Segmenter(random_model((64, 48)), device=args.device, input_size=(64, 48),
                      warmup=False, optimize=False)
    device = probe.device
    del probe
    known = mode_names(device) + (list(CUDA_COMPILED_MODES) if device.type == 'cuda' else [])
    if args.list_modes:
        print('\n'.join(known))
        return 0
    try:
        requested = bench_load.split_mode_list(args.modes)
        unknown = [m for m in requested if bench_load.base_mode(m) not in known]
    except ValueError as error:
        print(f'bench_segmenter: --modes: {error}', file=sys.stderr)
        return 2
    if unknown:
        print(f'bench_segmenter: unknown --modes for {device.type}: {", ".join(unknown)} '
              '(--list-modes names them)', file=sys.stderr)
        return 2
    if args.repeat < 1:
        print(f'bench_segmenter: --repeat {args.repeat} must be at least 1', file=sys.stderr)
        return 2
    isolate = (bench_load.needs_own_process(requested) or args.repeat > 1
               or (args.load and not args.same_process and len(requested or known) > 1))
    if isolate:
        if args.same_process:
            print('bench_segmenter: these --modes (or --repeat) need a process each (drop '
                  '--same-process)', file=sys.stderr)
            return 2
        return bench_load.run_and_report(os.path.abspath(__file__), args, requested or known)
    info = machine_info(device)
    print(' '.join(f'{k}={v}' for k, v in info.items()), flush=True)
    fixed = parse_size(args.input_size) if args.input_size else None
    if args.model:
        file_model = load_model_file(args.model)

        def loaded_for(size):
            return file_model
    else:
        cache: Dict[Tuple[int, int], LoadedModel] = {}

        def loaded_for(size):
            if size not in cache:
                cache[size] = random_model(size)
            return cache[size]

    rows = []
    for text in args.sizes.split(','):
        rows.extend(run_size(loaded_for, device, parse_size(text.strip()), fixed, args))
    info['load_average_end'] = os.getloadavg()
    print()
    print(' '.join(f'{k}={v}' for k, v in info.items()))
    print(f'{args.frames} timed frames per mode and size, round-robin blocks of {args.block}; '
          f'"x ref" = median speed-up over the first mode of each size, "x prev" over '
          f'"{PREVIOUS_DEFAULT}" (the CPU default before bf16 and freezing), same run; '
          f'% peak = forward GFLOP/s / {args.peak_gflops:g}')
    print(format_table(rows))
    print()
    print(format_markdown(rows))
    if args.load:
        bench_load.add_load_ratios(rows)
        print()
        print(bench_load.format_load_markdown(rows, args.load))
    if args.json:
        write_json(args.json, {'machine': info, 'args': vars(args), 'rows': rows})
    return 0


if __name__ == '__main__':
    sys.exit(main(get_args_parser().parse_args()))
