"""
bf16 on the CPU: the choice, the refusal without hardware support, and the labels it gives.

bf16 keeps 8 bits of mantissa, so labels differ from fp32 where two logits are
close. On random weights (the generated model files) logits are close
everywhere and 2-5 % of pixels flip; on the bundled CamVid model the full
gate (``bench/bf16_gate.py``, all 101 val frames, compiled) gave 99.66 %
agreement and +0.07 mIoU. Here a quicker version on a few val frames checks
the trained model's agreement, uncompiled (the same oneDNN bf16 convolutions).
"""

from pathlib import Path

from enet_ros.inference import config as config_module
from enet_ros.metrics import ConfusionMatrix
from enet_ros.model_file import load_model_file
from enet_ros.segmenter import cpu_supports_bf16, resolve_precision, Segmenter
from enet_ros.segmenter import SegmenterConfigError
from model_files import label_agreement
import numpy as np
import pytest
import torch

NET_SIZE = (96, 64)

needs_bf16 = pytest.mark.skipif(not cpu_supports_bf16(),
                                reason='this CPU has no AVX-512 BF16 or AMX (or torch no oneDNN)')


def _images():
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    rows, cols = np.mgrid[0:70, 0:110]
    smooth = np.stack([rows * 3, cols * 2, (rows + cols) % 256], axis=-1).astype(np.uint8)
    return [noise, smooth]


@pytest.mark.slow
def test_bf16_refused_on_a_cpu_without_it(loaded, monkeypatch):
    """Without bf16 hardware, precision bf16 is a configuration error; auto stays fp32."""
    monkeypatch.setattr(config_module, 'cpu_supports_bf16', lambda: False)
    cpu = torch.device('cpu')
    with pytest.raises(SegmenterConfigError, match='AVX-512 BF16 or AMX'):
        resolve_precision('bf16', cpu)
    with pytest.raises(SegmenterConfigError, match='bf16'):
        Segmenter(loaded, device='cpu', precision='bf16', input_size=NET_SIZE, warmup=False)
    assert resolve_precision('auto', cpu, optimized=True) == torch.float32
    segmenter = Segmenter(loaded, device='cpu', input_size=NET_SIZE, warmup=False)
    assert segmenter.precision == 'fp32'


def test_auto_is_bf16_only_for_optimised_paths(monkeypatch):
    """Pick bf16 for auto only where the CPU has it, the policy is on, and optimize is on."""
    cpu = torch.device('cpu')
    monkeypatch.setattr(config_module, 'cpu_supports_bf16', lambda: True)
    assert resolve_precision('auto', cpu, optimized=False) == torch.float32
    expected = torch.bfloat16 if config_module.AUTO_CPU_BF16 else torch.float32
    assert resolve_precision('auto', cpu, optimized=True) == expected
    assert resolve_precision('bf16', cpu) == torch.bfloat16
    assert resolve_precision('fp32', cpu, optimized=True) == torch.float32
    monkeypatch.setattr(config_module, 'AUTO_CPU_BF16', False)
    assert resolve_precision('auto', cpu, optimized=True) == torch.float32


@needs_bf16
def test_bf16_eager_path_runs_and_reports_bf16(loaded):
    """Run precision bf16 uncompiled: bf16 network and input, uint8 labels, float32 confidence."""
    segmenter = Segmenter(loaded, device='cpu', precision='bf16', input_size=NET_SIZE,
                          torch_compile=False, warmup=False)
    reference = Segmenter(loaded, device='cpu', precision='fp32', input_size=NET_SIZE,
                          torch_compile=False, warmup=False)
    assert segmenter.precision == 'bf16' and segmenter.dtype == torch.bfloat16
    assert 'cpu bf16' in segmenter.describe()
    assert all(p.dtype == torch.bfloat16 for p in segmenter.network.parameters())
    assert segmenter.preprocess(_images()[0]).dtype == torch.bfloat16
    for image in _images():
        result = segmenter.segment(image, with_confidence=True)
        assert result.labels.shape == image.shape[:2] and result.labels.dtype == np.uint8
        assert result.confidence.dtype == np.float32
        # Random weights: close logits everywhere (see the module docstring).
        assert label_agreement(result.labels, reference.segment(image).labels) >= 0.8


@needs_bf16
def test_auto_is_bf16_on_the_optimised_paths_and_fp32_for_the_reference(loaded, monkeypatch):
    """Pick bf16 for auto compiled or not (both faster than fp32); the reference stays fp32."""
    monkeypatch.setattr(config_module, 'AUTO_CPU_BF16', True)
    options = {'device': 'cpu', 'input_size': NET_SIZE, 'warmup': False}
    assert Segmenter(loaded, torch_compile=True, **options).precision == 'bf16'
    assert Segmenter(loaded, torch_compile=False, **options).precision == 'bf16'
    assert Segmenter(loaded, optimize=False, **options).precision == 'fp32'


@needs_bf16
def test_bf16_compile_failure_falls_back_to_eager_bf16(loaded, monkeypatch, core_logs):
    """If compiling fails, the folded network runs eagerly, still in bf16."""
    from enet_ros import segmenter as segmenter_module

    def failing_compile(function, **kwargs):
        def run(*args):
            raise RuntimeError('no C++ compiler (simulated)')
        return run

    monkeypatch.setattr(segmenter_module.torch, 'compile', failing_compile)
    with core_logs.at_level('WARNING'):
        segmenter = Segmenter(loaded, device='cpu', precision='bf16', input_size=NET_SIZE,
                              torch_compile=True)
    assert not segmenter.compiled and 'torch.compile failed' in segmenter.describe()
    assert segmenter.precision == 'bf16'
    reference = Segmenter(loaded, device='cpu', precision='bf16', input_size=NET_SIZE,
                          torch_compile=False, warmup=False)
    image = _images()[0]
    np.testing.assert_array_equal(segmenter.segment(image).labels,
                                  reference.segment(image).labels)


@needs_bf16
@pytest.mark.slow
def test_bf16_compiled_frozen_path(loaded):
    """Run bf16 through torch.compile with frozen weights: compiles, runs, close to fp32."""
    segmenter = Segmenter(loaded, device='cpu', precision='bf16', input_size=NET_SIZE)
    reference = Segmenter(loaded, device='cpu', precision='fp32', input_size=NET_SIZE,
                          torch_compile=False, warmup=False)
    assert segmenter.compiled, segmenter.describe()
    assert 'frozen weights' in segmenter.describe() and segmenter.precision == 'bf16'
    for image in _images():
        got = segmenter.segment(image, with_confidence=True)
        assert label_agreement(got.labels, reference.segment(image).labels) >= 0.8
        assert float(np.abs(got.confidence - reference.segment(
            image, with_confidence=True).confidence).mean()) <= 0.05


@needs_bf16
def test_bundled_model_bf16_agrees_with_fp32_on_camvid(camvid_root: Path):
    """On 10 CamVid val frames bf16 labels equal fp32's on >= 99.5 % of pixels."""
    import cv2

    loaded = load_model_file(None)
    options = {'device': 'cpu', 'torch_compile': False, 'warmup': False}
    fp32 = Segmenter(loaded, precision='fp32', **options)
    bf16 = Segmenter(loaded, precision='bf16', **options)
    frames = sorted((camvid_root / 'val').glob('*.png'))[::10][:10]
    matrices = {name: ConfusionMatrix(loaded.metadata.num_classes, loaded.metadata.void_id)
                for name in ('fp32', 'bf16')}
    equal = total = 0
    for path in frames:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        truth = cv2.imread(str(camvid_root / 'valannot' / path.name), cv2.IMREAD_UNCHANGED)
        a, b = fp32.segment(image).labels, bf16.segment(image).labels
        matrices['fp32'].update(a, truth)
        matrices['bf16'].update(b, truth)
        equal += int((a == b).sum())
        total += a.size
    assert equal / total >= 0.995
    difference = matrices['bf16'].scores().mean_iou - matrices['fp32'].scores().mean_iou
    assert abs(difference) <= 0.005  # 0.5 mIoU points on 10 frames (0.2 on all 101: the gate)
