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

from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import OccupancyGrid
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from .cameras import Camera, FrameSlots, topic_prefix
from .config import (CAMERA_NAME, CAMERAS_DESCRIPTION, GRID_OUTPUT, IMAGE_OUTPUTS, PARAMETERS,
                     pose_descriptor, POSE_FIELDS, pose_parameter, qos_profile, startup_settings,
                     StartupSettings, WARMUP_SIZES_DESCRIPTION)
from .diagnostics import diagnostic_array
from .grid import resolve_pose_source, TfPoseSource
from .image_msgs import ImageBuffer
from .log_bridge import forward_core_logs
from .model_swap import ModelSwap
from .parameters import CONFIGURE_TIME_PARAMETERS, ParameterHandling, STRING_ARRAY
from .processing import FrameProcessing
from .state import grid_qos, NodeState
from .. import masks
from ..segmenter import Segmenter

NODE_NAME = 'segmentation_node'


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
        self._diagnostics_publisher = None
        self._diagnostics_timer = None
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
        segmenter = self._make_segmenter(self._load_model(self.startup.model_path))
        self.get_logger().info(segmenter.describe())
        self._declare_model_parameters(segmenter.metadata)
        self._state = NodeState(segmenter,
                                self._runtime_settings({}, segmenter.metadata.class_names))
        self._parameter_callback = self._on_set_parameters
        self.add_on_set_parameters_callback(self._parameter_callback)
        self.cameras = [self._make_camera(name) for name in self.startup.cameras or ('',)]
        self._slots = FrameSlots(self.cameras)
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        if self.grid_pose_source == 'tf':
            self._tf = TfPoseSource(self)
            source = (f"TF ({self._state.settings.grid.frame} <- the image's frame_id at its "
                      'stamp)')
        elif self.startup.grid_pose_source == 'parameters':
            source = 'the camera_pose.* parameters (grid_pose_source: parameters)'
        else:
            source = 'the camera_pose.* parameters (tf2_ros is not importable)'
        self.get_logger().info(f'drivable grid: camera pose from {source}')

    def _activate(self) -> None:
        """Subscribe to the cameras and start the diagnostics."""
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
        self._diagnostics_timer = self.create_timer(startup.diagnostics_period_s,
                                                    self._publish_diagnostics)
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
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None

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
