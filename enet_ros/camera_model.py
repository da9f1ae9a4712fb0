"""
The camera model of the ground grid: intrinsics with lens distortion, the camera's pose.

Numpy only, no ROS. :class:`CameraIntrinsics` is a pinhole camera with
optional distortion as ``sensor_msgs/CameraInfo`` gives it, and gives the
ray through every pixel centre; :class:`CameraPose` places its optical frame
in the grid frame. The projection onto the ground is
:mod:`enet_ros.ground_grid`'s.

Conventions:

- Pixel centres are at integer coordinates (pixel (row i, col j) is at
  u = j, v = i), as in ``sensor_msgs/CameraInfo`` and OpenCV.
- Camera frames follow REP-103 / REP-105: the *optical* frame has z forward,
  x right, y down; the *body* frame has x forward, y left, z up.
- :meth:`CameraPose.from_parameters` takes roll, pitch, yaw of the body frame
  as a TF static transform does (fixed axes, R = Rz(yaw) Ry(pitch) Rx(roll)),
  so **positive pitch looks down** and positive yaw turns left.
- Undistortion (plumb_bob, rational_polynomial) is done here in numpy: the
  radial part is inverted on its monotonic branch by table look-up, then
  Newton's method on the full model (radial and tangential) with an analytic
  Jacobian, a fixed number of iterations; pixels where the model does not
  converge or lies past the monotonic branch are not used.

Why one module: the undistortion (table look-up, then Newton's method with its
Jacobian) is one numeric algorithm with the intrinsics' checks, and the pose
shares its frame conventions; each class is small.
"""

from dataclasses import dataclass
import math
from typing import Sequence, Tuple

import numpy as np

#: Distortion models understood, with their number of coefficients (CameraInfo's D order).
DISTORTION_MODELS = {'plumb_bob': 5, 'rational_polynomial': 8}

#: Rotation from the optical frame (z forward, x right, y down) to the body frame
#: (x forward, y left, z up): its columns are the optical axes in body coordinates.
OPTICAL_TO_BODY = np.array([[0.0, 0.0, 1.0],
                            [-1.0, 0.0, 0.0],
                            [0.0, -1.0, 0.0]])

_NEWTON_ITERATIONS = 8
_UNDISTORT_TOLERANCE = 1e-9   # in normalised image units (about 1e-6 pixel at f = 1000)
_RADIAL_SCAN_LIMIT = 20.0     # normalised radius searched for the model's monotonic branch
_RADIAL_SCAN_STEPS = 200001
_MIN_RADIAL_SLOPE = 0.1       # rays where the lens squeezes the image 10x or more are not used

#: Focal lengths accepted, per pixel of the image's larger side: from a field of view of
#: 178 degrees (a pinhole model cannot reach 180) down to 0.06 degrees. Outside these a
#: CameraInfo is garbage (fx = 1e-300 marked 48,636 cells occupied; 1e300 overflowed).
MIN_FOCAL_PER_SIDE = 0.01
MAX_FOCAL_PER_SIDE = 1000.0
#: Largest distortion coefficient magnitude accepted (calibrated lenses stay within tens;
#: 1e300 overflowed the undistortion).
MAX_DISTORTION_COEFFICIENT = 1e6


def quaternion_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """3x3 rotation matrix of a quaternion (x, y, z, w), as in geometry_msgs; normalised first."""
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if not norm > 1e-12 or not math.isfinite(norm):
        raise ValueError(f'quaternion ({x}, {y}, {z}, {w}) has no rotation (norm {norm})')
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rpy_to_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """3x3 rotation Rz(yaw) Ry(pitch) Rx(roll): fixed-axis roll, pitch, yaw as in REP-103 / TF."""
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class CameraIntrinsics:
    """
    A pinhole camera with optional lens distortion, as ``sensor_msgs/CameraInfo`` gives it.

    ``d`` holds the coefficients in CameraInfo's order: plumb_bob (k1, k2, t1,
    t2, k3), rational_polynomial (k1, k2, t1, t2, k3, k4, k5, k6). An empty
    model or all-zero coefficients mean no distortion. Hashable and comparable,
    so a node can tell whether a new CameraInfo changes anything.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    skew: float = 0.0
    distortion_model: str = ''
    d: Tuple[float, ...] = ()

    def __post_init__(self):
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f'camera size must be positive, got {self.width}x{self.height}')
        named = {'fx': self.fx, 'fy': self.fy, 'cx': self.cx, 'cy': self.cy, 'skew': self.skew}
        bad = [f'{name}={value}' for name, value in named.items() if not math.isfinite(value)]
        if bad:
            raise ValueError(f"camera matrix has non-finite {', '.join(bad)}")
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f'focal lengths must be positive, got fx={self.fx} fy={self.fy} '
                             '(an uncalibrated CameraInfo has K all zero)')
        side = max(self.width, self.height)
        low, high = side * MIN_FOCAL_PER_SIDE, side * MAX_FOCAL_PER_SIDE
        for name in ('fx', 'fy'):
            if not low <= named[name] <= high:
                raise ValueError(
                    f'{name}={named[name]:g} is absurd for a {self.width}x{self.height} image: '
                    f'a pinhole focal length lies in [{low:g}, {high:g}] pixels (a field of '
                    'view between 178 and 0.06 degrees)')
        for name, size in (('cx', self.width), ('cy', self.height)):
            if not -size <= named[name] <= 2 * size:
                raise ValueError(f'principal point {name}={named[name]:g} is more than the '
                                 f'image size ({size}) outside the image')
        if abs(self.skew) > min(self.fx, self.fy):
            raise ValueError(f'skew={self.skew:g} is larger than the focal length: pixel axes '
                             'more than 45 degrees from perpendicular')
        object.__setattr__(self, 'd', tuple(float(c) for c in self.d))
        bad = [f'd[{i}]={c}' for i, c in enumerate(self.d)
               if not (math.isfinite(c) and abs(c) <= MAX_DISTORTION_COEFFICIENT)]
        if bad:
            raise ValueError('distortion coefficients must be finite and at most '
                             f'{MAX_DISTORTION_COEFFICIENT:g} in magnitude, got '
                             + ', '.join(bad))
        if any(self.d) and self.distortion_model not in DISTORTION_MODELS:
            raise ValueError(f'unsupported distortion model {self.distortion_model!r}; '
                             f'supported: {sorted(DISTORTION_MODELS)} or none')
        if any(self.d) and len(self.d) > DISTORTION_MODELS[self.distortion_model]:
            raise ValueError(f'{self.distortion_model} takes at most '
                             f'{DISTORTION_MODELS[self.distortion_model]} coefficients, '
                             f'got {len(self.d)}')

    @classmethod
    def from_camera_info_fields(cls, width: int, height: int, k: Sequence[float],
                                d: Sequence[float] = (),
                                distortion_model: str = '') -> 'CameraIntrinsics':
        """
        Build from CameraInfo's fields: ``width``, ``height``, ``k`` (9, row-major), ``d``.

        For a rectified image (``image_rect``) pass the left 3x3 of ``p`` as ``k``
        and no ``d``.
        """
        k = [float(v) for v in k]
        if len(k) != 9:
            raise ValueError(f'k must have 9 elements (3x3 row-major), got {len(k)}')
        return cls(width=int(width), height=int(height), fx=k[0], fy=k[4], cx=k[2], cy=k[5],
                   skew=k[1], distortion_model=str(distortion_model),
                   d=tuple(float(v) for v in d))

    @property
    def has_distortion(self) -> bool:
        """Tell whether any distortion coefficient is non-zero."""
        return any(self.d)

    def _coefficients(self) -> Tuple[float, ...]:
        """(k1, k2, p1, p2, k3, k4, k5, k6), zero-padded."""
        c = list(self.d if self.has_distortion else ()) + [0.0] * 8
        return tuple(c[:8])

    def distort(self, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Normalised undistorted coordinates (x/z, y/z) to normalised distorted ones."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if not self.has_distortion:
            return x.copy(), y.copy()
        k1, k2, p1, p2, k3, k4, k5, k6 = self._coefficients()
        r2 = x * x + y * y
        radial = ((1 + r2 * (k1 + r2 * (k2 + r2 * k3)))
                  / (1 + r2 * (k4 + r2 * (k5 + r2 * k6))))
        xy = x * y
        xd = x * radial + 2 * p1 * xy + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * xy
        return xd, yd

    def _distort_with_jacobian(self, x, y):
        """Distorted coordinates and the 2x2 Jacobian entries (d xd/dx, d xd/dy, ...)."""
        k1, k2, p1, p2, k3, k4, k5, k6 = self._coefficients()
        r2 = x * x + y * y
        num = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        den = 1 + r2 * (k4 + r2 * (k5 + r2 * k6))
        dnum = k1 + r2 * (2 * k2 + 3 * k3 * r2)
        dden = k4 + r2 * (2 * k5 + 3 * k6 * r2)
        g = num / den
        dg = (dnum * den - num * dden) / (den * den)   # d radial / d r2
        xy = x * y
        xd = x * g + 2 * p1 * xy + p2 * (r2 + 2 * x * x)
        yd = y * g + p1 * (r2 + 2 * y * y) + 2 * p2 * xy
        a11 = g + 2 * x * x * dg + 2 * p1 * y + 6 * p2 * x
        a12 = 2 * xy * dg + 2 * p1 * x + 2 * p2 * y
        a22 = g + 2 * y * y * dg + 6 * p1 * y + 2 * p2 * x
        return xd, yd, a11, a12, a12, a22

    def max_radius(self) -> float:
        """
        Normalised radius up to which rays are used (inf when the model never folds).

        It is where the radial model's slope d(r_distorted)/dr first drops
        below 0.1: a little further out the model folds back (a distorted
        point has two or no undistorted solutions), and near the fold it is an
        extrapolation of the calibration anyway.
        """
        if not self.has_distortion:
            return math.inf
        return self._radial_table()[2]

    def _radial_table(self):
        """(r, r_distorted) on the monotonic branch of the radial model, and its end radius."""
        cached = getattr(self, '_table_cache', None)
        if cached is not None:
            return cached
        k1, k2, _, _, k3, k4, k5, k6 = self._coefficients()
        r = np.linspace(0.0, _RADIAL_SCAN_LIMIT, _RADIAL_SCAN_STEPS)
        r2 = r * r
        den = 1 + r2 * (k4 + r2 * (k5 + r2 * k6))
        rd = r * (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / np.where(den > 0, den, np.nan)
        slope = np.diff(rd) / np.diff(r)
        bad = ~(slope >= _MIN_RADIAL_SLOPE) | ~np.isfinite(rd[1:])
        end = int(np.argmax(bad)) if bad.any() else len(r) - 1
        r_max = float(r[end]) if bad.any() else math.inf
        table = (r[:end + 1], rd[:end + 1], r_max)
        object.__setattr__(self, '_table_cache', table)
        return table

    def undistort(self, u: np.ndarray, v: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        Pixel coordinates to normalised undistorted coordinates (x/z, y/z) and a validity mask.

        Like ``cv2.undistortPoints`` (no R, no P) but iterated to convergence:
        a table inversion of the radial part, then :data:`_NEWTON_ITERATIONS`
        Newton steps on the full model. ``ok`` is False where the model does
        not converge to 1e-9 or the solution lies past :meth:`max_radius`.
        """
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        yd = (v - self.cy) / self.fy
        xd = (u - self.cx - self.skew * yd) / self.fx
        if not self.has_distortion:
            return xd, yd, np.ones(xd.shape, dtype=bool)
        r_table, rd_table, r_max = self._radial_table()
        with np.errstate(all='ignore'):
            rd = np.hypot(xd, yd)
            r = np.interp(rd, rd_table, r_table)
            scale = np.where(rd > 0, r / rd, 1.0)
            x, y = xd * scale, yd * scale
            for _ in range(_NEWTON_ITERATIONS):
                fx, fy, a11, a12, a21, a22 = self._distort_with_jacobian(x, y)
                ex, ey = fx - xd, fy - yd
                det = a11 * a22 - a12 * a21
                x = x - (a22 * ex - a12 * ey) / det
                y = y - (a11 * ey - a21 * ex) / det
            fx, fy = self.distort(x, y)
            ok = ((np.abs(fx - xd) < _UNDISTORT_TOLERANCE)
                  & (np.abs(fy - yd) < _UNDISTORT_TOLERANCE)
                  & (np.hypot(x, y) < r_max))
        x = np.where(ok, x, 0.0)
        y = np.where(ok, y, 0.0)
        return x, y, ok

    def project(self, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        Nx3 points in the optical frame to pixel coordinates (u, v) and a validity mask.

        ``ok`` is False for points not in front of the camera or past
        :meth:`max_radius`; it does not check the image bounds.
        """
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        z = points[:, 2]
        with np.errstate(all='ignore'):
            x = points[:, 0] / z
            y = points[:, 1] / z
            ok = (z > 0) & (np.hypot(x, y) < self.max_radius())
        x = np.where(ok, x, 0.0)
        y = np.where(ok, y, 0.0)
        xd, yd = self.distort(x, y)
        return self.fx * xd + self.skew * yd + self.cx, self.fy * yd + self.cy, ok

    def pixel_rays(self) -> Tuple[np.ndarray, np.ndarray]:
        """
        Rays through every pixel centre in the optical frame, row-major.

        Returns ((H*W)x3 float64 directions (x/z, y/z, 1), H*W bool validity).
        """
        v, u = np.mgrid[0:self.height, 0:self.width]
        x, y, ok = self.undistort(u.ravel(), v.ravel())
        return np.stack([x, y, np.ones_like(x)], axis=1), ok


@dataclass(frozen=True, eq=False)
class CameraPose:
    """
    The camera's optical frame in the grid frame: ``p_grid = rotation @ p_optical + translation``.

    That is the transform ``tf_buffer.lookup_transform(grid_frame, optical_frame, ...)``
    returns (target = grid frame, source = the CameraInfo's optical frame).
    """

    rotation: np.ndarray
    translation: np.ndarray

    def __post_init__(self):
        rotation = np.array(self.rotation, dtype=np.float64)
        translation = np.array(self.translation, dtype=np.float64).reshape(-1)
        if rotation.shape != (3, 3) or translation.shape != (3,):
            raise ValueError(f'rotation must be 3x3 and translation 3, got {rotation.shape} '
                             f'and {translation.shape}')
        if not (np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-6)
                and np.linalg.det(rotation) > 0):
            raise ValueError(f'not a rotation matrix: {rotation.tolist()}')
        if not np.isfinite(translation).all():
            raise ValueError(f'translation must be finite, got {translation.tolist()}')
        rotation.setflags(write=False)
        translation.setflags(write=False)
        object.__setattr__(self, 'rotation', rotation)
        object.__setattr__(self, 'translation', translation)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, body_frame: bool = False) -> 'CameraPose':
        """
        From a 4x4 homogeneous transform grid <- camera.

        With ``body_frame`` the transform is of a camera body frame (x forward,
        y left, z up, e.g. ``camera_link``) and is turned into the optical frame.
        """
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise ValueError(f'a transform must be 4x4, got {matrix.shape}')
        if not np.allclose(matrix[3], [0, 0, 0, 1]):
            raise ValueError(f'last row of a transform must be 0 0 0 1, got {matrix[3]}')
        return cls.from_rotation_translation(matrix[:3, :3], matrix[:3, 3], body_frame)

    @classmethod
    def from_rotation_translation(cls, rotation: np.ndarray, translation: Sequence[float],
                                  body_frame: bool = False) -> 'CameraPose':
        """From a 3x3 rotation and a translation (grid <- camera); see :meth:`from_matrix`."""
        rotation = np.asarray(rotation, dtype=np.float64)
        if body_frame:
            rotation = rotation @ OPTICAL_TO_BODY
        return cls(rotation, translation)

    @classmethod
    def from_quaternion(cls, translation: Sequence[float], quaternion: Sequence[float],
                        body_frame: bool = False) -> 'CameraPose':
        """From a geometry_msgs/Transform's translation (x, y, z) and rotation (x, y, z, w)."""
        return cls.from_rotation_translation(quaternion_to_matrix(*quaternion), translation,
                                             body_frame)

    @classmethod
    def from_parameters(cls, height: float, roll: float = 0.0, pitch: float = 0.0,
                        yaw: float = 0.0, x: float = 0.0, y: float = 0.0) -> 'CameraPose':
        """
        From the camera body's position and attitude in the grid frame (radians, metres).

        The body frame is x forward, y left, z up at (x, y, height); roll, pitch
        and yaw are fixed-axis angles as in a TF static transform, so positive
        ``pitch`` tilts the camera *down* towards the ground and positive ``yaw``
        turns it to the left (+y).
        """
        return cls.from_rotation_translation(rpy_to_matrix(roll, pitch, yaw), (x, y, height),
                                             body_frame=True)

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous transform grid <- optical."""
        out = np.eye(4)
        out[:3, :3] = self.rotation
        out[:3, 3] = self.translation
        return out

    def close_to(self, other: 'CameraPose', translation_tol: float = 1e-4,
                 angle_tol: float = 1e-4) -> bool:
        """Tell whether ``other`` is within ``translation_tol`` metres and ``angle_tol`` rad."""
        if np.linalg.norm(self.translation - other.translation) > translation_tol:
            return False
        cos_angle = (np.trace(self.rotation.T @ other.rotation) - 1) / 2
        return math.acos(min(1.0, max(-1.0, cos_angle))) <= angle_tol
