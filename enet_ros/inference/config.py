"""
Construction-time choices of the Segmenter: device, precision, sizes, compiler, cuDNN.

Everything here runs once, when a :class:`~enet_ros.segmenter.Segmenter` is
built; a bad choice raises :class:`SegmenterConfigError` before any work.
"""

import os
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch

DEVICE_CHOICES = ('auto', 'cpu', 'cuda', 'cuda:N')
PRECISIONS = ('auto', 'fp16', 'fp32', 'bf16')
#: ``precision='auto'`` on a CPU with bf16 (:func:`cpu_supports_bf16`) and an optimised network.
#: Chosen from measurements: see the README's Performance section and ``bench/bf16_gate.py``.
AUTO_CPU_BF16 = True
#: Index-free pooling (:func:`enet_ros.model.set_index_free`) on the compiled CPU path by default.
INDEX_FREE_DEFAULT = False
#: Environment variable: ``0`` turns ``torch.compile`` off where ``torch_compile`` is None.
COMPILE_ENV = 'ENET_ROS_COMPILE'
#: Environment variable for ``freezing=None``: ``1`` freezes in every precision, ``0`` in none.
FREEZE_ENV = 'ENET_ROS_FREEZE'
#: Precisions whose compiled CPU network is frozen by default (measured faster only in bf16).
FREEZE_BY_DEFAULT = (torch.bfloat16,)

#: Environment variable for ``openmp_wait=None``: ``adaptive`` or ``fixed`` (the default).
OPENMP_WAIT_ENV = 'ENET_ROS_OPENMP_WAIT'
OPENMP_WAIT_CHOICES = ('fixed', 'adaptive', 'adaptive-wait')

#: A camera frame size: ``(width, height)`` or the text ``'WIDTHxHEIGHT'``.
FrameSize = Union[Sequence[int], str]


class SegmenterConfigError(ValueError):
    """The requested device, precision or input size cannot be used."""


def resolve_device(choice: str) -> Tuple[torch.device, Optional[str]]:
    """
    Map ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` to a device and an optional log note.

    Raises :class:`SegmenterConfigError` for an unknown choice or missing CUDA.
    """
    choice = choice.strip().lower()
    if choice == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda', torch.cuda.current_device()), None
        return (torch.device('cpu'),
                'device auto: CUDA is not available, running on the CPU')
    if choice == 'cpu':
        return torch.device('cpu'), None
    if choice == 'cuda' or choice.startswith('cuda:'):
        if not torch.cuda.is_available():
            raise SegmenterConfigError(
                f"device '{choice}' requested but CUDA is not available on this machine "
                "(use 'auto' or 'cpu')")
        index_text = choice[5:] if choice.startswith('cuda:') else str(torch.cuda.current_device())
        if not index_text.isdigit():
            raise SegmenterConfigError(f"device '{choice}': expected cuda:N with N an integer")
        count = torch.cuda.device_count()
        if int(index_text) >= count:
            raise SegmenterConfigError(
                f"device '{choice}': only {count} CUDA device(s) present (0..{count - 1})")
        return torch.device('cuda', int(index_text)), None
    raise SegmenterConfigError(f"device '{choice}' is not one of {', '.join(DEVICE_CHOICES)}")


def cpu_supports_bf16() -> bool:
    """
    Whether this CPU runs bf16 convolutions natively (oneDNN with AVX-512 BF16 or AMX).

    Without those instructions oneDNN emulates bf16, slower than fp32, so
    ``precision='bf16'`` is refused there.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    for probe in ('_is_avx512_bf16_supported', '_is_amx_tile_supported'):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:  # pragma: no cover - a build without the CPU probes
            continue
    return False


def resolve_precision(choice: str, device: torch.device, optimized: bool = False) -> torch.dtype:
    """
    Map a precision choice to the network's dtype on ``device``.

    ``auto``: fp16 on CUDA; on the CPU bf16 where :data:`AUTO_CPU_BF16` says so,
    the CPU has bf16 (:func:`cpu_supports_bf16`) and the network is
    ``optimized`` (the eager reference, ``optimize=False``, stays the model as
    trained), else fp32. ``fp16`` is CUDA only, ``bf16`` CPU only and needs a
    CPU with bf16: both refused elsewhere with :class:`SegmenterConfigError`.
    """
    choice = choice.strip().lower()
    if choice not in PRECISIONS:
        raise SegmenterConfigError(f"precision '{choice}' is not one of {', '.join(PRECISIONS)}")
    on_cuda = device.type == 'cuda'
    if choice == 'auto':
        if on_cuda:
            return torch.float16
        if AUTO_CPU_BF16 and optimized and cpu_supports_bf16():
            return torch.bfloat16
        return torch.float32
    if choice == 'fp16' and not on_cuda:
        raise SegmenterConfigError('precision fp16 needs a CUDA device; the CPU runs fp32 or bf16')
    if choice == 'bf16':
        if on_cuda:
            raise SegmenterConfigError('precision bf16 is for the CPU; CUDA runs fp16 or fp32')
        if not cpu_supports_bf16():
            raise SegmenterConfigError(
                'precision bf16 needs a CPU with AVX-512 BF16 or AMX instructions and a '
                'PyTorch with oneDNN; this one has neither (use fp32 or auto)')
        return torch.bfloat16
    return torch.float16 if choice == 'fp16' else torch.float32


def precision_name(dtype: torch.dtype) -> str:
    """``fp16``, ``bf16`` or ``fp32`` for a network dtype."""
    return {torch.float16: 'fp16', torch.bfloat16: 'bf16'}.get(dtype, 'fp32')


def check_input_size(size: Sequence[int]) -> Tuple[int, int]:
    """Return the network input ``(width, height)``; both must be positive multiples of 8."""
    width, height = (int(v) for v in size)
    if width <= 0 or height <= 0 or width % 8 or height % 8:
        raise SegmenterConfigError(
            f'network input size {width}x{height} must be positive multiples of 8')
    return width, height


def parse_frame_sizes(sizes: Optional[Iterable[FrameSize]]) -> List[Tuple[int, int]]:
    """
    Camera frame sizes for the warm-up: a list of ``(width, height)``, duplicates dropped.

    Each entry is a ``(width, height)`` pair of positive integers or the text
    ``'WIDTHxHEIGHT'`` (e.g. ``'1280x720'``, what a string-array parameter
    holds). None or an empty sequence gives an empty list. Anything else
    raises :class:`SegmenterConfigError`.
    """
    parsed: List[Tuple[int, int]] = []
    for entry in sizes or ():
        try:
            if isinstance(entry, str):
                width_text, height_text = entry.strip().lower().split('x')
                size = (int(width_text), int(height_text))
            else:
                width, height = entry
                if not all(float(v).is_integer() for v in (width, height)):
                    raise ValueError(entry)
                size = (int(width), int(height))
        except (TypeError, ValueError):
            raise SegmenterConfigError(
                f'warm-up frame size {entry!r}: expected (width, height) or "WIDTHxHEIGHT"'
            ) from None
        if size[0] <= 0 or size[1] <= 0:
            raise SegmenterConfigError(f'warm-up frame size {entry!r} must be positive')
        if size not in parsed:
            parsed.append(size)
    return parsed


def freezing_enabled(choice: Optional[bool], dtype: torch.dtype) -> bool:
    """
    ``freezing`` option: True / False, or None for the default.

    The default: ``ENET_ROS_FREEZE`` if set (``0`` off, anything else on),
    else on for the precisions in :data:`FREEZE_BY_DEFAULT` (bf16: about 8 %
    faster at 480x360 on the machine the README's tables come from; fp32 was
    no faster at 480x360 and 20 % slower at 1280x720 frozen).
    """
    if choice is not None:
        return bool(choice)
    setting = os.environ.get(FREEZE_ENV, '').strip().lower()
    if setting:
        return setting not in ('0', 'false', 'no', 'off')
    return dtype in FREEZE_BY_DEFAULT


def compile_enabled(choice: Optional[bool]) -> bool:
    """``torch_compile`` option: True / False, or None for the ``ENET_ROS_COMPILE`` default."""
    if choice is not None:
        return bool(choice)
    return os.environ.get(COMPILE_ENV, '1').strip().lower() not in ('0', 'false', 'no', 'off')


def resolve_openmp_wait(choice: Optional[str]) -> str:
    """
    ``openmp_wait`` option: ``fixed`` or ``adaptive``; None for ``ENET_ROS_OPENMP_WAIT`` or fixed.

    ``adaptive`` (:mod:`enet_ros.inference.openmp_wait`) changes how every
    OpenMP thread of the process waits, so only a process that owns itself
    asks for it: the node's executables set the variable.
    """
    source = 'openmp_wait'
    if choice is None:
        choice, source = os.environ.get(OPENMP_WAIT_ENV, 'fixed'), OPENMP_WAIT_ENV
    value = str(choice).strip().lower()
    if value not in OPENMP_WAIT_CHOICES:
        raise SegmenterConfigError(f"{source} '{choice}' is not one of "
                                   f"{', '.join(OPENMP_WAIT_CHOICES)}")
    return value


def process_is_deterministic() -> bool:
    """Whether the process asked for deterministic kernels (cuDNN or all algorithms)."""
    return bool(torch.backends.cudnn.deterministic) or torch.are_deterministic_algorithms_enabled()


def cudnn_benchmark_wanted(choice: Optional[bool]) -> Tuple[bool, Optional[str]]:
    """
    Decide whether the CUDA path turns cuDNN autotuning on; return (turn on, note or None).

    ``choice`` None means yes; False means leave ``torch.backends.cudnn.benchmark``
    as the process set it. Never on in a deterministic process
    (:func:`process_is_deterministic`), even when asked: autotuning picks
    algorithms by timing, so results could change from run to run.
    """
    if choice is False:
        return False, None
    if process_is_deterministic():
        return False, 'cuDNN autotuning off (deterministic process)'
    return True, None
