"""
The segmentation node's parameter table: every parameter's name, default, description and range.

:data:`PARAMETERS` declares them (with ``cameras``, ``warmup_sizes``, the
per-camera ``camera_pose.*`` and the model's ``class_names`` and
``drivable_classes``); :data:`READ_ONLY_PARAMETERS` says, from the
descriptors, which need a restart (device, precision, network size, cameras,
transport, QoS); the others can change at run time. The values are checked
into frozen settings by :mod:`~enet_ros.node.settings`.
"""

import re
from typing import Any, Dict, Tuple

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)

from ..masks import OUTPUT_IMAGES

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


def pose_parameter(camera: str, field: str) -> str:
    """
    Return the name of a camera's pose parameter.

    The unnamed camera: ``camera_pose.<field>``; a named one:
    ``camera_pose.<camera>.<field>`` (in YAML, nested under ``camera_pose``).
    """
    return f'camera_pose.{camera}.{field}' if camera else f'camera_pose.{field}'


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
        "CPU runtime: 'auto' (torch where the CPU has AVX-512, else the faster of torch and "
        'OpenVINO, timed while frames run, when OpenVINO is installed), '
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
