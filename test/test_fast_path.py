"""
The optimised CPU path gives the eager path's labels; BatchNorm folding is exact to rounding.

Agreement bound, >= 99.9% of pixels, and why not bit-identical: the optimised
path folds BatchNorm into the convolutions (in float64, stored as float32) and
runs channels_last convolutions, so activations differ from the eager
network's by float32 rounding (about 1e-7 of the logits). Mostly that changes
nothing, but in flat image regions neighbouring activations are equal up to
rounding, and a downsampling max-pool then picks its index among near-ties by
the last bit; the decoder's max-unpool puts the value back one pixel away.
Measured on the generated inputs here: 100% of pixels agree on noise, 99.97%
on flat synthetic images (confidence moves by up to 1e-3 on a few pixels). The
eager path has the same sensitivity across machines and library versions.
"""

from pathlib import Path

from enet_ros import segmenter as segmenter_module
from enet_ros.inference.config import FREEZE_ENV
from enet_ros.inference.cuda_graphs import CapturedFrame
from enet_ros.inference.fold import count_batchnorms, fold_enet, fold_sequential
from enet_ros.model import ENet, RegularBottleneck
from enet_ros.model_file import load_model_file
from enet_ros.segmenter import (argmax_classes, COMPILE_ENV, cpu_supports_bf16,
                                labels_from_logits, Segmenter)
from model_files import label_agreement, write_random_model
import numpy as np
import pytest
import torch
from torch import nn

# The torch execution paths: auto would run OpenVINO on CPUs without AVX-512.
pytestmark = pytest.mark.usefixtures('torch_backend')

AGREEMENT = 0.999


def _assert_confidence_close(got: np.ndarray, expected: np.ndarray) -> None:
    """Mean difference <= 1e-4, 1e-2 everywhere (moved max-pool ties: module docstring)."""
    difference = np.abs(got - expected)
    assert float(difference.mean()) <= 1e-4
    assert float(difference.max()) <= 1e-2


NET_SIZE = (96, 64)  # (width, height): small so that the CPU tests stay fast


def _random_enet(seed: int = 0, num_classes: int = 11) -> ENet:
    torch.manual_seed(seed)
    model = ENet(num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def _images(shapes=((64, 96), (120, 160), (37, 53))) -> list:
    """Generate HxWx3 uint8 inputs: noise, and a smooth gradient with blocks."""
    rng = np.random.default_rng(7)
    images = []
    for height, width in shapes:
        images.append(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        rows, cols = np.mgrid[0:height, 0:width]
        smooth = np.stack([rows * 255 // max(1, height - 1), cols * 255 // max(1, width - 1),
                           ((rows // 8 + cols // 8) % 2) * 200], axis=-1)
        images.append(smooth.astype(np.uint8))
    return images


@pytest.fixture(scope='module')
def eager(loaded) -> Segmenter:
    """Build the reference: the unoptimised fp32 network."""
    return Segmenter(loaded, device='cpu', input_size=NET_SIZE, optimize=False)


# --- BatchNorm folding -----------------------------------------------------------------


def test_fold_enet_matches_logits_and_removes_every_batchnorm():
    """The folded copy has no BatchNorm and the same logits to float32 rounding."""
    model = _random_enet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_enet(model)
    assert count_batchnorms(model) > 0
    assert count_batchnorms(folded) == 0
    assert not any(isinstance(m, nn.Dropout2d) for m in folded.modules())
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    scale = expected.abs().max().item()
    assert torch.allclose(got, expected, rtol=0, atol=1e-5 * scale)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    # the original is unchanged
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_fold_asymmetric_block_folds_into_second_conv_only():
    """Asymmetric 5x1, 1x5, BN: the 5x1 keeps no bias, the 1x5 gains the BN's affine map."""
    block = RegularBottleneck(16, asymmetric=True).eval()
    for module in block.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    folded = fold_sequential(block.branch)
    kinds = [type(m).__name__ for m in folded]
    assert kinds == ['Conv2d', 'PReLU', 'Conv2d', 'Conv2d', 'PReLU', 'Conv2d']
    assert folded[2].kernel_size == (5, 1) and folded[2].bias is None
    assert folded[3].kernel_size == (1, 5) and folded[3].bias is not None
    x = torch.randn(1, 16, 20, 24)
    with torch.no_grad():
        assert torch.allclose(folded(x), block.branch(x), atol=1e-5)


def test_fold_initial_block_and_transposed_convolutions():
    """Initial block (conv + pool channels) and ConvTranspose + BN fold correctly."""
    model = _random_enet(seed=3)
    folded = fold_enet(model)
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        assert torch.allclose(folded.initial(x), model.initial(x), atol=1e-5)
        up, indices = model.downsample1_0(model.initial(x))
        deep, indices2 = model.downsample2_0(up)
        expected = model.upsample4_0(deep, indices2)
        got = folded.upsample4_0(deep, indices2)
    assert torch.allclose(got, expected, atol=1e-5)
    assert any(isinstance(m, nn.ConvTranspose2d) and m.bias is not None
               for m in folded.upsample4_0.modules())


def test_fold_refuses_training_mode():
    """Folding uses running statistics, so a model in training mode is refused."""
    with pytest.raises(ValueError, match='eval mode'):
        fold_enet(ENet(4).train())


# --- argmax ----------------------------------------------------------------------------


def test_labels_from_logits_equal_for_nchw_channels_last_and_ties():
    """Fast argmax picks the first of tied maxima, like torch.argmax, in both layouts."""
    torch.manual_seed(1)
    logits = torch.randn(1, 11, 17, 23)
    logits[:, 4] = logits[:, 2]  # ties between 2 and 4: 2 must win where they lead
    logits = torch.round(logits * 4) / 4  # many more ties
    expected = logits.argmax(1).to(torch.uint8)
    assert torch.equal(argmax_classes(logits), expected)
    assert torch.equal(labels_from_logits(logits), expected)
    assert torch.equal(labels_from_logits(logits.contiguous(memory_format=torch.channels_last)),
                       expected)


# --- the optimised Segmenter on the CPU ------------------------------------------------


def test_optimised_eager_cpu_path_agrees_with_eager_fp32(loaded, eager):
    """Folded channels_last network (compile off): labels agree on generated inputs."""
    fast = Segmenter(loaded, device='cpu', input_size=NET_SIZE, torch_compile=False,
                     precision='fp32')
    assert not fast.compiled
    assert 'BatchNorm folded' in fast.describe() and 'channels_last' in fast.describe()
    assert 'torch.compile off' in fast.describe()
    for image in _images():
        for bgr in (False, True):
            got = fast.segment(image, bgr=bgr, with_confidence=True)
            expected = eager.segment(image, bgr=bgr, with_confidence=True)
            assert got.labels.shape == image.shape[:2]
            assert label_agreement(got.labels, expected.labels) >= AGREEMENT
            _assert_confidence_close(got.confidence, expected.confidence)


def test_optimised_path_accepts_views_and_negative_strides(loaded, eager):
    """A cropped view and a channel-reversed view (negative stride) both work."""
    fast = Segmenter(loaded, device='cpu', input_size=NET_SIZE, torch_compile=False,
                     precision='fp32', warmup=False)
    image = _images()[0]
    padded = np.zeros((80, 120, 3), dtype=np.uint8)
    padded[5:69, 7:103] = image
    view = padded[5:69, 7:103]
    assert label_agreement(fast.segment(view).labels, eager.segment(image).labels) >= AGREEMENT
    reversed_view = image[..., ::-1]
    assert label_agreement(fast.segment(reversed_view, bgr=True).labels,
                           eager.segment(image).labels) >= AGREEMENT


def test_preprocess_shape_and_logits(loaded, eager):
    """Preprocess gives 1x3xhxw (channels_last when optimised); logits are 1xCxhxw."""
    fast = Segmenter(loaded, device='cpu', input_size=NET_SIZE, torch_compile=False,
                     precision='fp32', warmup=False)
    image = _images()[2]
    x = fast.preprocess(image)
    assert x.shape == (1, 3, NET_SIZE[1], NET_SIZE[0]) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    reference = eager.preprocess(image)
    assert reference.is_contiguous()
    assert torch.allclose(x, reference)
    logits = fast.logits(x)
    assert logits.shape == (1, fast.num_classes, NET_SIZE[1], NET_SIZE[0])
    assert float((logits - eager.logits(reference)).abs().max()) < 1e-2


def test_device_label_resize_matches_host_resize(loaded):
    """The on-device label resize (what CUDA graphs capture) equals the CPU's numpy resize."""
    fast = Segmenter(loaded, device='cpu', input_size=NET_SIZE, torch_compile=False,
                     precision='fp32', warmup=False)
    for image in _images():
        expected = fast.segment(image, bgr=True, with_confidence=True)
        with torch.inference_mode():
            labels, confidence = fast.path.pipeline.device_pipeline(
                torch.from_numpy(image), fast.path.forward, True, True, resize_labels=True)
        assert np.array_equal(labels.numpy(), expected.labels)
        assert np.array_equal(confidence.numpy(), expected.confidence)


def test_describe_names_the_path(loaded, eager):
    """describe() says eager or optimised, and what the optimised path does."""
    assert 'eager' in eager.describe() and not eager.compiled and not eager.cuda_graphs
    assert eager.execution_path == 'eager'
    fast = Segmenter(loaded, device='cpu', input_size=NET_SIZE, torch_compile=False,
                     warmup=False)
    assert fast.execution_path.startswith('optimised (')
    assert not fast.cuda_graphs  # CUDA graphs are for CUDA only


def test_compile_env_switch(loaded, monkeypatch):
    """ENET_ROS_COMPILE=0 turns torch.compile off where torch_compile is left at None."""
    monkeypatch.setenv(COMPILE_ENV, '0')
    fast = Segmenter(loaded, device='cpu', input_size=NET_SIZE, warmup=False)
    assert not fast.compiled and 'torch.compile off' in fast.describe()


def test_compile_failure_falls_back_to_eager(loaded, eager, monkeypatch, core_logs):
    """A compiler that fails on the first frame leaves a working folded eager path."""

    def failing_compile(module, **kwargs):
        def run(*args):
            raise RuntimeError('no C++ compiler (simulated)\nmore detail')
        return run

    monkeypatch.setattr(segmenter_module.torch, 'compile', failing_compile)
    with core_logs.at_level('WARNING'):
        fast = Segmenter(loaded, device='cpu', input_size=NET_SIZE, torch_compile=True,
                         precision='fp32')
    assert not fast.compiled
    assert 'torch.compile failed' in fast.describe()
    assert 'no C++ compiler (simulated)' in core_logs.text
    image = _images()[0]
    assert label_agreement(fast.segment(image).labels, eager.segment(image).labels) >= AGREEMENT


def test_freezing_default_and_env_switch(loaded, monkeypatch):
    """Frozen weights by default in bf16 only; freezing= and ENET_ROS_FREEZE decide otherwise."""
    monkeypatch.delenv(FREEZE_ENV, raising=False)
    options = {'device': 'cpu', 'input_size': NET_SIZE, 'torch_compile': True,
               'warmup': False}
    fp32 = Segmenter(loaded, precision='fp32', **options)
    assert not fp32.path.freezing and 'frozen' not in fp32.describe()
    on = Segmenter(loaded, precision='fp32', freezing=True, **options)
    assert on.path.freezing and 'frozen weights' in on.describe()
    monkeypatch.setenv(FREEZE_ENV, '1')
    assert Segmenter(loaded, precision='fp32', **options).path.freezing
    assert not Segmenter(loaded, precision='fp32', freezing=False, **options).path.freezing
    monkeypatch.setenv(FREEZE_ENV, '0')
    assert not Segmenter(loaded, precision='fp32', **options).path.freezing
    if cpu_supports_bf16():
        assert not Segmenter(loaded, precision='bf16', **options).path.freezing
        monkeypatch.delenv(FREEZE_ENV)
        assert Segmenter(loaded, precision='bf16', **options).path.freezing


@pytest.mark.slow
@pytest.mark.parametrize('freezing', [True, False])
def test_compiled_cpu_path_agrees_with_eager_fp32(loaded, eager, freezing):
    """
    torch.compile (inductor) path: compiles, runs compiled and agrees with eager fp32.

    Tiny network input to keep compilation short (it is still 10-40 s on 2 cores).
    """
    fast = Segmenter(loaded, device='cpu', input_size=NET_SIZE, torch_compile=True,
                     precision='fp32', freezing=freezing)
    assert fast.compiled, fast.describe()
    assert 'torch.compile' in fast.describe() and 'failed' not in fast.describe()
    assert 'not yet run' not in fast.describe()
    assert ('frozen weights' in fast.describe()) == freezing
    for image in _images():
        got = fast.segment(image, with_confidence=True)
        expected = eager.segment(image, with_confidence=True)
        assert label_agreement(got.labels, expected.labels) >= AGREEMENT
        _assert_confidence_close(got.confidence, expected.confidence)
    assert fast.compiled  # still compiled: no fallback happened on the way


@pytest.mark.slow
def test_frozen_paths_keep_their_own_weights(tmp_path: Path):
    """
    Two frozen Segmenters of one size, different weights: each gives its own model's labels.

    Frozen compiled code holds the weights, so it must not be shared between
    Segmenters (each has a code object of its own), and inductor's process-wide
    ``freezing`` flag is left as it was.
    """
    import torch._inductor.config as inductor_config

    before = inductor_config.freezing
    segmenters, references = [], []
    for seed in (1, 2):
        loaded_seed = load_model_file(write_random_model(tmp_path / f'{seed}.safetensors',
                                                         seed=seed, input_size=NET_SIZE))
        segmenters.append(Segmenter(loaded_seed, device='cpu', precision='fp32',
                                    torch_compile=True, freezing=True))
        references.append(Segmenter(loaded_seed, device='cpu', optimize=False, warmup=False))
    assert inductor_config.freezing == before
    image = _images()[0]
    labels = [s.segment(image).labels for s in segmenters]
    assert not np.array_equal(labels[0], labels[1])  # the two models differ
    for got, reference in zip(labels, references):
        assert label_agreement(got, reference.segment(image).labels) >= AGREEMENT
    assert all(s.compiled for s in segmenters)


# --- CUDA paths refused without CUDA (the graph cache: test_cuda_path_cpu.py) ---------


def test_captured_frame_needs_cuda():
    """A CPU device is refused by CapturedFrame before anything touches CUDA."""
    with pytest.raises(ValueError, match='CUDA'):
        CapturedFrame(lambda frame: (frame[..., 0], None), (4, 4), torch.device('cpu'))
