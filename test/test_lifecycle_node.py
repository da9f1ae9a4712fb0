"""
The managed node (segmentation_lifecycle_node) as a real process, driven through its services.

Every transition through lifecycle_msgs' ChangeState / GetState services, as
a lifecycle manager calls them: a configure that fails on a bad model_path
(the node stays unconfigured and says why), configure, no subscription and no
output while inactive, output after activate, none after deactivate, cleanup
then configure again, and shutdown ending the process with code 0. The real
``ros2 lifecycle`` command is in test_ros2_tools.py.
"""

import time

from enet_ros.node.lifecycle_node import CONFIGURING_LINE, UNCONFIGURED_LINE
import numpy as np
import pytest
from ros_harness import LifecycleClient, make_image_msg, NodeProcess, RosPeer, stamp_ns
from test_drivable_grid import CAMERA_HEIGHT, camera_info, HEIGHT, PITCH, WIDTH

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings('ignore::DeprecationWarning')]
NODE = '/segmentation_node'
QUIET_S = 2.0


class _Camera:
    """The peer's camera: image and camera_info publishers, and the recorded outputs."""

    def __init__(self, peer: RosPeer):
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import OccupancyGrid
        from sensor_msgs.msg import CameraInfo, Image

        self.peer = peer
        self.image = peer.publisher(Image, '/image')
        self.info = peer.publisher(CameraInfo, '/camera_info')
        peer.subscribe(Image, f'{NODE}/labels', 'labels')
        peer.subscribe(OccupancyGrid, f'{NODE}/drivable_grid', 'grid')
        peer.subscribe(DiagnosticArray, '/diagnostics', 'diagnostics')
        self.stamp = 1_750_000_000_000_000_000

    def frame(self):
        """Return a new 160x120 rgb8 frame with a fresh stamp."""
        self.stamp += 1_000_000
        pixels = np.random.default_rng(self.stamp % 997).integers(
            0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        return make_image_msg(pixels, 'rgb8', self.stamp, frame_id='camera')

    def answered(self, msg, key: str) -> bool:
        return any(stamp_ns(m) == stamp_ns(msg) for m in self.peer.messages(key))

    def expect_output(self, timeout: float = 30.0) -> None:
        """Check that a frame is answered on labels and drivable_grid."""
        assert self.peer.wait_for(lambda: self.image.get_subscription_count() > 0, timeout), \
            'the node does not subscribe to /image'
        self.info.publish(camera_info(frame_id='camera'))
        msg = self.frame()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.image.publish(msg)
            if self.peer.wait_for(lambda: self.answered(msg, 'labels')
                                  and self.answered(msg, 'grid'), 3.0):
                return
        raise AssertionError(f'no labels and grid for stamp {stamp_ns(msg)}')

    def expect_silence(self) -> None:
        """Check that the node does not subscribe to the camera and a frame gets no output."""
        assert self.peer.wait_for(lambda: self.image.get_subscription_count() == 0, 10.0), \
            'the node still subscribes to /image'
        diagnostics = len(self.peer.messages('diagnostics'))
        msg = self.frame()
        self.image.publish(msg)
        time.sleep(QUIET_S)
        assert not self.answered(msg, 'labels') and not self.answered(msg, 'grid')
        assert len(self.peer.messages('diagnostics')) == diagnostics, 'diagnostics while inactive'


@pytest.fixture
def managed(ros_env, random_model_file):
    """
    Yield a managed node started with a bad model_path, its lifecycle client and camera.

    The grid's camera pose comes from TF (grid_pose_source auto, tf2_ros importable): the
    peer sends the static transform base_link <- camera, as a robot_state_publisher would;
    each configure makes a new listener, which gets it again (transient local).
    """
    from enet_ros.node.settings import PoseValues
    from test_grid_tf import camera_transform
    from tf2_ros import StaticTransformBroadcaster

    node = NodeProcess(ros_env, {
        'model_path': '/nonexistent/model.safetensors', 'network_width': 64,
        'network_height': 48, 'torch_compile': False}, lifecycle=True)
    peer = RosPeer(ros_env)
    try:
        StaticTransformBroadcaster(peer.node).sendTransform(camera_transform(
            'base_link', 'camera', PoseValues(height=CAMERA_HEIGHT, pitch=PITCH).pose()))
        node.wait_for_text(UNCONFIGURED_LINE)
        yield node, LifecycleClient(peer, NODE), _Camera(peer)
    finally:
        peer.close()
        if node.exited() is None:
            node.stop()


def _set_parameter(peer, name, value) -> None:
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = peer.node.create_client(SetParameters, f'{NODE}/set_parameters')
    assert client.wait_for_service(timeout_sec=20.0)
    future = client.call_async(SetParameters.Request(
        parameters=[Parameter(name, value=value).to_parameter_msg()]))
    assert peer.wait_for(future.done, timeout=20.0)
    [result] = future.result().results
    assert result.successful, result.reason


def test_every_transition(managed, random_model_file):
    """
    Configure fails on a bad model, then every transition works and gates the outputs.

    unconfigured -(configure, bad model)-> unconfigured -(model_path set, configure)->
    inactive -(activate)-> active -(deactivate)-> inactive -(cleanup)-> unconfigured
    -(configure, activate)-> active -(shutdown)-> the process exits with code 0.
    """
    node, lifecycle, camera = managed
    assert lifecycle.state() == 'unconfigured'
    assert camera.image.get_subscription_count() == 0

    assert lifecycle.change('configure') is False
    assert lifecycle.state() == 'unconfigured'
    log = node.log()
    assert 'configure failed, staying unconfigured: parameter model_path:' in log, log
    assert '/nonexistent/model.safetensors' in log and 'does not exist' in log, log
    assert node.exited() is None

    _set_parameter(camera.peer, 'model_path', str(random_model_file))
    assert lifecycle.change('configure') is True
    assert lifecycle.state() == 'inactive'
    camera.expect_silence()

    assert lifecycle.change('activate') is True
    assert lifecycle.state() == 'active'
    camera.expect_output()

    assert lifecycle.change('deactivate') is True
    assert lifecycle.state() == 'inactive'
    camera.expect_silence()

    assert lifecycle.change('cleanup') is True
    assert lifecycle.state() == 'unconfigured'
    camera.expect_silence()
    assert lifecycle.change('configure') is True, node.log()
    assert lifecycle.change('activate') is True
    camera.expect_output()

    assert lifecycle.change('shutdown') is True
    assert node.wait_exit(30) == 0, node.log()
    log = node.log()
    assert 'shut down (finalized): exiting' in log and 'stopped cleanly' in log, log
    assert 'Traceback' not in log, log


@pytest.mark.slow
def test_ctrl_c_during_configure_exits_cleanly(ros_env, random_model_file):
    """SIGINT while configure builds the model (torch.compile): exit code 0, not a failure."""
    from lifecycle_msgs.srv import ChangeState

    node = NodeProcess(ros_env, {'model_path': str(random_model_file), 'torch_compile': True,
                                 'inference_backend': 'torch'}, lifecycle=True)
    peer = RosPeer(ros_env)
    try:
        node.wait_for_text(UNCONFIGURED_LINE)
        client = LifecycleClient(peer, NODE)
        request = ChangeState.Request()
        request.transition.label = 'configure'
        client._send(client._change, request, 30.0)
        node.wait_for_text(CONFIGURING_LINE, timeout=60.0)
        code = node.stop()
        assert code == 0, node.log()
        assert 'Traceback' not in node.log(), node.log()
    finally:
        peer.close()
        if node.exited() is None:
            node.stop()
