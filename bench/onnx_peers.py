"""
Peer runtimes for the benchmark: ENet exported to ONNX, run by ONNX Runtime, OpenCV or OpenVINO.

ONNX Runtime and OpenCV are not part of the package; OpenVINO is one of the
Segmenter's backends (``Segmenter(inference_backend='openvino')``, the
benchmark's ``openvino fp32`` mode), and the ``openvino ... index-free`` peers
here time its bare logits graph with the Segmenter's torch pre- and
post-processing around it. The export is the package's
(:func:`enet_ros.inference.openvino_backend.export_folded`): the folded fp32
network, either index-free (:func:`enet_ros.model.set_index_free`; the
TorchScript exporter, whose graph every runtime loads) or as is (max-unpool
becomes ScatterND; only the torch.export-based exporter manages it, and only
ONNX Runtime loads it); OpenVINO compiles with the package's options
(:func:`~enet_ros.inference.openvino_backend.compile_config`).

A peer's forward takes the Segmenter pipeline's 1x3xhxw fp32 input and
returns 1xCxhxw fp32 logits as a torch tensor, so frames go through the same
pre- and post-processing as the Segmenter's.
"""

from pathlib import Path
import tempfile
from typing import Callable, Optional, Tuple

from enet_ros.inference.openvino_backend import compile_config, export_folded
from enet_ros.inference.openvino_backend import openvino_version  # noqa: F401 (the bench's)
from enet_ros.model_file import LoadedModel
import torch

Forward = Callable[[torch.Tensor], torch.Tensor]


def export_onnx(loaded: LoadedModel, net_size: Tuple[int, int], path: Path,
                index_free: bool) -> Path:
    """Export the folded fp32 network for a ``(width, height)`` input to ``path``."""
    return export_folded(loaded, net_size, path, index_free)


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


def openvino_forward(path: Path, threads: int, precision: str) -> Forward:
    """
    Compile the ONNX file for OpenVINO's CPU plugin, latency hint, ``precision`` 'fp32' or 'bf16'.

    OpenVINO's bf16 is its ``INFERENCE_PRECISION_HINT``: weights and activations in
    bf16 inside the plugin, fp32 in and out.
    """
    import openvino

    core = openvino.Core()
    compiled = core.compile_model(str(path), 'CPU', compile_config(threads, precision))
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
