"""
~/<camera>/drivable_grid with the camera pose from the real TF (tf2_ros), on the real node process.

``grid_pose_source`` is left at its default, ``auto``, which is TF wherever
tf2_ros is importable (every ROS 2 install, and this environment). The
transforms come from the test's peer node, in its own ROS context, through
tf2_ros' own StaticTransformBroadcaster and TransformBroadcaster, as another
process would send them. The grids are compared cell for cell with the core's
projection from the same pose given as camera_pose.* values.
"""

import math
import signal
import threading
import time

from enet_ros.camera_model import CameraIntrinsics
from enet_ros.ground_grid import GroundProjection
from enet_ros.labels import CAMVID_11
from enet_ros.node.settings import PoseValues
import numpy as np
import pytest
from ros_harness import make_image_msg, NodeProcess, RosPeer, stamp_ns
from test_drivable_grid import (_Rig, camera_info, CX, CY, FOCAL, GRID, grid_array,
                                GRID_FRAME, grid_parameters, HEIGHT, WIDTH)

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings('ignore::DeprecationWarning')]
NODE = '/segmentation_node'
#: The front camera's pose in grid_frame, as camera_pose.* values would give it.
POSE = PoseValues(height=1.5, roll=0.02, pitch=0.25, yaw=0.1, x=0.4, y=-0.3)
DISTORTION = (-0.2, 0.05, 0.001, -0.001, 0.0)


def matrix_to_quaternion(rotation: np.ndarray) -> tuple:
    """Return the unit quaternion (x, y, z, w) of a 3x3 rotation matrix."""
    r = np.asarray(rotation, dtype=np.float64)
    w = math.sqrt(max(0.0, 1.0 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
    x = math.copysign(math.sqrt(max(0.0, 1.0 + r[0, 0] - r[1, 1] - r[2, 2])) / 2,
                      r[2, 1] - r[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1.0 - r[0, 0] + r[1, 1] - r[2, 2])) / 2,
                      r[0, 2] - r[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1.0 - r[0, 0] - r[1, 1] + r[2, 2])) / 2,
                      r[1, 0] - r[0, 1])
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    return (x / norm, y / norm, z / norm, w / norm)


def transform_msg(parent: str, child: str, stamp_ns_: int, translation, rotation):
    """Return a geometry_msgs/TransformStamped parent <- child."""
    from geometry_msgs.msg import TransformStamped

    msg = TransformStamped()
    msg.header.frame_id, msg.child_frame_id = parent, child
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns_), 1_000_000_000)
    t, q = msg.transform.translation, msg.transform.rotation
    t.x, t.y, t.z = (float(v) for v in translation)
    q.x, q.y, q.z, q.w = (float(v) for v in rotation)
    return msg


def camera_transform(parent: str, child: str, pose, stamp_ns_: int = 0):
    """Return the transform parent <- child (an optical frame) of a CameraPose."""
    return transform_msg(parent, child, stamp_ns_, pose.translation,
                         matrix_to_quaternion(pose.rotation))


def expected_grid(pose, d=DISTORTION) -> np.ndarray:
    """Return the core's grid for the test camera at ``pose``, every pixel drivable."""
    from enet_ros.ground_grid import GridSpec

    intrinsics = CameraIntrinsics(WIDTH, HEIGHT, FOCAL, FOCAL, CX, CY,
                                  distortion_model='plumb_bob', d=d)
    return GroundProjection(intrinsics, pose, GridSpec(**GRID)).fill(
        np.full((HEIGHT, WIDTH), 255, np.uint8))


@pytest.fixture(scope='module')
def rig(module_ros_env, random_model_file):
    """Yield one node (cameras front and rear, pose source left at auto) and its peer."""
    node = NodeProcess(module_ros_env, {
        'model_path': random_model_file, 'network_width': 64, 'network_height': 48,
        'torch_compile': False, 'cameras': ['front', 'rear'],
        'drivable_classes': list(CAMVID_11.names), **grid_parameters()})
    peer = RosPeer(module_ros_env)
    try:
        node.wait_ready()
        yield _Rig(node, peer)
    finally:
        peer.close()
        code = node.stop(signal.SIGINT)
        assert code == 0, node.log()
        assert 'Traceback' not in node.log(), node.log()


def _skipped(rig, reason: str) -> int:
    return int(rig.diagnostics('front').get(f'grid_skipped_{reason}', 0))


def test_no_transform_no_grid_warned_once_images_flow(rig):
    """Auto is TF here; without a transform: no grid, counted, one warning per 5 s, labels on."""
    assert "camera pose from TF (base_footprint <- the image's frame_id at its stamp)" in \
        rig.node.log()
    rig.infos['front'].publish(camera_info(d=DISTORTION))
    started = time.monotonic()
    sent = []
    for _ in range(6):
        msg = rig.frame('front')
        rig.send('front', msg, ['front/labels'])
        sent.append(stamp_ns(msg))
    assert time.monotonic() - started < 5.0, 'too slow to check the throttle'
    assert rig.peer.wait_for(lambda: _skipped(rig, 'no_transform') >= 5, 10.0), \
        rig.diagnostics('front')
    assert not rig.peer.messages('front/grid')
    log = rig.node.log()
    assert log.count('no transform base_footprint <- front') == 1, rig.node.tail()
    assert '[no_transform]; the other outputs are published' in log
    values = rig.diagnostics('front')
    assert values['grid_pose_source'] == 'tf'
    assert 'no transform base_footprint <- front' in values['grid_status']


def test_static_transform_that_appears_later_gives_the_parameters_grid(rig):
    """A static base_footprint <- front, sent now: the grid is the camera_pose.* one, exactly."""
    from tf2_ros import StaticTransformBroadcaster

    pose = POSE.pose()
    rig.static = StaticTransformBroadcaster(rig.peer.node)
    rig.static.sendTransform(camera_transform(GRID_FRAME, 'front', pose))
    expected = expected_grid(pose)
    assert (expected != -1).sum() > 500
    grid = rig.grid_when('front', lambda grid: True)
    np.testing.assert_array_equal(grid_array(grid), expected)
    assert grid.header.frame_id == GRID_FRAME
    assert rig.node.log().count('front: ground projection built') == 1
    assert 'pose from tf)' in rig.node.log()
    # Any stamp (a static transform has none): more frames, the same grid, no rebuild.
    for _ in range(3):
        out = rig.send('front', rig.frame('front'), ['front/grid'])
        np.testing.assert_array_equal(grid_array(out['front/grid']), expected)
    assert rig.node.log().count('front: ground projection built') == 1
    assert rig.peer.wait_for(lambda: rig.diagnostics('front')['grid_status'] == 'ok', 10.0), \
        rig.diagnostics('front')


class _Odometry:
    """odom <- base_footprint moving along x at SPEED m/s, sent at 20 Hz, stamped now."""

    SPEED = 2.0

    def __init__(self, peer: RosPeer):
        from tf2_ros import TransformBroadcaster

        self.broadcaster = TransformBroadcaster(peer.node)
        peer.wait_for_subscribers(self.broadcaster.pub_tf)
        self.start_ns = time.time_ns()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def x(self, stamp: int) -> float:
        return self.SPEED * (stamp - self.start_ns) / 1e9

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time_ns()
            self.broadcaster.sendTransform(transform_msg(
                'odom', GRID_FRAME, now, (self.x(now), 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


def _frame_at(stamp: int, frame_id: str = 'front'):
    pixels = np.random.default_rng(stamp % 1000).integers(
        0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    return make_image_msg(pixels, 'rgb8', stamp, frame_id=frame_id)


def test_moving_transform_is_looked_up_at_the_image_stamp(rig):
    """grid_frame odom, the vehicle moving: each grid is the pose at its image's stamp; warned."""
    rig.set_parameters({'grid_frame': 'odom'})
    odometry = _Odometry(rig.peer)
    try:
        time.sleep(0.5)  # TF from before the first image's stamp
        grids = []
        for _ in range(5):
            stamp = time.time_ns() - 150_000_000  # the camera's latency: TF has this time
            out = rig.send('front', _frame_at(stamp), ['front/grid', 'front/labels'])
            grids.append((stamp, out['front/grid']))
        for stamp, grid in grids:
            assert grid.header.frame_id == 'odom' and stamp_ns(grid) == stamp
            moved = PoseValues(**{**POSE.__dict__, 'x': POSE.x + odometry.x(stamp)})
            # odom <- base_footprint is a translation, so the camera's pose in odom at that
            # stamp is the static pose moved along x by the odometry's x at that stamp.
            np.testing.assert_array_equal(grid_array(grid), expected_grid(moved.pose()))
        assert rig.peer.wait_for(lambda: "camera's pose in grid_frame 'odom' keeps changing"
                                 in rig.node.log(), 10.0), rig.node.tail()
        assert rig.peer.wait_for(lambda: int(rig.diagnostics('front').get(
            'grid_rebuilt_moving_pose', 0)) >= 1, 10.0), rig.diagnostics('front')
        assert 'intrinsics keep changing' not in rig.node.log()

        # Newer than every transform and none comes: stale, counted; labels still flow.
        odometry.stop()
        time.sleep(0.3)
        before = _skipped(rig, 'stale_transform')
        msg = _frame_at(time.time_ns())
        rig.send('front', msg, ['front/labels'])
        assert rig.peer.wait_for(lambda: _skipped(rig, 'stale_transform') > before, 10.0), \
            rig.diagnostics('front')
        assert not any(stamp_ns(m) == stamp_ns(msg) for m in rig.peer.messages('front/grid'))
        status = rig.diagnostics('front')['grid_status']
        for text in ('the newest transform odom <- front', 'older than the image',
                     '(grid_tf_timeout)'):
            assert text in status, status
    finally:
        odometry.stop()
        rig.set_parameters({'grid_frame': GRID_FRAME})


@pytest.mark.parametrize('child, translation, rotation, text', [
    ('cam_nan', (0.4, math.nan, 1.5), None, 'non-finite values'),
    ('cam_q', (0.4, -0.3, 1.5), (0.0, 0.0, 0.3, 2.0), 'is not a unit quaternion'),
])
def test_invalid_transform_refused_with_the_reason(rig, child, translation, rotation, text):
    """A NaN or a non-unit quaternion from TF: no grid, the reason counted; the node goes on."""
    from tf2_ros import TransformBroadcaster

    broadcaster = TransformBroadcaster(rig.peer.node)
    rig.peer.wait_for_subscribers(broadcaster.pub_tf)
    rotation = rotation or matrix_to_quaternion(POSE.pose().rotation)
    stamp = rig.stamp + 1_000_000
    broadcaster.sendTransform(transform_msg(GRID_FRAME, child, stamp, translation, rotation))
    before = _skipped(rig, 'invalid_transform')

    def refusal_shown() -> bool:
        # Frames sent before the transform reached the node are no_transform, and an
        # earlier case's frames may still be counted: wait for this child's refusal.
        return (_skipped(rig, 'invalid_transform') > before
                and f'{GRID_FRAME} -> {child}' in rig.diagnostics('front').get('grid_status', ''))

    deadline = time.monotonic() + 30
    while not refusal_shown() and time.monotonic() < deadline:
        rig.send('front', _frame_at(stamp, frame_id=child), ['front/labels'])
        rig.peer.wait_for(refusal_shown, 1.5)
    assert refusal_shown(), (rig.diagnostics('front'), rig.node.tail())
    status = rig.diagnostics('front')['grid_status']
    assert text in status, status
    assert 'cam_nan' not in status or child == 'cam_nan', status  # only what it needed
    assert rig.node.process.poll() is None
    rig.grid_when('front', lambda grid: True)  # frames of the valid camera still get grids
