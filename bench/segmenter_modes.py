"""
The benchmark's modes: what each runs, and how it is built (``bench_segmenter.py``).

A :class:`Mode` is one way of running frames: a whole-frame callable (HxWx3
uint8 frame in, HxW uint8 labels out on the host), a bare-forward callable
(preprocessed input in, logits out) and the timings the harness
(``bench_timing.py``) appends to it. The tables name the modes: CPU modes
run through the Segmenter with options, CPU peers (``onnx_peers.py``) run the
exported network in another runtime with the Segmenter's pre- and
post-processing around it, CUDA modes run through the Segmenter on the GPU
(some through ``torch.compile``). The module docstring of
``bench_segmenter.py`` says what each mode is.
"""

import argparse
import time
from typing import Callable, List, Optional, Tuple

from enet_ros.inference.frames import FramePipeline
from enet_ros.labels import CAMVID_11
from enet_ros.model import ENet
from enet_ros.model_file import LoadedModel, ModelMetadata
from enet_ros.segmenter import cpu_supports_bf16, Segmenter
import numpy as np
import onnx_peers
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
    'openvino fp32 all threads': {'inference_backend': 'openvino', 'precision': 'fp32',
                                  'cpu_threads': 'torch'},
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
        #: What a Segmenter mode runs now (backend, OpenMP wait and CPUs), or None (peers).
        self.state: Optional[Callable[[], str]] = None
        #: :attr:`state` at the end of the loaded frames.
        self.loaded_state: Optional[str] = None

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
            optimize, trial = False, None
        else:
            options = (CUDA_MODES if on_cuda else CPU_SEGMENTER_MODES)[name]
            if options.get('cpu_threads') == 'torch':  # fixed: as many as torch's pool
                options = {**options, 'cpu_threads': torch.get_num_threads()}
            compiled = CUDA_COMPILED_MODES.get(name) if on_cuda else None
            segmenter = Segmenter(loaded, device=str(device), input_size=net_size,
                                  warmup=compiled is None, **options)
            if compiled and compiled[1]:
                # Swapped in before the first frame, so the first capture records it.
                segmenter.path.network = torch.compile(segmenter.path.network,
                                                       mode=compiled[0])
            network_input = segmenter.preprocess(image)
            path = f'{segmenter.precision} {segmenter.execution_path}'
            trial = segmenter.backend_trial  # inference_backend auto's start-up choice
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
        if name not in CPU_PEER_MODES and not on_cuda:
            mode.state = (lambda s=segmenter: f'{s.backend}, OpenMP {s.openmp_wait}, '
                          f'CPUs {s.openmp_cpus}')
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
        chosen = f'; inference_backend {trial.describe()}' if trial else ''
        print(f'  {name}: ready in {setup:.1f} s ({path}{chosen})', flush=True)
    return modes


def _peer(name: str, loaded: LoadedModel, net_size: Tuple[int, int], image: np.ndarray,
          args: argparse.Namespace):
    """Build a peer runtime mode: (path text, frame, forward), or None where not installed."""
    runtime, index_free = CPU_PEER_MODES[name]
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
