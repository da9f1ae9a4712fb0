"""ENet: shapes, size, the paper's structure, fp16 / capture-safe forward."""

from typing import List, Tuple

from enet_ros.model import (count_parameters, DownsamplingBottleneck, ENet, OUTPUT_STRIDE,
                            UpsamplingBottleneck)
from model_files import random_enet
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

PAPER_PARAMETERS = 0.37e6


@pytest.fixture(scope='module')
def model() -> ENet:
    """Return an 11-class ENet in eval mode."""
    return random_enet()


@pytest.mark.parametrize('height, width', [(33, 47), (48, 64), (8, 8), (1, 1), (19, 120),
                                           (360, 480)])
def test_output_shape(model: ENet, height: int, width: int):
    """Logits are NxCxHxW at the input resolution, also for sides not divisible by 8."""
    x = torch.randn(2, 3, height, width)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 11, height, width)
    assert y.dtype == torch.float32
    assert bool(torch.isfinite(y).all())


@pytest.mark.parametrize('num_classes', [1, 2, 19])
def test_num_classes(num_classes: int):
    """The classifier has one output plane per class."""
    with torch.no_grad():
        y = ENet(num_classes).eval()(torch.randn(1, 3, 16, 24))
    assert y.shape == (1, num_classes, 16, 24)


def test_zero_classes_rejected():
    """ENet(0) is a configuration error."""
    with pytest.raises(ValueError, match='num_classes'):
        ENet(0)


def test_odd_size_equals_cropped_zero_padded_input(model: ENet):
    """An odd-sized input gives the crop of the output for the input zero-padded to 8."""
    x = torch.randn(1, 3, 33, 47)
    padded = F.pad(x, (0, 48 - 47, 0, 40 - 33))
    with torch.no_grad():
        y = model(x)
        reference = model(padded)[..., :33, :47]
    torch.testing.assert_close(y, reference, rtol=0, atol=0)


def test_batch_items_are_independent(model: ENet):
    """In eval mode each batch item's logits equal those of the item run alone."""
    x = torch.randn(3, 3, 24, 32)
    with torch.no_grad():
        batch = model(x)
        single = model(x[1:2])
    torch.testing.assert_close(batch[1:2], single, rtol=1e-4, atol=1e-5)


def test_parameter_count_matches_paper():
    """About 0.37M parameters (the paper's figure), within 3%."""
    count = count_parameters(ENet(11))
    assert abs(count - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.03, count
    # The classifier is the only part that depends on C: 16 * C * 3 * 3 weights.
    assert count_parameters(ENet(19)) - count == 16 * 8 * 9


def test_paper_block_names():
    """Attribute names mirror the paper's Table 1."""
    names = dict(ENet(11).named_children())
    for name in ('initial', 'downsample1_0', 'regular1_4', 'downsample2_0', 'dilated2_2',
                 'asymmetric2_3', 'dilated2_8', 'regular3_1', 'dilated3_8', 'upsample4_0',
                 'regular4_2', 'upsample5_0', 'regular5_1', 'fullconv'):
        assert name in names, name
    assert isinstance(names['downsample1_0'], DownsamplingBottleneck)
    assert isinstance(names['upsample4_0'], UpsamplingBottleneck)
    assert names['dilated2_8'].branch[3].dilation == (16, 16)
    assert names['asymmetric2_3'].branch[3].kernel_size == (5, 1)
    assert names['asymmetric2_3'].branch[4].kernel_size == (1, 5)


def test_encode_output_stride(model: ENet):
    """encode() reduces each side by OUTPUT_STRIDE and returns the two pooling index maps."""
    with torch.no_grad():
        features, indices1, indices2 = model.encode(torch.randn(1, 3, 48, 64))
    assert OUTPUT_STRIDE == 8
    assert features.shape == (1, 128, 6, 8)
    assert indices1.shape == (1, 16, 12, 16)
    assert indices2.shape == (1, 64, 6, 8)


def test_downsampling_returns_max_pool_indices():
    """The downsampling bottleneck's indices are those of a 2x2 max-pool of its input."""
    block = DownsamplingBottleneck(16, 64).eval()
    x = torch.randn(2, 16, 12, 10)
    with torch.no_grad():
        y, indices = block(x)
    _, expected = F.max_pool2d(x, 2, stride=2, return_indices=True)
    assert y.shape == (2, 64, 6, 5)
    assert torch.equal(indices, expected)


def test_upsampling_places_values_at_indices():
    """The upsampling main path writes each value at the position its index names."""
    block = UpsamplingBottleneck(16, 16).eval()
    with torch.no_grad():
        # Main path: identity 1x1 convolution, identity BatchNorm; branch silenced.
        block.main_conv[0].weight.copy_(torch.eye(16).view(16, 16, 1, 1))
        block.main_conv[1].eps = 0.0
        block.branch[-2].weight.zero_()
        block.branch[-2].bias.zero_()
        block.prelu.weight.fill_(1.0)
        x = torch.rand(1, 16, 3, 4) + 1.0
        _, indices = F.max_pool2d(torch.randn(1, 16, 6, 8), 2, stride=2, return_indices=True)
        y = block(x, indices)
    expected = F.max_unpool2d(x, indices, kernel_size=2, stride=2)
    torch.testing.assert_close(y, expected)
    assert int((y != 0).sum()) == x.numel()


def test_decoder_uses_indices_of_matching_downsampling(model: ENet):
    """upsample4_0 gets downsample2_0's indices and upsample5_0 gets downsample1_0's."""
    produced = {}
    received = {}

    def keep_indices(name):
        def hook(module, inputs, output):
            produced[name] = output[1]
        return hook

    def keep_input(name):
        def hook(module, inputs, output):
            received[name] = inputs[1]
        return hook

    handles = [model.downsample1_0.register_forward_hook(keep_indices('1_0')),
               model.downsample2_0.register_forward_hook(keep_indices('2_0')),
               model.upsample4_0.register_forward_hook(keep_input('4_0')),
               model.upsample5_0.register_forward_hook(keep_input('5_0'))]
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, 40, 56))
    finally:
        for handle in handles:
            handle.remove()
    assert received['4_0'] is produced['2_0']
    assert received['5_0'] is produced['1_0']


class _DeviceRecorder(TorchDispatchMode):
    """Record every operator whose result is not on the meta device (a host tensor)."""

    def __init__(self):
        super().__init__()
        self.host_ops: List[str] = []
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Run ``func`` and note it if any output tensor lives off the meta device."""
        self.count += 1
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device.type != 'meta'
               for t in tree_flatten(out)[0]):
            self.host_ops.append(str(func))
        return out


def _run_on_meta(module: nn.Module, x: torch.Tensor) -> Tuple[_DeviceRecorder, torch.Tensor]:
    recorder = _DeviceRecorder()
    with torch.no_grad(), recorder:
        out = module(x)
    return recorder, out


def test_forward_creates_no_host_tensors():
    """Run on the meta device: every tensor the forward makes comes from its input."""
    model = ENet(11).eval().to('meta')
    for height, width in ((33, 47), (48, 64)):
        recorder, out = _run_on_meta(model, torch.empty(2, 3, height, width, device='meta'))
        assert out.device.type == 'meta' and out.shape == (2, 11, height, width)
        assert recorder.count > 100
        assert recorder.host_ops == []


def test_host_tensor_detector_works():
    """The meta-device check does flag a forward that makes a tensor on the host."""
    class HostTensor(nn.Module):
        def forward(self, x):
            return x + torch.zeros(1)

    recorder = _DeviceRecorder()
    with torch.no_grad(), recorder, pytest.raises(RuntimeError):
        # Meta kernels refuse to mix a host tensor with meta ones; it is recorded before that.
        HostTensor()(torch.empty(1, 3, 8, 8, device='meta'))
    assert recorder.host_ops


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision_forward_cpu(dtype: torch.dtype):
    """A bf16 / fp16 forward works and stays close to fp32 (skipped without CPU kernels)."""
    reference_model = random_enet()
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        reference = reference_model(x)
        try:
            low = random_enet().to(dtype)(x.to(dtype))
        except (RuntimeError, NotImplementedError) as error:
            if 'not implemented for' not in str(error):
                raise  # a dtype mismatch in the model is a failure, not a missing kernel
            pytest.skip(f'this CPU build has no {dtype} kernel for ENet: {error}')
    assert low.dtype == dtype
    assert low.shape == reference.shape
    assert bool(torch.isfinite(low).all())
    agreement = (low.float().argmax(1) == reference.argmax(1)).float().mean()
    assert agreement > 0.9, float(agreement)


def test_train_mode_backward():
    """A training step reaches every parameter with a finite gradient."""
    torch.manual_seed(0)
    model = ENet(4).train()
    logits = model(torch.randn(2, 3, 24, 32))
    loss = F.cross_entropy(logits, torch.randint(0, 4, (2, 24, 32)))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert bool(torch.isfinite(parameter.grad).all()), name


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                   reason='needs CUDA (no CUDA device on this machine)')


@pytest.mark.gpu
@requires_cuda
def test_cuda_fp16_forward():
    """On CUDA, an fp16 forward matches fp32 closely."""
    model = random_enet().cuda()
    x = torch.randn(1, 3, 360, 480, device='cuda')
    with torch.no_grad():
        reference = model(x)
        half = model.half()(x.half())
    assert half.dtype == torch.float16
    assert bool(torch.isfinite(half).all())
    agreement = (half.float().argmax(1) == reference.argmax(1)).float().mean()
    assert agreement > 0.95, float(agreement)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_cuda_graph_capture_replay(dtype: torch.dtype):
    """A CUDA graph of the forward (odd input size) replays to the eager output."""
    model = random_enet().cuda().to(dtype)
    static_input = torch.randn(1, 3, 361, 479, device='cuda', dtype=dtype)
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                model(static_input)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = model(static_input)
        for _ in range(2):
            new_input = torch.randn_like(static_input)
            static_input.copy_(new_input)
            graph.replay()
            torch.cuda.synchronize()
            eager = model(new_input)
            torch.testing.assert_close(static_output, eager)
