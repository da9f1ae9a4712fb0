"""
The inference package's options on the CPU: cuDNN switch, warm-up sizes, fp16 range check, API.

The CUDA graph path's bookkeeping is in ``test_cuda_path_cpu.py`` (with a
fake capture) and ``test_gpu.py`` (for real).
"""

import copy
from typing import List, Tuple

from enet_ros import segmenter as segmenter_module
from enet_ros.inference import cuda_graphs
from enet_ros.inference.config import (cudnn_benchmark_wanted, parse_frame_sizes,
                                       SegmenterConfigError)
from enet_ros.inference.eager import EagerPath
from enet_ros.inference.fold import fold_enet
from enet_ros.inference.network import (cast_network, Float32Layer, NonFiniteWeightsError,
                                        prepare_network)
from enet_ros.model_file import LoadedModel
from enet_ros.segmenter import Segmenter
from model_files import overflowing_fp16_enet, random_enet
import numpy as np
import pytest
import torch

# The torch execution paths: auto would run OpenVINO on CPUs without AVX-512.
pytestmark = pytest.mark.usefixtures('torch_backend')

NET_SIZE = (96, 64)  # (width, height)


# --- cuDNN autotuning is the caller's process-wide setting ----------------------------


@pytest.mark.parametrize('initial', [False, True])
def test_cpu_segmenters_leave_cudnn_benchmark_alone(loaded, monkeypatch, initial):
    """No CPU Segmenter (any path, even with cudnn_benchmark=True) touches the switch."""
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', initial)
    options = [{'optimize': False}, {'torch_compile': False}, {'torch_compile': True},
               {'optimize': False, 'cudnn_benchmark': True},
               {'torch_compile': False, 'cudnn_benchmark': True}]
    for extra in options:
        Segmenter(loaded, device='cpu', input_size=NET_SIZE, warmup=False, **extra)
        assert torch.backends.cudnn.benchmark is initial, extra
    Segmenter(loaded, device='cpu', input_size=NET_SIZE, torch_compile=False)  # with warm-up
    assert torch.backends.cudnn.benchmark is initial


def test_cudnn_benchmark_choice_respects_deterministic_processes(monkeypatch):
    """None turns autotuning on, False leaves it; a deterministic process never gets it."""
    monkeypatch.setattr(torch.backends.cudnn, 'deterministic', False)
    monkeypatch.setattr(torch, 'are_deterministic_algorithms_enabled', lambda: False)
    assert cudnn_benchmark_wanted(None) == (True, None)
    assert cudnn_benchmark_wanted(True) == (True, None)
    assert cudnn_benchmark_wanted(False) == (False, None)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    assert cuda_graphs.enable_cudnn_autotuning(None) == 'cuDNN autotuning'
    assert torch.backends.cudnn.benchmark is True
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    assert cuda_graphs.enable_cudnn_autotuning(False) is None
    assert torch.backends.cudnn.benchmark is False
    monkeypatch.setattr(torch, 'are_deterministic_algorithms_enabled', lambda: True)
    assert cudnn_benchmark_wanted(True)[0] is False
    monkeypatch.setattr(torch, 'are_deterministic_algorithms_enabled', lambda: False)
    monkeypatch.setattr(torch.backends.cudnn, 'deterministic', True)
    assert cudnn_benchmark_wanted(None) == (False, 'cuDNN autotuning off (deterministic process)')
    assert cuda_graphs.enable_cudnn_autotuning(True) == \
        'cuDNN autotuning off (deterministic process)'
    assert torch.backends.cudnn.benchmark is False


# --- warm-up sizes --------------------------------------------------------------------


def test_parse_frame_sizes():
    """(width, height) pairs and 'WxH' strings; duplicates dropped; anything else refused."""
    assert parse_frame_sizes(None) == [] and parse_frame_sizes([]) == []
    assert parse_frame_sizes([(1280, 720), '640x480', [640, 480], ' 1280X720 ',
                              (np.int64(320), 240.0)]) == [(1280, 720), (640, 480), (320, 240)]
    for bad in ([(0, 5)], ['12x'], ['axb'], [(1.5, 2)], [5], [(1, 2, 3)], ['-4x3']):
        with pytest.raises(SegmenterConfigError, match='warm-up frame size'):
            parse_frame_sizes(bad)


def _record_warmup_frames(monkeypatch) -> List[Tuple[int, int]]:
    shapes = []
    original = EagerPath.run

    def run(self, image, bgr=False, with_confidence=False):
        shapes.append(image.shape[:2])
        return original(self, image, bgr, with_confidence)

    monkeypatch.setattr(EagerPath, 'run', run)
    return shapes


def test_cpu_warm_up_frames(loaded, monkeypatch):
    """CPU: warmup_sizes runs each camera size once; without them the compiler's three frames."""
    shapes = _record_warmup_frames(monkeypatch)
    monkeypatch.setattr(torch, 'compile', lambda module, **kwargs: module)  # no real compiler
    width, height = NET_SIZE
    segmenter = Segmenter(loaded, device='cpu', input_size=NET_SIZE)
    assert segmenter.compiled
    assert shapes == [(height, width), (height, width), (height + 2, width + 2)]
    shapes.clear()
    Segmenter(loaded, device='cpu', input_size=NET_SIZE, warmup_sizes=[(160, 120), '96x64'])
    assert shapes == [(120, 160), (64, 96)]
    shapes.clear()
    Segmenter(loaded, device='cpu', input_size=NET_SIZE, optimize=False, warmup_sizes=[])
    assert shapes == [(height, width), (height, width), (height + 2, width + 2)]
    shapes.clear()
    Segmenter(loaded, device='cpu', input_size=NET_SIZE, warmup=False)
    assert shapes == []


def test_warmup_sizes_need_warmup_and_max_graphs_positive(loaded):
    """warmup_sizes with warmup=False, and max_graphs < 1, are configuration errors."""
    with pytest.raises(SegmenterConfigError, match='warmup=False'):
        Segmenter(loaded, device='cpu', input_size=NET_SIZE, warmup=False,
                  warmup_sizes=[(640, 480)])
    with pytest.raises(SegmenterConfigError, match='warm-up frame size'):
        Segmenter(loaded, device='cpu', input_size=NET_SIZE, warmup_sizes=['640by480'])
    with pytest.raises(SegmenterConfigError, match='max_graphs'):
        Segmenter(loaded, device='cpu', input_size=NET_SIZE, warmup=False, max_graphs=0)


# --- fp16 range check of folded weights ----------------------------------------------


@torch.no_grad()
def test_folded_layer_beyond_fp16_stays_fp32(core_logs):
    """A folded layer over 65504 stays fp32 (and is named); the fp16 network stays finite."""
    model = overflowing_fp16_enet()
    folded = fold_enet(model)
    naive = copy.deepcopy(folded).half()
    assert not all(bool(torch.isfinite(p).all()) for p in naive.parameters())
    with core_logs.at_level('WARNING'):
        kept = cast_network(folded, torch.float16)
    assert kept == ['regular1_1.branch.2']
    assert 'regular1_1.branch.2 (Conv2d, max |w| 2.' in core_logs.text
    layer = folded.regular1_1.branch[2]
    assert isinstance(layer, Float32Layer) and layer.layer.weight.dtype == torch.float32
    for name, tensor in list(folded.named_parameters()) + list(folded.named_buffers()):
        assert bool(torch.isfinite(tensor).all()), name
        if tensor.is_floating_point() and not name.startswith('regular1_1.branch.2.'):
            assert tensor.dtype == torch.float16, name
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    reference = model(x)
    assert not bool(torch.isfinite(naive(x.half())).all())  # what the check prevents
    got = folded(x.half())
    assert got.dtype == torch.float16 and bool(torch.isfinite(got).all())
    agreement = (got.float().argmax(1) == reference.argmax(1)).float().mean().item()
    assert agreement >= 0.99, agreement


def test_non_finite_folded_weights_are_refused(loaded):
    """Folding to infinity raises at construction, naming the layer; unfolded eager works."""
    state = {name: tensor.clone() for name, tensor in loaded.state_dict.items()}
    state['dilated2_2.branch.1.weight'][0] = 3e38  # finite gamma, folds beyond fp32
    state['dilated2_2.branch.1.running_var'][0] = 0.0
    model = LoadedModel('<overflowing>', loaded.metadata, state)
    with pytest.raises(NonFiniteWeightsError, match="layer 'dilated2_2.branch.0'"):
        Segmenter(model, device='cpu', input_size=NET_SIZE, warmup=False)
    assert issubclass(NonFiniteWeightsError, SegmenterConfigError)
    eager = Segmenter(model, device='cpu', input_size=NET_SIZE, warmup=False, optimize=False)
    assert eager.execution_path == 'eager'


def test_fp32_network_has_no_fp32_islands(loaded):
    """On fp32 nothing is wrapped, and the check passes a normal model unchanged."""
    prepared = prepare_network(loaded, torch.device('cpu'), torch.float32, fold=True,
                               channels_last=True)
    assert prepared.float32_layers == []
    assert not any(isinstance(m, Float32Layer) for m in prepared.network.modules())
    assert prepared.notes == ['BatchNorm folded', 'channels_last']
    assert not any(isinstance(m, Float32Layer) for m in random_enet().modules())


def test_facade_keeps_the_public_names():
    """Callers import these from enet_ros.segmenter; they stay there after the split."""
    for name in ('argmax_classes', 'COMPILE_ENV', 'DEVICE_CHOICES', 'labels_from_logits',
                 'normalization_constants', 'normalize', 'PRECISIONS', 'resolve_device',
                 'resolve_precision', 'Segmentation', 'Segmenter', 'SegmenterConfigError'):
        assert hasattr(segmenter_module, name), name
