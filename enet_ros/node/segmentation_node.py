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
:mod:`enet_ros.node.grid_output`), and ``~/label_info`` (vision_msgs/LabelInfo, latched:
the class of each label id, see :mod:`enet_ros.node.label_info`). With
``cameras: [front, left]`` each camera subscribes ``<name>/image`` and
``<name>/camera_info`` and publishes ``~/<name>/labels`` and so on; one model
serves all. Every image output has its input's size and header; the grid has
the image's stamp and ``grid_frame``. ``/diagnostics`` about once a second
(diagnostic_updater), one status per camera.

Two nodes share these parts (:class:`SegmentationParts`): :class:`SegmentationNode`
configures and activates itself in its constructor, and
:class:`~enet_ros.node.lifecycle_node.SegmentationLifecycleNode` does the same
steps in its lifecycle transitions (configure: parameters and model;
activate: subscriptions; deactivate; cleanup). Both are thin shells: an
rclpy node class, the parts, and the order of the steps.

Threading: the ROS executor spins on a helper thread; a subscription callback
only validates the message and parks it as its camera's newest frame
(:class:`~enet_ros.node.cameras.FrameSlots`). The process's main thread, the
one that built and warmed up the Segmenter, serves the cameras' newest frames
round robin (with a batching Segmenter, CUDA's default, together with the
frames other cameras have waiting; see :mod:`~enet_ros.node.frame_loop`).
(Calling torch from a second thread after the main thread has used it doubled
the CPU inference time: each thread keeps its own OpenMP team, and the two
teams' threads compete for the cores.) A frame replaced before
inference took it is counted as dropped, so a slow model drops old frames
instead of queueing them. No exception leaves a callback: a bad message or a
failed frame is counted and logged (throttled). A frame is processed under a
lock that deactivate and cleanup take too, so they wait for it to finish.

Hot model swap: setting ``model_path`` validates the file in the parameter
callback (a bad file is refused with the reason; the old model stays), then
builds and warms the new model on a thread of its own
(:mod:`~enet_ros.node.model_swap`); the next frame after it is ready uses it
and ``class_names`` follows. Frames keep flowing meanwhile.

The parts, each an object with one job:

- :class:`~enet_ros.node.model_holder.ModelHolder`: the model in use, as the
  :class:`~enet_ros.node.frame_setup.FrameSetup` a frame reads; loads and builds models;
- :class:`~enet_ros.node.parameter_changes.ParameterController`: declares the
  parameters, checks changes, hands a swapped model over to the executor thread;
- :class:`~enet_ros.node.camera_topics.CameraTopics`: each camera's publishers,
  subscriptions and class map;
- :class:`~enet_ros.node.frame_loop.FrameLoop`: the frames, from the callbacks
  to the published images;
- :class:`~enet_ros.node.grid_output.GridOutput`: the drivable grid (pose,
  projection, publish);
- :class:`~enet_ros.node.diagnostics.NodeDiagnostics`: /diagnostics.
"""

from typing import Any, Callable, List, Optional, Tuple

from rclpy.node import Node

from .camera_topics import CameraTopics
from .cameras import Camera, FrameSlots
from .diagnostics import NodeDiagnostics
from .frame_loop import FrameLoop
from .frame_setup import FrameSetup
from .grid_output import GridOutput
from .health import HealthThresholds
from .log_bridge import forward_core_logs
from .model_holder import ModelHolder
from .parameter_changes import ParameterController
from .settings import startup_settings, StartupSettings
from .throttled_log import ThrottledWarnings
from ..segmenter import Segmenter

NODE_NAME = 'segmentation_node'


class SegmentationParts:
    """
    The segmentation node's parts, driven in the steps of a managed node's lifecycle.

    ``node``: the rclpy node (``Node`` or ``LifecycleNode``) they work on; the
    constructor declares its parameters. ``managed``: whether it is the
    lifecycle node. ``create_publisher`` / ``destroy_publisher``: how output
    publishers are made (lifecycle publishers for the managed node).
    ``first_parameter_check``: a parameter callback that must keep running
    before the parts' own (re-added after configure adds those).

    :meth:`configure` validates the parameters, loads the model and creates
    the publishers (ConfigError when something is wrong); :meth:`activate`
    subscribes to the cameras; :meth:`deactivate` unsubscribes;
    :meth:`cleanup` releases the model and the publishers. ``frames.run``
    serves the frames on the calling thread whatever the state.
    """

    def __init__(self, node: Any, managed: bool, create_publisher: Callable[..., Any],
                 destroy_publisher: Callable[[Any], None],
                 first_parameter_check: Optional[Callable[[List[Any]], Any]] = None):
        self._node = node
        self._log_forwarding = forward_core_logs(node.get_logger())
        self._first_parameter_check = first_parameter_check
        warnings = ThrottledWarnings(node.get_logger())
        self.model = ModelHolder(self._on_model_installed)
        try:  # declares the parameters: a bad override raises (the process exits with 2)
            self.parameters = ParameterController(node, managed, self.model)
        except BaseException:
            self._log_forwarding()
            raise
        self.topics = CameraTopics(node, create_publisher, destroy_publisher)
        self.grid = GridOutput(node, warnings)
        self.frames = FrameLoop(node, self.model, self.grid, warnings)
        self.diagnostics = NodeDiagnostics(node, self._diagnostics_source)
        self.startup: Optional[StartupSettings] = None

    def _on_model_installed(self, setup: FrameSetup) -> None:
        """Publish a changed class map at once while active."""
        if self.frames.active:
            self.topics.publish_label_info(setup)

    def _diagnostics_source(self) -> Optional[Tuple[HealthThresholds, Segmenter, str]]:
        setup = self.model.setup
        if setup is None:
            return None
        return setup.thresholds, setup.segmenter, self.grid.pose_source

    def configure(self) -> None:
        """Validate the parameters, load the model, create the publishers; ConfigError if bad."""
        node, parameters = self._node, self.parameters
        self.startup = startup = startup_settings(parameters.start_up_values())
        self.grid.resolve(startup.grid_pose_source)
        self.model.configure(startup)
        parameters.configure(startup.cameras)
        segmenter = self.model.build(self.model.load(startup.model_path))
        node.get_logger().info(segmenter.describe())
        parameters.declare_model_parameters(segmenter.metadata)
        self.model.install(FrameSetup(segmenter, parameters.runtime_settings(
            {}, segmenter.metadata.class_names)))
        self.diagnostics.create(startup.diagnostics_period_s, str(segmenter.device))
        parameters.watch()
        self.diagnostics.refuse_changes()
        if self._first_parameter_check is not None:  # the last added runs first
            node.remove_on_set_parameters_callback(self._first_parameter_check)
            node.add_on_set_parameters_callback(self._first_parameter_check)
        cameras = self.topics.make_cameras(startup.cameras or ('',), startup)
        self.frames.slots = FrameSlots(cameras)
        self.grid.start(startup.grid_pose_source, self.model.setup.settings.grid.frame)

    def activate(self) -> None:
        """Subscribe to the cameras, start the diagnostics, publish the class map."""
        startup = self.startup
        with self.frames.lock:
            self.frames.active = True
        self.topics.subscribe(startup, self.frames.on_image, self.frames.on_compressed)
        self.diagnostics.start(self.topics.cameras)
        self.topics.forget_label_info()
        self.topics.publish_label_info(self.model.setup)
        self.topics.log_listening(startup)

    def deactivate(self) -> None:
        """Unsubscribe and stop the diagnostics; waits for a frame in progress (unpublished)."""
        frames = self.frames
        frames.active = False  # before the lock: a frame in progress then publishes nothing
        with frames.lock:
            self.topics.unsubscribe()
            if frames.slots is not None:
                frames.slots.clear()
        self.diagnostics.stop()

    def cleanup(self) -> None:
        """Release the model, the publishers and the TF listener (any partial configuration)."""
        self.model.generation += 1
        self.deactivate()
        with self.frames.lock:
            self.topics.close()
            self.frames.slots = None
            self.model.install(None)
        self.diagnostics.destroy()
        self.grid.close()
        self.parameters.unwatch()
        self.model.configure(None)
        self.startup = None

    def close(self) -> None:
        """Stop forwarding the core's log records to the node (it is being destroyed)."""
        self._log_forwarding()


class SegmentationShell:
    """
    What both node classes forward to their :class:`SegmentationParts` (``self.parts``).

    The process (:mod:`~enet_ros.node.os_process`) runs :meth:`run_inference`
    and :meth:`stop` and reads :attr:`failed_frames` and :attr:`failed`; the
    underscored names are the in-process tests' hooks into the parts.
    """

    parts: SegmentationParts
    #: Set by the process when the executor failed (exit code 1).
    failed = False

    @property
    def cameras(self) -> List[Camera]:
        """Return the configured cameras; none while not configured."""
        return self.parts.topics.cameras

    @property
    def segmenter(self) -> Optional[Segmenter]:
        """Return the model in use now (None while not configured)."""
        return self.parts.model.segmenter

    @property
    def failed_frames(self) -> bool:
        """Return whether ``exit_on_failure`` ended the frame loop (exit code 3)."""
        return self.parts.frames.failed_frames

    def run_inference(self) -> None:
        """Serve the frames on this thread until :meth:`stop` (see FrameLoop.run)."""
        self.parts.frames.run()

    def stop(self) -> None:
        """Make :meth:`run_inference` return after the frame in progress."""
        self.parts.frames.stop()

    def destroy_node(self) -> None:
        """Destroy the node and stop forwarding the core's log records to it."""
        parts = getattr(self, 'parts', None)  # None: a parameter override was refused
        if parts is not None:
            parts.close()
        super().destroy_node()

    @property
    def _state(self) -> Optional[FrameSetup]:
        return self.parts.model.setup

    @property
    def _swap(self) -> Any:
        return self.parts.parameters.swap

    @property
    def _swap_guard(self) -> Any:
        return self.parts.parameters.swap_guard

    def _on_swap_outcome(self) -> None:
        self.parts.parameters.on_swap_outcome()

    def _on_image(self, msg: Any, camera: Camera) -> None:
        self.parts.frames.on_image(msg, camera)

    def _process(self, camera: Camera, msg: Any, received: float) -> None:
        self.parts.frames.process(camera, msg, received)


class SegmentationNode(SegmentationShell, Node):
    """ENet segmentation node, configured and active from its constructor; see the module."""

    def __init__(self, **node_kwargs: Any):
        Node.__init__(self, NODE_NAME, **node_kwargs)
        self.parts = SegmentationParts(self, False, self.create_publisher,
                                       self.destroy_publisher)
        self.parts.configure()
        self.parts.activate()
