#!/usr/bin/env python3
"""
Where the time of one CUDA frame goes: kernels, launches, host work and the output images.

At one frame size (default 1280x720, network input the same) with a seeded
random CamVid ENet (the timings do not depend on the weights):

1. The torch profiler over ``--frames`` bare forwards of the Segmenter's
   folded fp16 network run eagerly: kernels per forward, the sum of their
   device time (what a CUDA graph replay cannot beat), and the top kernels.
2. CUDA-event timing of the captured frame's graph replay (device time of the
   whole frame: upload, forward, argmax, download) beside the host wall time
   of ``Segmenter.segment`` (launch, wait, copies).
3. The node's output images (colour, overlay, drivable) at that size: in the
   frame's graph (``Segmenter.segment(images=...)``: graph device time and
   the whole call's wall time) and with numpy on the host
   (:class:`~enet_ros.masks.OutputRenderer`).

    python bench/profile_cuda.py --size 1280x720 --frames 20
"""

import argparse
import json
from pathlib import Path
import statistics
import sys
import time
from typing import Tuple

from enet_ros.inference.device_images import DEVICE_IMAGES
from enet_ros.labels import CAMVID_11
from enet_ros.masks import OutputRenderer
from enet_ros.segmenter import Segmenter
import numpy as np
import torch
from torch.profiler import profile, ProfilerActivity


def random_model(size: Tuple[int, int]):
    """Build the benchmark's seeded random CamVid ENet (``bench/segmenter_modes.py``)."""
    folder = str(Path(__file__).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import segmenter_modes
    return segmenter_modes.random_model(size)


def median_ms(function, count: int) -> float:
    """Host wall milliseconds of ``function`` (synchronised), median of ``count``."""
    times = []
    for _ in range(count):
        torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def event_ms(function, count: int) -> float:
    """Device milliseconds of ``function`` between two CUDA events, median of ``count``."""
    times = []
    for _ in range(count):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> int:
    """Profile and print the three parts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--size', default='1280x720')
    parser.add_argument('--frames', type=int, default=20)
    parser.add_argument('--json', type=Path, default=None)
    parser.add_argument('--trace', type=Path, default=None, help='Chrome trace of the profile')
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split('x'))
    loaded = random_model((width, height))
    segmenter = Segmenter(loaded, device='cuda', input_size=(width, height),
                          warmup_sizes=[(width, height)])
    print(segmenter.describe(), flush=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    network_input = segmenter.preprocess(image)
    figures = {'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__,
               'size': args.size}

    with torch.inference_mode():
        for _ in range(5):
            segmenter.logits(network_input)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.frames):
                segmenter.logits(network_input)
            torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_us = sum(e.device_time for e in kernels) / args.frames
    figures['kernels_per_forward'] = len(kernels) / args.frames
    figures['kernel_ms_per_forward'] = kernel_us / 1e3
    print(f'eager folded fp16 forward: {len(kernels) / args.frames:.0f} kernels, '
          f'{kernel_us / 1e3:.3f} ms of kernel time per forward')
    print(prof.key_averages().table(sort_by='cuda_time_total', row_limit=20))
    if args.trace:
        prof.export_chrome_trace(str(args.trace))

    renderer = OutputRenderer(CAMVID_11.colors, CAMVID_11.ids_of(CAMVID_11.drivable), 0.5)
    segmenter.configure_images(CAMVID_11.colors, CAMVID_11.ids_of(CAMVID_11.drivable), 0.5)
    with torch.inference_mode():
        segmenter.segment(image, images=DEVICE_IMAGES)
    runner = segmenter.path.graphs.peek((height, width, False, False, ()))
    # The cache keys its images as a sorted tuple (checked_images), not in DEVICE_IMAGES' order.
    with_images = segmenter.path.graphs.peek(
        (height, width, False, False, segmenter.path.checked_images(DEVICE_IMAGES)))
    if runner is None or with_images is None:
        raise SystemExit('profile_cuda: a frame graph was not found in the cache '
                         f'(plain: {runner is not None}, with images: {with_images is not None})')
    with torch.inference_mode():
        figures['eager_forward_wall_ms'] = median_ms(lambda: segmenter.logits(network_input),
                                                     50)
        figures['eager_forward_device_ms'] = event_ms(
            lambda: segmenter.logits(network_input), 50)
        if runner is not None:
            figures['frame_graph_device_ms'] = event_ms(runner.graph.replay, 100)
        figures['segment_wall_ms'] = median_ms(lambda: segmenter.segment(image), 100)
        if with_images is not None:
            figures['frame_with_images_graph_device_ms'] = event_ms(with_images.graph.replay,
                                                                    100)
        figures['segment_with_images_wall_ms'] = median_ms(
            lambda: segmenter.segment(image, images=DEVICE_IMAGES), 100)
    for name in ('eager_forward_wall_ms', 'eager_forward_device_ms', 'frame_graph_device_ms',
                 'segment_wall_ms', 'frame_with_images_graph_device_ms',
                 'segment_with_images_wall_ms'):
        if name in figures:
            print(f'{name}: {figures[name]:.3f}')

    labels = segmenter.segment(image).labels
    for wanted in (('colored',), ('overlay',), ('drivable',), ('colored', 'overlay', 'drivable')):
        key = 'render_' + '+'.join(wanted) + '_ms'
        times = []
        for _ in range(50):
            start = time.perf_counter()
            renderer.render(labels, image, wanted)
            times.append((time.perf_counter() - start) * 1e3)
        figures[key] = statistics.median(times)
        print(f'{key}: {figures[key]:.3f} (host numpy, {args.size})')
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
