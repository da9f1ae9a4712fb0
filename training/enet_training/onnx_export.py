"""
ONNX export for other runtimes (ONNX Runtime, TensorRT, OpenVINO), checked at export.

The network exported is the node's CPU network: BatchNorm folded
(:func:`enet_ros.inference.fold.fold_enet`) and index-free
(:func:`enet_ros.model.set_index_free`): ENet's max-unpool becomes
``pixel_shuffle`` of masked values, which every runtime loads (the max-unpool
op does not export cleanly). Fixed shape, fp32, opset 17, TorchScript
exporter, as ``test/test_index_free.py`` and the benchmark's peers export it.

The graph::

    input   1x3xHxW float32: RGB pixels p in [0, 255] as (p / 255 - mean) / std
    logits  1xCxHxW float32: the class id of a pixel is the argmax over C

with H x W the model's input size: resize a frame to it (the Segmenter uses
antialiased bilinear) and the labels back (nearest). The model's metadata
(:func:`onnx_metadata`) is in the ONNX file's ``metadata_props``: input size,
mean and std, class names, colours, void id, drivable classes and the full
enet_ros metadata as JSON under ``enet_ros``.

The check (:func:`check_onnx`): ONNX Runtime runs the file on frames through
the Segmenter's own pre- and post-processing, and its labels must equal the
Segmenter's (CPU fp32) on at least :data:`MIN_AGREEMENT` of the pixels, else
the export fails with the figure and writes no file.
"""

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence
import uuid
import warnings

from enet_ros.inference.fold import fold_enet
from enet_ros.model import set_index_free
from enet_ros.model_file import LoadedModel, ModelMetadata
from enet_ros.segmenter import Segmenter
import numpy as np
import torch

OPSET = 17
INPUT_NAME = 'input'
OUTPUT_NAME = 'logits'
#: The share of pixels on which ONNX Runtime's labels must equal the Segmenter's.
MIN_AGREEMENT = 0.999


class OnnxExportError(ValueError):
    """The ONNX export cannot be made, or its check failed (one line, naming the file)."""


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise OnnxExportError(f'--onnx needs the onnx and onnxruntime packages ({error}); '
                              'pip install onnx onnxruntime') from None
    return onnx, onnxruntime


def onnx_metadata(metadata: ModelMetadata) -> Dict[str, str]:
    """Return the ONNX ``metadata_props`` (string to string) for a model's metadata."""
    width, height = metadata.input_size
    core = {key: value for key, value in json.loads(metadata.to_json()).items()
            if key != 'training'}
    return {
        'enet_ros': json.dumps(core, sort_keys=True),
        'input_size': f'{width}x{height}',
        'input': f'{INPUT_NAME}: 1x3x{height}x{width} float32, RGB pixels p in [0, 255] as '
                 '(p / 255 - mean) / std',
        'output': f'{OUTPUT_NAME}: 1x{metadata.num_classes}x{height}x{width} float32 logits; '
                  'class id = argmax over the classes',
        'mean': json.dumps(list(metadata.mean)),
        'std': json.dumps(list(metadata.std)),
        'class_names': json.dumps(list(metadata.class_names)),
        'colors': json.dumps([list(c) for c in metadata.colors]),
        'void_id': json.dumps(metadata.void_id),
        'drivable_classes': json.dumps(list(metadata.drivable_classes)),
        'dataset': metadata.dataset,
    }


def export_network(loaded: LoadedModel, path: Path) -> Path:
    """Write the folded, index-free fp32 network with its metadata to ``path`` (unchecked)."""
    onnx, _ = _require_onnx()
    network = set_index_free(fold_enet(loaded.build()))
    width, height = loaded.metadata.input_size
    example = (torch.zeros(1, 3, height, width),)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        torch.onnx.export(network, example, str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamo=False, opset_version=OPSET)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    onnx.helper.set_model_props(model, onnx_metadata(loaded.metadata))
    model.doc_string = (f'ENet ({loaded.metadata.num_classes} {loaded.metadata.dataset} '
                        'classes) exported by enet-train: BatchNorm folded, index-free pooling')
    onnx.save(model, str(path))
    return path


def check_frames(input_size: Sequence[int], images: Sequence[Path] = ()) -> List[np.ndarray]:
    """
    Return the HxWx3 uint8 RGB frames the export is checked on.

    ``images`` (read as the training data is), else two synthetic frames: one
    at the network input size and one of another size and aspect ratio (so
    both resizes run), each smooth random colour fields with sharp edges.
    """
    if images:
        from .datasets import read_image

        return [read_image(Path(path)) for path in images]
    import cv2

    rng = np.random.default_rng(0)
    width, height = input_size
    frames = []
    for size in ((width, height), (width * 3 // 2 + 7, height * 5 // 4 + 3)):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        frame = cv2.resize(coarse, size, interpolation=cv2.INTER_CUBIC)
        blocks = cv2.resize(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), size,
                            interpolation=cv2.INTER_NEAREST)
        frames.append(np.where(rng.random(size[::-1])[..., None] < 0.3, blocks, frame))
    return frames


def check_onnx(path: Path, loaded: LoadedModel, frames: Sequence[np.ndarray]) -> float:
    """
    Return the share of pixels where ONNX Runtime's labels equal the Segmenter's.

    Both go through the Segmenter's pre- and post-processing (resize,
    normalise; argmax, nearest resize back); only the network differs: the
    file run by ONNX Runtime (CPU) against the Segmenter's CPU fp32 network.
    """
    _, onnxruntime = _require_onnx()
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    segmenter = Segmenter(loaded, device='cpu', precision='fp32', warmup=False,
                          torch_compile=False)

    def forward(network_input: torch.Tensor) -> torch.Tensor:
        array = network_input.float().contiguous().numpy()
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])

    agree = total = 0
    for frame in frames:
        reference = segmenter.segment(frame).labels
        with torch.inference_mode():
            labels = segmenter.path.pipeline.segment(frame, forward).labels
        agree += int((labels == reference).sum())
        total += reference.size
    return agree / total


def export_onnx(loaded: LoadedModel, path: Path, images: Sequence[Path] = (),
                min_agreement: float = MIN_AGREEMENT) -> float:
    """
    Export ``loaded`` to ``path`` and check it (:func:`check_onnx`); return the agreement.

    The file is written beside ``path`` and renamed into place only when the
    check passes; else :class:`OnnxExportError` gives the figure and nothing
    is left at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f'.{path.name}.{uuid.uuid4().hex}.tmp')
    try:
        export_network(loaded, partial)
        frames = check_frames(loaded.metadata.input_size, images)
        agreement = check_onnx(partial, loaded, frames)
        pixels = sum(frame.shape[0] * frame.shape[1] for frame in frames)
        if agreement < min_agreement:
            raise OnnxExportError(
                f"ONNX export '{path}' failed its check: ONNX Runtime's labels equal the "
                f"Segmenter's on {100 * agreement:.3f}% of {pixels} pixels of {len(frames)} "
                f'frames, below the {100 * min_agreement:.1f}% required; nothing written')
        os.replace(partial, path)
        return agreement
    finally:
        if partial.exists():
            partial.unlink()


def read_onnx_metadata(path: Path) -> Optional[Dict[str, str]]:
    """Return an ONNX file's ``metadata_props`` as a dict (None without onnx installed)."""
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}
