"""
The segmentation node's parameters: declarations, validation and frozen settings.

Parameters that need a restart (device, precision, network size, cameras,
transport, QoS) are read-only; the others can change at run time and are
validated before they apply. ``model_path`` changes at run time too (see
:mod:`enet_ros.node.model_swap`).
"""

from dataclasses import dataclass
import re
from typing import Any, Dict, Sequence, Tuple

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from ..masks import OUTPUT_IMAGES

OUTPUTS = OUTPUT_IMAGES
RELIABILITY = ('best_effort', 'reliable')
TRANSPORTS = ('raw', 'compressed')


class ConfigError(ValueError):
    """A parameter has a value the node cannot start or run with."""


@dataclass(frozen=True)
class StartupSettings:
    """Read once at start-up; changing them needs a restart."""

    model_path: str
    cameras: Tuple[str, ...]
    warmup_sizes: Tuple[str, ...]
    device: str
    precision: str
    network_width: int
    network_height: int
    torch_compile: bool
    input_transport: str
    input_reliability: str
    input_depth: int
    output_reliability: str
    output_depth: int
    diagnostics_period_s: float


@dataclass(frozen=True)
class RuntimeSettings:
    """Applied to the next frame when changed."""

    drivable_classes: Tuple[str, ...]
    overlay_alpha: float
    publish: Tuple[str, ...]
    max_rate_hz: float
    max_pixels: int
    stale_input_s: float
    latency_warn_ms: float
    max_consecutive_failures: int
    exit_on_failure: bool
    min_confidence: float


def _descriptor(description: str, read_only: bool = False,
                type_: int = ParameterType.PARAMETER_NOT_SET,
                **ranges: Any) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=description, read_only=read_only, type=type_)
    if 'float_range' in ranges:
        low, high = ranges['float_range']
        descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high)]
    if 'int_range' in ranges:
        low, high, step = ranges['int_range']
        descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=step)]
    return descriptor


STRING = ParameterType.PARAMETER_STRING
INT = ParameterType.PARAMETER_INTEGER
DOUBLE = ParameterType.PARAMETER_DOUBLE
STRINGS = ParameterType.PARAMETER_STRING_ARRAY

#: name -> (default, descriptor). ``drivable_classes`` is declared separately: its
#: default comes from the model file.
PARAMETERS: Dict[str, Tuple[Any, ParameterDescriptor]] = {
    'model_path': ('', _descriptor(
        'ENet model file (.safetensors); empty = the bundled CamVid model. Settable at run '
        'time: a file that fails validation is refused; an accepted one is warmed up off '
        'the inference path and replaces the old model between two frames', False,
        STRING)),
    'device': ('auto', _descriptor(
        "'auto' (CUDA if present, else CPU), 'cpu', 'cuda' or 'cuda:N'", True, STRING)),
    'precision': ('auto', _descriptor(
        "'auto' (fp16 on CUDA; on the CPU bf16 where it has AVX-512 BF16 or AMX, else "
        "fp32), 'fp16' (CUDA only), 'bf16' (CPUs with bf16 only) or 'fp32'", True, STRING)),
    'network_width': (0, _descriptor(
        "network input width override, multiple of 8; 0 = the model file's", True, INT,
        int_range=(0, 4096, 8))),
    'network_height': (0, _descriptor(
        "network input height override, multiple of 8; 0 = the model file's", True, INT,
        int_range=(0, 4096, 8))),
    'torch_compile': (True, _descriptor(
        'CPU: compile the network with torch.compile, weights frozen in (about 3.5x faster '
        'with bf16; every start compiles, 15-30 s, and a model swap too). The environment '
        'variable ENET_ROS_COMPILE=0 also turns it off; ENET_ROS_FREEZE=0 compiles without '
        'freezing (slower frames, later starts reuse the cache)', True,
        ParameterType.PARAMETER_BOOL)),
    'input_transport': ('raw', _descriptor(
        "'raw': sensor_msgs/Image on 'image'; 'compressed': sensor_msgs/CompressedImage "
        "(JPEG/PNG) on 'image/compressed'", True, STRING)),
    'input_reliability': ('reliable', _descriptor(
        "input QoS reliability: 'reliable' (large frames arrive intact) or 'best_effort' "
        '(needed for cameras that publish best effort)', True, STRING)),
    'input_depth': (1, _descriptor(
        'input QoS history depth; 1 keeps only the newest frame', True, INT,
        int_range=(1, 100, 1))),
    'output_reliability': ('reliable', _descriptor(
        "output QoS reliability: 'reliable' (matches any subscriber) or 'best_effort'", True,
        STRING)),
    'output_depth': (5, _descriptor(
        'output QoS history depth; with reliable outputs, 1 loses frames a slow subscriber '
        'has not acknowledged yet', True, INT, int_range=(1, 100, 1))),
    'diagnostics_period': (1.0, _descriptor(
        'seconds between /diagnostics messages', True, DOUBLE, float_range=(0.1, 60.0))),
    'overlay_alpha': (0.5, _descriptor(
        'weight of the class colours in ~/overlay (0 = camera only, 1 = colours only)', False,
        DOUBLE, float_range=(0.0, 1.0))),
    'publish': (list(OUTPUTS), _descriptor(
        f'outputs to publish, any of {list(OUTPUTS)}; an output without subscribers costs '
        'nothing either way', False, STRINGS)),
    'max_rate_hz': (0.0, _descriptor(
        'process at most this many frames per second (0 = as fast as possible); others are '
        'dropped and counted', False, DOUBLE, float_range=(0.0, 1000.0))),
    'max_pixels': (3840 * 2160, _descriptor(
        'reject images with more pixels than this (checked before decoding)', False, INT,
        int_range=(1, 2 ** 31 - 1, 1))),
    'stale_input_timeout': (3.0, _descriptor(
        'diagnostics WARN after this many seconds without input', False, DOUBLE,
        float_range=(0.1, 3600.0))),
    'latency_warn_ms': (500.0, _descriptor(
        'diagnostics WARN when the median latency (input stamp to publish) exceeds this',
        False, DOUBLE, float_range=(1.0, 600000.0))),
    'max_consecutive_failures': (5, _descriptor(
        'diagnostics ERROR after this many failed frames in a row', False, INT,
        int_range=(1, 1000000, 1))),
    'exit_on_failure': (False, _descriptor(
        'exit with code 3 after max_consecutive_failures failed frames in a row (e.g. a '
        'dead GPU), so a supervisor (launch respawn:=true, systemd) can restart the node; '
        'false = keep running and report ERROR', False, ParameterType.PARAMETER_BOOL)),
    'min_confidence': (0.0, _descriptor(
        'pixels whose softmax probability is at most this get the void id in ~/labels, are '
        'not drivable and are drawn as void; 0 = off, 1 = every pixel void', False, DOUBLE,
        float_range=(0.0, 1.0))),
}

#: ``cameras`` is declared with its type only: an empty list has no type in ROS 2.
CAMERAS_DESCRIPTION = _descriptor(
    "camera names, e.g. [front, left]: each subscribes '<name>/image' and publishes "
    "~/<name>/labels ...; not set = one camera on 'image' with outputs ~/labels ...", True,
    STRINGS)
WARMUP_SIZES_DESCRIPTION = _descriptor(
    "camera frame sizes to prepare at start-up, e.g. ['1280x720']: on CUDA each is captured "
    'as a CUDA graph then, not on the first frame; on the CPU each is run once', True, STRINGS)
CAMERA_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')

DRIVABLE_DESCRIPTION = _descriptor(
    'class names counted as drivable in ~/drivable; default from the model file', False,
    STRINGS)
#: Not read_only in the descriptor only so that the node can update it after a model swap;
#: the node refuses every change from outside.
CLASS_NAMES_DESCRIPTION = _descriptor(
    'class names of the loaded model; label id = index (set by the node, follows model_path; '
    'changes from outside are refused)', False, STRINGS)


def startup_settings(values: Dict[str, Any]) -> StartupSettings:
    """Build and check the start-up settings from parameter values."""
    def choice(name: str, options: Sequence[str]) -> str:
        value = str(values[name]).strip().lower()
        if value not in options:
            raise ConfigError(f"parameter {name}: '{values[name]}' is not one of "
                              f"{', '.join(options)}")
        return value

    for name in ('network_width', 'network_height'):
        if values[name] % 8:
            raise ConfigError(f'parameter {name}: {values[name]} is not a multiple of 8')
    if (values['network_width'] == 0) != (values['network_height'] == 0):
        raise ConfigError('parameters network_width and network_height: set both or neither')
    cameras = tuple(str(name) for name in values.get('cameras') or ())
    bad = [name for name in cameras if not CAMERA_NAME.match(name)]
    if bad:
        raise ConfigError(f'parameter cameras: {bad} are not valid names (a letter, then '
                          'letters, digits or _)')
    if len(set(cameras)) != len(cameras):
        raise ConfigError(f'parameter cameras: {list(cameras)} names a camera twice')
    return StartupSettings(
        model_path=str(values['model_path']),
        cameras=cameras,
        warmup_sizes=tuple(str(size) for size in values.get('warmup_sizes') or ()),
        device=str(values['device']),
        precision=str(values['precision']),
        network_width=int(values['network_width']),
        network_height=int(values['network_height']),
        torch_compile=bool(values['torch_compile']),
        input_transport=choice('input_transport', TRANSPORTS),
        input_reliability=choice('input_reliability', RELIABILITY),
        input_depth=int(values['input_depth']),
        output_reliability=choice('output_reliability', RELIABILITY),
        output_depth=int(values['output_depth']),
        diagnostics_period_s=float(values['diagnostics_period']),
    )


def runtime_settings(values: Dict[str, Any], class_names: Sequence[str]) -> RuntimeSettings:
    """Build and check the run-time settings; raise ConfigError naming the parameter."""
    drivable = tuple(values['drivable_classes'])
    unknown = [name for name in drivable if name not in class_names]
    if unknown:
        raise ConfigError(f'parameter drivable_classes: unknown class name(s) {unknown}; the '
                          f'model knows {list(class_names)}')
    publish = tuple(values['publish'])
    bad = [name for name in publish if name not in OUTPUTS]
    if bad:
        raise ConfigError(f'parameter publish: unknown output(s) {bad}; choose from '
                          f'{list(OUTPUTS)}')
    alpha = float(values['overlay_alpha'])
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f'parameter overlay_alpha: {alpha} is outside [0, 1]')
    if not 0.0 <= float(values['min_confidence']) <= 1.0:
        raise ConfigError(f"parameter min_confidence: {values['min_confidence']} is outside "
                          '[0, 1]')
    for name in ('max_pixels', 'max_consecutive_failures'):
        if int(values[name]) < 1:
            raise ConfigError(f'parameter {name}: {values[name]} must be at least 1')
    for name in ('max_rate_hz', 'stale_input_timeout', 'latency_warn_ms'):
        if float(values[name]) < 0:
            raise ConfigError(f'parameter {name}: {values[name]} must not be negative')
    return RuntimeSettings(
        drivable_classes=drivable,
        overlay_alpha=alpha,
        publish=publish,
        max_rate_hz=float(values['max_rate_hz']),
        max_pixels=int(values['max_pixels']),
        stale_input_s=float(values['stale_input_timeout']),
        latency_warn_ms=float(values['latency_warn_ms']),
        max_consecutive_failures=int(values['max_consecutive_failures']),
        exit_on_failure=bool(values['exit_on_failure']),
        min_confidence=float(values['min_confidence']),
    )


def qos_profile(reliability: str, depth: int) -> QoSProfile:
    """Return a keep-last QoS of ``depth`` with ``reliability`` ('reliable' / 'best_effort')."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.BEST_EFFORT if reliability == 'best_effort'
                      else ReliabilityPolicy.RELIABLE)
