"""
Peer runtimes for the benchmark: ENet exported to ONNX, run by ONNX Runtime, OpenCV or OpenVINO.

Not part of the package: the Segmenter runs PyTorch only. These exist to
measure whether another runtime would be faster on this CPU. The export is of
the folded fp32 network (:func:`enet_ros.inference.fold.fold_enet`), either
index-free (:func:`enet_ros.model.set_index_free`; the TorchScript exporter,
whose graph every runtime loads) or as is (max-unpool becomes ScatterND; only
the torch.export-based exporter manages it, and only ONNX Runtime loads it).

A peer's forward takes the Segmenter pipeline's 1x3xhxw fp32 input and
returns 1xCxhxw fp32 logits as a torch tensor, so frames go through the same
pre- and post-processing as the Segmenter's.
"""

import contextlib
import io
from pathlib import Path
import tempfile
from typing import Callable, Optional, Tuple
import warnings

from enet_ros.inference.fold import fold_enet
from enet_ros.model import set_index_free
from enet_ros.model_file import LoadedModel
import torch

Forward = Callable[[torch.Tensor], torch.Tensor]


def export_onnx(loaded: LoadedModel, net_size: Tuple[int, int], path: Path,
                index_free: bool) -> Path:
    """Export the folded fp32 network for a ``(width, height)`` input to ``path``."""
    network = set_index_free(fold_enet(loaded.build()), index_free)
    width, height = net_size
    example = (torch.zeros(1, 3, height, width),)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        torch.onnx.export(network, example, str(path), input_names=['input'],
                          output_names=['logits'], dynamo=not index_free,
                          **({} if not index_free else {'opset_version': 17}))
    return path


def onnxruntime_version() -> Optional[str]:
    """Return the installed onnxruntime's version, or None."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def onnxruntime_forward(path: Path, threads: int, spinning: bool) -> Forward:
    """Build an ONNX Runtime CPU session; ``spinning``: its threads spin-wait between runs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry('session.intra_op.allow_spinning', '1' if spinning else '0')
    session = onnxruntime.InferenceSession(str(path), options,
                                           providers=['CPUExecutionProvider'])

    def forward(network_input: torch.Tensor) -> torch.Tensor:
        array = network_input.float().contiguous().numpy()
        return torch.from_numpy(session.run(None, {'input': array})[0])

    return forward


def opencv_forward(path: Path, threads: int) -> Forward:
    """Build an OpenCV DNN network (CPU, default backend) from the ONNX file."""
    import cv2

    cv2.setNumThreads(threads)
    network = cv2.dnn.readNetFromONNX(str(path))

    def forward(network_input: torch.Tensor) -> torch.Tensor:
        network.setInput(network_input.float().contiguous().numpy())
        return torch.from_numpy(network.forward())

    return forward


def openvino_version() -> Optional[str]:
    """Return the installed openvino's version, or None."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__


def openvino_forward(path: Path, threads: int, precision: str) -> Forward:
    """
    Compile the ONNX file for OpenVINO's CPU plugin, latency hint, ``precision`` 'fp32' or 'bf16'.

    OpenVINO's bf16 is its ``INFERENCE_PRECISION_HINT``: weights and activations in
    bf16 inside the plugin, fp32 in and out.
    """
    import openvino

    core = openvino.Core()
    config = {'INFERENCE_NUM_THREADS': threads, 'PERFORMANCE_HINT': 'LATENCY',
              'INFERENCE_PRECISION_HINT': 'bf16' if precision == 'bf16' else 'f32'}
    compiled = core.compile_model(str(path), 'CPU', config)
    request = compiled.create_infer_request()

    def forward(network_input: torch.Tensor) -> torch.Tensor:
        array = network_input.float().contiguous().numpy()
        return torch.from_numpy(request.infer({0: array})[0].copy())

    return forward


_KEEP = []


def export_dir() -> Path:
    """Return a temporary folder for the exported files (removed at exit)."""
    folder = tempfile.TemporaryDirectory(prefix='enet_onnx_')
    _KEEP.append(folder)
    return Path(folder.name)
