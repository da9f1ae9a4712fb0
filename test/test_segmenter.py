"""The Segmenter on the CPU: array contract, device and precision choices, argmax."""

from pathlib import Path

from enet_ros.model_file import load_model_file
from enet_ros.segmenter import (argmax_classes, normalization_constants, normalize,
                                resolve_device, resolve_precision, Segmenter,
                                SegmenterConfigError)
import numpy as np
import pytest
import torch
import torch.nn.functional as F

NET_SIZE = (64, 48)  # network input (width, height) for fast tests


@pytest.fixture(scope='module', params=['eager', 'default'])
def segmenter(request, random_model_file: Path) -> Segmenter:
    """Build a CPU Segmenter (eager, and the default path the node runs), 64x48 input."""
    options = {'optimize': False} if request.param == 'eager' else {}
    return Segmenter.from_file(str(random_model_file), device='cpu', input_size=NET_SIZE,
                               warmup=False, **options)


@pytest.fixture(scope='module')
def reference_net(random_model_file: Path) -> torch.nn.Module:
    """Return the model file's plain eager ENet, independent of any Segmenter."""
    return load_model_file(random_model_file).build()


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Make a smooth random RGB image (smooth, so resizing keeps its structure)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 5, 3)).astype(np.float32)
    small_t = torch.from_numpy(small).permute(2, 0, 1)[None]
    big = F.interpolate(small_t, size=(height, width), mode='bilinear', align_corners=False)
    noise = torch.from_numpy(rng.normal(0, 8, (1, 3, height, width)).astype(np.float32))
    return (big + noise).clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()


def _reference_labels(segmenter: Segmenter, net: torch.nn.Module,
                      image: np.ndarray) -> np.ndarray:
    """Label ``image`` independently: resize, normalise, forward, argmax, nearest back."""
    height, width = image.shape[:2]
    net_width, net_height = segmenter.input_size
    frame = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float()
    if (height, width) != (net_height, net_width):
        frame = F.interpolate(frame, size=(net_height, net_width), mode='bilinear',
                              align_corners=False, antialias=True)
    mean = torch.tensor(segmenter.metadata.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(segmenter.metadata.std).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        logits = net((frame - mean) / std)
    grid = logits.argmax(1)[0].to(torch.uint8).numpy()
    # Nearest neighbour by pixel centres, in exact integer arithmetic.
    rows = ((2 * np.arange(height) + 1) * net_height) // (2 * height)
    cols = ((2 * np.arange(width) + 1) * net_width) // (2 * width)
    return grid[rows[:, None], cols[None, :]]


@pytest.mark.parametrize('height, width', [(48, 64), (33, 47), (1, 1), (17, 250), (361, 481),
                                           (720, 1280)])
def test_labels_at_input_resolution(segmenter: Segmenter, reference_net: torch.nn.Module,
                                    height: int, width: int):
    """Give HxW uint8 labels at the input size, in [0, C), matching a reference."""
    image = _image(height, width)
    result = segmenter.segment(image)
    assert result.labels.shape == (height, width)
    assert result.labels.dtype == np.uint8
    assert result.labels.max() < segmenter.num_classes
    assert result.confidence is None
    reference = _reference_labels(segmenter, reference_net, image)
    # Same computation, other order: allow a rare flip where two logits nearly tie. In bf16
    # (the default on CPUs with bf16) the random model's close logits flip on 2-5 % of the
    # pixels; the trained model's agreement is checked on CamVid in test_bf16.py.
    allowed = 1000 if segmenter.precision == 'fp32' else 10
    assert np.count_nonzero(result.labels != reference) <= max(1, result.labels.size // allowed)


def test_random_model_gives_varied_labels(segmenter: Segmenter):
    """The fixture model is not degenerate (so the equality tests can fail)."""
    labels = segmenter.segment(_image(48, 64)).labels
    assert len(np.unique(labels)) >= 2


def test_default_network_size(random_model_file: Path):
    """Use the model file's input size without input_size, and warm up."""
    segmenter = Segmenter(load_model_file(random_model_file), device='cpu', optimize=False)
    assert segmenter.input_size == (480, 360)
    assert segmenter.precision == 'fp32'
    assert segmenter.device.type == 'cpu'
    assert '480x360' in segmenter.describe() and 'cpu' in segmenter.describe()
    labels = segmenter.segment(_image(200, 300)).labels
    assert labels.shape == (200, 300) and labels.dtype == np.uint8


def test_bgr_equals_rgb(segmenter: Segmenter):
    """bgr=True on a BGR image gives the labels of bgr=False on the RGB image."""
    rgb = _image(50, 70, seed=1)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    expected = segmenter.segment(rgb, with_confidence=True)
    got = segmenter.segment(bgr, bgr=True, with_confidence=True)
    np.testing.assert_array_equal(got.labels, expected.labels)
    np.testing.assert_array_equal(got.confidence, expected.confidence)
    # And the channel order matters (the test is not vacuous).
    assert not np.array_equal(segmenter.segment(bgr).labels, expected.labels)


def test_confidence(segmenter: Segmenter):
    """with_confidence gives an HxW float32 map in [1/C, 1], the chosen class's probability."""
    result = segmenter.segment(_image(37, 91), with_confidence=True)
    confidence = result.confidence
    assert confidence.shape == (37, 91)
    assert confidence.dtype == np.float32
    assert np.all(confidence > 0) and np.all(confidence <= 1)
    assert confidence.min() >= 1.0 / segmenter.num_classes - 1e-6


def test_strided_view_equals_contiguous(segmenter: Segmenter):
    """A view into an RGBA buffer ([..., :3]) and a row-strided view work like copies."""
    rgba = np.zeros((45, 61, 4), dtype=np.uint8)
    rgba[..., :3] = _image(45, 61, seed=2)
    rgba[..., 3] = 255
    view = rgba[..., :3]
    assert not view.flags['C_CONTIGUOUS']
    contiguous = np.ascontiguousarray(view)
    np.testing.assert_array_equal(segmenter.segment(view).labels,
                                  segmenter.segment(contiguous).labels)
    padded_rows = np.zeros((45, 64, 3), dtype=np.uint8)
    padded_rows[:, :61] = contiguous
    np.testing.assert_array_equal(segmenter.segment(padded_rows[:, :61]).labels,
                                  segmenter.segment(contiguous).labels)


def test_negative_stride_view(segmenter: Segmenter):
    """A reversed-channel view (rgb[..., ::-1]) is a valid HxWx3 image too."""
    rgb = _image(40, 50, seed=3)
    np.testing.assert_array_equal(segmenter.segment(rgb[..., ::-1], bgr=True).labels,
                                  segmenter.segment(rgb).labels)


def test_read_only_buffer(segmenter: Segmenter):
    """A read-only array (np.frombuffer of a message's bytes) is accepted."""
    image = _image(48, 64, seed=4)
    frozen = np.frombuffer(image.tobytes(), dtype=np.uint8).reshape(image.shape)
    assert not frozen.flags['WRITEABLE']
    np.testing.assert_array_equal(segmenter.segment(frozen).labels,
                                  segmenter.segment(image).labels)


@pytest.mark.parametrize('bad', [np.zeros((4, 5), np.uint8), np.zeros((4, 5, 4), np.uint8),
                                 np.zeros((4, 5, 3), np.float32), np.zeros((0, 5, 3), np.uint8)])
def test_bad_image_rejected(segmenter: Segmenter, bad: np.ndarray):
    """Anything but a non-empty HxWx3 uint8 array raises ValueError."""
    with pytest.raises(ValueError, match='HxWx3 uint8'):
        segmenter.segment(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available on this machine')
@pytest.mark.parametrize('device', ['cuda', 'cuda:0', 'CUDA'])
def test_cuda_without_cuda(random_model_file: Path, device: str):
    """Asking for CUDA on a machine without it fails at construction, naming the device."""
    with pytest.raises(SegmenterConfigError, match='CUDA is not available'):
        Segmenter.from_file(str(random_model_file), device=device, warmup=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available on this machine')
def test_auto_falls_back_to_cpu(random_model_file: Path):
    """Fall back from device auto to the CPU's precision without CUDA, and say so."""
    segmenter = Segmenter.from_file(str(random_model_file), device='auto', input_size=NET_SIZE,
                                    warmup=False)
    cpu = torch.device('cpu')
    assert segmenter.device.type == 'cpu'
    assert segmenter.dtype == resolve_precision('auto', cpu, optimized=True)
    assert 'CUDA is not available' in segmenter.fallback_note


@pytest.mark.parametrize('device', ['bogus', 'gpu', 'cuda:x', ''])
def test_bogus_device(device: str):
    """An unknown device string is a configuration error."""
    with pytest.raises(SegmenterConfigError):
        resolve_device(device)


def test_precision_choices():
    """fp16 on the CPU is refused, auto is fp32 there unoptimised, unknown names are errors."""
    cpu = torch.device('cpu')
    with pytest.raises(SegmenterConfigError, match='fp16'):
        resolve_precision('fp16', cpu)
    with pytest.raises(SegmenterConfigError):
        resolve_precision('int8', cpu)
    assert resolve_precision('auto', cpu) == torch.float32
    assert resolve_precision('FP32', cpu) == torch.float32
    assert resolve_precision('auto', torch.device('cuda', 0)) == torch.float16
    with pytest.raises(SegmenterConfigError, match='bf16 is for the CPU'):
        resolve_precision('bf16', torch.device('cuda', 0))


def test_fp16_on_cpu_rejected_at_construction(random_model_file: Path):
    """Segmenter(device='cpu', precision='fp16') fails before doing any work."""
    with pytest.raises(SegmenterConfigError, match='fp16'):
        Segmenter.from_file(str(random_model_file), device='cpu', precision='fp16')


@pytest.mark.parametrize('size', [(60, 48), (64, 0), (-8, 48)])
def test_bad_input_size(random_model_file: Path, size):
    """A network input size that is not positive multiples of 8 is refused."""
    with pytest.raises(SegmenterConfigError, match='multiples of 8'):
        Segmenter.from_file(str(random_model_file), device='cpu', input_size=size)


def test_normalize_matches_metadata(segmenter: Segmenter):
    """normalize() is (pixel / 255 - mean) / std with the model's constants."""
    mean, inv_std = normalization_constants(segmenter.metadata, torch.device('cpu'))
    pixels = torch.tensor([[0, 128, 255]], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    got = normalize(pixels, mean, inv_std)
    expected = ((pixels.float() / 255 - torch.tensor(segmenter.metadata.mean).view(1, 3, 1, 1))
                / torch.tensor(segmenter.metadata.std).view(1, 3, 1, 1))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize('num_classes', [1, 2, 11, 19])
def test_argmax_classes_matches_torch(num_classes: int):
    """argmax_classes equals torch.argmax, ties (first maximum wins) included."""
    generator = torch.Generator().manual_seed(num_classes)
    # Small integer logits: many ties, including all-equal pixels.
    logits = torch.randint(-2, 3, (2, num_classes, 9, 13), generator=generator).float()
    logits[0, :, 0, 0] = 1.0
    original = logits.clone()
    labels = argmax_classes(logits)
    assert torch.equal(logits, original)  # the input is left alone
    assert labels.dtype == torch.uint8 and labels.shape == (2, 9, 13)
    assert torch.equal(labels.long(), torch.argmax(logits, dim=1))
    assert int(labels[0, 0, 0]) == 0
    continuous = torch.randn(1, num_classes, 20, 30, generator=generator)
    assert torch.equal(argmax_classes(continuous).long(), torch.argmax(continuous, dim=1))
    half = continuous.half()
    assert torch.equal(argmax_classes(half).long(), torch.argmax(half, dim=1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA (none on this machine)')
def test_cuda_fp16_matches_cpu(random_model_file: Path):
    """On CUDA fp16 the labels agree with the CPU fp32 labels on almost every pixel."""
    image = _image(360, 480, seed=5)
    cpu = Segmenter.from_file(str(random_model_file), device='cpu', warmup=False)
    gpu = Segmenter.from_file(str(random_model_file), device='cuda', precision='fp16')
    assert gpu.precision == 'fp16'
    result = gpu.segment(image, with_confidence=True)
    assert result.labels.shape == (360, 480) and result.confidence.dtype == np.float32
    assert np.mean(result.labels == cpu.segment(image).labels) > 0.98


@pytest.mark.parametrize('size', [(4096, 4096), (8192, 8), (3848, 2160)])
def test_network_input_size_is_bounded(random_model_file: Path, size):
    """An input size override over 4096 a side or 3840 x 2160 pixels is refused up front."""
    with pytest.raises(SegmenterConfigError, match='too large: each side at most 4096'):
        Segmenter.from_file(str(random_model_file), device='cpu', input_size=size, warmup=False)
