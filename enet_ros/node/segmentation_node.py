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
:mod:`enet_ros.node.grid`), and ``~/label_info`` (vision_msgs/LabelInfo, latched:
the class of each label id, see :mod:`enet_ros.node.label_info`). With
``cameras: [front, left]`` each camera subscribes ``<name>/image`` and
``<name>/camera_info`` and publishes ``~/<name>/labels`` and so on; one model
serves all. Every image output has its input's size and header; the grid has
the image's stamp and ``grid_frame``. ``/diagnostics`` about once a second
(diagnostic_updater), one status per camera.

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

Hot model swap: setting ``model_path`` validates the file in the parameter
callback (a bad file is refused with the reason; the old model stays), then
builds and warms the new model on a thread of its own
(:mod:`~enet_ros.node.model_swap`); the next frame after it is ready uses it
and ``class_names`` follows. Frames keep flowing meanwhile.

Modules: this one (the lifecycle steps), :mod:`~enet_ros.node.parameters`
(parameter changes, the swap), :mod:`~enet_ros.node.processing` (frames),
:mod:`~enet_ros.node.state` (what a frame uses, swapped as one).
"""

import copy
import threading
from typing import Any, Dict, List, Optional, Tuple

from diagnostic_updater import Updater
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import PublisherEventCallbacks
from rclpy.exceptions import ParameterException
from rclpy.impl.implementation_singleton import rclpy_implementation
from rclpy.node import Node
from rclpy.qos import qos_policy_name_from_kind
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from vision_msgs.msg import LabelInfo

from .cameras import Camera, FrameSlots, topic_prefix
from .config import (CAMERA_NAME, CAMERAS_DESCRIPTION, ConfigError, GRID_OUTPUT, IMAGE_OUTPUTS,
                     PARAMETERS, pose_descriptor, POSE_FIELDS, pose_parameter, qos_profile,
                     startup_settings, StartupSettings, WARMUP_SIZES_DESCRIPTION)
from .diagnostics import CameraDiagnostics
from .grid import resolve_pose_source, TfPoseSource
from .image_msgs import ImageBuffer
from .label_info import label_info_key, label_info_msg, LABEL_INFO_OUTPUT, label_info_qos
from .log_bridge import forward_core_logs
from .model_swap import ModelSwap
from .parameters import CONFIGURE_TIME_PARAMETERS, ParameterHandling, STRING_ARRAY
from .processing import FrameProcessing
from .state import grid_qos, NodeState
from .. import masks
from ..segmenter import Segmenter

NODE_NAME = 'segmentation_node'
RCLError = rclpy_implementation.RCLError
#: diagnostic_updater's parameter for its period; ``diagnostics_period`` is its default.
UPDATER_PERIOD = 'diagnostic_updater.period'
#: The range of both: a period of 0 would publish as fast as the executor turns.
DIAGNOSTICS_PERIOD_S = (0.1, 60.0)


class SegmentationMixin(ParameterHandling, FrameProcessing):
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
        self._swap = ModelSwap(self._make_segmenter, self._swap_ready, self._swap_failed)
        self._state: Optional[NodeState] = None
        self.startup: Optional[StartupSettings] = None
        self.cameras: List[Camera] = []
        self._slots: Optional[FrameSlots] = None
        self._active = False
        self._parameter_callback = None
        self._updater: Optional[Updater] = None
        self._updater_callback = None
        self._diagnostic_tasks: List[CameraDiagnostics] = []
        self._label_info_key = None
        self.grid_pose_source = ''
        self._tf: Optional[TfPoseSource] = None
        self._model_drivable_default: Optional[List[str]] = None
        self._internal_update = False
        #: Bumped by cleanup: a model build started before it is discarded when it ends.
        self._generation = 0
        self._swap_outcome = None
        self._swap_outcome_lock = threading.Lock()
        self._swap_guard = self.create_guard_condition(self._on_swap_outcome)
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, self._start_up_descriptor(name, descriptor))
        self.declare_parameter('cameras', STRING_ARRAY, CAMERAS_DESCRIPTION)
        self.declare_parameter('warmup_sizes', STRING_ARRAY,
                               self._start_up_descriptor('warmup_sizes', WARMUP_SIZES_DESCRIPTION))
        for camera in self.camera_names():
            if camera and not CAMERA_NAME.match(camera):
                continue  # refused by configure, with the reason
            for field in POSE_FIELDS:
                name = pose_parameter(camera, field)
                if not self.has_parameter(name):
                    self.declare_parameter(name, 0.0, pose_descriptor(field))

    def _start_up_descriptor(self, name: str, descriptor: Any) -> Any:
        """
        Return ``descriptor``, writable for the managed node if it is a start-up setting.

        The managed node reads them at each configure, so they can be fixed
        while it is unconfigured (its parameter callback, installed by
        configure, refuses them while configured). ``cameras`` stays read-only:
        the per-camera pose parameters are declared from it at start.
        """
        if not self.MANAGED or name not in CONFIGURE_TIME_PARAMETERS:
            return descriptor
        writable = copy.deepcopy(descriptor)
        writable.read_only = False
        return writable

    def camera_names(self) -> Tuple[str, ...]:
        """Return the ``cameras`` parameter's names, ('',) when not set; not validated."""
        return tuple(self._string_list('cameras')) or ('',)

    @property
    def segmenter(self) -> Optional[Segmenter]:
        """Return the model in use now (None while not configured)."""
        state = self._state
        return None if state is None else state.segmenter

    @property
    def _state(self) -> Optional[NodeState]:
        """Return what a frame uses: the model and the settings (None while not configured)."""
        return self.__dict__.get('_node_state')

    @_state.setter
    def _state(self, state: Optional[NodeState]) -> None:
        """Swap the state in (executor thread); a changed class map is published at once."""
        self.__dict__['_node_state'] = state
        if state is not None and self._active:
            self._publish_label_info(state)

    def _create_output_publisher(self, msg_type: Any, topic: str, qos: Any,
                                 event_callbacks: Any = None) -> Any:
        """Create an output publisher (the lifecycle node makes lifecycle publishers)."""
        return self.create_publisher(msg_type, topic, qos, event_callbacks=event_callbacks)

    def _destroy_output_publisher(self, publisher: Any) -> None:
        self.destroy_publisher(publisher)

    def _configure(self) -> None:
        """Validate the parameters, load the model, create the publishers; ConfigError if bad."""
        values = self._values(PARAMETERS)
        values['cameras'] = self._string_list('cameras')
        values['warmup_sizes'] = self._string_list('warmup_sizes')
        self.startup = startup_settings(values)
        self.grid_pose_source = resolve_pose_source(self.startup.grid_pose_source)
        segmenter = self._make_segmenter(self._load_model(self.startup.model_path))
        self.get_logger().info(segmenter.describe())
        self._declare_model_parameters(segmenter.metadata)
        self._state = NodeState(segmenter,
                                self._runtime_settings({}, segmenter.metadata.class_names))
        self._make_updater(str(segmenter.device))
        self._parameter_callback = self._on_set_parameters
        self.add_on_set_parameters_callback(self._parameter_callback)
        self._guard_parameters()
        self.cameras = [self._make_camera(name) for name in self.startup.cameras or ('',)]
        self._slots = FrameSlots(self.cameras)
        if self.grid_pose_source == 'tf':
            self._tf = TfPoseSource(self)
            source = (f"TF ({self._state.settings.grid.frame} <- the image's frame_id at its "
                      'stamp)')
        elif self.startup.grid_pose_source == 'parameters':
            source = 'the camera_pose.* parameters (grid_pose_source: parameters)'
        else:
            source = 'the camera_pose.* parameters (tf2_ros is not importable)'
        self.get_logger().info(f'drivable grid: camera pose from {source}')

    def _make_updater(self, hardware_id: str) -> None:
        """
        Create the diagnostic_updater, its timer stopped until :meth:`_activate`.

        Its period: its own parameter ``diagnostic_updater.period`` (declared
        here, with ``diagnostics_period`` as the default; undeclared again by
        cleanup, so the next configure declares it afresh). Both apply at
        configure: changing either later is refused. ConfigError if it is bad.
        """
        try:
            self._updater = Updater(self, period=self.startup.diagnostics_period_s)
        except (ParameterException, RCLError, TypeError, ValueError) as error:
            for publisher in [p for p in self.publishers if p.topic_name == '/diagnostics']:
                self.destroy_publisher(publisher)  # the Updater's, made before it failed
            if self.has_parameter(UPDATER_PERIOD):
                self.undeclare_parameter(UPDATER_PERIOD)
            raise ConfigError(f'parameter {UPDATER_PERIOD}: {error}') from None
        self._updater.timer.cancel()
        period = self._updater.period
        if not DIAGNOSTICS_PERIOD_S[0] <= period <= DIAGNOSTICS_PERIOD_S[1]:
            self._destroy_updater()
            raise ConfigError(f'parameter {UPDATER_PERIOD}: {period} s is outside '
                              f'[{DIAGNOSTICS_PERIOD_S[0]:g}, {DIAGNOSTICS_PERIOD_S[1]:g}] s, '
                              'the range of diagnostics_period')
        self._updater.setHardwareID(hardware_id)

    def _guard_parameters(self) -> None:
        """Add the parameter checks that run before :meth:`_on_set_parameters` (configure)."""
        self._updater_callback = self._refuse_updater_changes
        self.add_on_set_parameters_callback(self._updater_callback)  # the last added runs first

    @staticmethod
    def _refuse_updater_changes(parameters: List[Any]) -> SetParametersResult:
        for parameter in parameters:
            if parameter.name.startswith('diagnostic_updater.'):
                return SetParametersResult(successful=False, reason=(
                    f'{parameter.name} applies when the node starts (the managed node: at '
                    'configure; set diagnostics_period while unconfigured)'))
        return SetParametersResult(successful=True)

    def _destroy_updater(self) -> None:
        updater, self._updater = self._updater, None
        if updater is None:
            return
        if self._updater_callback is not None:
            self.remove_on_set_parameters_callback(self._updater_callback)
            self._updater_callback = None
        self.destroy_timer(updater.timer)
        self.destroy_publisher(updater.publisher)
        self.undeclare_parameter(UPDATER_PERIOD)

    def _diagnostics_source(self) -> Optional[Tuple[Any, Segmenter, str]]:
        state = self._state
        if state is None:
            return None
        return state.thresholds, state.segmenter, self.grid_pose_source

    def _publish_label_info(self, state: NodeState) -> None:
        """Publish the class map on every camera's ~/label_info if it changed."""
        key = label_info_key(state.segmenter.metadata.class_names, state.settings.min_confidence)
        if key == self._label_info_key:
            return
        msg = label_info_msg(*key, self.get_clock().now().to_msg())
        for camera in self.cameras:
            camera.publishers[LABEL_INFO_OUTPUT].publish(msg)
        self._label_info_key = key

    def _activate(self) -> None:
        """Subscribe to the cameras, start the diagnostics, publish the class map."""
        startup = self.startup
        input_qos = qos_profile(startup.input_reliability, startup.input_depth)
        with self._lock:
            self._active = True
        for camera in self.cameras:
            prefix = topic_prefix(camera.name)
            if startup.input_transport == 'compressed':
                camera.subscription = self.create_subscription(
                    CompressedImage, f'{prefix}image/compressed',
                    lambda msg, camera=camera: self._on_compressed(msg, camera), input_qos)
            else:
                camera.subscription = self.create_subscription(
                    Image, f'{prefix}image',
                    lambda msg, camera=camera: self._on_image(msg, camera), input_qos)
            camera.info_subscription = self.create_subscription(
                CameraInfo, f'{prefix}camera_info', camera.grid.on_camera_info, input_qos)
        single = len(self.cameras) == 1 and not self.cameras[0].name
        self._diagnostic_tasks = [CameraDiagnostics(camera, single, self._diagnostics_source)
                                  for camera in self.cameras]
        for task in self._diagnostic_tasks:
            self._updater.add(task)  # publishes 'Node starting up' for it at once
        self._updater.timer.reset()
        self._label_info_key = None
        self._publish_label_info(self._state)
        for camera in self.cameras:
            outputs = ', '.join(p.topic_name for p in camera.publishers.values())
            self.get_logger().info(
                f'listening on {camera.subscription.topic_name} ({startup.input_transport}, '
                f'{startup.input_reliability}) and {camera.info_subscription.topic_name}; '
                f'publishing {outputs}')

    def _deactivate(self) -> None:
        """Unsubscribe and stop the diagnostics; waits for a frame in progress (unpublished)."""
        self._active = False  # before the lock: a frame in progress then publishes nothing
        with self._lock:
            for camera in self.cameras:
                for subscription in (camera.subscription, camera.info_subscription):
                    if subscription is not None:
                        self.destroy_subscription(subscription)
                camera.subscription = camera.info_subscription = None
            if self._slots is not None:
                self._slots.clear()
        if self._updater is not None:
            self._updater.timer.cancel()
            for task in self._diagnostic_tasks:
                self._updater.removeByName(task.getName())
        self._diagnostic_tasks = []

    def _cleanup(self) -> None:
        """Release the model, the publishers and the TF listener (any partial configuration)."""
        self._generation += 1
        self._deactivate()
        with self._lock:
            for camera in self.cameras:
                for publisher in camera.publishers.values():
                    self._destroy_output_publisher(publisher)
            self.cameras = []
            self._slots = None
            self._state = None
        self._destroy_updater()
        self._label_info_key = None
        if self._tf is not None:
            self._tf.close()
            self._tf = None
        if self._parameter_callback is not None:
            self.remove_on_set_parameters_callback(self._parameter_callback)
            self._parameter_callback = None
        self.startup = None

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
        topic = f'~/{prefix}{LABEL_INFO_OUTPUT}'
        camera.publishers[LABEL_INFO_OUTPUT] = self._create_output_publisher(
            LabelInfo, topic, label_info_qos(), PublisherEventCallbacks(
                incompatible_qos=lambda event: self._label_info_refused(topic, event)))
        return camera

    def _label_info_refused(self, topic: str, event: Any) -> None:
        self.get_logger().warning(
            f'a subscriber of {self.resolve_topic_name(topic)} requests a QoS it cannot get '
            f'({qos_policy_name_from_kind(event.last_policy_kind)}): it receives no class map. '
            'The map is published reliable and transient local, with no deadline and '
            'automatic liveliness; subscribe with those (or volatile: then only later maps)')

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
