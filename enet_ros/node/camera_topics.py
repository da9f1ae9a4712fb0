"""
Each camera's topics: output publishers at configure, input subscriptions at activate.

:class:`CameraTopics` makes the cameras (:class:`~enet_ros.node.cameras.Camera`)
with their publishers and reusable output messages, subscribes them to their
inputs, publishes the class map on every camera's ``~/label_info`` when it
changes, and destroys it all again.
"""

from typing import Any, Callable, List, Optional, Tuple

from nav_msgs.msg import OccupancyGrid
from rclpy.event_handler import PublisherEventCallbacks
from rclpy.qos import qos_policy_name_from_kind
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from vision_msgs.msg import LabelInfo

from .cameras import Camera, topic_prefix
from .frame_setup import FrameSetup
from .grid_output import grid_qos
from .label_info import label_info_key, label_info_msg, LABEL_INFO_OUTPUT, label_info_qos
from .parameter_table import GRID_OUTPUT, IMAGE_OUTPUTS
from .settings import qos_profile, StartupSettings
from .. import masks
from ..ros_io.image_msgs import ImageBuffer

#: The image callbacks: (message, camera).
ImageCallback = Callable[[Any, Camera], None]


class CameraTopics:
    """
    The cameras and their topics, made and destroyed with the node's lifecycle steps.

    ``node``: the node the topics belong to. ``create_publisher`` and
    ``destroy_publisher``: how output publishers are made and destroyed
    (the managed node's are lifecycle publishers).
    """

    def __init__(self, node: Any, create_publisher: Callable[..., Any],
                 destroy_publisher: Callable[[Any], None]):
        self._node = node
        self._create_publisher = create_publisher
        self._destroy_publisher = destroy_publisher
        self.cameras: List[Camera] = []
        self._label_info_key: Optional[Tuple[Tuple[str, ...], float]] = None

    def make_cameras(self, names: Tuple[str, ...], startup: StartupSettings) -> List[Camera]:
        """Make the cameras ``names`` with their output publishers (configure)."""
        self.cameras = [self._make_camera(name, startup) for name in names]
        return self.cameras

    def _make_camera(self, name: str, startup: StartupSettings) -> Camera:
        """Return a camera with its output publishers (subscriptions: :meth:`subscribe`)."""
        camera = Camera(name)
        prefix = topic_prefix(name)
        output_qos = qos_profile(startup.output_reliability, startup.output_depth)
        for output in IMAGE_OUTPUTS:
            camera.publishers[output] = self._create_publisher(
                Image, f'~/{prefix}{output}', output_qos)
            camera.buffers[output] = ImageBuffer(
                Image, 'mono8' if masks.OUTPUT_CHANNELS[output] == 1 else 'rgb8')
        camera.publishers[GRID_OUTPUT] = self._create_publisher(
            OccupancyGrid, f'~/{prefix}{GRID_OUTPUT}', grid_qos(startup.output_reliability))
        topic = f'~/{prefix}{LABEL_INFO_OUTPUT}'
        camera.publishers[LABEL_INFO_OUTPUT] = self._create_publisher(
            LabelInfo, topic, label_info_qos(), event_callbacks=PublisherEventCallbacks(
                incompatible_qos=lambda event: self._label_info_refused(topic, event)))
        return camera

    def _label_info_refused(self, topic: str, event: Any) -> None:
        self._node.get_logger().warning(
            f'a subscriber of {self._node.resolve_topic_name(topic)} requests a QoS it cannot '
            f'get ({qos_policy_name_from_kind(event.last_policy_kind)}): it receives no class '
            'map. The map is published reliable and transient local, with no deadline and '
            'automatic liveliness; subscribe with those (or volatile: then only later maps)')

    def subscribe(self, startup: StartupSettings, on_image: ImageCallback,
                  on_compressed: ImageCallback) -> None:
        """Subscribe every camera to its image (raw or compressed) and camera_info (activate)."""
        input_qos = qos_profile(startup.input_reliability, startup.input_depth)
        node = self._node
        for camera in self.cameras:
            prefix = topic_prefix(camera.name)
            if startup.input_transport == 'compressed':
                camera.subscription = node.create_subscription(
                    CompressedImage, f'{prefix}image/compressed',
                    lambda msg, camera=camera: on_compressed(msg, camera), input_qos)
            else:
                camera.subscription = node.create_subscription(
                    Image, f'{prefix}image',
                    lambda msg, camera=camera: on_image(msg, camera), input_qos)
            camera.info_subscription = node.create_subscription(
                CameraInfo, f'{prefix}camera_info', camera.grid.on_camera_info, input_qos)

    def log_listening(self, startup: StartupSettings) -> None:
        """Log each camera's inputs and outputs (the line tools wait for: 'listening on')."""
        for camera in self.cameras:
            outputs = ', '.join(p.topic_name for p in camera.publishers.values())
            self._node.get_logger().info(
                f'listening on {camera.subscription.topic_name} ({startup.input_transport}, '
                f'{startup.input_reliability}) and {camera.info_subscription.topic_name}; '
                f'publishing {outputs}')

    def unsubscribe(self) -> None:
        """Destroy the input subscriptions (deactivate)."""
        for camera in self.cameras:
            for subscription in (camera.subscription, camera.info_subscription):
                if subscription is not None:
                    self._node.destroy_subscription(subscription)
            camera.subscription = camera.info_subscription = None

    def publish_label_info(self, setup: FrameSetup) -> None:
        """Publish the class map on every camera's ~/label_info if it changed."""
        key = label_info_key(setup.segmenter.metadata.class_names, setup.settings.min_confidence)
        if key == self._label_info_key:
            return
        msg = label_info_msg(*key, self._node.get_clock().now().to_msg())
        for camera in self.cameras:
            camera.publishers[LABEL_INFO_OUTPUT].publish(msg)
        self._label_info_key = key

    def forget_label_info(self) -> None:
        """Publish the class map again at the next :meth:`publish_label_info` (activate)."""
        self._label_info_key = None

    def close(self) -> None:
        """Destroy the output publishers and forget the cameras (cleanup)."""
        for camera in self.cameras:
            for publisher in camera.publishers.values():
                self._destroy_publisher(publisher)
        self.cameras = []
        self._label_info_key = None
