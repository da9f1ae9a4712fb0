"""
The segmentation node: camera images in; labels, colour, overlay and drivable masks out.

Subscribes ``image`` (sensor_msgs/Image) or, with ``input_transport:
compressed``, ``image/compressed`` (sensor_msgs/CompressedImage, JPEG/PNG).
Publishes ``~/labels`` (mono8 class ids), ``~/colored`` (rgb8),
``~/overlay`` (rgb8), ``~/drivable`` (mono8, 0 or 255), each at the input
size with the input's header, and ``/diagnostics`` about once a second.

Threading: the ROS executor spins on its own thread; its subscription
callback only validates the message and puts it in a one-frame slot. The
process's main thread, the one that built and warmed up the Segmenter, runs
inference on the newest frame in the slot. (Calling torch from a second
thread after the main thread has used it doubled the CPU inference time:
each thread keeps its own OpenMP team, and the two teams' threads compete
for the cores.) A frame replaced before inference took it is counted as
dropped, so a slow model drops old frames instead of queueing them. No
exception leaves a callback: a bad message or a failed frame is counted and
logged (throttled).
"""

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image

from .config import (CLASS_NAMES_DESCRIPTION, ConfigError, DRIVABLE_DESCRIPTION, OUTPUTS,
                     PARAMETERS, runtime_settings, RuntimeSettings, startup_settings,
                     StartupSettings)
from .health import FrameStats, HealthThresholds
from .image_msgs import (CameraFrame, check_raw_image, compressed_image_to_frame, ImageBuffer,
                         InvalidImage, raw_image_to_frame)
from .main import StopOnSignal
from .. import masks
from ..model_file import load_model_file, ModelFileError
from ..segmenter import Segmenter, SegmenterConfigError

NODE_NAME = 'segmentation_node'
#: Exit codes of :func:`main` (documented in the README).
EXIT_OK, EXIT_EXECUTOR_FAILED, EXIT_CONFIG_ERROR, EXIT_FAILED_FRAMES = 0, 1, 2, 3
WARN_THROTTLE_S = 5.0
SPIN_JOIN_TIMEOUT_S = 10.0
RCLError = rclpy_implementation.RCLError
_READ_ONLY_RESTART = ('model_path', 'device', 'precision', 'network_width', 'network_height',
                      'torch_compile',
                      'input_transport', 'input_reliability', 'input_depth',
                      'output_reliability', 'output_depth', 'diagnostics_period',
                      'class_names')


class _RosLogHandler(logging.Handler):
    """Forwards the core's Python log records (logger 'enet_ros') to a ROS logger."""

    def __init__(self, ros_logger):
        super().__init__()
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        """Log ``record`` at the matching ROS severity."""
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            self.ros_logger.error(message)
        elif record.levelno >= logging.WARNING:
            self.ros_logger.warning(message)
        else:
            self.ros_logger.info(message)


def _forward_core_logs(ros_logger) -> Callable[[], None]:
    """Send the core's log records (logger 'enet_ros') to ``ros_logger``; return the undo."""
    core_logger = logging.getLogger('enet_ros')
    handler = _RosLogHandler(ros_logger)
    previous = core_logger.level, core_logger.propagate
    core_logger.addHandler(handler)
    core_logger.setLevel(logging.INFO)
    core_logger.propagate = False

    def undo() -> None:
        core_logger.removeHandler(handler)
        core_logger.setLevel(previous[0])
        core_logger.propagate = previous[1]
    return undo


def _qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.BEST_EFFORT if reliability == 'best_effort'
                      else ReliabilityPolicy.RELIABLE)


class _RuntimeState:
    """Everything derived from the run-time settings, swapped as one object."""

    def __init__(self, settings: RuntimeSettings, segmenter: Segmenter):
        self.settings = settings
        metadata = segmenter.metadata
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
        self._log_forwarding = _forward_core_logs(self.get_logger())
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        self.startup: StartupSettings = startup_settings(self._values(PARAMETERS))
        self.segmenter = self._load_segmenter(self.startup)
        self.get_logger().info(self.segmenter.describe())
        metadata = self.segmenter.metadata
        self.declare_parameter('class_names', list(metadata.class_names),
                               CLASS_NAMES_DESCRIPTION)
        self.declare_parameter('drivable_classes', list(metadata.drivable_classes) or [''],
                               DRIVABLE_DESCRIPTION)
        self._state = _RuntimeState(self._runtime_settings({}), self.segmenter)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.stats = FrameStats()
        self._slot_lock = threading.Condition()
        self._slot: Optional[Tuple[Any, float]] = None
        self._stop = threading.Event()
        self.failed = False
        self.failed_frames = False
        self._last_processed = 0.0
        self._warned: Dict[str, float] = {}

        output_qos = _qos(self.startup.output_reliability, self.startup.output_depth)
        self._output_publishers = {
            name: self.create_publisher(Image, f'~/{name}', output_qos) for name in OUTPUTS}
        self._buffers = {'labels': ImageBuffer(Image, 'mono8'),
                         'colored': ImageBuffer(Image, 'rgb8'),
                         'overlay': ImageBuffer(Image, 'rgb8'),
                         'drivable': ImageBuffer(Image, 'mono8')}
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        input_qos = _qos(self.startup.input_reliability, self.startup.input_depth)
        if self.startup.input_transport == 'compressed':
            self._subscription = self.create_subscription(
                CompressedImage, 'image/compressed', self._on_compressed, input_qos)
        else:
            self._subscription = self.create_subscription(Image, 'image', self._on_image,
                                                          input_qos)
        self.create_timer(self.startup.diagnostics_period_s, self._publish_diagnostics)
        self.get_logger().info(
            f'listening on {self._subscription.topic_name} ({self.startup.input_transport}, '
            f'{self.startup.input_reliability}); publishing '
            f'{", ".join(self._output_publishers[n].topic_name for n in OUTPUTS)}')

    # ----------------------------------------------------------------- configuration

    def _values(self, names) -> Dict[str, Any]:
        return {name: self.get_parameter(name).value for name in names}

    def _load_segmenter(self, startup: StartupSettings) -> Segmenter:
        try:
            loaded = load_model_file(startup.model_path or None)
        except ModelFileError as error:
            raise ConfigError(f'parameter model_path: {error}') from None
        size = ((startup.network_width, startup.network_height)
                if startup.network_width else None)
        try:
            return Segmenter(loaded, device=startup.device, precision=startup.precision,
                             input_size=size,
                             torch_compile=None if startup.torch_compile else False)
        except SegmenterConfigError as error:
            raise ConfigError(f'parameters device / precision / network size: {error}') from None

    def _runtime_settings(self, changes: Dict[str, Any]) -> RuntimeSettings:
        names = [n for n, (_, d) in PARAMETERS.items() if not d.read_only]
        values = self._values(names + ['drivable_classes'])
        values.update(changes)
        values['drivable_classes'] = [n for n in values['drivable_classes'] if n]
        return runtime_settings(values, self.segmenter.metadata.class_names)

    def _on_set_parameters(self, parameters: List[Parameter]) -> SetParametersResult:
        changes = {}
        for parameter in parameters:
            if parameter.name in _READ_ONLY_RESTART:
                return SetParametersResult(
                    successful=False, reason=f'{parameter.name} is read-only: restart the node')
            changes[parameter.name] = parameter.value
        try:
            state = _RuntimeState(self._runtime_settings(changes), self.segmenter)
        except (ConfigError, TypeError, ValueError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        self._state = state
        return SetParametersResult(successful=True)

    # ----------------------------------------------------------------- input

    def _warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) >= WARN_THROTTLE_S:
            self._warned[key] = now
            self.get_logger().warning(message)

    def _offer(self, msg: Any) -> None:
        with self._slot_lock:
            if self._slot is not None:
                self.stats.count('dropped_superseded')
            self._slot = (msg, time.monotonic())
            self._slot_lock.notify()

    def _on_image(self, msg: Image) -> None:
        self.stats.received()
        try:
            check_raw_image(msg, self._state.settings.max_pixels)
        except InvalidImage as error:
            self._reject(error)
            return
        self._offer(msg)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self.stats.received()
        self._offer(msg)  # decoding is too slow for the callback; it happens in the worker

    def _reject(self, error: InvalidImage) -> None:
        self.stats.rejected_frame(error.reason)
        self._warn(f'reject:{error.reason}', f'dropping image: {error} [{error.reason}]')

    # ----------------------------------------------------------------- inference

    def run_inference(self) -> None:
        """
        Segment the newest frame from the slot, over and over, until :meth:`stop`.

        Call it on the thread that built the node (see the module docstring);
        it also returns when the node's context shuts down.
        """
        while not self._stop.is_set():
            with self._slot_lock:
                while self._slot is None and not self._stop.is_set():
                    if not self.context.ok():
                        return
                    self._slot_lock.wait(0.2)
                if self._stop.is_set():
                    return
                msg, received = self._slot
                self._slot = None
            try:
                self._process(msg, received)
            except Exception as error:  # noqa: B902 - a frame must never kill the node
                failures = self.stats.failed()
                self._warn('failure', f'frame failed ({type(error).__name__}: {error}); '
                                      f'{failures} in a row')
                settings = self._state.settings
                if settings.exit_on_failure and failures >= settings.max_consecutive_failures:
                    self.get_logger().fatal(
                        f'{failures} frames failed in a row (last: {type(error).__name__}: '
                        f'{error}); exiting with code {EXIT_FAILED_FRAMES} (exit_on_failure)')
                    self.failed_frames = True
                    return

    def _process(self, msg: Any, received: float) -> None:
        state = self._state
        wanted = [name for name in state.settings.publish
                  if self._output_publishers[name].get_subscription_count() > 0]
        if not wanted:
            self.stats.count('skipped_no_subscribers')
            return
        if state.min_interval_s and received - self._last_processed < state.min_interval_s:
            self.stats.count('dropped_rate_limit')
            return
        try:
            if isinstance(msg, CompressedImage):
                frame = compressed_image_to_frame(msg, state.settings.max_pixels)
            else:
                frame = raw_image_to_frame(msg, state.settings.max_pixels)
        except InvalidImage as error:
            self._reject(error)
            return
        self._last_processed = received
        inference_start = time.monotonic()
        labels = self.segmenter.segment(frame.pixels, bgr=frame.bgr).labels
        inference_s = time.monotonic() - inference_start
        self._check_labels(labels, frame)
        height, width = labels.shape
        buffers = {name: self._buffers[name].view(height, width, masks.OUTPUT_CHANNELS[name])
                   for name in wanted}
        state.renderer.render(labels, frame.rgb() if 'overlay' in wanted else None, wanted,
                              out=buffers)
        for name in wanted:
            buffer = self._buffers[name]
            buffer.msg.header = msg.header
            self._output_publishers[name].publish(buffer.msg)
        self.stats.published(self._latency_s(msg), time.monotonic() - received, inference_s)

    def _check_labels(self, labels: np.ndarray, frame: CameraFrame) -> None:
        if labels.shape != (frame.height, frame.width) or labels.dtype != np.uint8:
            raise RuntimeError(f'labels {labels.dtype} {labels.shape} do not match the '
                               f'{frame.width}x{frame.height} input')
        if int(labels.max()) >= self.segmenter.num_classes:
            raise RuntimeError(f'label id {int(labels.max())} outside [0, '
                               f'{self.segmenter.num_classes})')

    def _latency_s(self, msg: Any) -> Optional[float]:
        stamp = msg.header.stamp
        if stamp.sec == 0 and stamp.nanosec == 0:
            return None
        now = self.get_clock().now().nanoseconds
        return (now - (stamp.sec * 1_000_000_000 + stamp.nanosec)) / 1e9

    # ----------------------------------------------------------------- health

    def _publish_diagnostics(self) -> None:
        snapshot = self.stats.snapshot(self._state.thresholds)

        def fmt(value: Optional[float]) -> str:
            return 'n/a' if value is None else f'{value:.1f}'

        values = {
            'input_rate_hz': fmt(snapshot.input_rate_hz),
            'output_rate_hz': fmt(snapshot.output_rate_hz),
            'latency_median_ms': fmt(snapshot.latency_median_ms),
            'latency_max_ms': fmt(snapshot.latency_max_ms),
            'processing_median_ms': fmt(snapshot.processing_median_ms),
            'inference_median_ms': fmt(snapshot.inference_median_ms),
            'consecutive_failures': str(snapshot.consecutive_failures),
            'device': str(self.segmenter.device),
            'precision': self.segmenter.precision,
            'model_path': self.segmenter.model_path,
            'classes': ','.join(self.segmenter.metadata.class_names),
        }
        for key in ('received', 'processed', 'rejected', 'dropped_superseded',
                    'dropped_rate_limit', 'skipped_no_subscribers', 'failed'):
            values[f'frames_{key}'] = str(snapshot.totals.get(key, 0))
        for reason, count in sorted(snapshot.rejected.items()):
            values[f'rejected_{reason}'] = str(count)
        status = DiagnosticStatus(
            level=bytes([snapshot.level]),
            name=f'{self.get_fully_qualified_name()}: segmentation',
            message=snapshot.message, hardware_id=str(self.segmenter.device),
            values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_publisher.publish(array)

    def destroy_node(self) -> None:
        """Destroy the node and stop forwarding the core's log records to it."""
        self._log_forwarding()
        super().destroy_node()

    def stop(self) -> None:
        """Make :meth:`run_inference` return after the frame in progress."""
        self._stop.set()
        with self._slot_lock:
            self._slot_lock.notify_all()


def _spin(executor: SingleThreadedExecutor, node: SegmentationNode) -> None:
    """Run the executor; if it fails, stop inference too so the process exits."""
    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    except Exception as error:  # noqa: B902 - reported, then the process ends
        if node.context.ok():  # errors from entities torn down by a shutdown are no failure
            node.get_logger().fatal(f'executor failed: {type(error).__name__}: {error}')
            node.failed = True
    finally:
        node.stop()


def run(args: Optional[List[str]], stop_on_signal: StopOnSignal) -> int:
    """
    Run the node until ``stop_on_signal`` fires; return the exit code.

    Exit codes: 0 after a signal, 1 if the executor failed, 2 for bad
    configuration, 3 after ``max_consecutive_failures`` failed frames with
    ``exit_on_failure``. The entry point is :func:`enet_ros.node.main.main`,
    which installs the signal handlers before this module's heavy imports.
    """
    node = None
    executor = None
    spinner = None
    code = EXIT_OK
    try:
        try:
            rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        except RCLError as error:  # e.g. a --params-file that is missing or not YAML
            raise ConfigError(f'invalid ROS arguments: {error}') from None
        executor = SingleThreadedExecutor()
        node = SegmentationNode()
        executor.add_node(node)
        spinner = threading.Thread(target=_spin, args=(executor, node), name='ros-executor',
                                   daemon=True)
        spinner.start()
        stop_on_signal.target = node
        if stop_on_signal.received is None:
            node.run_inference()
        if node.failed_frames:
            code = EXIT_FAILED_FRAMES
        elif node.failed:
            code = EXIT_EXECUTOR_FAILED
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ConfigError, ParameterException) as error:
        rclpy.logging.get_logger(NODE_NAME).fatal(f'cannot start: {error}')
        code = EXIT_CONFIG_ERROR
    finally:
        stop_on_signal.ignore_from_now()
        code = _shut_down(node, executor, spinner, code)
    if code == EXIT_OK and node is not None:
        rclpy.logging.get_logger(NODE_NAME).info('stopped cleanly')
    return code


def _shut_down(node: Optional[SegmentationNode], executor: Optional[SingleThreadedExecutor],
               spinner: Optional[threading.Thread], code: int) -> int:
    """
    End the spin, then tear the executor and the node down; return the exit code.

    Order matters: tearing the executor down under a running spin crashed the
    process now and then, so if the spin thread does not end, nothing is torn
    down and the process exits with an error instead.
    """
    if node is not None:
        node.stop()
    rclpy.try_shutdown()  # ends the spin (wakes the executor)
    if spinner is not None:
        spinner.join(timeout=SPIN_JOIN_TIMEOUT_S)
        if spinner.is_alive():
            rclpy.logging.get_logger(NODE_NAME).error(
                f'the ROS executor did not stop within {SPIN_JOIN_TIMEOUT_S:.0f} s; exiting '
                'without tearing it down')
            return code or EXIT_EXECUTOR_FAILED
    if executor is not None:
        executor.shutdown()
    if node is not None:
        node.destroy_node()
    return code
