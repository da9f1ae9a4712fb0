"""
Drivable-area mask to a ground occupancy grid (numpy only, no ROS).

The camera's pixels are projected onto a flat ground plane (``z = ground_z`` in
the grid frame, e.g. ``base_footprint``) and counted into the cells of a grid
laid out as ``nav_msgs/OccupancyGrid`` wants it: a (rows, cols) int8 array,
row-major, cell (0, 0) at the grid origin, x along the columns, y along the
rows, values :data:`FREE` (0, drivable), :data:`OCCUPIED` (100, not drivable)
and :data:`UNKNOWN` (-1, no pixel).

The projection is geometry only, so it is computed once per (intrinsics, pose,
grid) in :class:`GroundProjection`; a frame then costs one gather and one
segmented sum (:meth:`GroundProjection.fill`).

The camera model (intrinsics, undistortion, pose and their conventions) is
:mod:`enet_ros.camera_model`'s.
"""

from dataclasses import dataclass
import math
from typing import Optional, Tuple

import numpy as np

from .camera_model import CameraIntrinsics, CameraPose

#: Cell values, as nav_msgs/OccupancyGrid defines them.
FREE = 0
OCCUPIED = 100
UNKNOWN = -1


@dataclass(frozen=True)
class GridSpec:
    """
    An occupancy grid aligned with its frame's axes (OccupancyGrid ``info``, origin yaw 0).

    ``width`` cells along x (columns) and ``height`` cells along y (rows) of
    ``resolution`` metres; (``origin_x``, ``origin_y``) is the outer corner of
    cell (0, 0). Ground points farther than ``grid_range`` metres (measured on
    the ground from the point below the camera) are not used.
    """

    resolution: float
    width: int
    height: int
    origin_x: float
    origin_y: float
    grid_range: float = math.inf

    def __post_init__(self):
        if not self.resolution > 0:
            raise ValueError(f'resolution must be positive, got {self.resolution}')
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f'grid size must be positive, got {self.width}x{self.height}')
        if not self.grid_range > 0:
            raise ValueError(f'grid_range must be positive, got {self.grid_range}')

    @property
    def shape(self) -> Tuple[int, int]:
        """(rows, cols) = (height, width)."""
        return (self.height, self.width)

    def cell_index(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Flat (row-major) cell index of ground points (x, y); -1 outside the grid."""
        with np.errstate(invalid='ignore'):
            col = np.floor((np.asarray(x, dtype=np.float64) - self.origin_x) / self.resolution)
            row = np.floor((np.asarray(y, dtype=np.float64) - self.origin_y) / self.resolution)
            inside = (col >= 0) & (col < self.width) & (row >= 0) & (row < self.height)
        return np.where(inside, row * self.width + col, -1).astype(np.intp)

    def cell_centres(self) -> Tuple[np.ndarray, np.ndarray]:
        """(x, y) of every cell centre, each a (rows, cols) float64 array."""
        xs = self.origin_x + (np.arange(self.width) + 0.5) * self.resolution
        ys = self.origin_y + (np.arange(self.height) + 0.5) * self.resolution
        x, y = np.meshgrid(xs, ys)
        return x, y


def ground_points(intrinsics: CameraIntrinsics, pose: CameraPose,
                  ground_z: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """
    Where each pixel centre's ray meets the ground plane ``z = ground_z`` of the grid frame.

    Returns ((H*W)x2 float64 ground (x, y), row-major; H*W bool ``hits``). A ray
    misses when it points at or above the horizon, or when undistortion is not
    valid there; its point is NaN.
    """
    height = pose.translation[2] - ground_z
    if not height > 0:
        raise ValueError(f'the camera must be above the ground: camera z '
                         f'{pose.translation[2]}, ground z {ground_z}')
    rays, ok = intrinsics.pixel_rays()
    directions = rays @ pose.rotation.T
    dz = directions[:, 2]
    hits = ok & (dz < -1e-9 * np.linalg.norm(directions, axis=1))
    with np.errstate(all='ignore'):
        scale = np.where(hits, height / -dz, np.nan)
    points = pose.translation[:2] + directions[:, :2] * scale[:, None]
    return points, hits


class GroundProjection:
    """
    A fixed pixel -> cell map for one camera, pose and grid; :meth:`fill` applies it per frame.

    Each pixel centre whose ray meets the ground within ``grid.grid_range``
    and inside the grid votes for its cell. With ``fill_gaps`` (default), a
    cell in range that received no pixel (far away, between the rays of
    neighbouring pixels) but whose centre is seen by the camera takes the
    vote of the pixel nearest to where its centre projects; without it such
    cells stay :data:`UNKNOWN`.

    Cell rule: a cell with votes is :data:`FREE` when more than
    ``free_threshold`` of its pixels are drivable (0.5: a strict majority,
    ties are occupied; 0: any drivable pixel), else :data:`OCCUPIED`; a cell
    with no vote is :data:`UNKNOWN`.
    """

    def __init__(self, intrinsics: CameraIntrinsics, pose: CameraPose, grid: GridSpec,
                 free_threshold: float = 0.5, fill_gaps: bool = True, ground_z: float = 0.0):
        if not 0.0 <= free_threshold < 1.0:
            raise ValueError(f'free_threshold must be in [0, 1), got {free_threshold}')
        self.intrinsics = intrinsics
        self.pose = pose
        self.grid = grid
        self.free_threshold = float(free_threshold)
        self.fill_gaps = bool(fill_gaps)
        self.ground_z = float(ground_z)
        pixels, cells = self._pixel_cell_pairs()
        order = np.argsort(cells, kind='stable')
        pixels, cells = pixels[order], cells[order]
        self._pixels = pixels.astype(np.intp)
        # reduceat segments: one per cell that has votes, in cell order
        starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]]) if cells.size else cells
        self._starts = starts.astype(np.intp)
        self._cells = cells[self._starts].astype(np.intp)
        counts = np.diff(np.r_[self._starts, cells.size])
        # free iff drivable > threshold * count  <=>  drivable > floor(threshold * count)
        self._needed = np.floor(self.free_threshold * counts).astype(np.int64)
        self._counts = np.zeros(grid.width * grid.height, dtype=np.int64)
        self._counts[self._cells] = counts
        self._counts.setflags(write=False)

    def _pixel_cell_pairs(self) -> Tuple[np.ndarray, np.ndarray]:
        """(pixel index, cell index) of every vote: pixel rays, then gap cells' centres."""
        points, hits = ground_points(self.intrinsics, self.pose, self.ground_z)
        camera_xy = self.pose.translation[:2]
        with np.errstate(invalid='ignore'):
            in_range = hits & (np.hypot(points[:, 0] - camera_xy[0],
                                        points[:, 1] - camera_xy[1]) <= self.grid.grid_range)
        cells = np.full(points.shape[0], -1, dtype=np.intp)
        cells[in_range] = self.grid.cell_index(points[in_range, 0], points[in_range, 1])
        used = cells >= 0
        pixels, cells = np.flatnonzero(used), cells[used]
        if not self.fill_gaps:
            return pixels, cells
        voted = np.zeros(self.grid.width * self.grid.height, dtype=bool)
        voted[cells] = True
        cx, cy = self.grid.cell_centres()
        cx, cy = cx.ravel(), cy.ravel()
        gap = ~voted & (np.hypot(cx - camera_xy[0], cy - camera_xy[1]) <= self.grid.grid_range)
        gap_cells = np.flatnonzero(gap)
        centres = np.stack([cx[gap_cells], cy[gap_cells],
                            np.full(gap_cells.size, self.ground_z)], axis=1)
        optical = (centres - self.pose.translation) @ self.pose.rotation
        u, v, ok = self.intrinsics.project(optical)
        col, row = np.rint(u), np.rint(v)
        ok &= ((col >= 0) & (col < self.intrinsics.width)
               & (row >= 0) & (row < self.intrinsics.height))
        gap_pixels = (row[ok] * self.intrinsics.width + col[ok]).astype(np.intp)
        # the pixel itself must see the ground (not past a fold of the distortion model)
        seen = hits[gap_pixels]
        return (np.r_[pixels, gap_pixels[seen]], np.r_[cells, gap_cells[ok][seen]])

    @property
    def shape(self) -> Tuple[int, int]:
        """(rows, cols) of the grid."""
        return self.grid.shape

    @property
    def pixel_count(self) -> np.ndarray:
        """(rows, cols) int64: how many pixel votes each cell gets (0: always unknown)."""
        return self._counts.reshape(self.grid.shape)

    @property
    def pixels_used(self) -> np.ndarray:
        """(H, W) bool: pixels that vote for some cell."""
        used = np.zeros(self.intrinsics.height * self.intrinsics.width, dtype=bool)
        used[self._pixels] = True
        return used.reshape(self.intrinsics.height, self.intrinsics.width)

    def fill(self, drivable: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """
        Return the (rows, cols) int8 occupancy grid of an HxW drivable mask (non-zero = drivable).

        ``drivable`` must have the CameraInfo's size (ValueError naming both
        otherwise). With ``out`` (a C-contiguous (rows, cols) int8 array) the
        grid is written there and returned.
        """
        drivable = np.asarray(drivable)
        expected = (self.intrinsics.height, self.intrinsics.width)
        if drivable.shape != expected:
            size = (f'{drivable.shape[1]}x{drivable.shape[0]}' if drivable.ndim == 2
                    else f'of shape {drivable.shape}')
            raise ValueError(f'drivable mask is {size} but the camera info is '
                             f'{expected[1]}x{expected[0]} (width x height); '
                             'they must be the same size')
        if out is None:
            out = np.empty(self.grid.shape, dtype=np.int8)
        elif (out.shape != self.grid.shape or out.dtype != np.int8
              or not out.flags.c_contiguous or not out.flags.writeable):
            raise ValueError(f'out must be a writeable C-contiguous {self.grid.shape} int8 '
                             f'array, got {out.shape} {out.dtype}')
        out.fill(UNKNOWN)
        if not self._cells.size:
            return out
        votes = np.take(drivable.reshape(-1), self._pixels) != 0
        free_votes = np.add.reduceat(votes, self._starts, dtype=np.int64)
        flat = out.reshape(-1)
        flat[self._cells] = np.where(free_votes > self._needed, FREE, OCCUPIED)
        return out
