"""
Render ``docs/drivable_grid.png``: a frame's drivable area as a ground occupancy grid.

By default the frame is synthetic (no dataset image goes into the repository):
a flat world seen by the same camera model, a road that bends to the left
between pavements and bare earth, and the sky above the horizon; the drivable mask
is the road. ``--data`` and ``--frame`` use a CamVid val frame and its
ground-truth Road class instead (for a look at real data; not for committing).
The camera: fx = fy = 400, centre (240, 180) at 480x360, 1.3 m above the
road, pitched down 0.5 degrees. Left: the frame with the mask, the horizon
and the grid's range drawn in. Right: the grid as ``enet_ros.ground_grid``
fills it (x forward up, y left to the left), with the camera and its axes::

    python scripts/grid_picture.py
    python scripts/grid_picture.py --data ../shared/data/camvid --frame 0016E5_08129 \
        --out /tmp/camvid_grid.png
"""

import argparse
import io
import math
from pathlib import Path
from typing import List, Optional

import cv2
from enet_ros.camera_model import CameraIntrinsics, CameraPose
from enet_ros.ground_grid import FREE, GridSpec, GroundProjection, OCCUPIED, UNKNOWN
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ROAD = 3
#: Grid value -> colour: unknown grey, free light green, occupied dark.
COLOURS = {UNKNOWN: '#a0a0a0', FREE: '#c8f0c0', OCCUPIED: '#303030'}


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options: data, frame, output, camera and grid."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=Path, default=None,
                        help='CamVid folder with val/ and valannot/ (default: a synthetic frame)')
    parser.add_argument('--frame', default='0016E5_08129', help='val frame name, no suffix')
    parser.add_argument('--out', type=Path, default=ROOT / 'docs' / 'drivable_grid.png')
    parser.add_argument('--focal', type=float, default=400.0, help='fx = fy, pixels')
    parser.add_argument('--height', type=float, default=1.3, help='camera height, m')
    parser.add_argument('--pitch', type=float, default=0.5, help='degrees, positive down')
    parser.add_argument('--resolution', type=float, default=0.1, help='m per cell')
    parser.add_argument('--range', type=float, default=25.0, help='grid_range, m')
    return parser


def read_frame(data: Path, name: str):
    """Return the RGB frame and its HxW uint8 drivable mask (Road, 255) from CamVid val."""
    bgr = cv2.imread(str(data / 'val' / f'{name}.png'), cv2.IMREAD_COLOR)
    labels = cv2.imread(str(data / 'valannot' / f'{name}.png'), cv2.IMREAD_UNCHANGED)
    if bgr is None or labels is None:
        raise FileNotFoundError(f'{name}.png not found in {data}/val and {data}/valannot')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.where(labels == ROAD, 255, 0).astype(np.uint8)


def synthetic_frame(intrinsics: CameraIntrinsics, pose: CameraPose):
    """
    Return a synthetic HxWx3 uint8 RGB frame and its HxW uint8 drivable mask (road, 255).

    Each pixel's ray meets the flat ground (z = 0) or the sky: the road is 7 m
    wide and bends to the left (centre y = 0.004 x^2), pavements 2 m wide
    beside it, bare earth beyond, fading to haze with distance.
    """
    v, u = np.mgrid[0:intrinsics.height, 0:intrinsics.width].astype(np.float64)
    rays = np.stack([(u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy,
                     np.ones_like(u)], axis=-1) @ pose.rotation.T
    down = rays[..., 2] < -1e-6
    scale = np.where(down, -pose.translation[2] / np.where(down, rays[..., 2], -1.0), 0.0)
    x = pose.translation[0] + scale * rays[..., 0]
    y = pose.translation[1] + scale * rays[..., 1]
    offset = np.abs(y - 0.004 * x * x)
    road = down & (offset < 3.5)
    pavement = down & ~road & (offset < 5.5)
    colours = np.empty(u.shape + (3,), np.float64)
    colours[:] = (150, 125, 85)                                  # bare earth
    colours[pavement] = (170, 165, 155)
    colours[road] = (95, 95, 100)
    lane = road & (np.abs(y - 0.004 * x * x) < 0.08) & (np.mod(x, 6.0) < 3.0)
    colours[lane] = (235, 235, 225)
    haze = np.clip(scale / 120.0, 0.0, 1.0)[..., None]
    colours = (1.0 - haze) * colours + haze * np.array([200, 210, 220])
    sky = ~down
    colours[sky] = (np.array([120, 170, 230]) + (v[sky, None] / intrinsics.height)
                    * np.array([80, 50, 10]))
    return colours.clip(0, 255).astype(np.uint8), np.where(road, 255, 0).astype(np.uint8)


def range_arc(intrinsics: CameraIntrinsics, pose: CameraPose, distance: float) -> np.ndarray:
    """Pixel (u, v) of the ground circle of radius ``distance`` around the camera, in view."""
    angles = np.linspace(-math.pi / 2, math.pi / 2, 721)
    ground = np.stack([distance * np.cos(angles), distance * np.sin(angles),
                       np.zeros_like(angles)], axis=1) + pose.translation * [1, 1, 0]
    u, v, ok = intrinsics.project((ground - pose.translation) @ pose.rotation)
    ok &= (u >= 0) & (u <= intrinsics.width - 1) & (v >= 0) & (v <= intrinsics.height - 1)
    return np.stack([u[ok], v[ok]], axis=1)


def render(rgb: np.ndarray, mask: np.ndarray, intrinsics: CameraIntrinsics, pose: CameraPose,
           spec: GridSpec, grid: np.ndarray, title: str, caption: str) -> Figure:
    """Draw the frame with its mask and the grid side by side."""
    figure = Figure(figsize=(9.0, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    left = figure.add_axes((0.01, 0.1, 0.53, 0.8))
    right = figure.add_axes((0.6, 0.17, 0.38, 0.73))

    shown = rgb.astype(np.float32)
    drivable = mask != 0
    shown[drivable] = 0.55 * shown[drivable] + 0.45 * np.array([40, 220, 60])
    left.imshow(shown.astype(np.uint8))
    horizon = intrinsics.cy - intrinsics.fy * math.tan(pose_pitch(pose))
    left.axhline(horizon, color='#ffd000', lw=1, ls='--')
    left.text(4, horizon - 4, 'horizon', color='#ffd000', fontsize=8)
    arc = range_arc(intrinsics, pose, spec.grid_range)
    if arc.size:
        left.plot(arc[:, 0], arc[:, 1], color='white', lw=1, ls=':')
        end = arc[np.argmax(arc[:, 0])]
        left.text(end[0] - 4, end[1] - 4, f'{spec.grid_range:g} m range', color='white',
                  fontsize=8, ha='right')
    left.set_title(caption, fontsize=10)
    left.set_axis_off()

    values = np.array([UNKNOWN, FREE, OCCUPIED])
    index = np.searchsorted(values, grid)    # -1, 0, 100 -> 0, 1, 2
    x0, y0 = spec.origin_x, spec.origin_y
    x1, y1 = x0 + spec.width * spec.resolution, y0 + spec.height * spec.resolution
    # x forward is up, y left is to the left: rows (y) become columns, flipped
    right.imshow(index.T, origin='lower', extent=(y0, y1, x0, x1), interpolation='nearest',
                 cmap=ListedColormap([COLOURS[v] for v in values]), vmin=-0.5, vmax=2.5)
    right.invert_xaxis()
    cam_x, cam_y = pose.translation[0], pose.translation[1]
    right.plot([cam_y], [cam_x], marker='o', color='#d02020', ms=5, clip_on=False)
    arrow = {'width': 0.12, 'head_width': 0.7, 'head_length': 0.9,
             'length_includes_head': True, 'clip_on': False}
    right.arrow(cam_y, cam_x, 0.0, 3.0, color='#d02020', **arrow)
    right.arrow(cam_y, cam_x, 3.0, 0.0, color='#2050d0', **arrow)
    right.text(cam_y - 0.6, cam_x + 2.2, 'x', color='#d02020', fontsize=9)
    right.text(cam_y + 2.4, cam_x - 0.8, 'y', color='#2050d0', fontsize=9, va='top')
    right.text(cam_y - 0.6, cam_x - 0.8, 'camera', color='#d02020', fontsize=8, va='top')
    right.set_xlabel('y (m, left)', fontsize=9)
    right.set_ylabel('x (m, forward)', fontsize=9)
    right.tick_params(labelsize=8)
    right.set_aspect('equal')
    right.set_title('OccupancyGrid (base_footprint)', fontsize=10)
    right.legend(handles=[Patch(color=COLOURS[FREE], label='free (0)'),
                          Patch(color=COLOURS[OCCUPIED], label='occupied (100)'),
                          Patch(color=COLOURS[UNKNOWN], label='unknown (-1)')],
                 loc='upper center', bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8,
                 frameon=False)
    figure.suptitle(title, fontsize=9, y=0.985)
    return figure


def pose_pitch(pose: CameraPose) -> float:
    """Downward pitch of the optical axis (radians, positive down)."""
    forward = pose.rotation[:, 2]
    return math.atan2(-forward[2], math.hypot(forward[0], forward[1]))


def save_small_png(figure: Figure, path: Path) -> int:
    """Save ``figure`` as a palette PNG (keeps it small); return its size in bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png')
    buffer.seek(0)
    image = Image.open(buffer).convert('RGB').quantize(colors=192, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    return path.stat().st_size


def main(argv: Optional[List[str]] = None) -> int:
    """Render the picture; print where it went."""
    args = get_args_parser().parse_args(argv)
    pose = CameraPose.from_parameters(args.height, pitch=math.radians(args.pitch))
    if args.data is None:
        width, height = 480, 360
        intrinsics = CameraIntrinsics(width, height, args.focal, args.focal, width / 2,
                                      height / 2)
        rgb, mask = synthetic_frame(intrinsics, pose)
        name, caption = 'synthetic frame', 'synthetic frame, the road as drivable'
    else:
        rgb, mask = read_frame(args.data, args.frame)
        height, width = mask.shape
        intrinsics = CameraIntrinsics(width, height, args.focal, args.focal, width / 2,
                                      height / 2)
        name, caption = args.frame, 'CamVid val frame, Road (ground truth) as drivable'

    # x from 3 m behind the camera to its range, y +-half the range
    spec = GridSpec(resolution=args.resolution,
                    width=int(round((args.range + 3.0) / args.resolution)),
                    height=int(round(args.range / args.resolution)), origin_x=-3.0,
                    origin_y=-args.range / 2, grid_range=args.range)
    grid = GroundProjection(intrinsics, pose, spec).fill(mask)
    title = (f'{name}: {width}x{height}, fx = fy = {args.focal:g}, camera '
             f'{args.height:g} m up, pitch {args.pitch:g} deg down; grid '
             f'{args.resolution:g} m cells, range {args.range:g} m, majority rule')
    size = save_small_png(render(rgb, mask, intrinsics, pose, spec, grid, title, caption),
                          args.out)
    print(f'{args.out} ({size // 1024} KiB): {np.sum(grid == FREE)} free, '
          f'{np.sum(grid == OCCUPIED)} occupied, {np.sum(grid == UNKNOWN)} unknown cells')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
