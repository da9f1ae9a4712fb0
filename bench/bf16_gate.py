#!/usr/bin/env python3
"""
The accuracy gate for bf16 on the CPU: fp32 and bf16 Segmenters over CamVid val.

Every val frame goes through two Segmenters built from the same model file,
the fp32 one (the reference) and the bf16 one, at the frame's own size, as
``enet-train evaluate`` scores it (:class:`enet_ros.metrics.ConfusionMatrix`,
void ignored). Printed, and written with ``--json``:

* mIoU (and global accuracy) of each against the ground truth, and the mIoU
  difference bf16 - fp32;
* label agreement: the fraction of all pixels where bf16's label equals
  fp32's (ground truth not involved, void pixels included), and the worst frame.

Both run the compiled CPU path with its defaults: fp32 as the CPU default
was before bf16 (compiled, weights not frozen), bf16 as it ships (weights
frozen). A third Segmenter, bf16 compiled without freezing, checks that
freezing keeps the labels: its agreement with the frozen bf16 one is printed
too (``--no-freezing-check`` leaves it out).

The gate, for making bf16 the CPU's ``precision='auto'``: |mIoU difference|
<= 0.2 (points of mIoU in %) and agreement >= 99.5 %. Exit code 0 when it
passes, 1 when it does not, 2 when bf16 cannot run here.

    python bench/bf16_gate.py                              # bundled model, ../shared/data/camvid
    python bench/bf16_gate.py --model my.safetensors --data /path/to/camvid --json gate.json
"""

import argparse
import json
import os
from pathlib import Path
import sys
import time
from typing import Dict

from enet_ros.metrics import ConfusionMatrix
from enet_ros.model_file import load_model_file
from enet_ros.segmenter import cpu_supports_bf16, Segmenter
from enet_training.datasets import camvid_pairs, DatasetError, read_image, read_label

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get('ENET_ROS_CAMVID', REPO_ROOT.parent / 'shared' / 'data' /
                                   'camvid'))
MIOU_TOLERANCE = 0.2  # mIoU points (%)
AGREEMENT_FLOOR = 99.5  # % of pixels


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--model', default=None, help='model file (default: the bundled one)')
    parser.add_argument('--data', default=str(DEFAULT_DATA),
                        help=f'CamVid folder with val/ and valannot/ (default {DEFAULT_DATA})')
    parser.add_argument('--split', default='val')
    parser.add_argument('--limit', type=int, default=None, help='only the first N frames')
    parser.add_argument('--no-compile', action='store_true',
                        help='run both Segmenters without torch.compile (faster set-up)')
    parser.add_argument('--no-freezing-check', action='store_true',
                        help='leave out the unfrozen bf16 Segmenter')
    parser.add_argument('--json', default=None, help='also write the figures here')
    return parser


def main(args: argparse.Namespace) -> int:
    """Score fp32 and bf16, compare, print the gate; return the exit code."""
    if not cpu_supports_bf16():
        print('this CPU has no bf16 (AVX-512 BF16 or AMX) or torch has no oneDNN: '
              'nothing to gate')
        return 2
    try:
        pairs = camvid_pairs(Path(args.data), args.split)[:args.limit]
    except DatasetError as error:  # the reader enet-train evaluate uses, with its errors
        print(error)
        return 2
    loaded = load_model_file(args.model)
    compile_option = False if args.no_compile else None
    options = {'fp32': {'precision': 'fp32'}, 'bf16': {'precision': 'bf16'}}
    if not args.no_compile and not args.no_freezing_check:
        options['bf16 unfrozen'] = {'precision': 'bf16', 'freezing': False}
    segmenters: Dict[str, Segmenter] = {}
    for name, kwargs in options.items():
        start = time.perf_counter()
        segmenters[name] = Segmenter(loaded, device='cpu', torch_compile=compile_option, **kwargs)
        print(f'{name}: {segmenters[name].describe()} (ready in '
              f'{time.perf_counter() - start:.1f} s)', flush=True)
    table = loaded.metadata
    matrices = {name: ConfusionMatrix(table.num_classes, table.void_id) for name in segmenters}
    pairs_compared = [('bf16', 'fp32')]
    if 'bf16 unfrozen' in segmenters:
        pairs_compared.append(('bf16', 'bf16 unfrozen'))
    equal = dict.fromkeys(pairs_compared, 0)
    worst = {pair: (101.0, '') for pair in pairs_compared}
    total = 0
    for index, (frame_path, label_path) in enumerate(pairs):
        image, truth = read_image(frame_path), read_label(label_path)
        labels = {name: segmenter.segment(image).labels
                  for name, segmenter in segmenters.items()}
        for name, matrix in matrices.items():
            matrix.update(labels[name], truth)
        total += truth.size
        for pair in pairs_compared:
            same = int((labels[pair[0]] == labels[pair[1]]).sum())
            equal[pair] += same
            worst[pair] = min(worst[pair], (100.0 * same / truth.size, frame_path.name))
        if (index + 1) % 20 == 0:
            print(f'  {index + 1} / {len(pairs)} frames', flush=True)
    scores = {name: matrix.scores() for name, matrix in matrices.items()}
    miou = {name: 100 * score.mean_iou for name, score in scores.items()}
    delta = miou['bf16'] - miou['fp32']
    agreement = {pair: 100.0 * count / total for pair, count in equal.items()}
    passed = abs(delta) <= MIOU_TOLERANCE and agreement[('bf16', 'fp32')] >= AGREEMENT_FLOOR
    print()
    print(f'model {loaded.path}, {len(pairs)} {args.split} frames, {total} pixels')
    for name, score in scores.items():
        print(f'{name}: mIoU {miou[name]:.2f}  global accuracy '
              f'{100 * score.global_accuracy:.2f}  ({segmenters[name].execution_path})')
    print(f'mIoU bf16 - fp32: {delta:+.3f} points (gate: within {MIOU_TOLERANCE})')
    for pair in pairs_compared:
        gate = f' (gate: >= {AGREEMENT_FLOOR} %)' if pair == ('bf16', 'fp32') else ''
        print(f'labels {pair[0]} equal to {pair[1]}: {agreement[pair]:.3f} % of pixels{gate}, '
              f'{total - equal[pair]} differ; worst frame {worst[pair][0]:.3f} % '
              f'({worst[pair][1]})')
    print(f'gate: {"PASS" if passed else "FAIL"}')
    if args.json:
        Path(args.json).write_text(json.dumps({
            'model': str(loaded.path), 'split': args.split, 'frames': len(pairs),
            'pixels': total,
            'miou': miou, 'miou_delta': delta,
            'agreement_percent': {f'{a} vs {b}': v for (a, b), v in agreement.items()},
            'worst_frame': {f'{a} vs {b}': {'name': name, 'agreement_percent': value}
                            for (a, b), (value, name) in worst.items()},
            'global_accuracy': {name: 100 * s.global_accuracy for name, s in scores.items()},
            'paths': {name: s.execution_path for name, s in segmenters.items()},
            'passed': passed}, indent=2))
    return 0 if passed else 1


if __name__ == '__main__':
    sys.exit(main(get_args_parser().parse_args()))
