"""
The segmentation node: camera images in; labels, colours, drivable area, ground grid out.

One camera (parameter ``cameras`` not set): subscribes ``image``
(sensor_msgs/Image) or, with ``input_transport: compressed``,
``image/compressed`` (sensor_msgs/CompressedImage, JPEG/PNG), and
``camera_info`` (sensor_msgs/CameraInfo), and publishes ``~/labels`` (mono8
class ids), ``~/colored`` (rgb8), ``~/overlay`` (rgb8), ``~/drivable``
(mono8, 0 or 255), ``~/confidence`` (mono8, probability x 255) and
``~/drivable_grid`` (nav_msgs/OccupancyGrid: the drivable mask projected onto
the ground through the CameraInfo and the camera's pose, see
:mod:`enet_ros.node.grid`). With ``cameras: [front, left]`` each camera
subscribes ``<name>/image`` and ``<name>/camera_info`` and publishes
``~/<name>/labels`` and so on; one model serves all. Every image output has
its input's size and header; the grid has the image's stamp and
``grid_frame``. ``/diagnostics`` about once a second, one status per camera.

Two nodes share these parts (:class:`SegmentationMixin`): :class:`SegmentationNode`
configures and activates itself in its constructor, and
:class:`~enet_ros.node.lifecycle_node.SegmentationLifecycleNode` does the same
steps in its lifecycle transitions (configure: parameters and model;
activate: subscriptions; deactivate; cleanup).

Threading: the ROS executor spins on a helper thread; a subscription callback
only validates the message and parks it as its camera's newest frame
(:class:`~enet_ros.node.cameras.FrameSlots`). The process's main thread, the
one that built and warmed up the Segmenter, serves the cameras' newest frames
round robin. (Calling torch from a second thread after the main thread has
used it doubled the CPU inference time: each thread keeps its own OpenMP team,
and the two teams' threads compete for the cores.) A frame replaced before
inference took it is counted as dropped, so a slow model drops old frames
instead of queueing them. No exception leaves a callback: a bad message or a
failed frame is counted and logged (throttled). A frame is processed under a
lock that deactivate and cleanup take too, so they wait for it to finish.

Hot model swap: setting ``model_path`` loads, validates and warms the new model
in the parameter callback, on an executor thread (the camera subscriptions
have callback groups of their own, so frames keep arriving and the main thread
keeps segmenting with the old model meanwhile); the set answers when the new
model is ready, and the next frame uses it. A file that fails is refused with
the reason and the old model stays.
"""

import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import OccupancyGrid
import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from .cameras import Camera, FrameSlots, topic_prefix
from .config import (CAMERA_NAME, CAMERAS_DESCRIPTION, CLASS_NAMES_DESCRIPTION, ConfigError,
                     DRIVABLE_DESCRIPTION, GRID_OUTPUT, IMAGE_OUTPUTS, PARAMETERS,
                     pose_descriptor, POSE_FIELDS, pose_parameter, qos_profile,
                     runtime_settings, RuntimeSettings, startup_settings, StartupSettings,
                     WARMUP_SIZES_DESCRIPTION)
from .diagnostics import diagnostic_array
from .grid import GridUnavailable, resolve_pose_source, TfPoseSource
from .health import HealthThresholds
from .image_msgs import (CameraFrame, check_raw_image, compressed_image_to_frame, ImageBuffer,
                         InvalidImage, raw_image_to_frame)
from .log_bridge import forward_core_logs
from .. import masks
from ..ground_grid import CameraPose
from ..model_file import load_model_file, ModelFileError
from ..segmenter import Segmenter, SegmenterConfigError

NODE_NAME = 'segmentation_node'
WARN_THROTTLE_S = 5.0
#: Label id for pixels voided by min_confidence when the model file has no void id.
DEFAULT_VOID_ID = 255
_READ_ONLY_RESTART = ('device', 'precision', 'network_width', 'network_height',
                      'torch_compile', 'cameras', 'warmup_sizes', 'input_transport',
                      'input_reliability', 'input_depth', 'output_reliability', 'output_depth',
                      'diagnostics_period', 'grid_pose_source')
STRING_ARRAY = Parameter.Type.STRING_ARRAY


class _State:
    """The model and everything derived from it and the run-time settings, swapped as one."""

    def __init__(self, segmenter: Segmenter, settings: RuntimeSettings):
        self.segmenter = segmenter
        self.settings = settings
        metadata = segmenter.metadata
        self.void_id = DEFAULT_VOID_ID if metadata.void_id is None else metadata.void_id
        self.renderer = masks.OutputRenderer(
            metadata.colors, (metadata.class_names.index(n) for n in settings.drivable_classes),
            settings.overlay_alpha)
        self.min_interval_s = 1.0 / settings.max_rate_hz if settings.max_rate_hz > 0 else 0.0
        self.thresholds = HealthThresholds(settings.stale_input_s, settings.latency_warn_ms,
                                           settings.max_consecutive_failures)
        self.grid_spec = settings.grid.spec()
        self.poses: Dict[str, Optional[CameraPose]] = {
            name: values.pose(settings.grid.ground_z)
            for name, values in settings.camera_poses.items()}


def grid_qos(reliability: str) -> QoSProfile:
    """
    Return the QoS of ~/drivable_grid: the newest grid, transient local, ``reliability``.

    Transient local matches both volatile subscribers and the transient-local
    ones that map consumers use (RViz's Map display, nav2's static layer).
    """
    qos = qos_profile(reliability, 1)
    qos.history = HistoryPolicy.KEEP_LAST
    qos.durability = DurabilityPolicy.TRANSIENT_LOCAL
    return qos


class SegmentationMixin:
    """
    The segmentation node's parts, in the steps of a managed node's lifecycle.

    For a class that also derives from rclpy's ``Node`` (or ``LifecycleNode``):
    :meth:`_init_segmentation` after the node's constructor declares the
    parameters; :meth:`_configure` validates them, loads the model and creates
    the publishers (ConfigError when something is wrong); :meth:`_activate`
    subscribes to the cameras; :meth:`_deactivate` unsubscribes;
    :meth:`_cleanup` releases the model and the publishers. :meth:`run_inference`
    serves the frames on the calling thread whatever the state.
    """

    def _init_segmentation(self) -> None:
        """Declare the parameters and start unconfigured; call right after Node.__init__."""
        self._log_forwarding = forward_core_logs(self.get_logger())
        self._stop = threading.Event()
        self.failed = False
        self.failed_frames = False
        self._warned: Dict[str, float] = {}
        self._lock = threading.Lock()  # a frame in progress vs. (de)activate and cleanup
        self._swap_lock = threading.Lock()
        self._state: Optional[_State] = None
        self.startup: Optional[StartupSettings] = None
        self.cameras: List[Camera] = []
        self._slots: Optional[FrameSlots] = None
        self._active = False
        self._parameter_callback = None
        self._diagnostics_publisher = None
        self._diagnostics_timer = None
        self.grid_pose_source = ''
        self._tf: Optional[TfPoseSource] = None
        self._named_classes = None
        self._model_drivable_default: Optional[List[str]] = None
        self._updating_class_names = False
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        self.declare_parameter('cameras', STRING_ARRAY, CAMERAS_DESCRIPTION)
        self.declare_parameter('warmup_sizes', STRING_ARRAY, WARMUP_SIZES_DESCRIPTION)
        for camera in self.camera_names():
            if camera and not CAMERA_NAME.match(camera):
                continue  # refused by configure, with the reason
            for field in POSE_FIELDS:
                name = pose_parameter(camera, field)
                if not self.has_parameter(name):
                    self.declare_parameter(name, 0.0, pose_descriptor(field))

    def camera_names(self) -> Tuple[str, ...]:
        """Return the ``cameras`` parameter's names, ('',) when not set; not validated."""
        return tuple(self._string_list('cameras')) or ('',)

    @property
    def segmenter(self) -> Optional[Segmenter]:
        """Return the model in use now (None while not configured)."""
        state = self._state
        return None if state is None else state.segmenter

    # ----------------------------------------------------------------- lifecycle steps

    def _create_output_publisher(self, msg_type: Any, topic: str, qos: Any) -> Any:
        """Create an output publisher (the lifecycle node makes lifecycle publishers)."""
        return self.create_publisher(msg_type, topic, qos)

    def _destroy_output_publisher(self, publisher: Any) -> None:
        self.destroy_publisher(publisher)

    def _configure(self) -> None:
        """Validate the parameters, load the model, create the publishers; ConfigError if bad."""
        values = self._values(PARAMETERS)
        values['cameras'] = self._string_list('cameras')
        values['warmup_sizes'] = self._string_list('warmup_sizes')
        self.startup = startup_settings(values)
        self.grid_pose_source = resolve_pose_source(self.startup.grid_pose_source)
        segmenter = self._build_segmenter(self.startup.model_path)
        self.get_logger().info(segmenter.describe())
        self._declare_model_parameters(segmenter.metadata)
        self._state = _State(segmenter, self._runtime_settings({}, segmenter.metadata.class_names))
        self._named_classes = segmenter
        self._parameter_callback = self._on_set_parameters
        self.add_on_set_parameters_callback(self._parameter_callback)
        self.cameras = [self._make_camera(name) for name in self.startup.cameras or ('',)]
        self._slots = FrameSlots(self.cameras)
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        if self.grid_pose_source == 'tf':
            self._tf = TfPoseSource(self)
            source = (f'TF ({self._state.settings.grid.frame} <- the image frame_id, newest '
                      'transform)')
        elif self.startup.grid_pose_source == 'parameters':
            source = 'the camera_pose.* parameters (grid_pose_source: parameters)'
        else:
            source = 'the camera_pose.* parameters (tf2_ros is not importable)'
        self.get_logger().info(f'drivable grid: camera pose from {source}')

    def _declare_model_parameters(self, metadata: Any) -> None:
        """
        Declare class_names and drivable_classes with the model's values (first configure).

        On a later configure (lifecycle) class_names follows the new model, and
        so does drivable_classes unless it was changed from the old model's default.
        """
        names = list(metadata.class_names)
        default = list(metadata.drivable_classes) or ['']
        if not self.has_parameter('class_names'):
            self.declare_parameter('class_names', names, CLASS_NAMES_DESCRIPTION)
            self.declare_parameter('drivable_classes', default, DRIVABLE_DESCRIPTION)
        else:
            updates = [Parameter('class_names', STRING_ARRAY, names)]
            if list(self.get_parameter('drivable_classes').value) == \
                    self._model_drivable_default:
                updates.append(Parameter('drivable_classes', STRING_ARRAY, default))
            self.set_parameters(updates)
        self._model_drivable_default = default

    def _activate(self) -> None:
        """Subscribe to the cameras and start the diagnostics."""
        startup = self.startup
        input_qos = qos_profile(startup.input_reliability, startup.input_depth)
        with self._lock:
            self._active = True
        for camera in self.cameras:
            prefix = topic_prefix(camera.name)
            group = MutuallyExclusiveCallbackGroup()  # frames keep coming during a model swap
            if startup.input_transport == 'compressed':
                camera.subscription = self.create_subscription(
                    CompressedImage, f'{prefix}image/compressed',
                    lambda msg, camera=camera: self._on_compressed(msg, camera), input_qos,
                    callback_group=group)
            else:
                camera.subscription = self.create_subscription(
                    Image, f'{prefix}image',
                    lambda msg, camera=camera: self._on_image(msg, camera), input_qos,
                    callback_group=group)
            camera.info_subscription = self.create_subscription(
                CameraInfo, f'{prefix}camera_info', camera.grid.on_camera_info, input_qos,
                callback_group=group)
        self._diagnostics_timer = self.create_timer(startup.diagnostics_period_s,
                                                    self._publish_diagnostics)
        for camera in self.cameras:
            outputs = ', '.join(p.topic_name for p in camera.publishers.values())
            self.get_logger().info(
                f'listening on {camera.subscription.topic_name} ({startup.input_transport}, '
                f'{startup.input_reliability}) and {camera.info_subscription.topic_name}; '
                f'publishing {outputs}')

    def _deactivate(self) -> None:
        """Unsubscribe and stop the diagnostics; waits for a frame in progress."""
        with self._lock:
            self._active = False
            for camera in self.cameras:
                for subscription in (camera.subscription, camera.info_subscription):
                    if subscription is not None:
                        self.destroy_subscription(subscription)
                camera.subscription = camera.info_subscription = None
            if self._slots is not None:
                self._slots.clear()
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None

    def _cleanup(self) -> None:
        """Release the model, the publishers and the TF listener (any partial configuration)."""
        self._deactivate()
        with self._lock:
            for camera in self.cameras:
                for publisher in camera.publishers.values():
                    self._destroy_output_publisher(publisher)
            self.cameras = []
            self._slots = None
            self._state = None
        self._named_classes = None
        if self._diagnostics_publisher is not None:
            self.destroy_publisher(self._diagnostics_publisher)
            self._diagnostics_publisher = None
        if self._tf is not None:
            self._tf.close()
            self._tf = None
        if self._parameter_callback is not None:
            self.remove_on_set_parameters_callback(self._parameter_callback)
            self._parameter_callback = None
        self.startup = None

    # ----------------------------------------------------------------- configuration

    def _values(self, names) -> Dict[str, Any]:
        return {name: self.get_parameter(name).value for name in names}

    def _string_list(self, name: str) -> List[str]:
        """Return a string-array parameter declared by type only; [] when it is not set."""
        try:
            return list(self.get_parameter(name).value or [])
        except ParameterUninitializedException:
            return []

    def _make_camera(self, name: str) -> Camera:
        """Return a camera with its output publishers (subscriptions: :meth:`_activate`)."""
        camera = Camera(name)
        prefix = topic_prefix(name)
        output_qos = qos_profile(self.startup.output_reliability, self.startup.output_depth)
        for output in IMAGE_OUTPUTS:
            camera.publishers[output] = self._create_output_publisher(
                Image, f'~/{prefix}{output}', output_qos)
            camera.buffers[output] = ImageBuffer(
                Image, 'mono8' if masks.OUTPUT_CHANNELS[output] == 1 else 'rgb8')
        camera.publishers[GRID_OUTPUT] = self._create_output_publisher(
            OccupancyGrid, f'~/{prefix}{GRID_OUTPUT}', grid_qos(self.startup.output_reliability))
        return camera

    def _build_segmenter(self, model_path: str) -> Segmenter:
        """Load, validate and warm ``model_path`` with the start-up device settings."""
        try:
            loaded = load_model_file(model_path or None)
        except ModelFileError as error:
            raise ConfigError(f'parameter model_path: {error}') from None
        startup = self.startup
        size = ((startup.network_width, startup.network_height)
                if startup.network_width else None)
        try:
            return Segmenter(loaded, device=startup.device, precision=startup.precision,
                             input_size=size,
                             torch_compile=None if startup.torch_compile else False,
                             warmup_sizes=startup.warmup_sizes or None)
        except SegmenterConfigError as error:
            raise ConfigError('parameters device / precision / network size / warmup_sizes: '
                              f'{error}') from None

    def _runtime_settings(self, changes: Dict[str, Any], class_names) -> RuntimeSettings:
        cameras = self.startup.cameras or ('',)
        names = [n for n, (_, d) in PARAMETERS.items() if not d.read_only]
        names += [pose_parameter(camera, field) for camera in cameras for field in POSE_FIELDS]
        values = self._values(names + ['drivable_classes'])
        values.update(changes)
        values['drivable_classes'] = [n for n in values['drivable_classes'] if n]
        return runtime_settings(values, class_names, cameras)

    def _on_set_parameters(self, parameters: List[Parameter]) -> SetParametersResult:
        changes = {}
        for parameter in parameters:
            if parameter.name in _READ_ONLY_RESTART:
                return SetParametersResult(
                    successful=False, reason=f'{parameter.name} is read-only: restart the node')
            if parameter.name == 'class_names' and not self._updating_class_names:
                return SetParametersResult(
                    successful=False, reason='class_names is set by the node from the model')
            changes[parameter.name] = parameter.value
        changes.pop('class_names', None)
        try:
            if 'model_path' in changes:
                state = self._swap_model(changes)
            else:
                segmenter = self._state.segmenter
                state = _State(segmenter, self._runtime_settings(
                    changes, segmenter.metadata.class_names))
        except (ConfigError, TypeError, ValueError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        self._state = state
        return SetParametersResult(successful=True)

    def _swap_model(self, changes: Dict[str, Any]) -> _State:
        """Build the state of a new model: validated, warmed, drivable classes checked."""
        with self._swap_lock:  # one swap at a time
            started = time.monotonic()
            segmenter = self._build_segmenter(str(changes['model_path']))
            names = segmenter.metadata.class_names
            try:
                settings = self._runtime_settings(changes, names)
            except ConfigError as error:
                raise ConfigError(f'model_path: the new model does not fit: {error} (set '
                                  'drivable_classes in the same request)') from None
            self.get_logger().info(f'model swapped in after {time.monotonic() - started:.1f} '
                                   f's of loading and warm-up: {segmenter.describe()}')
            return _State(segmenter, settings)

    def _publish_class_names(self) -> None:
        """After a swap, make the read-only class_names parameter follow the model."""
        state = self._state
        if state is None or state.segmenter is self._named_classes:
            return
        segmenter = state.segmenter
        self._updating_class_names = True
        try:
            self.set_parameters([Parameter('class_names', Parameter.Type.STRING_ARRAY,
                                           list(segmenter.metadata.class_names))])
        finally:
            self._updating_class_names = False
        self._named_classes = segmenter

    # ----------------------------------------------------------------- input

    def _warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) >= WARN_THROTTLE_S:
            self._warned[key] = now
            self.get_logger().warning(message)

    def _on_image(self, msg: Image, camera: Camera) -> None:
        camera.stats.received()
        try:
            check_raw_image(msg, self._state.settings.max_pixels)
        except InvalidImage as error:
            self._reject(camera, error)
            return
        self._slots.offer(camera, msg)

    def _on_compressed(self, msg: CompressedImage, camera: Camera) -> None:
        camera.stats.received()
        self._slots.offer(camera, msg)  # decoding is too slow for the callback: done later

    def _reject(self, camera: Camera, error: InvalidImage) -> None:
        camera.stats.rejected_frame(error.reason)
        self._warn(f'reject:{camera.name}:{error.reason}',
                   f'dropping image from {camera.label}: {error} [{error.reason}]')

    # ----------------------------------------------------------------- inference

    def run_inference(self) -> None:
        """
        Segment the cameras' newest frames, round robin, until :meth:`stop`.

        Call it on the thread that built the node (see the module docstring);
        it also returns when the node's context shuts down, and after
        ``max_consecutive_failures`` failed frames with ``exit_on_failure``.
        """
        while not self._stop.is_set() and self.context.ok():
            slots = self._slots
            if slots is None:  # not configured (lifecycle node)
                self._stop.wait(0.2)
                continue
            self._publish_class_names()
            taken = slots.take(timeout=0.2)
            if taken is None:
                continue
            camera, msg, received = taken
            with self._lock:
                if not self._active or self._state is None:
                    continue  # deactivated while the frame waited
                try:
                    self._process(camera, msg, received)
                except Exception as error:  # noqa: B902 - a frame must never kill the node
                    if self._failed(camera, error):
                        return

    def _failed(self, camera: Camera, error: Exception) -> bool:
        """Count a failed frame; return True when the node should exit (exit_on_failure)."""
        failures = camera.stats.failed()
        self._warn(f'failure:{camera.name}', f'frame from {camera.label} failed '
                   f'({type(error).__name__}: {error}); {failures} in a row')
        settings = self._state.settings
        if settings.exit_on_failure and failures >= settings.max_consecutive_failures:
            self.get_logger().fatal(
                f'{failures} frames failed in a row (last: {type(error).__name__}: {error}); '
                'exiting with code 3 (exit_on_failure)')
            self.failed_frames = True
        return self.failed_frames

    def _process(self, camera: Camera, msg: Any, received: float) -> None:
        state = self._state
        wanted = camera.subscribed_outputs(state.settings.publish)
        if not wanted:
            camera.stats.count('skipped_no_subscribers')
            camera.grid.problem = None
            return
        if state.min_interval_s and received - camera.last_processed < state.min_interval_s:
            camera.stats.count('dropped_rate_limit')
            return
        try:
            if isinstance(msg, CompressedImage):
                frame = compressed_image_to_frame(msg, state.settings.max_pixels)
            else:
                frame = raw_image_to_frame(msg, state.settings.max_pixels)
        except InvalidImage as error:
            self._reject(camera, error)
            return
        camera.last_processed = received
        images = [name for name in wanted if name != GRID_OUTPUT]
        with_confidence = 'confidence' in images or state.settings.min_confidence > 0
        inference_start = time.monotonic()
        result = state.segmenter.segment(frame.pixels, bgr=frame.bgr,
                                         with_confidence=with_confidence)
        inference_s = time.monotonic() - inference_start
        labels = result.labels
        self._check_labels(labels, frame, state.segmenter)
        if state.settings.min_confidence > 0:
            masks.void_low_confidence(labels, result.confidence, state.settings.min_confidence,
                                      state.void_id)
        height, width = labels.shape
        buffers = {name: camera.buffers[name].view(height, width, masks.OUTPUT_CHANNELS[name])
                   for name in images}
        state.renderer.render(labels, frame.rgb() if 'overlay' in images else None, images,
                              out=buffers, confidence=result.confidence)
        for name in images:
            buffer = camera.buffers[name]
            buffer.msg.header = msg.header
            camera.publishers[name].publish(buffer.msg)
        camera.stats.published(self._latency_s(msg), time.monotonic() - received, inference_s)
        if GRID_OUTPUT in wanted:
            drivable = buffers.get('drivable')
            if drivable is None:
                drivable = masks.drivable_mask(labels, state.renderer.drivable,
                                               out=camera.grid.drivable_scratch(height, width))
            self._publish_grid(camera, msg, drivable, state)
        else:
            camera.grid.problem = None

    def _publish_grid(self, camera: Camera, msg: Any, drivable: np.ndarray,
                      state: _State) -> None:
        """Project ``drivable`` onto the ground and publish it, or count and warn why not."""
        grid = camera.grid
        settings = state.settings.grid
        height, width = drivable.shape
        try:
            intrinsics = grid.intrinsics(settings.rectified_image)
            if (intrinsics.width, intrinsics.height) != (width, height):
                raise GridUnavailable('camera_info_size_mismatch', (
                    f'camera_info is {intrinsics.width}x{intrinsics.height} but the image is '
                    f'{width}x{height}; they must describe the same image'))
            pose = self._grid_pose(camera, msg.header.frame_id, state)
            projection, built = grid.projection_for(intrinsics, pose, state.grid_spec,
                                                    settings.ground_z)
        except GridUnavailable as error:
            camera.stats.count(f'grid_skipped_{error.reason}')
            topic = camera.info_subscription.topic_name if camera.info_subscription else ''
            grid.problem = f'{error} [{error.reason}]'
            self._warn(f'grid:{camera.name}:{error.reason}',
                       f'no drivable grid for {camera.label} ({topic}): {error} '
                       f'[{error.reason}]; the other outputs are published')
            return
        if built:
            spec = state.grid_spec
            self.get_logger().info(
                f'{camera.label}: ground projection built in {grid.build_ms:.0f} ms '
                f'({width}x{height} camera, {spec.width}x{spec.height} cells of '
                f'{spec.resolution:g} m in {settings.frame}, pose from {self.grid_pose_source})')
        projection.fill(drivable, out=grid.buffer.view(state.grid_spec, settings.ground_z))
        camera.publishers[GRID_OUTPUT].publish(grid.buffer.stamp(msg.header.stamp,
                                                                 settings.frame))
        camera.stats.count('grid_published')
        grid.problem = None

    def _grid_pose(self, camera: Camera, frame_id: str, state: _State) -> CameraPose:
        """Return the camera's optical-frame pose in grid_frame; raise GridUnavailable."""
        if self._tf is not None:
            return self._tf.lookup(state.settings.grid.frame, frame_id)
        pose = state.poses.get(camera.name)
        if pose is None:
            raise GridUnavailable('no_pose', (
                f"camera pose not set: set {pose_parameter(camera.name, 'height')} (and "
                f"{pose_parameter(camera.name, 'pitch')} ...) or publish TF"))
        return pose

    @staticmethod
    def _check_labels(labels: np.ndarray, frame: CameraFrame, segmenter: Segmenter) -> None:
        if labels.shape != (frame.height, frame.width) or labels.dtype != np.uint8:
            raise RuntimeError(f'labels {labels.dtype} {labels.shape} do not match the '
                               f'{frame.width}x{frame.height} input')
        if int(labels.max()) >= segmenter.num_classes:
            raise RuntimeError(f'label id {int(labels.max())} outside [0, '
                               f'{segmenter.num_classes})')

    def _latency_s(self, msg: Any):
        stamp = msg.header.stamp
        if stamp.sec == 0 and stamp.nanosec == 0:
            return None
        now = self.get_clock().now().nanoseconds
        return (now - (stamp.sec * 1_000_000_000 + stamp.nanosec)) / 1e9

    # ----------------------------------------------------------------- health

    def _publish_diagnostics(self) -> None:
        state, publisher = self._state, self._diagnostics_publisher
        if state is None or publisher is None:
            return
        publisher.publish(diagnostic_array(
            self.get_fully_qualified_name(), self.cameras, state.thresholds, state.segmenter,
            self.get_clock().now().to_msg(), self.grid_pose_source))

    def destroy_node(self) -> None:
        """Destroy the node and stop forwarding the core's log records to it."""
        self._log_forwarding()
        super().destroy_node()

    def stop(self) -> None:
        """Make :meth:`run_inference` return after the frame in progress."""
        self._stop.set()
        slots = self._slots
        if slots is not None:
            slots.stop()


class SegmentationNode(SegmentationMixin, Node):
    """ENet segmentation node, configured and active from its constructor; see the module."""

    def __init__(self, **node_kwargs: Any):
        Node.__init__(self, NODE_NAME, **node_kwargs)
        self._init_segmentation()
        self._configure()
        self._activate()
