"""
The segmentation node's parameters: declarations, validation and frozen settings.

Parameters that need a restart (device, precision, network size, cameras,
transport, QoS) are read-only; the others can change at run time and are
validated before they apply. ``model_path`` changes at run time too (see
:mod:`enet_ros.node.model_swap`).

The drivable grid's layout (``grid_*``) and the cameras' poses
(``camera_pose.*``, one set per camera, see :func:`pose_parameter`) are
live too: the next frame uses them (the pixel-to-cell map is rebuilt then).

Why one module: the declaration of every parameter, with its description and
range, is one table in one place, with the checks that go with it.
"""

from dataclasses import dataclass
import math
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from ..camera_model import CameraPose
from ..ground_grid import GridSpec
from ..inference.config import parse_frame_sizes, SegmenterConfigError
from ..masks import OUTPUT_IMAGES
from ..model_file import input_size_problem
from ..ros_io.image_msgs import check_frame_shape, InvalidImage

#: The image outputs (sensor_msgs/Image, the input's size and header).
IMAGE_OUTPUTS = OUTPUT_IMAGES
#: The ground grid output (nav_msgs/OccupancyGrid in ``grid_frame``).
GRID_OUTPUT = 'drivable_grid'
#: Every output, as the ``publish`` parameter names them.
OUTPUTS = IMAGE_OUTPUTS + (GRID_OUTPUT,)
RELIABILITY = ('best_effort', 'reliable')
TRANSPORTS = ('raw', 'compressed')
#: Where the camera's pose above the ground comes from: TF when tf2_ros is importable
#: ('auto'), always TF ('tf'), or the camera_pose.* parameters ('parameters').
POSE_SOURCES = ('auto', 'tf', 'parameters')
#: The camera_pose.* fields: metres, and radians as in a TF static transform.
POSE_FIELDS = ('height', 'roll', 'pitch', 'yaw', 'x', 'y')
#: inference_backend values (as enet_ros.inference.backends.INFERENCE_BACKENDS, without torch).
INFERENCE_BACKENDS = ('auto', 'torch', 'openvino')


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


def pose_parameter(camera: str, field: str) -> str:
    """
    Return the name of a camera's pose parameter.

    The unnamed camera: ``camera_pose.<field>``; a named one:
    ``camera_pose.<camera>.<field>`` (in YAML, nested under ``camera_pose``).
    """
    return f'camera_pose.{camera}.{field}' if camera else f'camera_pose.{field}'


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
        'CPU: compile the network with torch.compile (whole calls about 2x faster than '
        'uncompiled at 480x360). In bf16 the weights are frozen in, so every start and model '
        'swap compiles (15-30 s); in fp32 later starts reuse the compile cache. The '
        'environment variable ENET_ROS_COMPILE=0 also turns it off; ENET_ROS_FREEZE=0 (1) '
        'compiles unfrozen (frozen) in every precision', True,
        ParameterType.PARAMETER_BOOL)),
    'inference_backend': ('auto', _descriptor(
        "CPU runtime: 'auto' (torch where the CPU has AVX-512, else OpenVINO when installed), "
        "'torch' or 'openvino' (falls back to torch with a warning where it cannot run)", True,
        STRING)),
    'cpu_threads': (0, _descriptor(
        'CPU inference threads; 0 = auto (one per core, or OMP_NUM_THREADS if set)', True, INT,
        int_range=(0, 1024, 1))),
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
    'grid_frame': ('base_link', _descriptor(
        'frame of ~/drivable_grid (nav_msgs/OccupancyGrid); with TF, the camera pose is the '
        'transform from this frame to the image header frame_id', False, STRING)),
    'grid_pose_source': ('auto', _descriptor(
        "where the camera pose above the ground comes from: 'auto' (TF when tf2_ros is "
        "importable, as on every ROS 2 install, else the camera_pose.* parameters), 'tf' or "
        "'parameters'", True,
        STRING)),
    'grid_tf_timeout': (0.05, _descriptor(
        "with TF: the camera pose is looked up at the image's stamp; when the transforms "
        'end before it, wait at most this many seconds for a newer one (on the inference '
        'thread), then skip the grid (counted as stale_transform)', False, DOUBLE,
        float_range=(0.0, 1.0))),
    'grid_resolution': (0.1, _descriptor(
        'metres per grid cell', False, DOUBLE, float_range=(0.01, 10.0))),
    'grid_width': (300, _descriptor(
        'grid cells along x (columns, OccupancyGrid info.width)', False, INT,
        int_range=(1, 5000, 1))),
    'grid_height': (200, _descriptor(
        'grid cells along y (rows, OccupancyGrid info.height)', False, INT,
        int_range=(1, 5000, 1))),
    'grid_origin_x': (0.0, _descriptor(
        'x of the outer corner of cell (0, 0) in grid_frame, metres', False, DOUBLE,
        float_range=(-10000.0, 10000.0))),
    'grid_origin_y': (-10.0, _descriptor(
        'y of the outer corner of cell (0, 0) in grid_frame, metres', False, DOUBLE,
        float_range=(-10000.0, 10000.0))),
    'grid_range': (25.0, _descriptor(
        'ground points farther than this from the point below the camera stay unknown (-1), '
        'metres', False, DOUBLE, float_range=(0.1, 10000.0))),
    'grid_ground_z': (0.0, _descriptor(
        'height of the flat ground in grid_frame (e.g. -0.3 when base_link is 0.3 m above '
        'the road); the grid is drawn at this height', False, DOUBLE,
        float_range=(-100.0, 100.0))),
    'grid_rectified_image': (False, _descriptor(
        "true when the input image is rectified (image_rect): the grid uses CameraInfo's P "
        'and no distortion; false: K and D (plumb_bob, rational_polynomial)', False,
        ParameterType.PARAMETER_BOOL)),
}

#: Descriptions of the camera_pose.* fields (declared per camera, see pose_parameter).
POSE_DESCRIPTIONS = {
    'height': 'camera height above the ground, metres; 0 = not set (no grid from parameters)',
    'roll': 'camera roll in grid_frame, radians (fixed axes, as a TF static transform)',
    'pitch': 'camera pitch in grid_frame, radians; positive looks down',
    'yaw': 'camera yaw in grid_frame, radians; positive turns left (+y)',
    'x': 'camera x in grid_frame, metres',
    'y': 'camera y in grid_frame, metres',
}


def pose_descriptor(field: str) -> ParameterDescriptor:
    """Return the descriptor of a camera_pose.* field."""
    if field == 'height':
        return _descriptor(POSE_DESCRIPTIONS[field], False, DOUBLE, float_range=(0.0, 1000.0))
    return _descriptor(POSE_DESCRIPTIONS[field], False, DOUBLE)


#: ``cameras`` is declared with its type only: an empty list has no type in ROS 2.
CAMERAS_DESCRIPTION = _descriptor(
    "camera names, e.g. [front, left]: each subscribes '<name>/image' and publishes "
    "~/<name>/labels ...; not set = one camera on 'image' with outputs ~/labels ...", True,
    STRINGS)
WARMUP_SIZES_DESCRIPTION = _descriptor(
    "camera frame sizes to prepare at start-up, e.g. ['1280x720']: on CUDA the labels-only "
    'graphs (RGB, BGR) are captured then, not on the first frame (confidence or GPU-drawn '
    'images: at their first frame); on the CPU each is run once. Sizes of frames the node '
    'refuses (over max_pixels, a side over 16 times the other) are refused', True, STRINGS)
CAMERA_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')

DRIVABLE_DESCRIPTION = _descriptor(
    'class names counted as drivable in ~/drivable; default from the model file', False,
    STRINGS)
#: Not read_only in the descriptor only so that the node can update it after a model swap;
#: the node refuses every change from outside.
CLASS_NAMES_DESCRIPTION = _descriptor(
    'class names of the loaded model; label id = index (set by the node, follows model_path; '
    'changes from outside are refused)', False, STRINGS)

#: The start-up settings, read from the descriptors (the one place that says it): changing
#: one is refused while the node runs (the managed node: while configured).
READ_ONLY_PARAMETERS = tuple(
    [name for name, (_, descriptor) in PARAMETERS.items() if descriptor.read_only]
    + [name for name, descriptor in (('cameras', CAMERAS_DESCRIPTION),
                                     ('warmup_sizes', WARMUP_SIZES_DESCRIPTION))
       if descriptor.read_only])
#: Start-up settings the managed node takes at each configure: settable while unconfigured.
#: ``cameras`` is not one: the per-camera pose parameters are declared from it at start.
CONFIGURE_TIME_PARAMETERS = tuple(n for n in READ_ONLY_PARAMETERS if n != 'cameras')


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
