"""
One camera's drivable grid: its CameraInfo, the cached ground projection, the OccupancyGrid.

The ROS side of :mod:`enet_ros.ground_grid`. Per camera, a :class:`CameraGrid`
keeps the newest CameraInfo (the subscription callback only stores the
message), the pixel-to-cell map (:class:`~enet_ros.ground_grid.GroundProjection`)
and a reusable OccupancyGrid message. The map is built on the inference
thread the first time a grid is wanted and again only when the intrinsics,
the pose or the grid layout change (0.03-0.7 s, logged); a frame then costs
one gather and one segmented sum (about 1 ms at 1280x720).
"""

import array
import time
from typing import Any, Dict, Optional, Tuple

from nav_msgs.msg import OccupancyGrid
import numpy as np

from .grid_pose import GridUnavailable
from ..camera_model import CameraIntrinsics, CameraPose
from ..ground_grid import GridSpec, GroundProjection


def intrinsics_from_camera_info(msg: Any, rectified: bool = False) -> CameraIntrinsics:
    """
    Return the intrinsics of a sensor_msgs/CameraInfo; raise GridUnavailable if unusable.

    ``rectified``: the image is rectified (``image_rect``), so the left 3x3 of
    P is its camera matrix and there is no distortion; else K and D.
    Binning and a region of interest are not supported.
    """
    if msg.binning_x > 1 or msg.binning_y > 1:
        raise GridUnavailable('camera_info_unsupported', (
            f'camera_info has binning {msg.binning_x}x{msg.binning_y}; the drivable grid '
            'supports unbinned images only'))
    roi = msg.roi
    if roi.width and roi.height and (roi.x_offset or roi.y_offset or roi.width != msg.width
                                     or roi.height != msg.height):
        raise GridUnavailable('camera_info_unsupported', (
            f'camera_info has a region of interest ({roi.width}x{roi.height} at '
            f'{roi.x_offset},{roi.y_offset}); the drivable grid supports full images only'))
    try:
        if rectified:
            p = [float(v) for v in msg.p]
            return CameraIntrinsics.from_camera_info_fields(
                msg.width, msg.height, p[0:3] + p[4:7] + p[8:11])
        return CameraIntrinsics.from_camera_info_fields(
            msg.width, msg.height, msg.k, msg.d, msg.distortion_model)
    except ValueError as error:
        raise GridUnavailable('invalid_camera_info', f'camera_info refused: {error}') from None


def fill_grid_info(info: Any, spec: GridSpec, ground_z: float) -> None:
    """Fill a nav_msgs/MapMetaData: resolution, size, origin (the grid's corner, no rotation)."""
    info.resolution = float(spec.resolution)
    info.width = int(spec.width)
    info.height = int(spec.height)
    info.origin.position.x = float(spec.origin_x)
    info.origin.position.y = float(spec.origin_y)
    info.origin.position.z = float(ground_z)
    info.origin.orientation.x = 0.0
    info.origin.orientation.y = 0.0
    info.origin.orientation.z = 0.0
    info.origin.orientation.w = 1.0


class GridBuffer:
    """A reusable nav_msgs/OccupancyGrid whose data is filled in place (cf. ImageBuffer)."""

    def __init__(self):
        self.msg = OccupancyGrid()
        self._key: Optional[Tuple[GridSpec, float]] = None
        self._view: Optional[np.ndarray] = None

    def view(self, spec: GridSpec, ground_z: float) -> np.ndarray:
        """Return a (rows, cols) int8 view of the data to fill; info set for ``spec``."""
        key = (spec, float(ground_z))
        if key != self._key:
            self._view = None  # release the buffer export before replacing the array
            fill_grid_info(self.msg.info, spec, ground_z)
            self.msg.data = array.array('b', bytes(spec.width * spec.height))
            self._view = np.frombuffer(self.msg.data, dtype=np.int8).reshape(spec.shape)
            self._key = key
        return self._view

    def stamp(self, stamp: Any, frame_id: str) -> OccupancyGrid:
        """Set the header (the image's stamp, ``frame_id``) and the load time; return the msg."""
        self.msg.header.stamp = stamp
        self.msg.header.frame_id = frame_id
        self.msg.info.map_load_time = stamp
        return self.msg


def _difference(old: CameraIntrinsics, new: CameraIntrinsics) -> str:
    """Name the fields that differ between two intrinsics, with both values (the first 3)."""
    names = [field for field in ('width', 'height', 'fx', 'fy', 'cx', 'cy', 'skew',
                                 'distortion_model', 'd')
             if getattr(old, field) != getattr(new, field)]
    return ', '.join(f'{name} {getattr(old, name)} -> {getattr(new, name)}'
                     for name in names[:3])


class CameraGrid:
    """
    One camera's drivable grid: its newest CameraInfo, the cached projection, the message.

    :meth:`on_camera_info` runs in the subscription callback and only keeps the
    message; everything else runs on the inference thread.
    """

    def __init__(self):
        self.info_msg: Any = None
        self._parsed: Tuple[Any, bool] = (None, False)
        self._intrinsics: Optional[CameraIntrinsics] = None
        self._info_error: Optional[GridUnavailable] = None
        self.projection: Optional[GroundProjection] = None
        self.buffer = GridBuffer()
        self.problem: Optional[str] = None
        self.build_ms: Optional[float] = None
        #: Frames in a row whose projection had to be built (the pose keeps changing).
        self.builds_in_a_row = 0
        #: What the last build changed, and per input the builds in a row it changed in.
        self.changed: Tuple[str, ...] = ()
        self.changed_in_a_row: Dict[str, int] = {}
        #: The intrinsics' fields that the last CameraInfo change changed (for the warning).
        self.intrinsics_change = ''
        self._scratch: Optional[np.ndarray] = None

    def on_camera_info(self, msg: Any) -> None:
        """Keep ``msg`` as the newest CameraInfo (parsed later, when a grid is wanted)."""
        self.info_msg = msg

    def intrinsics(self, rectified: bool) -> CameraIntrinsics:
        """Return the newest CameraInfo's intrinsics; GridUnavailable without a usable one."""
        msg = self.info_msg
        if msg is None:
            raise GridUnavailable('no_camera_info', 'no camera_info received yet')
        if self._parsed[0] is not msg or self._parsed[1] != rectified:
            try:
                intrinsics = intrinsics_from_camera_info(msg, rectified)
            except GridUnavailable as error:
                self._intrinsics, self._info_error = None, error
            else:
                if intrinsics != self._intrinsics:  # an equal one keeps its undistortion table
                    self._intrinsics = intrinsics
                self._info_error = None
            self._parsed = (msg, rectified)
        if self._info_error is not None:
            raise self._info_error
        return self._intrinsics

    def projection_for(self, intrinsics: CameraIntrinsics, pose: CameraPose, spec: GridSpec,
                       ground_z: float) -> Tuple[GroundProjection, bool]:
        """
        Return the projection for these inputs (built only if one changed), and if built.

        A build records what changed (:attr:`changed`: 'camera_info', 'pose',
        'grid') and :attr:`changed_in_a_row` counts, per input, the builds in
        a row that it changed in.
        """
        current = self.projection
        changed = () if current is None else tuple(name for name, same in (
            ('camera_info', current.intrinsics == intrinsics),
            ('pose', current.pose.close_to(pose)),
            ('grid', current.grid == spec and current.ground_z == ground_z)) if not same)
        if current is not None and not changed:
            self.builds_in_a_row = 0
            self.changed_in_a_row = {}
            return current, False
        started = time.monotonic()
        try:
            self.projection = GroundProjection(intrinsics, pose, spec, ground_z=ground_z)
        except ValueError as error:  # e.g. a camera at or below the ground
            raise GridUnavailable('bad_pose', f'camera pose refused: {error}') from None
        self.build_ms = (time.monotonic() - started) * 1e3
        self.builds_in_a_row += 1
        self.changed = changed
        self.changed_in_a_row = {name: self.changed_in_a_row.get(name, 0) + 1
                                 for name in changed}
        if current is not None and 'camera_info' in changed:
            self.intrinsics_change = _difference(current.intrinsics, intrinsics)
        return self.projection, True

    def drivable_scratch(self, height: int, width: int) -> np.ndarray:
        """Return a reusable HxW uint8 buffer for the drivable mask (when ~/drivable is off)."""
        if self._scratch is None or self._scratch.shape != (height, width):
            self._scratch = np.empty((height, width), dtype=np.uint8)
        return self._scratch
