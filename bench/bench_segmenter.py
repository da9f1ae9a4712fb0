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
  OpenVINO path, normalisation and ArgMax in the graph); ``default`` decides by
  CPU features. Every other torch mode names ``inference_backend='torch'``.
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

Example (enet_ros installed, e.g. ``pip install -e .``):
``python bench/bench_segmenter.py --device cpu --sizes 480x360 --frames 50``.

Forward columns: GFLOP/s counts 2 FLOPs a multiply-accumulate of the
convolutions (torch's FLOP counter on the network at that input size) and
"% peak" divides by ``--peak-gflops`` (default 233: the fp32 FMA peak of the
2-core machine these tables come from, 2 cores x 32 FLOP/cycle x 3.64 GHz; bf16
modes are measured against the same fp32 figure).
"""

import argparse
import json
import math
import os
from pathlib import Path
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

from enet_ros.inference.frames import FramePipeline
from enet_ros.labels import CAMVID_11
from enet_ros.model import ENet
from enet_ros.model_file import load_model_file, LoadedModel, ModelMetadata
from enet_ros.segmenter import cpu_supports_bf16, Segmenter
import numpy as np
import torch

#: CPU modes run through the Segmenter: name -> Segmenter options.
CPU_SEGMENTER_MODES = {
    'baseline fp32': {'precision': 'fp32', 'optimize': False},
    'eager fp32': {'precision': 'fp32', 'optimize': False},
    'uncompiled fp32': {'precision': 'fp32', 'torch_compile': False, 'index_free': False},
    'uncompiled bf16': {'precision': 'bf16', 'torch_compile': False, 'index_free': False},
    'compiled fp32': {'precision': 'fp32', 'freezing': False, 'index_free': False},
    'frozen fp32': {'precision': 'fp32', 'freezing': True, 'index_free': False},
    'frozen fp32 index-free': {'precision': 'fp32', 'freezing': True, 'index_free': True},
    'compiled bf16': {'precision': 'bf16', 'freezing': False, 'index_free': False},
    'frozen bf16': {'precision': 'bf16', 'freezing': True, 'index_free': False},
    'frozen bf16 index-free': {'precision': 'bf16', 'freezing': True, 'index_free': True},
    'default': {},
    'torch default': {'inference_backend': 'torch'},
    'openvino fp32': {'inference_backend': 'openvino', 'precision': 'fp32'},
    'openvino bf16': {'inference_backend': 'openvino', 'precision': 'bf16'},
}
for _name, _options in CPU_SEGMENTER_MODES.items():
    if _name != 'default':
        _options.setdefault('inference_backend', 'torch')
#: CPU peers: name -> (runtime, index-free export).
CPU_PEER_MODES = {
    'onnxruntime fp32 index-free': ('onnxruntime', True),
    'onnxruntime fp32 indices': ('onnxruntime', False),
    'opencv fp32 index-free': ('opencv', True),
    'openvino fp32 index-free': ('openvino', True),
    'openvino bf16 index-free': ('openvino', True),
}
CUDA_MODES = {
    'eager fp32': {'precision': 'fp32', 'optimize': False},
    'eager fp16': {'precision': 'fp16', 'optimize': False},
    'folded fp16': {'precision': 'fp16', 'cuda_graphs': False},
    'captured fp32': {'precision': 'fp32'},
    'captured fp16': {'precision': 'fp16'},
    'captured fp16 channels_last': {'precision': 'fp16', 'channels_last': True},
    'compiled captured fp16': {'precision': 'fp16'},
    'compiled captured fp16 channels_last': {'precision': 'fp16', 'channels_last': True},
    'max-autotune fp16': {'precision': 'fp16', 'cuda_graphs': False},
    'max-autotune captured fp16': {'precision': 'fp16'},
}
#: CUDA modes that ``torch.compile`` the folded network: name -> (compile mode, whether the
#: Segmenter's own CUDA graph captures the compiled forward with the rest of the frame).
#: Compiling takes a minute, autotuning several per size: ask for them with ``--modes``.
CUDA_COMPILED_MODES = {
    'compiled captured fp16': ('default', True),
    'compiled captured fp16 channels_last': ('default', True),
    'max-autotune fp16': ('max-autotune', False),
    'max-autotune captured fp16': ('max-autotune-no-cudagraphs', True),
}
#: The "x prev" column: speed-up over this mode (the CPU default before this change).
PREVIOUS_DEFAULT = 'compiled fp32'


def _bench_module(name: str):
    """Import a helper module next to this file (``onnx_peers``, ``bench_load``, ``cpu_load``)."""
    folder = str(Path(__file__).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return __import__(name)


def _onnx_peers():
    """Import ``bench/onnx_peers.py``, the benchmark's helper next to this file."""
    return _bench_module('onnx_peers')


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
    parser.add_argument('--same-process', action='store_true',
                        help='with --load, run all modes in this process, interleaved')
    parser.add_argument('--list-modes', action='store_true', help='print the modes and exit')
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
            'cpu_bf16': cpu_supports_bf16(),
            'OMP_WAIT_POLICY': os.environ.get('OMP_WAIT_POLICY', '(unset)'),
            'GOMP_SPINCOUNT': os.environ.get('GOMP_SPINCOUNT', '(unset)'),
            'onnxruntime': _onnx_peers().onnxruntime_version(),
            'openvino': _onnx_peers().openvino_version(),
            'load_average_start': os.getloadavg()}
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
        info['cuda'] = torch.version.cuda
        info['cudnn'] = torch.backends.cudnn.version()
    return info


class Mode:
    """One way of running frames: a segment callable, a forward callable, and their timings."""

    def __init__(self, name: str, path: str, frame: Callable[[], object],
                 forward: Callable[[], object], device: torch.device, cudnn_benchmark: bool):
        self.name = name
        self.path = path
        self.frame = frame
        self.forward = forward
        self.device = device
        self.cudnn_benchmark = cudnn_benchmark
        self.frame_ms: List[float] = []
        self.frame_cpu_ms: List[float] = []
        self.forward_ms: List[float] = []
        self.loaded_ms: List[float] = []
        self.loaded_cpu_ms: List[float] = []
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


def mode_names(device: torch.device) -> List[str]:
    """All modes for ``device``, in table order (bf16 modes only where the CPU has bf16)."""
    if device.type == 'cuda':
        return [name for name in CUDA_MODES if name not in CUDA_COMPILED_MODES]
    names = [name for name, options in CPU_SEGMENTER_MODES.items()
             if options.get('precision') != 'bf16' or cpu_supports_bf16()]
    return names + list(CPU_PEER_MODES)


def build_modes(loaded: LoadedModel, device: torch.device, frame_size: Tuple[int, int],
                net_size: Tuple[int, int], wanted: Optional[List[str]],
                args: argparse.Namespace) -> List[Mode]:
    """Build the modes for ``device``, measuring each one's peak GPU memory on its own."""
    width, height = frame_size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    on_cuda = device.type == 'cuda'
    modes = []
    names = mode_names(device)
    if on_cuda and wanted:
        names += [name for name in CUDA_COMPILED_MODES if name in wanted]
    for name in names:
        if wanted and name not in wanted:
            continue
        if on_cuda:
            # The mode's own autotuning from its build on, not the previous mode's (it would
            # put the autotune workspace into an untuned mode's peak memory).
            torch.backends.cudnn.benchmark = bool(CUDA_MODES[name].get('optimize', True))
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        if name in CPU_PEER_MODES and not on_cuda:
            built = _peer(name, loaded, net_size, image, args)
            if built is None:
                continue
            path, frame, forward = built
            optimize = False
        else:
            options = (CUDA_MODES if on_cuda else CPU_SEGMENTER_MODES)[name]
            compiled = CUDA_COMPILED_MODES.get(name) if on_cuda else None
            segmenter = Segmenter(loaded, device=str(device), input_size=net_size,
                                  warmup=compiled is None, **options)
            if compiled and compiled[1]:
                # Swapped in before the first frame, so the first capture records it.
                segmenter.path.network = torch.compile(segmenter.path.network,
                                                       mode=compiled[0])
            network_input = segmenter.preprocess(image)
            path = f'{segmenter.precision} {segmenter.execution_path}'
            optimize = options.get('optimize', True)
            if name == 'baseline fp32':
                frame, forward = _baseline(segmenter, image, network_input)
            elif compiled and not compiled[1]:
                frame, forward = _compiled(segmenter, image, network_input, compiled[0])
                path += f', torch.compile {compiled[0]}'
            elif compiled or name.startswith('captured'):
                if compiled:
                    path += f', torch.compile {compiled[0]}'
                frame = (lambda s=segmenter: s.segment(image))
                forward = _captured_forward(segmenter, network_input)
            else:
                frame = (lambda s=segmenter: s.segment(image))
                forward = (lambda s=segmenter, x=network_input: s.logits(x))
        mode = Mode(name, path, frame, forward, device, cudnn_benchmark=bool(optimize))
        # Set-up ends after three frames: lazy compilation, autotuning and captures happen
        # in the first calls of some modes.
        for _ in range(3):
            frame()
            forward()
        if on_cuda:
            torch.cuda.synchronize(device)
            mode.peak_mib = (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
        setup = time.perf_counter() - start
        mode.setup_s = setup
        modes.append(mode)
        print(f'  {name}: ready in {setup:.1f} s ({path})', flush=True)
    return modes


def _peer(name: str, loaded: LoadedModel, net_size: Tuple[int, int], image: np.ndarray,
          args: argparse.Namespace):
    """Build a peer runtime mode: (path text, frame, forward), or None where not installed."""
    runtime, index_free = CPU_PEER_MODES[name]
    onnx_peers = _onnx_peers()
    try:
        if runtime == 'onnxruntime':
            import onnxruntime
            version = onnxruntime.__version__
        elif runtime == 'openvino':
            import openvino
            version = openvino.__version__.split('-')[0]
        else:
            import cv2
            version = cv2.__version__
    except ImportError:
        print(f'  {name}: skipped, {runtime} is not installed', flush=True)
        return None
    onnx_path = onnx_peers.export_dir() / f'enet_{"index_free" if index_free else "indices"}.onnx'
    threads = torch.get_num_threads()
    try:
        onnx_peers.export_onnx(loaded, net_size, onnx_path, index_free)
        if runtime == 'onnxruntime':
            run = onnx_peers.onnxruntime_forward(onnx_path, threads, args.ort_spin)
            path = (f'ONNX Runtime {version}, {threads} threads, '
                    f'spinning {"on" if args.ort_spin else "off"}')
        elif runtime == 'openvino':
            precision = name.split()[1]
            run = onnx_peers.openvino_forward(onnx_path, threads, precision)
            path = f'OpenVINO {version}, {precision} inference hint, {threads} threads'
        else:
            run = onnx_peers.opencv_forward(onnx_path, threads)
            path = f'OpenCV DNN {version}, {threads} threads'
    except Exception as error:  # an exporter or runtime that cannot take the graph
        lines = str(error).strip().splitlines()
        print(f'  {name}: skipped, {type(error).__name__}: {lines[0][:200] if lines else ""}',
              flush=True)
        return None
    pipeline = FramePipeline(loaded.metadata, net_size, torch.device('cpu'), torch.float32)
    network_input = pipeline.preprocess(image)
    export = 'index-free export' if index_free else 'export as is'

    @torch.inference_mode()
    def frame():
        return pipeline.segment(image, run)

    return f'{path}, folded fp32, {export}', frame, (lambda: run(network_input))


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


def _compiled(segmenter: Segmenter, image: np.ndarray, network_input: torch.Tensor,
              mode: str):
    """``torch.compile`` the folded network with ``mode``: (frame, forward) callables."""
    compiled = torch.compile(segmenter.network, mode=mode)
    pipeline = segmenter.path.pipeline

    @torch.inference_mode()
    def frame():
        return pipeline.segment(image, compiled)

    @torch.inference_mode()
    def forward():
        return compiled(network_input)

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
    modes = build_modes(loaded_for(net_size), device, frame_size, net_size, wanted, args)
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
    if args.load:
        with _bench_module('cpu_load').BusyLoad(args.load, args.load_seconds):
            for done in range(0, args.frames, args.block):
                for mode in modes:
                    mode.time(mode.frame, min(args.block, args.frames - done), mode.loaded_ms,
                              mode.loaded_cpu_ms)
    reference = modes[0]
    previous = next((mode for mode in modes if mode.name == PREVIOUS_DEFAULT), None)
    gflop = forward_gflop(loaded_for(net_size), net_size)
    rows = []
    for mode in modes:
        row = summarise(mode, reference, frame_size, net_size)
        row['previous_default_speedup'] = (_median(previous.frame_ms) / row['median_ms']
                                           if previous else float('nan'))
        row['forward_gflops'] = gflop / row['forward_median_ms'] * 1e3
        row['forward_peak_percent'] = 100 * row['forward_gflops'] / args.peak_gflops
        rows.append(row)
    return rows


def forward_gflop(loaded: LoadedModel, net_size: Tuple[int, int]) -> float:
    """GFLOP of one forward at ``net_size`` (2 per multiply-accumulate), torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    width, height = net_size
    network = loaded.build()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.zeros(1, 3, height, width))
    return counter.get_total_flops() / 1e9


def _without_nan(value):
    """Return ``value`` with every NaN float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(v) for v in value]
    return value


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
        'path': mode.path,
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
        'loaded_median_ms': _median(mode.loaded_ms) if mode.loaded_ms else None,
        'loaded_p90_ms': float(np.percentile(mode.loaded_ms, 90)) if mode.loaded_ms else None,
        'loaded_cpu_ms': _median(mode.loaded_cpu_ms) if mode.loaded_cpu_ms else None,
    }


def format_table(rows: List[Dict[str, object]]) -> str:
    """Plain-text table of the rows."""
    width = max([len('mode')] + [len(str(row['mode'])) for row in rows])
    header = (f'{"frame":>10} {"network":>10} {"mode":<{width}} {"median ms":>10} {"p90 ms":>8} '
              f'{"fps":>7} {"cpu ms":>8} {"fwd ms":>8} {"fwd p90":>8} {"GFLOP/s":>8} '
              f'{"% peak":>7} {"GPU MiB":>8} {"x ref":>6} {"fwd x":>6} {"x prev":>7} '
              f'{"setup s":>8}')
    lines = [header, '-' * len(header)]
    for row in rows:
        peak = '-' if row['peak_gpu_mib'] is None else f'{row["peak_gpu_mib"]:.0f}'
        lines.append(
            f'{row["frame"]:>10} {row["network"]:>10} {row["mode"]:<{width}} '
            f'{row["median_ms"]:>10.1f} {row["p90_ms"]:>8.1f} {row["fps"]:>7.1f} '
            f'{row["cpu_ms"]:>8.1f} {row["forward_median_ms"]:>8.1f} '
            f'{row["forward_p90_ms"]:>8.1f} {row["forward_gflops"]:>8.1f} '
            f'{row["forward_peak_percent"]:>7.1f} {peak:>8} {row["speedup"]:>6.2f} '
            f'{row["forward_speedup"]:>6.2f} {row["previous_default_speedup"]:>7.2f} '
            f'{row["setup_s"]:>8.1f}')
    return '\n'.join(lines)


def format_markdown(rows: List[Dict[str, object]]) -> str:
    """Format the rows as a Markdown table (for the README)."""
    lines = ['| frame = network | mode | median ms | p90 ms | frames/s | CPU ms | forward ms | '
             'GFLOP/s | % peak | x ref (frame / forward) | x prev | set-up s |',
             '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for row in rows:
        size = (row['frame'] if row['frame'] == row['network']
                else f'{row["frame"]} -> {row["network"]}')
        lines.append(
            f'| {size} | {row["mode"]} | {row["median_ms"]:.1f} | {row["p90_ms"]:.1f} | '
            f'{row["fps"]:.1f} | {row["cpu_ms"]:.1f} | {row["forward_median_ms"]:.1f} | '
            f'{row["forward_gflops"]:.0f} | {row["forward_peak_percent"]:.0f} | '
            f'{row["speedup"]:.2f} / {row["forward_speedup"]:.2f} | '
            f'{row["previous_default_speedup"]:.2f} | {row["setup_s"]:.1f} |')
    return '\n'.join(lines)


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
    bench_load = _bench_module('bench_load')
    try:
        requested = [m.strip() for m in (args.modes or '').split(',') if m.strip()]
        unknown = [m for m in requested if bench_load.base_mode(m) not in known]
    except ValueError as error:
        print(f'bench_segmenter: --modes: {error}', file=sys.stderr)
        return 2
    if unknown:
        print(f'bench_segmenter: unknown --modes for {device.type}: {", ".join(unknown)} '
              '(--list-modes names them)', file=sys.stderr)
        return 2
    isolate = (bench_load.needs_own_process(requested)
               or (args.load and not args.same_process and len(requested or known) > 1))
    if isolate:
        if args.same_process:
            print('bench_segmenter: these --modes set their process environment: they need '
                  'a process each (drop --same-process)', file=sys.stderr)
            return 2
        return run_isolated(args, requested or known, bench_load)
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
        Path(args.json).write_text(json.dumps(_without_nan(
            {'machine': info, 'args': vars(args), 'rows': rows}), indent=2, allow_nan=False))
    return 0


def run_isolated(args: argparse.Namespace, modes: List[str], bench_load) -> int:
    """Run each mode in a process of its own (``bench_load.py``); print idle and loaded."""
    rows, machines = bench_load.run_isolated(str(Path(__file__).resolve()), args, modes)
    if not rows:
        print('bench_segmenter: no mode produced figures', file=sys.stderr)
        return 1
    bench_load.add_load_ratios(rows)
    print()
    print(f'each mode in a process of its own; {args.frames} frames idle'
          + (f', then {args.frames} beside {args.load} busy process(es)' if args.load else '')
          + "; ratios over the first mode's idle median")
    for machine in machines:
        print(f'  {machine["mode"]}: OMP_WAIT_POLICY={machine["OMP_WAIT_POLICY"]} '
              f'GOMP_SPINCOUNT={machine["GOMP_SPINCOUNT"]} threads={machine["torch_threads"]} '
              f'load average {machine["load_average_start"]} -> {machine["load_average_end"]}')
    for row in rows:
        print(f'  {row["mode"]}: {row["path"]}')
    print()
    print(bench_load.format_load_markdown(rows, args.load))
    if args.json:
        Path(args.json).write_text(json.dumps(_without_nan(
            {'machines': machines, 'args': vars(args), 'rows': rows}), indent=2,
            allow_nan=False))
    return 0


if __name__ == '__main__':
    sys.exit(main(get_args_parser().parse_args()))
