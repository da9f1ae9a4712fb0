"""
The drivable grid's ROS pieces without a node process.

CameraInfo parsing, the reusable OccupancyGrid (header and info), the pose
from parameters, the grid_* / camera_pose.* validation, the per-camera
projection cache, the diagnostics keys, and the TF pose source with the real
``tf2_ros``: its TransformListener on a node that spins on a helper thread, as
in the node, and broadcasters on a second node in its own ROS context.
"""

import math

from enet_ros.camera_model import CameraIntrinsics, CameraPose
from enet_ros.ground_grid import GridSpec, GroundProjection
from enet_ros.node import grid_pose as node_grid
from enet_ros.node.camera_grid import (CameraGrid, fill_grid_info, GridBuffer,
                                       intrinsics_from_camera_info)
from enet_ros.node.cameras import Camera
from enet_ros.node.diagnostics import camera_status
from enet_ros.node.grid_pose import GridUnavailable, resolve_pose_source
from enet_ros.node.health import HealthThresholds, OK, WARN
from enet_ros.node.parameter_table import (ConfigError, GRID_OUTPUT, OUTPUTS, PARAMETERS,
                                           pose_parameter)
from enet_ros.node.settings import grid_settings, pose_values, PoseValues, runtime_settings
import numpy as np
import pytest

K = [400.0, 0.0, 239.5, 0.0, 410.0, 179.5, 0.0, 0.0, 1.0]
D = [-0.2, 0.05, 0.001, -0.002, 0.01]
P = [380.0, 0.0, 240.0, 0.0, 0.0, 385.0, 180.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def camera_info(**fields):
    """Return a 480x360 plumb_bob sensor_msgs/CameraInfo; ``fields`` override."""
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo(width=480, height=360, distortion_model='plumb_bob')
    msg.k, msg.d, msg.p = K, D, P
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def grid_values(**changes):
    """Return the grid_* parameter defaults with ``changes``."""
    values = {name: default for name, (default, _) in PARAMETERS.items()
              if name.startswith('grid_')}
    values.update(changes)
    return values


# ----------------------------------------------------------------- CameraInfo


def test_camera_info_k_and_plumb_bob():
    """K gives fx, fy, cx, cy and skew; D and the model are kept."""
    intrinsics = intrinsics_from_camera_info(camera_info())
    assert (intrinsics.width, intrinsics.height) == (480, 360)
    assert (intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy) == (400, 410, 239.5,
                                                                            179.5)
    assert intrinsics.distortion_model == 'plumb_bob' and intrinsics.d == tuple(D)


def test_camera_info_rectified_uses_p_and_no_distortion():
    """For a rectified image the left 3x3 of P is the camera matrix, D is ignored."""
    intrinsics = intrinsics_from_camera_info(camera_info(), rectified=True)
    assert (intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy) == (380, 385, 240, 180)
    assert not intrinsics.has_distortion


@pytest.mark.parametrize('fields, reason, text', [
    ({'k': [0.0] * 9}, 'invalid_camera_info', 'focal lengths must be positive'),
    ({'distortion_model': 'equidistant'}, 'invalid_camera_info', 'unsupported distortion'),
    ({'binning_x': 2}, 'camera_info_unsupported', 'binning 2x0'),
    ({'width': 0}, 'invalid_camera_info', 'size must be positive'),
    ({'k': K[:2] + [math.nan] + K[3:]}, 'invalid_camera_info', 'non-finite cx=nan'),
    ({'k': [K[0], math.nan] + K[2:]}, 'invalid_camera_info', 'non-finite skew=nan'),
    ({'d': [math.nan] + D[1:]}, 'invalid_camera_info', r'd\[0\]=nan'),
    ({'k': [1e-300] + K[1:]}, 'invalid_camera_info', 'fx=1e-300 is absurd'),
    ({'k': [math.inf] + K[1:]}, 'invalid_camera_info', 'non-finite fx=inf'),
    ({'k': [1e300] + K[1:]}, 'invalid_camera_info', 'fx=1e[+]300 is absurd'),
    ({'d': [1e300] + D[1:]}, 'invalid_camera_info', r'd\[0\]=1e\+300'),
])
def test_camera_info_refused_with_a_reason(fields, reason, text):
    """Uncalibrated, unknown distortion, binned, empty, non-finite or absurd: refused."""
    with pytest.raises(GridUnavailable, match=text) as caught:
        intrinsics_from_camera_info(camera_info(**fields))
    assert caught.value.reason == reason


def test_camera_info_region_of_interest():
    """A full-image ROI is fine; a partial one is refused."""
    msg = camera_info()
    msg.roi.width, msg.roi.height = 480, 360
    intrinsics_from_camera_info(msg)
    msg.roi.x_offset, msg.roi.width = 10, 200
    with pytest.raises(GridUnavailable, match='region of interest') as caught:
        intrinsics_from_camera_info(msg)
    assert caught.value.reason == 'camera_info_unsupported'


# ----------------------------------------------------------------- the message


def test_grid_info_and_header():
    """Info: resolution, size, origin at the ground, no rotation; header: stamp and frame."""
    from builtin_interfaces.msg import Time

    spec = GridSpec(resolution=0.25, width=40, height=30, origin_x=-1.5, origin_y=-3.75)
    buffer = GridBuffer()
    view = buffer.view(spec, ground_z=-0.3)
    assert view.shape == (30, 40) and view.dtype == np.int8
    view[:] = 100
    view[2, 5] = -1
    msg = buffer.stamp(Time(sec=12, nanosec=345), 'base_link')
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 345)
    assert msg.header.frame_id == 'base_link'
    assert msg.info.map_load_time.sec == 12
    info = msg.info
    assert info.resolution == pytest.approx(0.25)
    assert (info.width, info.height) == (40, 30)
    position, orientation = info.origin.position, info.origin.orientation
    assert (position.x, position.y, position.z) == (-1.5, -3.75, -0.3)
    assert (orientation.x, orientation.y, orientation.z, orientation.w) == (0, 0, 0, 1)
    data = np.asarray(msg.data, dtype=np.int8).reshape(30, 40)  # written in place
    assert data[2, 5] == -1 and (data == 100).sum() == 30 * 40 - 1


def test_grid_buffer_reuses_its_array_until_the_layout_changes():
    """The same spec gives the same array; another spec a new one with the new info."""
    spec = GridSpec(resolution=0.1, width=20, height=10, origin_x=0.0, origin_y=-0.5)
    buffer = GridBuffer()
    first = buffer.view(spec, 0.0)
    assert buffer.view(spec, 0.0) is first
    other = buffer.view(GridSpec(0.1, 30, 10, 0.0, -0.5), 0.0)
    assert other.shape == (10, 30) and buffer.msg.info.width == 30
    assert len(buffer.msg.data) == 300


def test_fill_grid_info_matches_the_core_layout():
    """A cell's centre from info equals GridSpec.cell_centres."""
    from nav_msgs.msg import MapMetaData

    spec = GridSpec(resolution=0.5, width=7, height=5, origin_x=2.0, origin_y=-1.0)
    info = MapMetaData()
    fill_grid_info(info, spec, 0.0)
    xs, ys = spec.cell_centres()
    assert xs[3, 4] == info.origin.position.x + (4 + 0.5) * info.resolution
    assert ys[3, 4] == info.origin.position.y + (3 + 0.5) * info.resolution


# ----------------------------------------------------------------- pose and settings


def test_pose_parameter_names():
    """The unnamed camera: camera_pose.<field>; a named one: camera_pose.<name>.<field>."""
    assert pose_parameter('', 'pitch') == 'camera_pose.pitch'
    assert pose_parameter('front', 'height') == 'camera_pose.front.height'


def test_pose_from_parameters_is_the_cores():
    """PoseValues.pose is CameraPose.from_parameters with the height above grid_ground_z."""
    values = PoseValues(height=1.4, roll=0.01, pitch=0.12, yaw=-0.3, x=1.8, y=0.2)
    pose = values.pose(ground_z=-0.35)
    expected = CameraPose.from_parameters(1.05, roll=0.01, pitch=0.12, yaw=-0.3, x=1.8, y=0.2)
    np.testing.assert_allclose(pose.matrix(), expected.matrix())
    # Looking down: the optical axis (z) points forward and below the horizon.
    axis = pose.rotation[:, 2]
    assert axis[2] < 0 and axis[0] > 0
    assert PoseValues(height=0.0, pitch=0.1).pose() is None


def test_pose_values_from_parameter_values():
    """Read per camera; a negative height or a non-finite angle is refused by name."""
    values = {'camera_pose.front.height': 1.2, 'camera_pose.front.pitch': 0.1}
    assert pose_values(values, 'front') == PoseValues(height=1.2, pitch=0.1)
    with pytest.raises(ConfigError, match='camera_pose.front.height'):
        pose_values({'camera_pose.front.height': -1.0}, 'front')
    with pytest.raises(ConfigError, match='camera_pose.yaw'):
        pose_values({'camera_pose.height': 1.0, 'camera_pose.yaw': math.nan}, '')


@pytest.mark.parametrize('changes, name', [
    ({'grid_frame': ' '}, 'grid_frame'),
    ({'grid_resolution': 0.0}, 'grid_resolution'),
    ({'grid_range': -1.0}, 'grid_range'),
    ({'grid_width': 0}, 'grid_width'),
    ({'grid_origin_y': math.inf}, 'grid_origin_y'),
])
def test_grid_settings_refused_by_name(changes, name):
    """Each invalid grid_* value names its parameter."""
    with pytest.raises(ConfigError, match=f'parameter {name}'):
        grid_settings(grid_values(**changes))


def test_grid_settings_defaults_and_spec():
    """The defaults: base_link, 0.1 m cells, 30 m ahead, 20 m across centred, 25 m range."""
    settings = grid_settings(grid_values())
    assert settings.frame == 'base_link'
    assert settings.spec() == GridSpec(resolution=0.1, width=300, height=200, origin_x=0.0,
                                       origin_y=-10.0, grid_range=25.0)


def test_runtime_settings_know_the_grid_output_and_poses():
    """The publish parameter takes drivable_grid (a default); poses are read per camera."""
    assert GRID_OUTPUT in OUTPUTS and GRID_OUTPUT in PARAMETERS['publish'][0]
    values = {name: default for name, (default, d) in PARAMETERS.items()}
    values.update({'drivable_classes': ['Road'], 'publish': ['labels', 'drivable_grid'],
                   'camera_pose.left.height': 1.0})
    settings = runtime_settings(values, ['Sky', 'Road'], ('left', 'right'))
    assert settings.publish == ('labels', 'drivable_grid')
    assert settings.camera_poses['left'] == PoseValues(height=1.0)
    assert not settings.camera_poses['right'].is_set
    assert settings.grid.frame == 'base_link'


# ----------------------------------------------------------------- per-camera cache


def test_camera_grid_without_camera_info():
    """No CameraInfo yet: GridUnavailable('no_camera_info')."""
    with pytest.raises(GridUnavailable) as caught:
        CameraGrid().intrinsics(rectified=False)
    assert caught.value.reason == 'no_camera_info'


def test_camera_grid_parses_each_camera_info_once_and_keeps_equal_intrinsics():
    """An equal CameraInfo keeps the same intrinsics object (and its undistortion table)."""
    grid = CameraGrid()
    grid.on_camera_info(camera_info())
    first = grid.intrinsics(False)
    grid.on_camera_info(camera_info())
    assert grid.intrinsics(False) is first
    assert grid.intrinsics(True) != first  # rectified: another camera matrix
    grid.on_camera_info(camera_info(k=[0.0] * 9))
    with pytest.raises(GridUnavailable):
        grid.intrinsics(False)


def test_projection_rebuilt_only_when_an_input_changes():
    """Same intrinsics, pose and grid: the same map; any change: a new one."""
    grid = CameraGrid()
    intrinsics = CameraIntrinsics(64, 48, 50.0, 50.0, 31.5, 23.5)
    pose = CameraPose.from_parameters(1.5, pitch=0.3)
    spec = GridSpec(0.2, 50, 40, 0.0, -4.0, 10.0)
    first, built = grid.projection_for(intrinsics, pose, spec, 0.0)
    assert built and isinstance(first, GroundProjection) and grid.build_ms is not None
    same, built = grid.projection_for(CameraIntrinsics(64, 48, 50.0, 50.0, 31.5, 23.5),
                                      CameraPose.from_parameters(1.5, pitch=0.3), spec, 0.0)
    assert same is first and not built
    for args, changed in [
            ((intrinsics, CameraPose.from_parameters(1.5, pitch=0.31), spec, 0.0), ('pose',)),
            ((intrinsics, pose, GridSpec(0.2, 50, 40, 0.0, -4.0, 12.0), 0.0), ('pose', 'grid')),
            ((CameraIntrinsics(64, 48, 55.0, 55.0, 31.5, 23.5), pose, spec, 0.0),
             ('camera_info', 'grid')),
            ((intrinsics, pose, spec, 0.1), ('camera_info', 'grid'))]:
        rebuilt, built = grid.projection_for(*args)
        assert built and rebuilt is not first and grid.changed == changed
        first = rebuilt
    assert grid.builds_in_a_row == 4  # a moving pose (grid_frame odom) would look like this
    assert grid.changed_in_a_row == {'camera_info': 2, 'grid': 3}  # what changed, in a row
    assert grid.intrinsics_change == 'fx 55.0 -> 50.0, fy 55.0 -> 50.0'
    grid.projection_for(intrinsics, pose, spec, 0.1)
    assert grid.builds_in_a_row == 0 and grid.changed_in_a_row == {}


def test_projection_below_the_ground_is_a_pose_problem():
    """A camera at or below the ground (e.g. a wrong TF): GridUnavailable, not a crash."""
    with pytest.raises(GridUnavailable) as caught:
        CameraGrid().projection_for(CameraIntrinsics(64, 48, 50.0, 50.0, 31.5, 23.5),
                                    CameraPose.from_parameters(0.5), GridSpec(0.2, 5, 5, 0, 0),
                                    1.0)
    assert caught.value.reason == 'bad_pose'


# ----------------------------------------------------------------- pose source


def test_pose_source_resolution(monkeypatch):
    """auto: TF where tf2_ros imports, else parameters; 'tf' without tf2_ros is an error."""
    import tf2_ros

    assert node_grid.tf_importable()  # the real tf2_ros, as on every ROS 2 install
    assert 'site-packages' in tf2_ros.__file__ and 'test' not in tf2_ros.__file__
    assert resolve_pose_source('auto') == 'tf'
    assert resolve_pose_source('tf') == 'tf'
    assert resolve_pose_source('parameters') == 'parameters'
    monkeypatch.setattr(node_grid, 'tf_importable', lambda: False)  # a system without it
    assert resolve_pose_source('auto') == 'parameters'
    with pytest.raises(ConfigError, match='grid_pose_source'):
        resolve_pose_source('tf')


def _transform(parent: str, child: str, stamp_s: float, translation=(0.0, 0.0, 0.0),
               rotation=(0.0, 0.0, 0.0, 1.0)):
    """Return a geometry_msgs/TransformStamped parent <- child at ``stamp_s``."""
    from geometry_msgs.msg import TransformStamped

    msg = TransformStamped()
    msg.header.frame_id, msg.child_frame_id = parent, child
    msg.header.stamp = _stamp(stamp_s)
    t, q = msg.transform.translation, msg.transform.rotation
    t.x, t.y, t.z = translation
    q.x, q.y, q.z, q.w = rotation
    return msg


def _stamp(seconds: float):
    from builtin_interfaces.msg import Time

    sec = int(seconds)
    return Time(sec=sec, nanosec=int(round((seconds - sec) * 1e9)))


#: The optical frame 1.4 m up, 1.8 m ahead, looking forward and down (a unit quaternion).
CAMERA_Q = (-0.6, 0.6, -0.372, 0.372)
CAMERA_Q = tuple(v / math.sqrt(sum(c * c for c in CAMERA_Q)) for v in CAMERA_Q)


@pytest.fixture
def tf_pair(ros_env):
    """
    Yield (TfPoseSource, broadcasting peer): the real tf2_ros across two ROS contexts.

    The source's node spins on a helper thread, as the segmentation node's executor does;
    the broadcaster is another node in its own context (same domain), as another process.
    """
    from ros_harness import RosPeer

    listening = RosPeer(ros_env, name='grid_tf_listener')
    broadcasting = RosPeer(ros_env, name='grid_tf_broadcaster')
    source = node_grid.TfPoseSource(listening.node)
    try:
        yield source, broadcasting
    finally:
        source.close()
        broadcasting.close()
        listening.close()


def _lookup_when(source, wanted, *args, timeout: float = 20.0):
    """Look up until ``wanted(result)`` holds (the broadcast travels); return the result."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            result = source.lookup(*args)
        except GridUnavailable as error:
            result = error
        if wanted(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def test_tf_pose_from_a_static_transform(tf_pair):
    """No transform: no_transform at once; a static one that appears later answers any stamp."""
    import time

    from tf2_ros import StaticTransformBroadcaster

    source, peer = tf_pair
    started = time.monotonic()
    with pytest.raises(GridUnavailable, match='no transform base_link <- cam_optical') as caught:
        source.lookup('base_link', 'cam_optical', _stamp(1700000000.5), 0.5)
    assert caught.value.reason == 'no_transform'
    assert time.monotonic() - started < 0.25  # an unknown frame is not waited for
    with pytest.raises(GridUnavailable, match='no frame_id') as caught:
        source.lookup('base_link', '', _stamp(1.0), 0.5)
    assert caught.value.reason == 'no_frame_id'

    StaticTransformBroadcaster(peer.node).sendTransform(
        _transform('base_link', 'cam_optical', 0.0, (1.8, 0.0, 1.4), CAMERA_Q))
    pose = _lookup_when(source, lambda r: isinstance(r, CameraPose), 'base_link',
                        'cam_optical', _stamp(1700000000.5), 0.05)
    assert isinstance(pose, CameraPose), pose
    expected = CameraPose.from_quaternion((1.8, 0.0, 1.4), CAMERA_Q)
    np.testing.assert_allclose(pose.matrix(), expected.matrix(), atol=1e-12)
    for stamp in (0.0, 12.25, 1.9e9):  # a static transform answers every stamp (0: newest)
        np.testing.assert_allclose(source.lookup('base_link', 'cam_optical', _stamp(stamp),
                                                 0.0).matrix(), expected.matrix(), atol=1e-12)


def test_tf_pose_at_the_image_stamp_with_a_bounded_wait(tf_pair):
    """A moving transform is interpolated at the stamp; a newer image waits, bounded."""
    import threading
    import time

    from tf2_ros import TransformBroadcaster

    source, peer = tf_pair
    broadcaster = TransformBroadcaster(peer.node)
    peer.wait_for_subscribers(broadcaster.pub_tf)  # /tf is volatile: sent before, lost
    t0 = 1000.0  # small: its tenths are exact to well below a nanosecond
    broadcaster.sendTransform([_transform('odom', 'cam', t0, (1.0, 0.0, 1.5)),
                               _transform('odom', 'cam', t0 + 0.2, (3.0, 0.0, 1.5))])
    pose = _lookup_when(source, lambda r: isinstance(r, CameraPose), 'odom', 'cam',
                        _stamp(t0 + 0.1), 0.0)
    assert isinstance(pose, CameraPose), pose
    np.testing.assert_allclose(pose.translation, [2.0, 0.0, 1.5], atol=1e-9)  # not the newest
    np.testing.assert_allclose(source.lookup('odom', 'cam', _stamp(0.0)).translation,
                               [3.0, 0.0, 1.5])  # stamp 0: the newest

    # Newer than every transform, none comes: refused once the wait is over, not later.
    started = time.monotonic()
    with pytest.raises(GridUnavailable, match=r'0\.300 s older than the image') as caught:
        source.lookup('odom', 'cam', _stamp(t0 + 0.5), 0.2)
    waited = time.monotonic() - started
    assert caught.value.reason == 'stale_transform'
    assert 'grid_tf_timeout' in str(caught.value)
    assert 0.2 <= waited < 0.2 + 0.1, waited

    # One that arrives during the wait is taken at once: the listener's callbacks run on
    # the other thread's executor while this one waits (no deadlock, no polling delay).
    timer = threading.Timer(0.3, broadcaster.sendTransform,
                            [_transform('odom', 'cam', t0 + 0.6, (7.0, 0.0, 1.5))])
    started = time.monotonic()
    timer.start()
    try:
        pose = source.lookup('odom', 'cam', _stamp(t0 + 0.5), 5.0)
    finally:
        timer.join()
    assert time.monotonic() - started < 2.0
    np.testing.assert_allclose(pose.translation, [6.0, 0.0, 1.5], atol=1e-9)

    with pytest.raises(GridUnavailable, match='older than the transforms') as caught:
        source.lookup('odom', 'cam', _stamp(t0 - 60.0), 0.5)
    assert caught.value.reason == 'old_image'


@pytest.mark.parametrize('translation, rotation, text', [
    ((math.nan, 0.0, 1.4), CAMERA_Q, 'non-finite values'),
    ((1.8, 0.0, 1.4), (0.0, 0.0, 0.0, 2.0), 'not a unit quaternion'),
    ((1.8, 0.0, 1.4), (0.0, 0.0, 0.0, 0.0), 'not a unit quaternion'),
])
def test_tf_invalid_transform_is_refused_with_the_reason(tf_pair, translation, rotation, text):
    """A NaN or a non-unit quaternion: not stored, the lookup names it; a valid one then works."""
    from tf2_ros import TransformBroadcaster

    source, peer = tf_pair
    broadcaster = TransformBroadcaster(peer.node)
    peer.wait_for_subscribers(broadcaster.pub_tf)  # /tf is volatile: sent before, lost
    broadcaster.sendTransform(_transform('base_link', 'cam_bad', 100.0, translation, rotation))
    error = _lookup_when(source, lambda r: getattr(r, 'reason', '') == 'invalid_transform',
                         'base_link', 'cam_bad', _stamp(100.0), 0.0)
    assert isinstance(error, GridUnavailable) and error.reason == 'invalid_transform', error
    assert text in str(error) and 'base_link -> cam_bad' in str(error)
    broadcaster.sendTransform(_transform('base_link', 'cam_bad', 101.0, (1.8, 0.0, 1.4),
                                         CAMERA_Q))
    pose = _lookup_when(source, lambda r: isinstance(r, CameraPose), 'base_link', 'cam_bad',
                        _stamp(101.0), 0.0)
    assert isinstance(pose, CameraPose), pose


def test_tf_refusal_named_only_where_the_lookup_needed_it(tf_pair):
    """
    Another camera's refused transform is not this camera's reason; a refused link up is.

    base_link -> cam_nan and odom -> base_link refused, base_link <- cam_late not sent
    yet: no_transform, the refusals only listed (neither would have joined base_link and
    cam_late). odom -> base_link above a stored base_link -> cam_ok: the lookup odom <-
    cam_ok is invalid_transform and names it, and not cam_nan's.
    """
    from tf2_ros import StaticTransformBroadcaster

    source, peer = tf_pair
    StaticTransformBroadcaster(peer.node).sendTransform([
        _transform('base_link', 'cam_nan', 0.0, (math.nan, 0.0, 1.4), CAMERA_Q),
        _transform('base_link', 'cam_ok', 0.0, (1.8, 0.0, 1.4), CAMERA_Q),
        _transform('odom', 'base_link', 0.0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 2.0))])
    error = _lookup_when(source, lambda r: 'also refused' in str(r), 'base_link', 'cam_late',
                         _stamp(5.0), 0.0)
    assert isinstance(error, GridUnavailable) and error.reason == 'no_transform', error
    assert 'no transform base_link <- cam_late for the drivable grid' in str(error), error
    assert 'also refused: ' in str(error) and 'base_link -> cam_nan' in str(error), error
    assert 'non-finite' not in str(error) and 'not a unit' not in str(error), error

    error = _lookup_when(source, lambda r: getattr(r, 'reason', '') == 'invalid_transform',
                         'odom', 'cam_ok', _stamp(5.0), 0.0)
    assert isinstance(error, GridUnavailable) and error.reason == 'invalid_transform', error
    assert 'refused odom -> base_link' in str(error) and 'not a unit quaternion' in str(error)
    assert 'cam_nan' not in str(error), error
    assert source.lookup('base_link', 'cam_ok', _stamp(5.0)).translation[0] == 1.8


def test_frame_chain():
    """A frame and its stored ancestors, nearest first; a loop in the data ends the walk."""
    parents = {'cam': 'base_link', 'base_link': 'odom', 'odom': 'map'}
    assert node_grid.frame_chain('cam', parents) == ['cam', 'base_link', 'odom', 'map']
    assert node_grid.frame_chain('map', parents) == ['map']
    assert node_grid.frame_chain('a', {'a': 'b', 'b': 'a'}) == ['a', 'b']


def test_transform_problem():
    """The checks behind invalid_transform, with tf2's tolerance for a unit quaternion."""
    assert node_grid.transform_problem(_transform('a', 'b', 0.0, (1.0, 2.0, 3.0),
                                                  CAMERA_Q)) is None
    assert node_grid.transform_problem(_transform('a', 'b', 0.0,
                                                  rotation=(0.0, 0.0, 0.0, 1.004))) is None
    assert 'norm 1.01' in node_grid.transform_problem(
        _transform('a', 'b', 0.0, rotation=(0.0, 0.0, 0.0, 1.01)))
    assert 'non-finite' in node_grid.transform_problem(
        _transform('a', 'b', 0.0, rotation=(0.0, math.inf, 0.0, 1.0)))


# ----------------------------------------------------------------- diagnostics


class _Segmenter:
    device = 'cpu'
    precision = 'fp32'
    backend = 'torch'
    openmp_wait = 'fixed'
    openmp_cpus = 'all 2'
    model_path = '/m.safetensors'

    class metadata:
        class_names = ('Sky', 'Road')


def _values(status):
    return {kv.key: kv.value for kv in status.values}


def test_diagnostics_grid_keys_and_warning():
    """grid_pose_source, grid_status, counters; a grid problem makes the status WARN."""
    camera = Camera('front')
    camera.stats.received()
    status = camera_status('/n', camera, HealthThresholds(), _Segmenter, False, 'parameters')
    values = _values(status)
    assert values['grid_pose_source'] == 'parameters'
    assert values['grid_status'] == 'ok' and values['grid_published'] == '0'
    assert status.level == bytes([OK])
    camera.stats.count('grid_skipped_camera_info_size_mismatch')
    camera.stats.count('grid_rebuilt_moving_pose')
    camera.stats.count('dropped_deactivated')
    camera.grid.problem = 'camera_info is 640x480 but the image is 320x240'
    status = camera_status('/n', camera, HealthThresholds(), _Segmenter, False, 'tf')
    values = _values(status)
    assert values['grid_skipped_camera_info_size_mismatch'] == '1'
    assert values['grid_rebuilt_moving_pose'] == '1'
    assert values['frames_dropped_deactivated'] == '1'
    assert values['grid_status'].startswith('camera_info is 640x480')
    assert status.level == bytes([WARN])
    assert status.message == 'no drivable grid: camera_info is 640x480 but the image is 320x240'


def test_grid_qos_is_transient_local():
    """The grid matches volatile and transient-local (map) subscribers."""
    from enet_ros.node.grid_output import grid_qos
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    qos = grid_qos('reliable')
    assert qos.durability == DurabilityPolicy.TRANSIENT_LOCAL and qos.depth == 1
    assert qos.reliability == ReliabilityPolicy.RELIABLE
