"""
Batched cameras: N frames of one size as one ``segment_batch`` against N ``segment`` calls.

For each mode, in this process, one Segmenter (bundled model unless
``--model``) labels N different frames (``--batch``, default 4) at each size
two ways, alternating round by round so that both see the same machine load:
N calls of ``segment`` (one at a time) and one ``segment_batch`` with
``batch_frames=True`` (one forward of batch N; on CUDA one captured graph). It
reports the median time per round of each, frames per second, the ratio, and
whether the labels are identical to the one-at-a-time ones (and, where not,
the fraction of equal pixels).

Modes: ``eager`` (the reference, ``optimize=False``), ``folded`` (optimised
CPU network without ``torch.compile``), ``compiled`` (``torch.compile``; the
batch shape is compiled in the warm-up), ``openvino`` (batch 1 graph: the
batch API loops, shown for completeness), ``cuda`` (captured fp16 graphs).

    python bench/bench_batch.py --modes folded eager --sizes 480x360 --rounds 20
    python bench/bench_batch.py --modes cuda --sizes 480x360 1280x720 --rounds 100
"""

import argparse
import json
import os
from pathlib import Path
import platform
import time
from typing import Dict, List, Optional

import numpy as np

MODES = {
    'eager': {'optimize': False, 'inference_backend': 'torch'},
    'folded': {'torch_compile': False, 'inference_backend': 'torch'},
    'compiled': {'inference_backend': 'torch'},
    'openvino': {'inference_backend': 'openvino'},
    'cuda': {'device': 'cuda'},
}


def _scene(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([rows * 255 // max(1, height - 1), cols * 255 // max(1, width - 1),
                      ((rows // (23 + seed) + cols // 31) % 3) * 100], axis=-1).astype(np.int32)
    image += rng.integers(-20, 21, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def measure(mode: str, sizes: List[str], batch: int, rounds: int,
            model: str) -> List[Dict[str, object]]:
    """Time one mode at every size; see the module docstring."""
    from enet_ros.segmenter import Segmenter

    kwargs = dict(MODES[mode])
    kwargs.setdefault('device', 'cpu')
    segmenter = Segmenter.from_file(model or None, batch_frames=True, **kwargs)
    rows = []
    for size in sizes:
        width, height = (int(v) for v in size.split('x'))
        frames = [_scene(height, width, seed) for seed in range(batch)]
        singles = [segmenter.segment(frame).labels for frame in frames]  # warm-up
        batched = [r.labels for r in segmenter.segment_batch(frames)]  # warm-up (compile)
        single_times, batch_times = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            singles = [segmenter.segment(frame).labels for frame in frames]
            single_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            batched = [r.labels for r in segmenter.segment_batch(frames)]
            batch_times.append(time.perf_counter() - start)
        equal = [float(np.mean(a == b)) for a, b in zip(singles, batched)]
        single_ms = float(np.median(single_times) * 1e3)
        batch_ms = float(np.median(batch_times) * 1e3)
        rows.append({'mode': mode, 'size': size, 'batch': batch, 'rounds': rounds,
                     'segmenter': segmenter.describe(), 'batches': segmenter.batches,
                     'one_at_a_time_ms': single_ms, 'batched_ms': batch_ms,
                     'one_at_a_time_fps': batch * 1e3 / single_ms,
                     'batched_fps': batch * 1e3 / batch_ms,
                     'speedup': single_ms / batch_ms,
                     'labels_identical': all(value == 1.0 for value in equal),
                     'min_pixel_agreement': min(equal)})
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    """Run the modes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--modes', nargs='+', default=['folded'], choices=sorted(MODES))
    parser.add_argument('--sizes', nargs='+', default=['480x360'])
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--rounds', type=int, default=20)
    parser.add_argument('--model', default='')
    parser.add_argument('--json', type=Path, default=None)
    args = parser.parse_args(argv)

    from enet_ros.inference.cpu_runtime import apply_process_defaults
    apply_process_defaults(os.environ)  # the node's OpenMP wait, before torch starts its pool

    rows = []
    for mode in args.modes:
        rows += measure(mode, args.sizes, args.batch, args.rounds, args.model)
    print(f'\nBatched frames ({platform.node()}, {os.cpu_count()} CPUs; {args.batch} frames, '
          f'median of {args.rounds} alternating rounds)')
    header = (f'{"mode":>9} {"size":>9} {"1-by-1 ms":>10} {"batch ms":>9} {"1-by-1 fps":>10} '
              f'{"batch fps":>9} {"ratio":>6} {"identical":>9}')
    print(header)
    print('-' * len(header))
    for row in rows:
        print(f'{row["mode"]:>9} {row["size"]:>9} {row["one_at_a_time_ms"]:>10.1f} '
              f'{row["batched_ms"]:>9.1f} {row["one_at_a_time_fps"]:>10.1f} '
              f'{row["batched_fps"]:>9.1f} {row["speedup"]:>6.2f} '
              f'{"yes" if row["labels_identical"] else row["min_pixel_agreement"]:>9}')
    for row in rows:
        print(f'{row["mode"]}: {row["segmenter"]}; batches: {row["batches"]}')
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
