#!/usr/bin/env python3
"""
Benchmark the Segmenter's execution paths: one table per machine, modes interleaved.

For every frame size and mode, the time of a whole ``Segmenter.segment`` call
(HxWx3 uint8 frame in, HxW uint8 labels out, on the host) over ``--frames``
timed frames after warm-up, and separately the bare network forward on a
preprocessed input. Modes run round-robin in blocks of ``--block`` frames, so
load from other processes hits every mode alike and the ratios between modes
come from the same run.

Modes:

* ``baseline fp32``: the unoptimised model as trained (plain ENet forward,
  ``torch.argmax(dim=1)``) with the Segmenter's pre- and post-processing. The
  reference of the CPU target (optimised >= 1.8x faster).
* ``eager fp32``, ``eager fp16``: ``Segmenter(optimize=False)``.
* ``optimised fp32`` (CPU): folded BatchNorm, channels_last, torch.compile.
* ``captured fp16`` (CUDA): folded BatchNorm, fp16, cuDNN autotuning, CUDA graphs.

Results do not depend on the weights; by default a seeded random model is
built in memory (``--model`` takes a model file instead). With ``--input-size``
the network input stays fixed and frames are resized to it and back, as on a
robot whose camera is larger than the network input.

Example (enet_ros installed, e.g. ``pip install -e .``):
``python bench/bench_segmenter.py --device cpu --sizes 480x360 --frames 50``.
"""

import argparse
import json
import os
from pathlib import Path
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

from enet_ros.labels import CAMVID_11
from enet_ros.model import ENet
from enet_ros.model_file import load_model_file, LoadedModel, ModelMetadata
from enet_ros.segmenter import Segmenter
import numpy as np
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
    parser.add_argument('--json', default=None, help='also write the results here')
    return parser


def parse_size(text: str) -> Tuple[int, int]:
    """``'640x480'`` to ``(640, 480)`` (width, height)."""
    width, _, height = text.lower().partition('x')
    return int(width), int(height)


def random_model(input_size: Tuple[int, int], seed: int = 0) -> LoadedModel:
    """Build a CamVid-class ENet with seeded random weights and perturbed BatchNorm statistics."""
    torch.manual_seed(seed)
    model = ENet(CAMVID_11.num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    metadata = ModelMetadata.from_class_table(CAMVID_11, input_size)
    return LoadedModel('<random, in memory>', metadata, model.state_dict())


def machine_info(device: torch.device) -> Dict[str, object]:
    """Describe the machine the numbers were measured on."""
    cpu = platform.processor() or 'unknown CPU'
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    info = {'cpu': cpu, 'cores': os.cpu_count(), 'torch': torch.__version__,
            'torch_threads': torch.get_num_threads(), 'python': platform.python_version(),
            'load_average_start': os.getloadavg()}
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
        info['cuda'] = torch.version.cuda
        info['cudnn'] = torch.backends.cudnn.version()
    return info


class Mode:
    """One way of running frames: a segment callable, a forward callable, and their timings."""

    def __init__(self, name: str, segmenter: Segmenter, frame: Callable[[], object],
                 forward: Callable[[], object], device: torch.device, cudnn_benchmark: bool):
        self.name = name
        self.segmenter = segmenter
        self.frame = frame
        self.forward = forward
        self.device = device
        self.cudnn_benchmark = cudnn_benchmark
        self.frame_ms: List[float] = []
        self.frame_cpu_ms: List[float] = []
        self.forward_ms: List[float] = []
        self.peak_mib: Optional[float] = None
        self.setup_s = 0.0

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def time(self, function: Callable[[], object], count: int, wall: List[float],
             cpu: Optional[List[float]] = None) -> None:
        """Run ``function`` ``count`` times, appending wall (and process CPU) milliseconds."""
        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        for _ in range(count):
            self._sync()
            start_cpu = time.process_time()
            start = time.perf_counter()
            function()
            self._sync()
            wall.append((time.perf_counter() - start) * 1e3)
            if cpu is not None:
                cpu.append((time.process_time() - start_cpu) * 1e3)


def build_modes(loaded: LoadedModel, device: torch.device, frame_size: Tuple[int, int],
                net_size: Tuple[int, int], wanted: Optional[List[str]]) -> List[Mode]:
    """Build the modes for ``device``, measuring each one's peak GPU memory on its own."""
    width, height = frame_size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    on_cuda = device.type == 'cuda'
    if on_cuda:
        specs = [('eager fp32', {'precision': 'fp32', 'optimize': False}),
                 ('eager fp16', {'precision': 'fp16', 'optimize': False}),
                 ('captured fp16', {'precision': 'fp16', 'optimize': True})]
    else:
        specs = [('baseline fp32', {'precision': 'fp32', 'optimize': False}),
                 ('eager fp32', {'precision': 'fp32', 'optimize': False}),
                 ('optimised fp32', {'precision': 'fp32', 'optimize': True})]
    modes = []
    for name, options in specs:
        if wanted and name not in wanted:
            continue
        if on_cuda:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        segmenter = Segmenter(loaded, device=str(device), input_size=net_size, warmup=True,
                              **options)
        setup = time.perf_counter() - start
        network_input = segmenter.preprocess(image)
        if name == 'baseline fp32':
            frame, forward = _baseline(segmenter, image, network_input)
        elif name == 'captured fp16':
            frame = (lambda s=segmenter: s.segment(image))
            forward = _captured_forward(segmenter, network_input)
        else:
            frame = (lambda s=segmenter: s.segment(image))
            forward = (lambda s=segmenter, x=network_input: s.logits(x))
        mode = Mode(name, segmenter, frame, forward, device,
                    cudnn_benchmark=bool(options['optimize']))
        mode.setup_s = setup
        for _ in range(3):
            frame()
            forward()
        if on_cuda:
            torch.cuda.synchronize(device)
            mode.peak_mib = (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
        modes.append(mode)
        print(f'  {name}: ready in {setup:.1f} s ({segmenter.execution_path})', flush=True)
    return modes


def _baseline(segmenter: Segmenter, image: np.ndarray, network_input: torch.Tensor):
    """Run the unoptimised model: plain forward, torch.argmax, the Segmenter's pre/post."""
    network = segmenter.network
    height, width = image.shape[:2]
    rows, cols = segmenter.path.pipeline.label_index(height, width)

    @torch.inference_mode()
    def frame():
        logits = network(segmenter.preprocess(image))
        labels = logits.argmax(dim=1).to(torch.uint8)[0]
        if labels.shape != (height, width):
            labels = labels.index_select(0, rows).index_select(1, cols)
        return labels.cpu().numpy()

    @torch.inference_mode()
    def forward():
        return network(network_input)

    return frame, forward


def _captured_forward(segmenter: Segmenter,
                      network_input: torch.Tensor) -> Callable[[], object]:
    """Capture the bare forward of the captured mode (folded fp16 network) in a CUDA graph."""
    static_input = network_input.clone()
    with torch.inference_mode():
        side = torch.cuda.Stream(segmenter.device)
        side.wait_stream(torch.cuda.current_stream(segmenter.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                segmenter.logits(static_input)
        torch.cuda.current_stream(segmenter.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            segmenter.logits(static_input)
    return graph.replay


def run_size(loaded_for: Callable[[Tuple[int, int]], LoadedModel], device: torch.device,
             frame_size: Tuple[int, int], net_size: Optional[Tuple[int, int]],
             args: argparse.Namespace) -> List[Dict[str, object]]:
    """Benchmark every mode at one frame size; return one row per mode."""
    net_size = net_size or frame_size
    print(f'{frame_size[0]}x{frame_size[1]} frames, network input {net_size[0]}x{net_size[1]}:',
          flush=True)
    wanted = [m.strip() for m in args.modes.split(',')] if args.modes else None
    modes = build_modes(loaded_for(net_size), device, frame_size, net_size, wanted)
    for mode in modes:
        mode.time(mode.frame, args.warmup, [])
        mode.time(mode.forward, max(1, args.warmup // 2), [])
    forward_frames = args.forward_frames if args.forward_frames is not None else args.frames
    done = 0
    while done < max(args.frames, forward_frames):
        for mode in modes:
            if done < args.frames:
                mode.time(mode.frame, min(args.block, args.frames - done), mode.frame_ms,
                          mode.frame_cpu_ms)
        for mode in modes:
            if done < forward_frames:
                mode.time(mode.forward, min(args.block, forward_frames - done),
                          mode.forward_ms)
        done += args.block
    reference = modes[0]
    rows = []
    for mode in modes:
        rows.append(summarise(mode, reference, frame_size, net_size))
    return rows


def _median(values: List[float]) -> float:
    return statistics.median(values) if values else float('nan')


def summarise(mode: Mode, reference: Mode, frame_size, net_size) -> Dict[str, object]:
    """One row: medians, p90, frames/s, CPU time, peak memory, ratios to the reference."""
    median = _median(mode.frame_ms)
    forward = _median(mode.forward_ms)
    return {
        'frame': f'{frame_size[0]}x{frame_size[1]}',
        'network': f'{net_size[0]}x{net_size[1]}',
        'mode': mode.name,
        'path': mode.segmenter.execution_path,
        'frames': len(mode.frame_ms),
        'median_ms': median,
        'p90_ms': float(np.percentile(mode.frame_ms, 90)) if mode.frame_ms else float('nan'),
        'fps': 1e3 / median if median else float('nan'),
        'cpu_ms': _median(mode.frame_cpu_ms),
        'forward_median_ms': forward,
        'forward_p90_ms': (float(np.percentile(mode.forward_ms, 90))
                           if mode.forward_ms else float('nan')),
        'peak_gpu_mib': mode.peak_mib,
        'speedup': _median(reference.frame_ms) / median if median else float('nan'),
        'forward_speedup': _median(reference.forward_ms) / forward if forward else float('nan'),
        'setup_s': mode.setup_s,
        'reference': reference.name,
    }


def format_table(rows: List[Dict[str, object]]) -> str:
    """Plain-text table of the rows."""
    header = (f'{"frame":>10} {"network":>10} {"mode":<15} {"median ms":>10} {"p90 ms":>8} '
              f'{"fps":>7} {"cpu ms":>8} {"fwd ms":>8} {"fwd p90":>8} {"GPU MiB":>8} '
              f'{"x ref":>6} {"fwd x":>6} {"setup s":>8}')
    lines = [header, '-' * len(header)]
    for row in rows:
        peak = '-' if row['peak_gpu_mib'] is None else f'{row["peak_gpu_mib"]:.0f}'
        lines.append(
            f'{row["frame"]:>10} {row["network"]:>10} {row["mode"]:<15} '
            f'{row["median_ms"]:>10.1f} {row["p90_ms"]:>8.1f} {row["fps"]:>7.1f} '
            f'{row["cpu_ms"]:>8.1f} {row["forward_median_ms"]:>8.1f} '
            f'{row["forward_p90_ms"]:>8.1f} {peak:>8} {row["speedup"]:>6.2f} '
            f'{row["forward_speedup"]:>6.2f} {row["setup_s"]:>8.1f}')
    return '\n'.join(lines)


def main(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table (and write JSON with ``--json``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    probe = Segmenter(random_model((64, 48)), device=args.device, input_size=(64, 48),
                      warmup=False, optimize=False)
    device = probe.device
    del probe
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
          f'"x ref" = median speed-up over the first mode of each size, same run')
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({'machine': info, 'args': vars(args),
                                               'rows': rows}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main(get_args_parser().parse_args()))
