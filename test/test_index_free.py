"""
Index-free max-pool / max-unpool: the same labels as the index-based ENet, and ONNX export.

The index-free network keeps, per 2x2 window, which element held the first
maximum (a one-hot mask over the four ``pixel_unshuffle`` sub-planes) and
unpools with ``pixel_shuffle(value * mask)``. ``max_pool2d(return_indices=True)``
also points at the first maximum in row-major order, so the two agree exactly,
ties included: inputs here are quantised to a few levels so that most windows
tie.
"""

import copy
from pathlib import Path

from enet_ros.inference.fold import fold_enet
from enet_ros.model import ENet, max_pool_mask, max_unpool_mask, set_index_free
from enet_ros.model_file import load_model_file
from enet_ros.segmenter import Segmenter
from model_files import random_enet
import numpy as np
import pytest
import torch
import torch.nn.functional as F

# The torch execution paths: auto would run OpenVINO on CPUs without AVX-512.
pytestmark = pytest.mark.usefixtures('torch_backend')

NET_SIZE = (96, 64)


def _tied(shape, levels: int = 3, seed: int = 0) -> torch.Tensor:
    """Random integers in [0, levels) as floats: most 2x2 windows hold a tie."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, shape, generator=generator).float()


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_pool_and_unpool_equal_index_based_with_ties(channels_last: bool, dtype: torch.dtype):
    """Pooled values equal max_pool2d's; unpooling equals max_unpool2d with its indices."""
    x = _tied((2, 6, 10, 14)).to(dtype)
    windows = F.pixel_unshuffle(x.float(), 2).unflatten(1, (6, 4))
    tied = (windows == windows.amax(2, keepdim=True)).sum(2) > 1
    assert tied.float().mean() > 0.3  # the test exercises ties
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pooled, indices = F.max_pool2d(x, 2, stride=2, return_indices=True)
    got, mask = max_pool_mask(x)
    assert torch.equal(got, pooled)
    assert mask.dtype == torch.uint8 and mask.shape == pooled.shape
    value = torch.randn(pooled.shape).to(dtype)
    expected = F.max_unpool2d(value, indices, kernel_size=2, stride=2)
    assert torch.equal(max_unpool_mask(value, mask), expected)


def test_odd_sides_are_refused():
    """An odd side cannot be pooled 2x2 index-free: ValueError (ENet's sides are even)."""
    with pytest.raises(ValueError, match='even sides'):
        max_pool_mask(torch.zeros(1, 2, 5, 6))


def test_set_index_free_switches_every_block_and_keeps_weights():
    """set_index_free flips the down- and upsampling blocks; the state dict is unchanged."""
    model = ENet(5)
    assert not model.index_free
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert set_index_free(model) is model and model.index_free
    flags = [m.index_free for m in model.modules() if hasattr(m, 'index_free')
             and not isinstance(m, ENet)]
    assert len(flags) == 4 and all(flags)
    assert model.state_dict().keys() == before.keys()
    assert ENet(5, index_free=True).index_free
    set_index_free(model, False)
    assert not model.index_free


@pytest.mark.parametrize('shape', [(1, 3, 64, 96), (2, 3, 37, 53), (1, 3, 48, 48)])
def test_index_free_enet_gives_identical_logits_with_ties(shape):
    """Random ENet, quantised inputs (many ties): index-free logits are bit-identical."""
    model = random_enet()
    index_free = set_index_free(copy.deepcopy(model))
    x = _tied(shape, levels=4, seed=shape[-1])
    with torch.no_grad():
        expected, got = model(x), index_free(x)
    assert torch.equal(got, expected)
    # Also folded and channels_last, as the optimised CPU path runs it.
    folded = fold_enet(model).to(memory_format=torch.channels_last)
    folded_free = set_index_free(copy.deepcopy(folded))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(folded_free(x), folded(x))


def test_index_free_segmenter_labels_equal(random_model_file: Path):
    """Segmenter(index_free=True) gives the index-based Segmenter's labels exactly."""
    loaded = load_model_file(random_model_file)
    options = {'device': 'cpu', 'input_size': NET_SIZE, 'torch_compile': False,
               'precision': 'fp32', 'warmup': False}
    indexed = Segmenter(loaded, index_free=False, **options)
    free = Segmenter(loaded, index_free=True, **options)
    assert 'index-free pooling' in free.describe()
    assert 'index-free' not in indexed.describe()
    rng = np.random.default_rng(3)
    for height, width in ((64, 96), (50, 70)):
        image = (rng.integers(0, 4, (height, width, 3)) * 60).astype(np.uint8)  # flat: ties
        a = indexed.segment(image, with_confidence=True)
        b = free.segment(image, with_confidence=True)
        np.testing.assert_array_equal(b.labels, a.labels)
        np.testing.assert_array_equal(b.confidence, a.confidence)


def test_index_free_on_camvid_frames(camvid_root: Path):
    """The bundled model on CamVid val frames: index-free logits equal the index-based ones."""
    import cv2

    model = load_model_file(None).build()
    free = set_index_free(copy.deepcopy(model))
    metadata = load_model_file(None).metadata
    mean = torch.tensor(metadata.mean).view(1, 3, 1, 1)
    std = torch.tensor(metadata.std).view(1, 3, 1, 1)
    frames = sorted((camvid_root / 'val').glob('*.png'))[::40][:3]
    assert frames
    for path in frames:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - mean) / std
        with torch.no_grad():
            expected, got = model(x), free(x)
        assert torch.equal(got, expected), path.name


def test_onnx_export_has_no_scatter_and_matches_torch(tmp_path: Path):
    """The index-free network exports to ONNX without MaxUnpool / Scatter*; ORT agrees."""
    onnx = pytest.importorskip('onnx', reason='onnx is not installed (requirements-dev.txt)')
    network = set_index_free(fold_enet(random_enet()))
    x = torch.randn(1, 3, 48, 64)
    path = tmp_path / 'enet_index_free.onnx'
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(network, (x,), str(path), input_names=['input'],
                          output_names=['logits'], dynamo=False, opset_version=17)
    graph = onnx.load(str(path)).graph
    op_types = {node.op_type for node in graph.node}
    assert not op_types & {'MaxUnpool', 'ScatterND', 'ScatterElements', 'Scatter'}, op_types
    assert 'DepthToSpace' in op_types  # pixel_shuffle
    try:
        import onnxruntime
    except ImportError:
        pytest.skip('onnxruntime is not installed: export checked, outputs not compared')
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    got = session.run(None, {'input': x.numpy()})[0]
    with torch.no_grad():
        expected = network(x).numpy()
    scale = float(np.abs(expected).max())
    assert np.abs(got - expected).max() <= 1e-4 * scale
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.999
