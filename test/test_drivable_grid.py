"""
~/<camera>/drivable_grid from the real node process, against the camera's analytic footprint.

The mask is made known through drivable_classes: with every class drivable
the drivable image is 255 everywhere, so the grid is the camera's visible
footprint on the ground (seen cells 0, the rest -1), which is computed here
with the test's own pinhole geometry; with no class drivable every seen cell
is 100. One node serves two named cameras: ``front`` (camera_info and pose
given) and ``rear`` (no camera_info ever), with the pose from the
camera_pose.<name>.* parameters (``grid_pose_source: parameters``: these tests
are about that source; the pose from TF, the default where tf2_ros is
importable, is tested in test_grid_tf.py).
"""

import math
import signal
import time

from enet_ros.camera_model import CameraIntrinsics, CameraPose
from enet_ros.ground_grid import FREE, GridSpec, GroundProjection, OCCUPIED, UNKNOWN
from enet_ros.labels import CAMVID_11
import numpy as np
import pytest
from ros_harness import make_image_msg, NodeProcess, RosPeer, stamp_ns

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings('ignore::DeprecationWarning')]
NODE = '/segmentation_node'
WIDTH, HEIGHT, FOCAL = 160, 120, 100.0
CX, CY = 79.5, 59.5
CAMERA_HEIGHT, PITCH = 1.5, 0.25
GRID = {'resolution': 0.2, 'width': 100, 'height': 80, 'origin_x': -2.0, 'origin_y': -8.0,
        'grid_range': 15.0}
GRID_FRAME = 'base_footprint'


def grid_parameters(spec: dict = GRID) -> dict:
    """Return the node's grid_* parameters for ``spec``."""
    return {'grid_frame': GRID_FRAME, 'grid_resolution': spec['resolution'],
            'grid_width': spec['width'], 'grid_height': spec['height'],
            'grid_origin_x': spec['origin_x'], 'grid_origin_y': spec['origin_y'],
            'grid_range': spec['grid_range']}


def camera_info(width=WIDTH, height=HEIGHT, d=(0.0, 0.0, 0.0, 0.0, 0.0), frame_id='front'):
    """Return a sensor_msgs/CameraInfo of the test camera (plumb_bob)."""
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo(width=width, height=height, distortion_model='plumb_bob')
    msg.header.frame_id = frame_id
    msg.k = [FOCAL, 0.0, CX, 0.0, FOCAL, CY, 0.0, 0.0, 1.0]
    msg.d = list(d)
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [FOCAL, 0.0, CX, 0.0, 0.0, FOCAL, CY, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def analytic_footprint(pitch: float = PITCH, spec: dict = GRID) -> np.ndarray:
    """
    Return the (rows, cols) bool cells whose centre the camera sees, by pinhole geometry.

    Camera at (0, 0, CAMERA_HEIGHT) looking along +x, pitched down by ``pitch``:
    its optical axes in the ground frame are x = (0, -1, 0), y = (-s, 0, -c),
    z = (c, 0, -s). A centre is seen when it is in front, projects inside the
    image and lies within grid_range of the point below the camera.
    """
    c, s = math.cos(pitch), math.sin(pitch)
    xs = spec['origin_x'] + (np.arange(spec['width']) + 0.5) * spec['resolution']
    ys = spec['origin_y'] + (np.arange(spec['height']) + 0.5) * spec['resolution']
    x, y = np.meshgrid(xs, ys)
    dz = -CAMERA_HEIGHT
    zo = c * x - s * dz
    xo = -y
    yo = -s * x - c * dz
    with np.errstate(all='ignore'):
        u = FOCAL * xo / zo + CX
        v = FOCAL * yo / zo + CY
    return ((zo > 0) & (u >= -0.5) & (u < WIDTH - 0.5) & (v >= -0.5) & (v < HEIGHT - 0.5)
            & (np.hypot(x, y) <= spec['grid_range']))


def _shift_any(mask: np.ndarray, reduce) -> np.ndarray:
    """3x3 dilation (reduce=np.logical_or) or erosion (np.logical_and) of a bool grid."""
    padded = np.pad(mask, 1, constant_values=reduce is np.logical_and)
    out = mask.copy()
    rows, cols = mask.shape
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            out = reduce(out, padded[1 + dr:1 + dr + rows, 1 + dc:1 + dc + cols])
    return out


def assert_within_one_cell(seen: np.ndarray, expected: np.ndarray) -> None:
    """Every difference between the two footprints lies on the expected one's border."""
    inner = _shift_any(expected, np.logical_and)
    outer = _shift_any(expected, np.logical_or)
    missing = inner & ~seen
    extra = seen & ~outer
    assert not missing.any() and not extra.any(), (
        f'{missing.sum()} cells inside the footprint unseen, {extra.sum()} seen outside it '
        f'(footprint {expected.sum()} cells, seen {seen.sum()})')
    assert seen.sum() > 100


def grid_array(msg) -> np.ndarray:
    """Return an OccupancyGrid's data as (rows, cols) int8."""
    data = np.asarray(msg.data, dtype=np.int8)
    assert data.size == msg.info.width * msg.info.height
    return data.reshape(msg.info.height, msg.info.width)


class _Rig:
    """The node, a peer, and the peer's publishers for both cameras."""

    def __init__(self, node, peer):
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import OccupancyGrid
        from sensor_msgs.msg import CameraInfo, Image

        self.node, self.peer = node, peer
        self.images, self.infos = {}, {}
        for camera in ('front', 'rear'):
            peer.subscribe(Image, f'{NODE}/{camera}/labels', f'{camera}/labels')
            peer.subscribe(OccupancyGrid, f'{NODE}/{camera}/drivable_grid', f'{camera}/grid')
            self.images[camera] = peer.publisher(Image, f'/{camera}/image')
            self.infos[camera] = peer.publisher(CameraInfo, f'/{camera}/camera_info')
        peer.subscribe(DiagnosticArray, '/diagnostics')
        for publisher in list(self.images.values()) + list(self.infos.values()):
            peer.wait_for_subscribers(publisher)
        self.stamp = 1_700_000_000_000_000_000

    def frame(self, camera: str, width: int = WIDTH, height: int = HEIGHT):
        """Return a new random rgb8 image message for ``camera`` with a fresh stamp."""
        self.stamp += 1_000_000
        pixels = np.random.default_rng(self.stamp % 1000).integers(
            0, 256, (height, width, 3), dtype=np.uint8)
        return make_image_msg(pixels, 'rgb8', self.stamp, frame_id=camera)

    def _with_stamp(self, key: str, wanted: int):
        """Return the message received under ``key`` with stamp ``wanted``, else None."""
        return next((m for m in self.peer.messages(key) if stamp_ns(m) == wanted), None)

    def send(self, camera: str, msg, keys, timeout: float = 30.0) -> dict:
        """Publish ``msg`` (repeating if lost) until every key has a message with its stamp."""
        wanted = stamp_ns(msg)

        def found():
            return {key: self._with_stamp(key, wanted) for key in keys}

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.images[camera].publish(msg)
            if self.peer.wait_for(lambda: all(v is not None for v in found().values()), 3.0):
                return found()
        received = {key: msg is not None for key, msg in found().items()}
        raise AssertionError(f'no {keys} for stamp {wanted}: {received}\n{self.node.tail(40)}')

    def grid_when(self, camera: str, accept, timeout: float = 30.0):
        """
        Send fresh frames until one's grid satisfies ``accept``; return that grid.

        A camera_info published just before travels on its own topic, so nothing
        orders it with the next image: this waits for the node to have used it.
        """
        deadline = time.monotonic() + timeout
        grid = None
        while time.monotonic() < deadline:
            msg = self.frame(camera)
            self.images[camera].publish(msg)
            key, wanted = f'{camera}/grid', stamp_ns(msg)
            if self.peer.wait_for(lambda: self._with_stamp(key, wanted) is not None, 3.0):
                grid = self._with_stamp(key, wanted)
                if accept(grid):
                    return grid
        raise AssertionError(f'no accepted {camera} grid in {timeout:.0f} s (last: '
                             f'{grid is not None})\n{self.node.tail(40)}')

    def diagnostics(self, camera: str) -> dict:
        """Return the newest diagnostics values of ``camera``."""
        for msg in reversed(self.peer.messages('/diagnostics')):
            for status in msg.status:
                if status.name.endswith(f'segmentation {camera}'):
                    values = {kv.key: kv.value for kv in status.values}
                    values['_message'] = status.message
                    return values
        return {}

    def set_parameters(self, parameters: dict) -> None:
        """Set node parameters through its service; fail on a refusal."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        client = self.peer.node.create_client(SetParameters, f'{NODE}/set_parameters')
        assert client.wait_for_service(timeout_sec=20.0)
        future = client.call_async(SetParameters.Request(parameters=[
            Parameter(name, value=value).to_parameter_msg()
            for name, value in parameters.items()]))
        assert self.peer.wait_for(future.done, timeout=20.0)
        for result in future.result().results:
            assert result.successful, result.reason


@pytest.fixture(scope='module')
def rig(module_ros_env, random_model_file):
    """Yield one node with cameras front and rear (front's pose set), every class drivable."""
    node = NodeProcess(module_ros_env, {
        'model_path': random_model_file, 'network_width': 64, 'network_height': 48,
        'torch_compile': False, 'cameras': ['front', 'rear'],
        'drivable_classes': list(CAMVID_11.names), 'grid_pose_source': 'parameters',
        'camera_pose.front.height': CAMERA_HEIGHT, 'camera_pose.front.pitch': PITCH,
        **grid_parameters()})
    peer = RosPeer(module_ros_env)
    try:
        node.wait_ready()
        yield _Rig(node, peer)
    finally:
        peer.close()
        code = node.stop(signal.SIGINT)
        assert code == 0, node.log()


def test_no_camera_info_no_grid_other_outputs_published(rig):
    """Without camera_info: no grid, a warning naming the topic, labels still published."""
    for camera in ('front', 'rear'):
        msg = rig.frame(camera)
        rig.send(camera, msg, [f'{camera}/labels'])
    assert rig.peer.wait_for(lambda: 'no camera_info received yet' in rig.node.log(), 10.0)
    assert '/rear/camera_info' in rig.node.log()
    assert not rig.peer.messages('front/grid') and not rig.peer.messages('rear/grid')
    assert rig.peer.wait_for(lambda: int(rig.diagnostics('rear').get(
        'grid_skipped_no_camera_info', 0)) >= 1, 10.0), rig.diagnostics('rear')
    values = rig.diagnostics('rear')
    assert values['grid_pose_source'] == 'parameters'
    assert 'no camera_info' in values['grid_status']
    assert 'no drivable grid' in values['_message']


def test_grid_is_the_cameras_visible_footprint(rig):
    """Every class drivable: seen cells 0 and the rest -1; the seen cells are the footprint."""
    rig.infos['front'].publish(camera_info())
    time.sleep(0.5)
    msg = rig.frame('front')
    out = rig.send('front', msg, ['front/labels', 'front/grid'])
    grid = out['front/grid']
    assert grid.header.frame_id == GRID_FRAME
    assert stamp_ns(grid) == stamp_ns(msg)
    info = grid.info
    assert (info.width, info.height) == (GRID['width'], GRID['height'])
    assert info.resolution == pytest.approx(GRID['resolution'])
    assert (info.origin.position.x, info.origin.position.y) == (GRID['origin_x'],
                                                                GRID['origin_y'])
    assert info.origin.orientation.w == 1.0
    cells = grid_array(grid)
    assert set(np.unique(cells)) <= {FREE, UNKNOWN}
    assert_within_one_cell(cells != UNKNOWN, analytic_footprint())
    assert rig.node.log().count('front: ground projection built') == 1
    assert rig.peer.wait_for(lambda: int(rig.diagnostics('front').get('grid_published', 0))
                             >= 1, 10.0), rig.diagnostics('front')


def test_projection_reused_until_the_pose_changes(rig):
    """More frames reuse the map; a new pitch rebuilds it once and moves the footprint."""
    for _ in range(3):
        rig.infos['front'].publish(camera_info())
        rig.send('front', rig.frame('front'), ['front/grid'])
    assert rig.node.log().count('front: ground projection built') == 1, rig.node.tail()
    rig.set_parameters({'camera_pose.front.pitch': 0.4})
    out = rig.send('front', rig.frame('front'), ['front/grid'])
    assert rig.node.log().count('front: ground projection built') == 2, rig.node.tail()
    seen = grid_array(out['front/grid']) != UNKNOWN
    assert_within_one_cell(seen, analytic_footprint(pitch=0.4))
    assert not np.array_equal(analytic_footprint(pitch=0.4), analytic_footprint())
    rig.set_parameters({'camera_pose.front.pitch': PITCH})


def test_no_drivable_class_marks_every_seen_cell_occupied(rig):
    """drivable_classes empty: the drivable mask is 0, every seen cell is 100."""
    rig.infos['front'].publish(camera_info())
    rig.grid_when('front', lambda grid: True)
    rig.set_parameters({'drivable_classes': ['']})
    try:
        out = rig.send('front', rig.frame('front'), ['front/grid'])
        cells = grid_array(out['front/grid'])
        assert set(np.unique(cells)) == {OCCUPIED, UNKNOWN}
        assert_within_one_cell(cells != UNKNOWN, analytic_footprint())
    finally:
        rig.set_parameters({'drivable_classes': list(CAMVID_11.names)})


def test_plumb_bob_distortion_is_used(rig):
    """A distorted camera_info gives the core projection's footprint for those coefficients."""
    d = (-0.2, 0.05, 0.001, -0.001, 0.0)
    intrinsics = CameraIntrinsics(WIDTH, HEIGHT, FOCAL, FOCAL, CX, CY,
                                  distortion_model='plumb_bob', d=d)
    expected = GroundProjection(intrinsics, CameraPose.from_parameters(CAMERA_HEIGHT,
                                                                       pitch=PITCH),
                                GridSpec(**GRID)).fill(np.full((HEIGHT, WIDTH), 255, np.uint8))
    undistorted = analytic_footprint()
    assert (expected != UNKNOWN).sum() != undistorted.sum()  # the coefficients matter
    rig.infos['front'].publish(camera_info(d=d))
    grid = rig.grid_when('front', lambda grid: np.array_equal(grid_array(grid), expected))
    np.testing.assert_array_equal(grid_array(grid), expected)
    rig.infos['front'].publish(camera_info())
    rig.grid_when('front', lambda grid: not np.array_equal(grid_array(grid), expected))


def test_camera_info_of_another_size_is_refused(rig):
    """camera_info 320x240 for 160x120 images: no grid, reason logged and counted, labels on."""
    refusal = 'camera_info is 320x240 but the image is 160x120'
    rig.infos['front'].publish(camera_info(width=2 * WIDTH, height=2 * HEIGHT))
    deadline = time.monotonic() + 30
    while refusal not in rig.node.log() and time.monotonic() < deadline:
        rig.send('front', rig.frame('front'), ['front/labels'])  # until the node has the info
    assert refusal in rig.node.log(), rig.node.tail()

    def refused():
        return int(rig.diagnostics('front').get('grid_skipped_camera_info_size_mismatch', 0))

    assert rig.peer.wait_for(lambda: refused() >= 1, 10.0), rig.diagnostics('front')
    before = refused()
    msg = rig.frame('front')
    rig.send('front', msg, ['front/labels'])
    # Counted once this frame's grid was refused (the diagnostics come every second).
    assert rig.peer.wait_for(lambda: refused() > before, 10.0), rig.diagnostics('front')
    assert not any(stamp_ns(m) == stamp_ns(msg) for m in rig.peer.messages('front/grid'))
    assert 'camera_info_size_mismatch' in rig.diagnostics('front')['grid_status']
    rig.infos['front'].publish(camera_info())
    rig.grid_when('front', lambda grid: True)
    assert rig.node.process.poll() is None


@pytest.mark.parametrize('field, index, value, text', [
    ('k', 2, math.nan, 'non-finite cx=nan'),
    ('k', 1, math.nan, 'non-finite skew=nan'),
    ('d', 0, math.nan, 'd[0]=nan'),
    ('k', 0, 1e-300, 'fx=1e-300 is absurd'),
    ('k', 0, math.inf, 'non-finite fx=inf'),
    ('d', 0, 1e300, 'd[0]=1e+300'),
])
def test_invalid_intrinsics_give_no_grid_and_say_why(rig, field, index, value, text):
    """K or D with NaN, inf or absurd values: no grid (not an all-unknown one), reason counted."""
    info = camera_info()
    values = list(getattr(info, field))
    values[index] = value
    setattr(info, field, values)
    rig.infos['front'].publish(info)
    deadline = time.monotonic() + 30
    while text not in rig.node.log() and time.monotonic() < deadline:
        rig.send('front', rig.frame('front'), ['front/labels'])
    assert text in rig.node.log(), rig.node.tail()
    assert 'invalid_camera_info' in rig.node.log()

    def refused():
        return int(rig.diagnostics('front').get('grid_skipped_invalid_camera_info', 0))

    before = refused()
    msg = rig.frame('front')
    rig.send('front', msg, ['front/labels'])
    assert rig.peer.wait_for(lambda: refused() > before, 10.0), rig.diagnostics('front')
    assert not any(stamp_ns(m) == stamp_ns(msg) for m in rig.peer.messages('front/grid'))
    assert text in rig.diagnostics('front')['grid_status']
    assert 'overflow' not in rig.node.log() and 'RuntimeWarning' not in rig.node.log()
    rig.infos['front'].publish(camera_info())
    rig.grid_when('front', lambda grid: True)


def test_camera_info_changing_every_frame_is_named_as_such(rig):
    """A CameraInfo whose fx changes every frame: the warning names it, not a moving pose."""
    focal = FOCAL
    for _ in range(5):
        focal += 1.0
        info = camera_info()
        info.k = [focal] + list(info.k)[1:4] + [focal] + list(info.k)[5:]
        rig.infos['front'].publish(info)
        time.sleep(0.3)  # the new CameraInfo before the next frame, as a driver sends them
        rig.grid_when('front', lambda grid: True)
    changing = "camera_info's intrinsics keep changing ("
    assert rig.peer.wait_for(lambda: changing in rig.node.log(), 10.0), rig.node.tail()
    assert 'fx ' in rig.node.log().split(changing)[1].split(')')[0]
    assert 'keeps changing; use a frame fixed to the vehicle' not in rig.node.log()
    assert rig.peer.wait_for(lambda: int(rig.diagnostics('front').get(
        'grid_rebuilt_changing_camera_info', 0)) >= 1, 10.0), rig.diagnostics('front')
    assert rig.diagnostics('front')['grid_rebuilt_moving_pose'] == '0'
    rig.infos['front'].publish(camera_info())
    rig.grid_when('front', lambda grid: True)
