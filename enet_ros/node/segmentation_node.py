"""
The segmentation node: camera images in; labels, colour, overlay, drivable and confidence out.

One camera (parameter ``cameras`` not set): subscribes ``image``
(sensor_msgs/Image) or, with ``input_transport: compressed``,
``image/compressed`` (sensor_msgs/CompressedImage, JPEG/PNG), and publishes
``~/labels`` (mono8 class ids), ``~/colored`` (rgb8), ``~/overlay`` (rgb8),
``~/drivable`` (mono8, 0 or 255) and ``~/confidence`` (mono8, probability x
255). With ``cameras: [front, left]`` each camera subscribes
``<name>/image`` and publishes ``~/<name>/labels`` and so on; one model serves
all. Every output has its input's size and header. ``/diagnostics`` about
once a second, one status per camera.

Threading: the ROS executor spins on a helper thread; a subscription callback
only validates the message and parks it as its camera's newest frame
(:class:`~enet_ros.node.cameras.FrameSlots`). The process's main thread, the
one that built and warmed up the Segmenter, serves the cameras' newest frames
round robin. (Calling torch from a second thread after the main thread has
used it doubled the CPU inference time: each thread keeps its own OpenMP team,
and the two teams' threads compete for the cores.) A frame replaced before
inference took it is counted as dropped, so a slow model drops old frames
instead of queueing them. No exception leaves a callback: a bad message or a
failed frame is counted and logged (throttled).

Hot model swap: setting ``model_path`` validates the file in the parameter
callback (a bad file is refused with the reason; the old model stays), then
builds and warms the new model on a thread of its own
(:mod:`~enet_ros.node.model_swap`); the next frame after it is ready uses it
and ``class_names`` follows. Frames keep flowing meanwhile.

(Over 350 lines: parameters, the swap hand-over and the inference loop share
the node's state; the pure parts live in config, cameras, diagnostics and
model_swap.)
"""

import threading
import time
from typing import Any, Dict, List

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image

from .cameras import Camera, FrameSlots, topic_prefix
from .config import (CAMERAS_DESCRIPTION, CLASS_NAMES_DESCRIPTION, ConfigError,
                     DRIVABLE_DESCRIPTION, OUTPUTS, PARAMETERS, qos_profile, runtime_settings,
                     RuntimeSettings, startup_settings, StartupSettings,
                     WARMUP_SIZES_DESCRIPTION)
from .diagnostics import diagnostic_array
from .health import HealthThresholds
from .image_msgs import (CameraFrame, check_raw_image, compressed_image_to_frame, ImageBuffer,
                         InvalidImage, raw_image_to_frame)
from .log_bridge import forward_core_logs
from .model_swap import ModelSwap
from .. import masks
from ..model_file import load_model_file, LoadedModel, ModelFileError
from ..segmenter import Segmenter, SegmenterConfigError

NODE_NAME = 'segmentation_node'
WARN_THROTTLE_S = 5.0
#: Label id for pixels voided by min_confidence when the model file has no void id.
DEFAULT_VOID_ID = 255
_READ_ONLY_RESTART = ('device', 'precision', 'network_width', 'network_height',
                      'torch_compile', 'cameras', 'warmup_sizes', 'input_transport',
                      'input_reliability', 'input_depth', 'output_reliability', 'output_depth',
                      'diagnostics_period')


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


class SegmentationNode(Node):
    """ENet segmentation node; see the module docstring."""

    def __init__(self, **node_kwargs: Any):
        super().__init__(NODE_NAME, **node_kwargs)
        self._log_forwarding = forward_core_logs(self.get_logger())
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        self.declare_parameter('cameras', Parameter.Type.STRING_ARRAY, CAMERAS_DESCRIPTION)
        self.declare_parameter('warmup_sizes', Parameter.Type.STRING_ARRAY,
                               WARMUP_SIZES_DESCRIPTION)
        values = self._values(PARAMETERS)
        values['cameras'] = self._string_list('cameras')
        values['warmup_sizes'] = self._string_list('warmup_sizes')
        self.startup: StartupSettings = startup_settings(values)
        segmenter = self._make_segmenter(self._load_model(self.startup.model_path))
        self.get_logger().info(segmenter.describe())
        metadata = segmenter.metadata
        self.declare_parameter('class_names', list(metadata.class_names),
                               CLASS_NAMES_DESCRIPTION)
        self.declare_parameter('drivable_classes', list(metadata.drivable_classes) or [''],
                               DRIVABLE_DESCRIPTION)
        self._state = _State(segmenter, self._runtime_settings({}, metadata.class_names))
        self._named_classes = segmenter
        self._internal_update = False
        self._internal_lock = threading.Lock()
        self._swap = ModelSwap(self._make_segmenter, self._swap_ready, self._swap_failed)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._stop = threading.Event()
        self.failed = False
        self.failed_frames = False
        self._warned: Dict[str, float] = {}
        self.cameras = [self._make_camera(name) for name in self.startup.cameras or ('',)]
        self._slots = FrameSlots(self.cameras)
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_timer(self.startup.diagnostics_period_s, self._publish_diagnostics)
        for camera in self.cameras:
            self.get_logger().info(
                f'listening on {camera.subscription.topic_name} ({self.startup.input_transport}'
                f', {self.startup.input_reliability}); publishing '
                f'{", ".join(camera.publishers[n].topic_name for n in OUTPUTS)}')

    @property
    def segmenter(self) -> Segmenter:
        """Return the model in use now."""
        return self._state.segmenter

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
        camera = Camera(name)
        prefix = topic_prefix(name)
        output_qos = qos_profile(self.startup.output_reliability, self.startup.output_depth)
        for output in OUTPUTS:
            camera.publishers[output] = self.create_publisher(
                Image, f'~/{prefix}{output}', output_qos)
            camera.buffers[output] = ImageBuffer(
                Image, 'mono8' if masks.OUTPUT_CHANNELS[output] == 1 else 'rgb8')
        input_qos = qos_profile(self.startup.input_reliability, self.startup.input_depth)
        if self.startup.input_transport == 'compressed':
            camera.subscription = self.create_subscription(
                CompressedImage, f'{prefix}image/compressed',
                lambda msg: self._on_compressed(msg, camera), input_qos)
        else:
            camera.subscription = self.create_subscription(
                Image, f'{prefix}image', lambda msg: self._on_image(msg, camera), input_qos)
        return camera

    def _load_model(self, model_path: str) -> LoadedModel:
        """Read and validate a model file; raise ConfigError naming the parameter."""
        try:
            return load_model_file(model_path or None)
        except ModelFileError as error:
            raise ConfigError(f'parameter model_path: {error}') from None

    def _make_segmenter(self, loaded: LoadedModel) -> Segmenter:
        """Build and warm a Segmenter for ``loaded`` with the start-up device settings."""
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
        names = [n for n, (_, d) in PARAMETERS.items() if not d.read_only]
        values = self._values(names + ['drivable_classes'])
        values.update(changes)
        values['drivable_classes'] = [n for n in values['drivable_classes'] if n]
        return runtime_settings(values, class_names)

    def _on_set_parameters(self, parameters: List[Parameter]) -> SetParametersResult:
        changes = {}
        for parameter in parameters:
            if parameter.name in _READ_ONLY_RESTART:
                return SetParametersResult(
                    successful=False, reason=f'{parameter.name} is read-only: restart the node')
            if parameter.name == 'class_names' and not self._internal_update:
                return SetParametersResult(
                    successful=False, reason='class_names is set by the node from the model')
            changes[parameter.name] = parameter.value
        if self._internal_update:
            return SetParametersResult(successful=True)
        try:
            if 'model_path' in changes:
                self._start_swap(changes)
                return SetParametersResult(successful=True)
            segmenter = self._state.segmenter
            state = _State(segmenter, self._runtime_settings(
                changes, segmenter.metadata.class_names))
        except (ConfigError, TypeError, ValueError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        self._state = state
        return SetParametersResult(successful=True)

    def _start_swap(self, changes: Dict[str, Any]) -> None:
        """Validate a new model_path now; build and warm it on the swap thread."""
        loaded = self._load_model(str(changes['model_path']))
        try:
            settings = self._runtime_settings(changes, loaded.metadata.class_names)
        except ConfigError as error:
            raise ConfigError(f'model_path: the new model does not fit: {error} (set '
                              'drivable_classes in the same request, atomically)') from None
        previous = {name: self.get_parameter(name).value
                    for name in ('model_path', 'drivable_classes')}
        self._swap.start(loaded, (settings, previous))
        self.get_logger().info(f"loading model {changes['model_path']} (the current model "
                               'answers until it is ready)')

    def _swap_ready(self, segmenter: Segmenter, context: Any) -> None:
        """Install a built model (swap thread): the next frame uses it."""
        settings, _ = context
        try:  # parameters changed since the request apply too
            settings = self._runtime_settings({}, segmenter.metadata.class_names)
        except ConfigError:
            pass
        self._state = _State(segmenter, settings)
        self.get_logger().info(f'model swapped in after {segmenter.swap_seconds:.1f} s of '
                               f'loading and warm-up: {segmenter.describe()}')

    def _swap_failed(self, reason: str, context: Any) -> None:
        """Keep the old model and put the parameters back (swap thread)."""
        _, previous = context
        self.get_logger().error(f'the new model could not be used ({reason}); keeping '
                                f'{self._state.segmenter.model_path}')
        self._set_internally([Parameter(name, value=value) for name, value in previous.items()])

    def _set_internally(self, parameters: List[Parameter]) -> None:
        """Set parameters the node owns (class_names, reverted values) past the checks."""
        with self._internal_lock:
            self._internal_update = True
            try:
                self.set_parameters(parameters)
            finally:
                self._internal_update = False

    def _publish_class_names(self) -> None:
        """After a swap, make the read-only class_names parameter follow the model."""
        segmenter = self._state.segmenter
        if segmenter is self._named_classes:
            return
        self._set_internally([Parameter('class_names', Parameter.Type.STRING_ARRAY,
                                        list(segmenter.metadata.class_names))])
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
            self._publish_class_names()
            taken = self._slots.take(timeout=0.2)
            if taken is None:
                continue
            camera, msg, received = taken
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
        with_confidence = 'confidence' in wanted or state.settings.min_confidence > 0
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
                   for name in wanted}
        state.renderer.render(labels, frame.rgb() if 'overlay' in wanted else None, wanted,
                              out=buffers, confidence=result.confidence)
        for name in wanted:
            buffer = camera.buffers[name]
            buffer.msg.header = msg.header
            camera.publishers[name].publish(buffer.msg)
        camera.stats.published(self._latency_s(msg), time.monotonic() - received, inference_s)

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
        state = self._state
        self._diagnostics_publisher.publish(diagnostic_array(
            self.get_fully_qualified_name(), self.cameras, state.thresholds, state.segmenter,
            self.get_clock().now().to_msg()))

    def destroy_node(self) -> None:
        """Destroy the node and stop forwarding the core's log records to it."""
        self._log_forwarding()
        super().destroy_node()

    def stop(self) -> None:
        """Make :meth:`run_inference` return after the frame in progress."""
        self._stop.set()
        self._slots.stop()
