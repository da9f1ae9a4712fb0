"""
The node's settings: parameter values checked into frozen objects, or ConfigError.

:func:`startup_settings` (read at start-up; the managed node: at each
configure) and :func:`runtime_settings` (built again for each accepted change,
applied to the next frame) check every value and name the parameter in one
line when one is wrong. ``model_path`` changes at run time too (see
:mod:`enet_ros.node.model_swap`). The drivable grid's layout (``grid_*``) and
the cameras' poses (``camera_pose.*``) are run-time settings: the next frame
uses them (the pixel-to-cell map is rebuilt then).
"""

from dataclasses import dataclass
import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from .parameter_table import (CAMERA_NAME, ConfigError, INFERENCE_BACKENDS, OUTPUTS,
                              POSE_FIELDS, pose_parameter, POSE_SOURCES, RELIABILITY,
                              TRANSPORTS)
from ..camera_model import CameraPose
from ..ground_grid import GridSpec
from ..inference.config import parse_frame_sizes, SegmenterConfigError
from ..model_file import input_size_problem
from ..ros_io.image_msgs import check_frame_shape, InvalidImage


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
    grid_pose_source: str = 'auto'
    inference_backend: str = 'auto'
    cpu_threads: int = 0


@dataclass(frozen=True)
class GridSettings:
    """The drivable grid's frame and layout (the grid_* parameters)."""

    frame: str
    resolution: float
    width: int
    height: int
    origin_x: float
    origin_y: float
    grid_range: float
    ground_z: float
    rectified_image: bool
    #: Longest wait (s) for a transform newer than the image (grid_tf_timeout).
    tf_timeout_s: float = 0.05

    def spec(self) -> GridSpec:
        """Return the grid's layout for the projection."""
        return GridSpec(resolution=self.resolution, width=self.width, height=self.height,
                        origin_x=self.origin_x, origin_y=self.origin_y,
                        grid_range=self.grid_range)


@dataclass(frozen=True)
class PoseValues:
    """A camera's camera_pose.* values: body frame at (x, y, height above the ground)."""

    height: float
    roll: float = 0.0
    pitch: float = 0.0
    yaw: float = 0.0
    x: float = 0.0
    y: float = 0.0

    @property
    def is_set(self) -> bool:
        """Tell whether a height was given (0, the default, means no pose)."""
        return self.height > 0.0

    def pose(self, ground_z: float = 0.0) -> Optional[CameraPose]:
        """Return the optical frame's pose in the grid frame, or None when not set."""
        if not self.is_set:
            return None
        return CameraPose.from_parameters(self.height + ground_z, roll=self.roll,
                                          pitch=self.pitch, yaw=self.yaw, x=self.x, y=self.y)


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
    grid: Optional[GridSettings] = None
    #: camera name ('' for the unnamed camera) -> its camera_pose.* values
    camera_poses: Optional[Mapping[str, PoseValues]] = None


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
    network_size = (int(values['network_width']), int(values['network_height']))
    too_large = network_size[0] and input_size_problem(network_size)
    if too_large:
        raise ConfigError('parameters network_width and network_height: '
                          '{}x{} {}'.format(*network_size, too_large))
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
        warmup_sizes=warmup_sizes(values.get('warmup_sizes') or (), int(values['max_pixels'])),
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
        grid_pose_source=choice('grid_pose_source', POSE_SOURCES),
        inference_backend=choice('inference_backend', INFERENCE_BACKENDS),
        cpu_threads=int(values['cpu_threads']),
    )


def warmup_sizes(entries: Sequence[str], max_pixels: int) -> Tuple[str, ...]:
    """
    Check the warmup_sizes entries ('WIDTHxHEIGHT'); raise ConfigError naming the parameter.

    A size is refused where its frames would be: more pixels than
    ``max_pixels`` (its value at start-up) or a bad shape (see
    :func:`~enet_ros.ros_io.image_msgs.check_frame_shape`). Warming such a size
    up would only cost memory (100000x100000: 30 GB) for frames never segmented.
    """
    try:
        sizes = parse_frame_sizes(entries)
    except SegmenterConfigError as error:
        raise ConfigError(f'parameter warmup_sizes: {error}') from None
    for width, height in sizes:
        if width * height > max_pixels:
            raise ConfigError(f'parameter warmup_sizes: {width}x{height} has more pixels than '
                              f'max_pixels {max_pixels} (frames that large are refused)')
        try:
            check_frame_shape(width, height, 'warm-up size')
        except InvalidImage as error:
            raise ConfigError(f'parameter warmup_sizes: {error} (frames of that shape are '
                              'refused)') from None
    return tuple(str(entry) for entry in entries)


def grid_settings(values: Mapping[str, Any]) -> GridSettings:
    """Build and check the grid_* settings; raise ConfigError naming the parameter."""
    frame = str(values['grid_frame']).strip()
    if not frame:
        raise ConfigError('parameter grid_frame: must not be empty')
    for name in ('grid_resolution', 'grid_range'):
        value = float(values[name])
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f'parameter {name}: {value} must be positive')
    for name in ('grid_width', 'grid_height'):
        if int(values[name]) < 1:
            raise ConfigError(f'parameter {name}: {values[name]} must be at least 1')
    for name in ('grid_origin_x', 'grid_origin_y', 'grid_ground_z'):
        if not math.isfinite(float(values[name])):
            raise ConfigError(f'parameter {name}: {values[name]} must be finite')
    tf_timeout = float(values.get('grid_tf_timeout', 0.05))
    if not 0.0 <= tf_timeout <= 1.0:
        raise ConfigError(f'parameter grid_tf_timeout: {tf_timeout} is outside [0, 1] s')
    return GridSettings(frame=frame, resolution=float(values['grid_resolution']),
                        width=int(values['grid_width']), height=int(values['grid_height']),
                        origin_x=float(values['grid_origin_x']),
                        origin_y=float(values['grid_origin_y']),
                        grid_range=float(values['grid_range']),
                        ground_z=float(values['grid_ground_z']),
                        rectified_image=bool(values['grid_rectified_image']),
                        tf_timeout_s=tf_timeout)


def pose_values(values: Mapping[str, Any], camera: str) -> PoseValues:
    """Read and check one camera's camera_pose.* values; raise ConfigError naming one."""
    fields = {}
    for field in POSE_FIELDS:
        name = pose_parameter(camera, field)
        value = float(values.get(name, 0.0))
        if not math.isfinite(value):
            raise ConfigError(f'parameter {name}: {value} must be finite')
        fields[field] = value
    if fields['height'] < 0:
        raise ConfigError(f"parameter {pose_parameter(camera, 'height')}: "
                          f"{fields['height']} must not be negative (0 = not set)")
    return PoseValues(**fields)


def runtime_settings(values: Dict[str, Any], class_names: Sequence[str],
                     cameras: Sequence[str] = ()) -> RuntimeSettings:
    """
    Build and check the run-time settings; raise ConfigError naming the parameter.

    ``cameras``: the camera names whose camera_pose.* values to read ('' for
    the unnamed camera); the grid_* values are read when ``values`` has them.
    """
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
        grid=grid_settings(values) if 'grid_frame' in values else None,
        camera_poses={camera: pose_values(values, camera) for camera in cameras},
    )


def qos_profile(reliability: str, depth: int) -> QoSProfile:
    """Return a keep-last QoS of ``depth`` with ``reliability`` ('reliable' / 'best_effort')."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.BEST_EFFORT if reliability == 'best_effort'
                      else ReliabilityPolicy.RELIABLE)
