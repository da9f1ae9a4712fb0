"""
The OpenVINO execution path: ENet exported once to ONNX, compiled by OpenVINO's CPU plugin.

Why it exists: on CPUs without AVX-512 (AMD Zen 2/3, most Intel client CPUs,
ARM boards) OpenVINO's CPU plugin ran ENet faster than the compiled torch
fp32 path, and, with its own thread pool, kept its speed beside other busy
processes (README, Performance). Where the CPU has AVX-512 the torch path
(bf16, or compiled fp32) was faster, so ``inference_backend='auto'`` picks by
CPU features (:func:`enet_ros.inference.backends.resolve_backend`).

The graph (built once, at start-up):

* the folded fp32 network with index-free pooling
  (:func:`enet_ros.model.set_index_free`; max-unpool with indices has no clean
  ONNX form), exported by :func:`export_onnx` (TorchScript exporter);
* input: the 1xhxwx3 frame as the camera gives it, uint8 (frames at the
  network size) or float32 (frames torch resized first, the same antialiased
  bilinear resize as every other path), RGB or BGR (channels reversed in the
  graph); OpenVINO's preprocessing converts, subtracts the mean and divides by
  the std, and transposes to NCHW;
* outputs: 1xhxw uint8 labels from TopK(k=1) over the classes (first largest
  on ties, as ``argmax``) and, in the variant for frames that ask for it, the
  1xhxw float32 confidence, softmax's largest probability, ``1 / sum(exp(l -
  max))``, computed in the graph.

Each (input type, channel order, confidence) variant is compiled on the
first frame that needs it (about 0.3 s; the default warm-up compiles the
RGB labels-only ones). Labels are resized to the frame size on the host with
the same nearest map as every other path. ``forward`` (for
``Segmenter.logits``) compiles a plain logits variant on first use.

Compile options: ``PERFORMANCE_HINT=LATENCY``, ``INFERENCE_NUM_THREADS``
and ``INFERENCE_PRECISION_HINT`` f32 (bf16 where the Segmenter runs bf16).
Threads: the Segmenter's ``cpu_threads``; auto (``adaptive``): as many as
torch's pool, or half as many, whichever the frames run faster with
(:class:`~enet_ros.inference.cpu_runtime.ThreadChoice`: on cores shared with
busy processes the pool's threads, meeting after every layer, waited for each
other; the network is compiled for both counts at start-up, the same graph).
"""

import contextlib
import io
from pathlib import Path
import tempfile
import threading
import time
from typing import Dict, Optional, Sequence, Tuple
import warnings

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .cpu_runtime import thread_candidates, ThreadChoice
from .eager import EagerPath
from .fold import fold_enet
from .frames import as_tensor, FramePipeline, Segmentation
from ..model import set_index_free
from ..model_file import LoadedModel


def export_onnx(network: nn.Module, input_size: Tuple[int, int], path: Path,
                index_free: bool = True) -> Path:
    """
    Export ``network`` (fp32, NCHW) for a ``(width, height)`` input to the ONNX file ``path``.

    ``index_free``: the network pools index-free (the TorchScript exporter,
    opset 17; every runtime loads it); otherwise max-unpool becomes ScatterND
    through the torch.export-based exporter (only ONNX Runtime loads that).
    Input ``input`` 1x3xhxw, output ``logits`` 1xCxhxw.
    """
    width, height = input_size
    example = (torch.zeros(1, 3, height, width),)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        torch.onnx.export(network, example, str(path), input_names=['input'],
                          output_names=['logits'], dynamo=not index_free,
                          **({'opset_version': 17} if index_free else {}))
    return path


def export_folded(loaded: LoadedModel, input_size: Tuple[int, int], path: Path,
                  index_free: bool = True) -> Path:
    """Export the model file's network, BatchNorm folded, fp32, to ``path`` (see export_onnx)."""
    network = set_index_free(fold_enet(loaded.build()), index_free)
    return export_onnx(network, input_size, path, index_free)


def openvino_version() -> Optional[str]:
    """Return the installed openvino's version (``2026.4.1``), or None when not installed."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__.split('-')[0]


#: The process's one ``openvino.Core`` (see :func:`shared_core`) and its lock.
_CORE = None
_CORE_LOCK = threading.Lock()


def shared_core():
    """
    Return the process's ``openvino.Core``, made on first use and kept until the process ends.

    One for all Segmenters, never destroyed while the process runs: the CPU
    plugin's engine, made by a Core's first compilation, registers an
    alternate signal stack on the thread that made it and frees it with the
    engine. A node that swapped its model (a second Core on the swap thread,
    the first one destroyed) then died of SIGSEGV at the next signal its main
    thread received (the kernel could not write the handler's frame on the
    freed stack): exit code -11 at Ctrl-C.
    """
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino

            _CORE = openvino.Core()
        return _CORE


def compile_config(threads: int, precision: str = 'fp32') -> Dict[str, object]:
    """Return the CPU plugin's compile options: latency hint, threads, inference precision."""
    return {'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_NUM_THREADS': int(threads),
            'INFERENCE_PRECISION_HINT': 'bf16' if precision == 'bf16' else 'f32'}


def with_labels(model, confidence: bool):
    """
    Replace ``model``'s logits output (1xCxhxw) by 1xhxw uint8 labels (and confidence).

    TopK with k=1 over the classes, stable, so ties give the first class as
    argmax does; confidence is ``1 / sum(exp(logits - max))``.
    """
    from openvino import opset13 as ops

    old_result = model.get_results()[0]
    logits = old_result.input_value(0)
    top = ops.topk(logits, ops.constant(np.int64(1)), axis=1, mode='max', sort='value',
                   index_element_type='i32', stable=True)
    axis = ops.constant(np.array([1], dtype=np.int64))
    labels = ops.convert(ops.squeeze(top.output(1), axis), 'u8')
    labels.output(0).set_names({'labels'})
    results = [ops.result(labels)]
    if confidence:
        total = ops.reduce_sum(ops.exp(ops.subtract(logits, top.output(0))), axis,
                               keep_dims=False)
        probability = ops.divide(ops.constant(np.float32(1.0)), total)
        probability.output(0).set_names({'confidence'})
        results.append(ops.result(probability))
    model.remove_result(old_result)
    model.add_results(results)
    return model


def with_frame_input(model, mean: Sequence[float], std: Sequence[float], uint8: bool,
                     bgr: bool):
    """
    Make ``model`` take the 1xhxwx3 frame (uint8 or float32 0-255, RGB or BGR) and normalise it.

    ``mean`` and ``std`` on the 0-1 scale (the model file's); OpenVINO's
    preprocessing converts to f32, reverses BGR to RGB, subtracts ``mean *
    255``, divides by ``std * 255`` and transposes NHWC to NCHW.
    """
    import openvino
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    tensor = ppp.input().tensor()
    tensor.set_element_type(openvino.Type.u8 if uint8 else openvino.Type.f32)
    tensor.set_layout(openvino.Layout('NHWC'))
    ppp.input().model().set_layout(openvino.Layout('NCHW'))
    steps = ppp.input().preprocess()
    if uint8:
        steps.convert_element_type(openvino.Type.f32)
    if bgr:
        steps.reverse_channels()
    steps.mean([float(m) * 255.0 for m in mean]).scale([float(s) * 255.0 for s in std])
    return ppp.build()


class OpenVinoPath(EagerPath):
    """
    Frames through OpenVINO (see the module docstring); the EagerPath interface.

    ``network``: the folded, index-free fp32 network the graph was exported
    from (what :attr:`Segmenter.network` returns). Raises whatever loading
    raises (ImportError without openvino, RuntimeError from the plugin); the
    Segmenter turns that into a warning and the torch path.
    """

    def __init__(self, network: nn.Module, pipeline: FramePipeline, metadata,
                 threads: int, precision: str = 'fp32', notes: Sequence[str] = (),
                 adaptive: bool = False):
        super().__init__(network, pipeline, 'openvino', notes)
        self.version = openvino_version()
        self.threads = int(threads)
        self.precision = precision
        #: Which thread count runs the frames (one count unless ``adaptive``).
        self.thread_choice = ThreadChoice(thread_candidates(self.threads) if adaptive
                                          else (self.threads,))
        self._mean, self._std = metadata.mean, metadata.std
        self._core = shared_core()
        width, height = pipeline.input_size
        with tempfile.TemporaryDirectory(prefix='enet_ros_openvino_') as folder:
            path = export_onnx(network, (width, height), Path(folder) / 'enet.onnx')
            self._model = self._core.read_model(str(path))
        self._requests: Dict[Tuple[bool, bool, bool, int], object] = {}
        self._logits_request = None
        self._lock = threading.Lock()  # one compile at a time; requests are per Segmenter
        for count in self.thread_choice.candidates:  # loads the plugin: fail here
            self.request(uint8=True, bgr=False, confidence=False, threads=count)

    def request(self, uint8: bool, bgr: bool, confidence: bool, threads: Optional[int] = None):
        """Return the infer request of one graph variant and thread count (compiled once)."""
        key = (uint8, bgr, confidence, int(threads or self.threads))
        request = self._requests.get(key)
        if request is None:
            with self._lock:
                model = with_frame_input(with_labels(self._model.clone(), confidence),
                                         self._mean, self._std, uint8, bgr)
                compiled = self._core.compile_model(model, 'CPU',
                                                    compile_config(key[3], self.precision))
                request = self._requests[key] = compiled.create_infer_request()
        return request

    def forward(self, network_input: torch.Tensor) -> torch.Tensor:
        """Map a 1x3xhxw normalised input to 1xCxhxw fp32 logits (plain graph, compiled once)."""
        if self._logits_request is None:
            with self._lock:
                compiled = self._core.compile_model(self._model.clone(), 'CPU',
                                                    compile_config(self.threads, self.precision))
                self._logits_request = compiled.create_infer_request()
        array = network_input.float().contiguous().numpy()
        result = self._logits_request.infer({0: array})
        return torch.from_numpy(np.array(result[0]))

    def segment_frame(self, image: np.ndarray, bgr: bool = False,
                      with_confidence: bool = False) -> Segmentation:
        """HxWx3 uint8 frame to HxW labels (and confidence) at the frame's size."""
        frame = as_tensor(image)  # checks the contract
        height, width = image.shape[:2]
        net_width, net_height = self.pipeline.input_size
        if (height, width) == (net_height, net_width):
            array = np.ascontiguousarray(image)[None]
            uint8 = True
        else:
            resized = F.interpolate(frame.permute(2, 0, 1).unsqueeze(0).float(),
                                    size=(net_height, net_width), mode='bilinear',
                                    align_corners=False, antialias=True)
            array = resized.permute(0, 2, 3, 1).contiguous().numpy()
            uint8 = False
        choice = self.thread_choice
        threads = choice.next_threads()
        request = self.request(uint8, bool(bgr), bool(with_confidence), threads)
        start = time.perf_counter()
        outputs = request.infer({0: array})
        choice.record(threads, (time.perf_counter() - start) * 1e3)
        labels = np.array(outputs[0])[0]
        confidence = np.array(outputs[1])[0] if with_confidence else None
        if labels.shape != (height, width):
            rows, cols = (index.numpy() for index in self.pipeline.label_index(height, width))
            labels = labels[rows][:, cols]
            if confidence is not None:
                confidence = confidence[rows][:, cols]
        return Segmentation(labels, confidence)

    def path_notes(self) -> Sequence[str]:
        """Return OpenVINO's version, the plugin options and the graph's form."""
        return (f'OpenVINO {self.version} CPU plugin', f'{self.precision}',
                self.thread_choice.describe(), 'latency hint', 'index-free export',
                'normalisation and ArgMax in the graph')
