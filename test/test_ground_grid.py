"""
Ground grid: drivable masks projected onto a flat ground, on synthetic cameras and scenes.

The scenes are built with the test's own pinhole geometry (written out below,
independent of the module): a camera at height H looking along +x, pitched
down, and a drivable band on the ground, |y| <= BAND_HALF_WIDTH between
BAND_NEAR and BAND_FAR metres.
"""

import math
from unittest import mock
import warnings

from enet_ros import ground_grid
from enet_ros.camera_model import CameraIntrinsics, CameraPose, quaternion_to_matrix
from enet_ros.ground_grid import (FREE, GridSpec, ground_points, GroundProjection, OCCUPIED,
                                  UNKNOWN)
import numpy as np
import pytest

WIDTH, HEIGHT, FOCAL = 320, 240, 250.0
CX, CY = 159.5, 119.5
H = 1.5
PITCH = math.radians(10.0)
BAND_HALF_WIDTH, BAND_NEAR, BAND_FAR = 1.0, 3.0, 8.0
RES = 0.1
# 20 m x 12 m, the camera at (0, 0), cells (0, 0) at (-2, -6)
GRID = GridSpec(resolution=RES, width=200, height=120, origin_x=-2.0, origin_y=-6.0,
                grid_range=15.0)
PLUMB_BOB = (-0.25, 0.08, 0.001, -0.0005, -0.01)


def pinhole(**kwargs) -> CameraIntrinsics:
    """Return the test camera, no distortion unless given."""
    return CameraIntrinsics(WIDTH, HEIGHT, FOCAL, FOCAL, CX, CY, **kwargs)


def pixel_ground(xn: np.ndarray, yn: np.ndarray, pitch: float = PITCH, height: float = H):
    """
    Return (x, y, hit) on the ground for normalised rays of a camera at (0, 0, height).

    The camera looks along +x pitched down by ``pitch``: in the ground frame its
    optical axes are z = (c, 0, -s), x = (0, -1, 0), y = (-s, 0, -c).
    """
    c, s = math.cos(pitch), math.sin(pitch)
    dx = c - s * yn
    dy = -xn
    dz = -s - c * yn
    hit = dz < -1e-9
    t = np.where(hit, height / np.where(hit, -dz, 1.0), np.nan)
    return t * dx, t * dy, hit


def band_mask(rays_x: np.ndarray, rays_y: np.ndarray, pitch: float = PITCH) -> np.ndarray:
    """Return the HxW uint8 mask (255 drivable) of the band seen through the given rays."""
    x, y, hit = pixel_ground(rays_x, rays_y, pitch)
    with np.errstate(invalid='ignore'):
        inside = hit & (np.abs(y) <= BAND_HALF_WIDTH) & (x >= BAND_NEAR) & (x <= BAND_FAR)
    return np.where(inside, 255, 0).astype(np.uint8).reshape(HEIGHT, WIDTH)


def pinhole_rays():
    """Return the normalised rays (x/z, y/z) of every pixel centre of the pinhole camera."""
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    return ((u - CX) / FOCAL).ravel(), ((v - CY) / FOCAL).ravel()


def undistort_fixed_point(intrinsics: CameraIntrinsics, u, v, iterations=200):
    """Undistort as cv2.undistortPoints does (fixed-point iteration), many iterations."""
    k1, k2, p1, p2, k3 = intrinsics.d
    xd = (np.asarray(u, dtype=np.float64) - intrinsics.cx) / intrinsics.fx
    yd = (np.asarray(v, dtype=np.float64) - intrinsics.cy) / intrinsics.fy
    x, y = xd.copy(), yd.copy()
    for _ in range(iterations):
        r2 = x * x + y * y
        icdist = 1.0 / (1 + r2 * (k1 + r2 * (k2 + r2 * k3)))
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        x = (xd - dx) * icdist
        y = (yd - dy) * icdist
    return x, y


def cell_centres():
    """Return (x, y) of every cell centre of GRID, each (rows, cols)."""
    xs = GRID.origin_x + (np.arange(GRID.width) + 0.5) * RES
    ys = GRID.origin_y + (np.arange(GRID.height) + 0.5) * RES
    return np.meshgrid(xs, ys)


def assert_band_footprint(grid: np.ndarray, margin: float = 2 * RES, gaps: bool = False):
    """Check cells well inside the band are free (or unknown with gaps), well outside occupied."""
    x, y = cell_centres()
    inside = ((np.abs(y) <= BAND_HALF_WIDTH - margin) & (x >= BAND_NEAR + margin)
              & (x <= BAND_FAR - margin))
    outside = ((np.abs(y) >= BAND_HALF_WIDTH + margin) | (x <= BAND_NEAR - margin)
               | (x >= BAND_FAR + margin))
    assert inside.sum() > 500
    if gaps:
        inside &= grid != UNKNOWN
        assert inside.sum() > 500
    np.testing.assert_array_equal(grid[inside], FREE)
    seen_outside = outside & (grid != UNKNOWN)
    assert seen_outside.sum() > 1000
    np.testing.assert_array_equal(grid[seen_outside], OCCUPIED)
    assert set(np.unique(grid)) <= {FREE, OCCUPIED, UNKNOWN}


@pytest.fixture(scope='module')
def pinhole_mask() -> np.ndarray:
    """Return the band as the pinhole camera sees it."""
    return band_mask(*pinhole_rays())


@pytest.fixture(scope='module')
def pinhole_projection() -> GroundProjection:
    """Return the projection of the pinhole camera pitched down by PITCH."""
    return GroundProjection(pinhole(), CameraPose.from_parameters(H, pitch=PITCH), GRID)


def test_band_footprint(pinhole_projection, pinhole_mask):
    """The band's image projects back to the band on the grid, within a cell or two."""
    grid = pinhole_projection.fill(pinhole_mask)
    assert grid.shape == (120, 200) and grid.dtype == np.int8
    assert_band_footprint(grid)
    # the free cells are the band, dilated by at most a cell and the far pixels' footprint
    x, y = cell_centres()
    free = grid == FREE
    assert (np.abs(y[free]) <= BAND_HALF_WIDTH + RES).all()
    assert (x[free] >= BAND_NEAR - RES).all() and (x[free] <= BAND_FAR + 2 * RES).all()


def test_grid_layout_is_occupancy_grid_order(pinhole_projection):
    """Row index is y, column index is x: a pixel's cell is (floor((y-oy)/r), floor((x-ox)/r))."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    # the pixel just right of the image centre, bottom row: ahead and a bit to the right (-y)
    row, col = HEIGHT - 1, WIDTH // 2 + 40
    mask[row, col] = 255
    xs, ys, hit = pixel_ground(np.array([(col - CX) / FOCAL]), np.array([(row - CY) / FOCAL]))
    assert hit[0] and xs[0] > 0 and ys[0] < 0
    cell = (int((ys[0] - GRID.origin_y) // RES), int((xs[0] - GRID.origin_x) // RES))
    projection = GroundProjection(pinhole(), CameraPose.from_parameters(H, pitch=PITCH), GRID,
                                  free_threshold=0.0)
    grid = projection.fill(mask)
    assert grid[cell] == FREE
    assert (grid == FREE).sum() == 1


def test_fill_into_buffer(pinhole_projection, pinhole_mask):
    """With out= the grid is written into the caller's buffer; a wrong buffer is refused."""
    out = np.full(GRID.shape, 55, dtype=np.int8)
    result = pinhole_projection.fill(pinhole_mask, out=out)
    assert result is out
    np.testing.assert_array_equal(out, pinhole_projection.fill(pinhole_mask))
    for bad in (np.zeros(GRID.shape, dtype=np.uint8), np.zeros((120, 201), dtype=np.int8),
                np.zeros((200, 120), dtype=np.int8).T):
        with pytest.raises(ValueError, match='out must be'):
            pinhole_projection.fill(pinhole_mask, out=bad)


def test_cell_rule_majority_and_threshold():
    """A cell is free with a strict majority of drivable pixels (ties occupied), or any at 0."""
    intrinsics, pose = pinhole(), CameraPose.from_parameters(H, pitch=PITCH)
    points, hits = ground_points(intrinsics, pose)
    cells = np.full(hits.shape, -1)
    cells[hits] = GRID.cell_index(points[hits, 0], points[hits, 1])
    counts = np.bincount(cells[cells >= 0])
    cell = int(np.flatnonzero(counts == 4)[0])
    pixels = np.flatnonzero(cells == cell)
    cell_rc = np.unravel_index(cell, GRID.shape)
    majority = GroundProjection(intrinsics, pose, GRID, fill_gaps=False)
    any_pixel = GroundProjection(intrinsics, pose, GRID, free_threshold=0.0, fill_gaps=False)
    assert majority.pixel_count[cell_rc] == 4
    for drivable, by_majority, by_any in ((0, OCCUPIED, OCCUPIED), (1, OCCUPIED, FREE),
                                          (2, OCCUPIED, FREE), (3, FREE, FREE),
                                          (4, FREE, FREE)):
        mask = np.zeros(HEIGHT * WIDTH, dtype=np.uint8)
        mask[pixels[:drivable]] = 255
        mask = mask.reshape(HEIGHT, WIDTH)
        assert majority.fill(mask)[cell_rc] == by_majority, drivable
        assert any_pixel.fill(mask)[cell_rc] == by_any, drivable
    # any non-zero value is drivable (a 0/1 mask works as well as 0/255)
    ones = np.zeros(HEIGHT * WIDTH, dtype=np.uint8)
    ones[pixels] = 1
    assert majority.fill(ones.reshape(HEIGHT, WIDTH))[cell_rc] == FREE


def test_horizon_behind_and_range():
    """Level camera: no pixel above the horizon is used; behind or past range stays unknown."""
    grid_spec = GridSpec(resolution=RES, width=300, height=200, origin_x=-10.0,
                         origin_y=-10.0, grid_range=12.0)
    projection = GroundProjection(pinhole(), CameraPose.from_parameters(H), grid_spec)
    used = projection.pixels_used
    assert not used[:HEIGHT // 2].any()
    assert used[HEIGHT // 2:].any()
    all_drivable = np.full((HEIGHT, WIDTH), 255, dtype=np.uint8)
    upper_only = all_drivable.copy()
    upper_only[HEIGHT // 2:] = 0
    grid = projection.fill(all_drivable)
    np.testing.assert_array_equal(projection.fill(upper_only),
                                  np.where(grid == UNKNOWN, UNKNOWN, OCCUPIED))
    xs = grid_spec.origin_x + (np.arange(grid_spec.width) + 0.5) * RES
    ys = grid_spec.origin_y + (np.arange(grid_spec.height) + 0.5) * RES
    x, y = np.meshgrid(xs, ys)
    distance = np.hypot(x, y)
    assert (grid[x < 0] == UNKNOWN).all()
    assert (grid[distance > grid_spec.grid_range + RES] == UNKNOWN).all()
    # every cell in range and well inside the field of view is known, and free here
    in_view = ((x > 0) & (np.abs(y) < 0.9 * x * CX / FOCAL) & (x > 1.05 * H * FOCAL / CY)
               & (distance < grid_spec.grid_range - RES))
    assert in_view.sum() > 3000
    assert (grid[in_view] == FREE).all()


def test_fill_gaps_covers_far_cells(pinhole_mask):
    """Far cells between pixel rays are unknown without fill_gaps and known with it."""
    pose = CameraPose.from_parameters(H, pitch=PITCH)
    sparse = GroundProjection(pinhole(), pose, GRID, fill_gaps=False).fill(pinhole_mask)
    dense = GroundProjection(pinhole(), pose, GRID).fill(pinhole_mask)
    x, y = cell_centres()
    far_in_view = (x > 12) & (np.abs(y) < 0.5 * x * CX / FOCAL) & (np.hypot(x, y) < 14.5)
    assert (sparse[far_in_view] == UNKNOWN).mean() > 0.3
    assert (dense[far_in_view] != UNKNOWN).all()
    # where both know a cell they agree: gap filling only adds cells
    both = sparse != UNKNOWN
    np.testing.assert_array_equal(sparse[both], dense[both])
    assert_band_footprint(sparse, gaps=True)


def test_undistort_inverts_distort():
    """Plumb-bob undistortion recovers the rays to 1e-12, as a long fixed-point iteration does."""
    camera = pinhole(distortion_model='plumb_bob', d=PLUMB_BOB)
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.9, 0.9, 5000)
    y = rng.uniform(-0.7, 0.7, 5000)
    xd, yd = camera.distort(x, y)
    u, v = camera.fx * xd + camera.cx, camera.fy * yd + camera.cy
    xu, yu, ok = camera.undistort(u, v)
    assert ok.all()
    np.testing.assert_allclose(xu, x, atol=1e-12)
    np.testing.assert_allclose(yu, y, atol=1e-12)
    xf, yf = undistort_fixed_point(camera, u, v)
    np.testing.assert_allclose(xu, xf, atol=1e-9)
    np.testing.assert_allclose(yu, yf, atol=1e-9)
    # projecting points in the optical frame goes through the same model
    pu, pv, pok = camera.project(np.stack([x * 2.0, y * 2.0, np.full_like(x, 2.0)], axis=1))
    assert pok.all()
    np.testing.assert_allclose(pu, u, atol=1e-9)
    np.testing.assert_allclose(pv, v, atol=1e-9)


def test_undistort_matches_opencv():
    """Where OpenCV is installed, its iterated undistortPoints gives the same rays."""
    cv2 = pytest.importorskip('cv2')
    camera = pinhole(distortion_model='rational_polynomial',
                     d=(0.3, -0.05, 0.001, -0.001, 0.01, 0.5, 0.02, 0.001))
    v, u = np.mgrid[0:HEIGHT:7, 0:WIDTH:7].astype(np.float64)
    x, y, ok = camera.undistort(u.ravel(), v.ravel())
    assert ok.all()
    k = np.array([[FOCAL, 0, CX], [0, FOCAL, CY], [0, 0, 1]])
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-14)
    points = np.stack([u.ravel(), v.ravel()], axis=1).reshape(-1, 1, 2)
    expected = cv2.undistortPoints(points, k, np.array(camera.d), None, None, None,
                                   criteria).reshape(-1, 2)
    np.testing.assert_allclose(x, expected[:, 0], atol=1e-9)
    np.testing.assert_allclose(y, expected[:, 1], atol=1e-9)


def test_distorted_camera_gives_the_pinhole_grid(pinhole_projection, pinhole_mask):
    """A plumb-bob camera seeing the same band gives the pinhole camera's grid."""
    camera = pinhole(distortion_model='plumb_bob', d=PLUMB_BOB)
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    # the distorted camera's mask: each of its pixels sees the band along its true ray
    mask = band_mask(*undistort_fixed_point(camera, u.ravel(), v.ravel()))
    assert (mask != pinhole_mask).sum() > 200   # the distortion does move the band
    pose = CameraPose.from_parameters(H, pitch=PITCH)
    grid = GroundProjection(camera, pose, GRID).fill(mask)
    assert_band_footprint(grid)
    pinhole_grid = pinhole_projection.fill(pinhole_mask)
    both = (grid != UNKNOWN) & (pinhole_grid != UNKNOWN)
    assert both.sum() > 10000
    assert (grid[both] != pinhole_grid[both]).sum() <= 2
    # ignoring the distortion puts the band's edges in the wrong cells
    wrong = GroundProjection(pinhole(), pose, GRID).fill(mask)
    both = (wrong != UNKNOWN) & (pinhole_grid != UNKNOWN)
    assert (wrong[both] != pinhole_grid[both]).sum() > 5


def test_folded_distortion_is_not_used():
    """Past the radius where the lens model folds back, pixels are not used."""
    camera = pinhole(distortion_model='plumb_bob', d=(-0.6, 0.0, 0.0, 0.0, 0.0))
    r_max = camera.max_radius()
    # r (1 - 0.6 r^2) has slope 0.1 at r^2 = 0.9 / 1.8
    assert r_max == pytest.approx(math.sqrt(0.5), abs=1e-3)
    _, ok = camera.pixel_rays()
    rd = np.hypot(*np.meshgrid((np.arange(WIDTH) - CX) / FOCAL,
                               (np.arange(HEIGHT) - CY) / FOCAL)).ravel()
    rd_max = r_max * (1 - 0.6 * r_max ** 2)
    assert not ok[rd > rd_max + 1e-6].any() and ok[rd < rd_max - 1e-6].all()
    assert (~ok).sum() > 1000
    projection = GroundProjection(camera, CameraPose.from_parameters(H, pitch=PITCH), GRID)
    assert not (projection.pixels_used.ravel() & ~ok).any()


def test_fill_never_recomputes_the_projection(pinhole_mask):
    """The pixel -> cell map is built once; fill only gathers and sums."""
    pose = CameraPose.from_parameters(H, pitch=PITCH)
    with mock.patch.object(ground_grid, 'ground_points', wraps=ground_grid.ground_points) as gp:
        projection = GroundProjection(pinhole(), pose, GRID)
    assert gp.call_count == 1
    expected = projection.fill(pinhole_mask)
    refuse = mock.Mock(side_effect=AssertionError('projection recomputed'))
    with mock.patch.object(ground_grid, 'ground_points', refuse), \
            mock.patch.object(CameraIntrinsics, 'undistort', refuse), \
            mock.patch.object(CameraIntrinsics, 'project', refuse), \
            mock.patch.object(CameraIntrinsics, 'pixel_rays', refuse):
        out = np.empty(GRID.shape, dtype=np.int8)
        for _ in range(20):
            np.testing.assert_array_equal(projection.fill(pinhole_mask, out=out), expected)
    refuse.assert_not_called()


def quaternion_from_rpy(roll, pitch, yaw):
    """Return the (x, y, z, w) quaternion of fixed-axis roll, pitch, yaw (tf2's setRPY)."""
    cr, sr = math.cos(roll / 2), math.sin(roll / 2)
    cp, sp = math.cos(pitch / 2), math.sin(pitch / 2)
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    return (sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy, cr * cp * cy + sr * sp * sy)


def test_quaternion_to_matrix():
    """A quarter turn about z maps x to y; quaternions are normalised; zero is refused."""
    s = math.sqrt(0.5)
    np.testing.assert_allclose(quaternion_to_matrix(0, 0, s, s),
                               [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix(0, 0, 2 * s, 2 * s),
                               quaternion_to_matrix(0, 0, s, s), atol=1e-12)
    with pytest.raises(ValueError, match='no rotation'):
        quaternion_to_matrix(0, 0, 0, 0)


def test_pitch_positive_looks_down():
    """Positive pitch: the image centre sees the ground at H / tan(pitch); negative: the sky."""
    camera = CameraIntrinsics(3, 3, 100.0, 100.0, 1.0, 1.0)
    centre = 4   # pixel (1, 1)
    points, hits = ground_points(camera, CameraPose.from_parameters(H, pitch=PITCH))
    assert hits[centre]
    np.testing.assert_allclose(points[centre], [H / math.tan(PITCH), 0.0], atol=1e-9)
    _, hits = ground_points(camera, CameraPose.from_parameters(H, pitch=-PITCH))
    assert not hits.any()
    # positive roll turns body y (left) up: the right image edge dips and sees nearer ground
    points, hits = ground_points(CameraIntrinsics(3, 1, 1.0, 1.0, 1.0, 0.0),
                                 CameraPose.from_parameters(H, roll=0.3, pitch=0.5))
    assert hits.all() and points[2, 0] < points[0, 0]


def test_pose_forms_agree(pinhole_mask):
    """Parameters, a 4x4 optical transform, a body quaternion: the same grid."""
    roll, pitch, yaw, x, y = 0.02, PITCH, 0.1, 0.3, -0.2
    by_parameters = GroundProjection(
        pinhole(), CameraPose.from_parameters(H, roll=roll, pitch=pitch, yaw=yaw, x=x, y=y),
        GRID).fill(pinhole_mask)
    body = quaternion_to_matrix(*quaternion_from_rpy(roll, pitch, yaw))
    optical_in_body = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)
    transform = np.eye(4)
    transform[:3, :3] = body @ optical_in_body
    transform[:3, 3] = (x, y, H)
    by_matrix = GroundProjection(pinhole(), CameraPose.from_matrix(transform),
                                 GRID).fill(pinhole_mask)
    by_quaternion = GroundProjection(
        pinhole(), CameraPose.from_quaternion((x, y, H), quaternion_from_rpy(roll, pitch, yaw),
                                              body_frame=True),
        GRID).fill(pinhole_mask)
    assert (by_parameters != UNKNOWN).sum() > 3000
    np.testing.assert_array_equal(by_matrix, by_parameters)
    np.testing.assert_array_equal(by_quaternion, by_parameters)
    assert CameraPose.from_matrix(transform).close_to(
        CameraPose.from_parameters(H, roll=roll, pitch=pitch, yaw=yaw, x=x, y=y))
    assert not CameraPose.from_matrix(transform).close_to(CameraPose.from_parameters(H))


def test_yaw_rotates_and_translation_moves_the_footprint(pinhole_mask):
    """Yaw 90 degrees turns the footprint onto +y; x / y move it by whole cells."""
    res = 0.125
    spec = GridSpec(resolution=res, width=160, height=160, origin_x=-10.0, origin_y=-10.0,
                    grid_range=9.0)
    ahead = GroundProjection(pinhole(), CameraPose.from_parameters(H, pitch=PITCH),
                             spec).fill(pinhole_mask)
    left = GroundProjection(pinhole(), CameraPose.from_parameters(H, pitch=PITCH,
                                                                  yaw=math.pi / 2),
                            spec).fill(pinhole_mask)
    # (x, y) -> (-y, x): cell (row r, col c) -> (row c, col 159 - r)
    rotated = ahead.T[:, ::-1]
    assert (ahead == FREE).sum() > 500
    assert (left != rotated).mean() < 1e-3
    moved = GroundProjection(pinhole(), CameraPose.from_parameters(H, pitch=PITCH, x=2.0,
                                                                   y=-1.0),
                             spec).fill(pinhole_mask)
    # +2 m in x is 16 columns, -1 m in y is 8 rows
    shifted = np.full_like(ahead, UNKNOWN)
    shifted[:-8, 16:] = ahead[8:, :-16]
    assert (moved != shifted).mean() < 1e-3


def test_wrong_mask_size_names_both_sizes(pinhole_projection):
    """A mask not of the CameraInfo's size is refused, naming both sizes."""
    with pytest.raises(ValueError, match=r'640x480.*320x240'):
        pinhole_projection.fill(np.zeros((480, 640), dtype=np.uint8))
    with pytest.raises(ValueError, match='320x240'):
        pinhole_projection.fill(np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8))


def test_camera_info_fields():
    """The plain fields of a CameraInfo build the intrinsics; equal infos compare equal."""
    k = (FOCAL, 0.0, CX, 0.0, FOCAL, CY, 0.0, 0.0, 1.0)
    a = CameraIntrinsics.from_camera_info_fields(WIDTH, HEIGHT, k, list(PLUMB_BOB), 'plumb_bob')
    b = CameraIntrinsics.from_camera_info_fields(WIDTH, HEIGHT, list(k), np.array(PLUMB_BOB),
                                                 'plumb_bob')
    assert a == b and hash(a) == hash(b)
    assert (a.fx, a.fy, a.cx, a.cy, a.d) == (FOCAL, FOCAL, CX, CY, PLUMB_BOB)
    none = CameraIntrinsics.from_camera_info_fields(WIDTH, HEIGHT, k, [], '')
    zeros = CameraIntrinsics.from_camera_info_fields(WIDTH, HEIGHT, k, [0.0] * 5, 'plumb_bob')
    assert not none.has_distortion and not zeros.has_distortion
    with pytest.raises(ValueError, match='unsupported distortion model'):
        CameraIntrinsics.from_camera_info_fields(WIDTH, HEIGHT, k, [0.1] * 4, 'equidistant')
    with pytest.raises(ValueError, match='focal lengths'):
        CameraIntrinsics.from_camera_info_fields(WIDTH, HEIGHT, [0.0] * 9, [], '')
    with pytest.raises(ValueError, match='9 elements'):
        CameraIntrinsics.from_camera_info_fields(WIDTH, HEIGHT, k[:6], [], '')


@pytest.mark.parametrize('fields, message', [
    ({'cx': math.nan}, 'non-finite cx=nan'),
    ({'skew': math.nan}, 'non-finite skew=nan'),
    ({'fy': math.inf}, 'non-finite fy=inf'),
    ({'fx': 1e-300}, 'fx=1e-300 is absurd for a 640x480 image'),
    ({'fx': 1e300}, r'fx=1e\+300 is absurd'),
    ({'fy': 6.0}, 'fy=6 is absurd'),          # a field of view beyond 178 degrees
    ({'cx': -700.0}, 'principal point cx=-700'),
    ({'cy': 1e9}, 'principal point cy=1e[+]09'),
    ({'skew': 600.0}, 'skew=600 is larger than the focal length'),
    ({'distortion_model': 'plumb_bob', 'd': (math.nan, 0.0, 0.0, 0.0, 0.0)}, r'd\[0\]=nan'),
    ({'distortion_model': 'plumb_bob', 'd': (0.1, 1e300)}, r'd\[1\]=1e\+300'),
])
def test_non_finite_or_absurd_intrinsics_are_refused(fields, message):
    """A NaN / inf anywhere in K or D, or a focal length no lens has: ValueError with the field."""
    values = {'width': 640, 'height': 480, 'fx': 500.0, 'fy': 500.0, 'cx': 319.5, 'cy': 239.5}
    values.update(fields)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # and no numpy overflow on the way
        with pytest.raises(ValueError, match=message):
            CameraIntrinsics(**values)


def test_plausible_extremes_are_accepted():
    """A 170-degree lens, a 0.1-degree telescope, an off-centre principal point, big k's."""
    for fx in (640 / (2 * math.tan(math.radians(85))), 640 / (2 * math.tan(math.radians(0.05)))):
        CameraIntrinsics(640, 480, fx, fx, 319.5, 239.5)
    CameraIntrinsics(640, 480, 500.0, 500.0, 700.0, -100.0, skew=2.0)
    CameraIntrinsics(640, 480, 500.0, 500.0, 319.5, 239.5, distortion_model='rational_polynomial',
                     d=(25.0, 12.0, 0.001, -0.001, 0.5, 25.3, 18.0, 2.1))


def test_invalid_setups_are_refused():
    """A camera under the ground, a non-rotation, a bad grid or threshold: ValueError."""
    with pytest.raises(ValueError, match='above the ground'):
        GroundProjection(pinhole(), CameraPose.from_parameters(-0.1, pitch=PITCH), GRID)
    with pytest.raises(ValueError, match='above the ground'):
        GroundProjection(pinhole(), CameraPose.from_parameters(H, pitch=PITCH), GRID,
                         ground_z=2.0)
    with pytest.raises(ValueError, match='not a rotation'):
        CameraPose(np.diag([1.0, 1.0, -1.0]), (0, 0, H))
    with pytest.raises(ValueError, match='resolution'):
        GridSpec(resolution=0.0, width=10, height=10, origin_x=0.0, origin_y=0.0)
    with pytest.raises(ValueError, match='free_threshold'):
        GroundProjection(pinhole(), CameraPose.from_parameters(H, pitch=PITCH), GRID,
                         free_threshold=1.0)


def test_ground_z_raises_the_plane(pinhole_mask):
    """A grid frame above the ground (base_link on the axle) is the same as a lower camera."""
    low = GroundProjection(pinhole(), CameraPose.from_parameters(H - 0.3, pitch=PITCH),
                           GRID).fill(pinhole_mask)
    raised = GroundProjection(pinhole(), CameraPose.from_parameters(H, pitch=PITCH), GRID,
                              ground_z=0.3).fill(pinhole_mask)
    assert (low != raised).mean() < 1e-3
