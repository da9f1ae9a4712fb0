"""
~/label_info (vision_msgs/LabelInfo) as Nav2's semantic segmentation layer reads it.

The layer (kiwicampus/semantic_segmentation_layer) subscribes its
``labels_topic`` reliable and transient local and maps class names to costs
through it: a subscriber that joins after the node started must get the
model's classes (id = label id); a model swap or a new ``min_confidence``
publishes a new map; a subscriber asking for a QoS it cannot get is told
so in the node's log and the node goes on; with several cameras each has
its own ``~/<camera>/label_info``.
"""

import time

from enet_ros.labels import CAMVID_11, ClassTable
import numpy as np
import pytest
from ros_harness import make_image_msg, NodeProcess, RosPeer, set_parameters, stamp_ns

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings('ignore::DeprecationWarning')]
NODE = '/segmentation_node'
#: A model with other classes, for the swap.
TERRAIN = ClassTable(dataset='terrain', names=('grass', 'sidewalk', 'obstacle'),
                     colors=((0, 255, 0), (128, 128, 128), (255, 0, 0)), void_id=None,
                     drivable=('sidewalk',))


def _qos(latched: bool = True, reliable: bool = True, deadline_s: float = 0.0):
    from rclpy.duration import Duration
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE if reliable
                     else ReliabilityPolicy.BEST_EFFORT,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
                     else DurabilityPolicy.VOLATILE)
    if deadline_s:
        qos.deadline = Duration(seconds=deadline_s)
    return qos


class Listener:
    """One LabelInfo subscription of the peer, recording what it gets and its QoS events."""

    def __init__(self, peer: RosPeer, topic: str, qos):
        from rclpy.event_handler import SubscriptionEventCallbacks
        from vision_msgs.msg import LabelInfo

        self.peer = peer
        self.maps = []
        self.incompatible = []
        peer.node.create_subscription(
            LabelInfo, topic, lambda msg: self.maps.append(msg), qos,
            event_callbacks=SubscriptionEventCallbacks(
                incompatible_qos=lambda event: self.incompatible.append(event)))

    def newest(self, timeout: float = 10.0):
        """Return (class names by id, threshold) of the newest map; fail without one."""
        assert self.peer.wait_for(lambda: self.maps, timeout), 'no LabelInfo'
        msg = self.maps[-1]
        ids = [entry.class_id for entry in msg.class_map]
        assert ids == list(range(len(ids))), ids
        return tuple(entry.class_name for entry in msg.class_map), round(msg.threshold, 6)


def _node(ros_env, model_file, **parameters) -> NodeProcess:
    node = NodeProcess(ros_env, {'model_path': str(model_file), 'network_width': 64,
                                 'network_height': 48, 'torch_compile': False,
                                 'grid_pose_source': 'parameters', **parameters})
    node.wait_ready()
    return node


def test_late_subscriber_swap_and_incompatible_qos(ros_env, random_model_file, tmp_path):
    """The map reaches late subscribers, follows min_confidence and model_path, refuses calmly."""
    from model_files import write_random_model
    from sensor_msgs.msg import Image

    terrain_model = write_random_model(tmp_path / 'terrain.safetensors', TERRAIN)
    node = _node(ros_env, random_model_file)
    peer = RosPeer(ros_env)
    try:
        time.sleep(1.0)  # the map was published at start; these subscribers join later
        latched = Listener(peer, f'{NODE}/label_info', _qos())
        assert latched.newest() == (CAMVID_11.names, 0.0)
        volatile = Listener(peer, f'{NODE}/label_info', _qos(latched=False, reliable=False))
        strict = Listener(peer, f'{NODE}/label_info', _qos(deadline_s=0.1))
        assert peer.wait_for(lambda: strict.incompatible, 10.0), 'no incompatible-QoS event'
        assert peer.wait_for(
            lambda: 'requests a QoS it cannot get (DEADLINE)' in node.log(), 10.0), node.log()
        time.sleep(1.0)
        assert not volatile.maps and not strict.maps

        [result] = set_parameters(peer, {'min_confidence': 0.5})
        assert result.successful, result.reason
        assert peer.wait_for(lambda: latched.newest()[1] == 0.5, 10.0)
        assert volatile.newest() == (CAMVID_11.names, 0.5)

        [result] = set_parameters(peer, {'model_path': str(terrain_model),
                                         'drivable_classes': ['sidewalk']}, atomically=True)
        assert result.successful, result.reason
        assert peer.wait_for(lambda: latched.newest()[0] == TERRAIN.names, 60.0), node.log()
        # The same message, taken by the peer's executor one subscription after the other.
        assert peer.wait_for(lambda: volatile.newest() == (TERRAIN.names, 0.5), 10.0), \
            volatile.newest()
        assert Listener(peer, f'{NODE}/label_info', _qos()).newest() == (TERRAIN.names, 0.5)
        assert not strict.maps

        image = peer.publisher(Image, '/image')
        peer.subscribe(Image, f'{NODE}/labels', 'labels')
        frame = make_image_msg(np.zeros((48, 64, 3), np.uint8), 'rgb8', 1_750_000_000_000_000_001)
        assert peer.wait_for(lambda: image.get_subscription_count() > 0, 10.0)
        deadline = time.monotonic() + 30.0
        while not any(stamp_ns(m) == stamp_ns(frame) for m in peer.messages('labels')):
            assert time.monotonic() < deadline, 'no labels after the swap'
            image.publish(frame)
            time.sleep(0.5)
        labels = set(peer.messages('labels')[-1].data)
        # min_confidence 0.5 voids some pixels: the void id (255, the model has none) is not
        # a class and not in the map, so the layer skips those pixels.
        assert labels <= set(range(len(TERRAIN.names))) | {255}, labels
        assert node.exited() is None and 'Traceback' not in node.log(), node.log()
    finally:
        peer.close()
        node.stop()


def test_each_camera_has_its_label_info(ros_env, random_model_file):
    """cameras: [front, rear] -> ~/front/label_info and ~/rear/label_info, both latched."""
    node = _node(ros_env, random_model_file, cameras=['front', 'rear'])
    peer = RosPeer(ros_env)
    try:
        for camera in ('front', 'rear'):
            listener = Listener(peer, f'{NODE}/{camera}/label_info', _qos())
            assert listener.newest() == (CAMVID_11.names, 0.0), camera
    finally:
        peer.close()
        node.stop()
