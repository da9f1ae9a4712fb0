"""
The drivable grid each frame: the camera's pose, the ground projection, ~/drivable_grid.

:class:`GridOutput` takes the pose from TF (:class:`~enet_ros.node.grid_pose.TfPoseSource`)
or the ``camera_pose.*`` parameters, has the camera's
:class:`~enet_ros.node.camera_grid.CameraGrid` build the projection when an input
changed, fills the grid and publishes it; a grid that cannot be made is
counted and warned about (throttled), and the other outputs are published.
"""

from typing import Any, Optional

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile

from .cameras import Camera
from .frame_setup import FrameSetup
from .grid_pose import GridUnavailable, resolve_pose_source, TfPoseSource
from .parameter_table import GRID_OUTPUT, pose_parameter
from .settings import qos_profile
from .throttled_log import ThrottledWarnings
from ..camera_model import CameraPose

#: Projections built in consecutive frames from which the grid pose counts as moving (warned).
MOVING_POSE_BUILDS = 3


def grid_qos(reliability: str) -> QoSProfile:
    """
    Return the QoS of ~/drivable_grid: the newest grid, transient local, ``reliability``.

    Transient local matches both volatile subscribers and the transient-local
    ones that map consumers use (RViz's Map display, nav2's static layer).
    """
    qos = qos_profile(reliability, 1)
    qos.history = HistoryPolicy.KEEP_LAST
    qos.durability = DurabilityPolicy.TRANSIENT_LOCAL
    return qos


class GridOutput:
    """
    Project each frame's drivable mask onto the ground and publish it on the camera's grid.

    ``node``: for the TF listener and the log; ``warnings``: the throttled
    warnings shared with the frame loop. :meth:`resolve` (configure, before
    the model loads) picks the pose source, :meth:`start` (configure) creates
    the TF listener when it is TF, :meth:`close` (cleanup) releases it.
    :meth:`publish` runs on the inference thread.
    """

    def __init__(self, node: Any, warnings: ThrottledWarnings):
        self._node = node
        self._warnings = warnings
        #: 'tf' or 'parameters' once configured ('' before).
        self.pose_source = ''
        self._tf: Optional[TfPoseSource] = None

    def resolve(self, setting: str) -> None:
        """Pick the pose source for ``grid_pose_source``; ConfigError for 'tf' without tf2_ros."""
        self.pose_source = resolve_pose_source(setting)

    def start(self, setting: str, grid_frame: str) -> None:
        """Create the TF listener if the pose comes from TF; log where the pose comes from."""
        if self.pose_source == 'tf':
            self._tf = TfPoseSource(self._node)
            source = f"TF ({grid_frame} <- the image's frame_id at its stamp)"
        elif setting == 'parameters':
            source = 'the camera_pose.* parameters (grid_pose_source: parameters)'
        else:
            source = 'the camera_pose.* parameters (tf2_ros is not importable)'
        self._node.get_logger().info(f'drivable grid: camera pose from {source}')

    def close(self) -> None:
        """Release the TF listener (cleanup)."""
        if self._tf is not None:
            self._tf.close()
            self._tf = None

    def publish(self, camera: Camera, msg: Any, drivable: np.ndarray,
                setup: FrameSetup) -> None:
        """Project ``drivable`` onto the ground and publish it, or count and warn why not."""
        grid = camera.grid
        settings = setup.settings.grid
        height, width = drivable.shape
        try:
            intrinsics = grid.intrinsics(settings.rectified_image)
            if (intrinsics.width, intrinsics.height) != (width, height):
                raise GridUnavailable('camera_info_size_mismatch', (
                    f'camera_info is {intrinsics.width}x{intrinsics.height} but the image is '
                    f'{width}x{height}; they must describe the same image'))
            pose = self._pose(camera, msg, setup)
            projection, built = grid.projection_for(intrinsics, pose, setup.grid_spec,
                                                    settings.ground_z)
        except GridUnavailable as error:
            camera.stats.count(f'grid_skipped_{error.reason}')
            topic = camera.info_subscription.topic_name if camera.info_subscription else ''
            grid.problem = f'{error} [{error.reason}]'
            self._warnings.warn(f'grid:{camera.name}:{error.reason}',
                                f'no drivable grid for {camera.label} ({topic}): {error} '
                                f'[{error.reason}]; the other outputs are published')
            return
        if built:
            self._report_build(camera, setup)
        projection.fill(drivable, out=grid.buffer.view(setup.grid_spec, settings.ground_z))
        camera.publishers[GRID_OUTPUT].publish(grid.buffer.stamp(msg.header.stamp,
                                                                 settings.frame))
        camera.stats.count('grid_published')
        grid.problem = None

    def _report_build(self, camera: Camera, setup: FrameSetup) -> None:
        """Log a projection build; warn (throttled) when an input changes frame after frame."""
        grid, settings, spec = camera.grid, setup.settings.grid, setup.grid_spec
        repeated = [name for name, count in grid.changed_in_a_row.items()
                    if count >= MOVING_POSE_BUILDS]
        if 'pose' in repeated:
            camera.stats.count('grid_rebuilt_moving_pose')
            self._warnings.warn(f'grid:{camera.name}:moving', (
                f'{camera.label}: the ground projection was rebuilt for '
                f'{grid.builds_in_a_row} frames in a row ({grid.build_ms:.0f} ms each): the '
                f"camera's pose in grid_frame '{settings.frame}' keeps changing; use a frame "
                'fixed to the vehicle (base_link, base_footprint), not odom or map'))
        if 'camera_info' in repeated:
            camera.stats.count('grid_rebuilt_changing_camera_info')
            self._warnings.warn(f'grid:{camera.name}:camera_info', (
                f'{camera.label}: the ground projection was rebuilt for '
                f'{grid.builds_in_a_row} frames in a row ({grid.build_ms:.0f} ms each): the '
                f"camera_info's intrinsics keep changing ({grid.intrinsics_change}); a "
                'calibrated camera sends the same camera_info with every frame'))
        if 'grid' in repeated:
            self._warnings.warn(f'grid:{camera.name}:layout', (
                f'{camera.label}: the ground projection was rebuilt for '
                f'{grid.builds_in_a_row} frames in a row: the grid_* parameters keep changing'))
        if not repeated:
            self._node.get_logger().info(
                f'{camera.label}: ground projection built in {grid.build_ms:.0f} ms '
                f'({grid.projection.intrinsics.width}x{grid.projection.intrinsics.height} '
                f'camera, {spec.width}x{spec.height} cells of {spec.resolution:g} m in '
                f'{settings.frame}, pose from {self.pose_source})')

    def _pose(self, camera: Camera, msg: Any, setup: FrameSetup) -> CameraPose:
        """Return the camera's optical-frame pose in grid_frame at ``msg``'s stamp."""
        settings = setup.settings.grid
        if self._tf is not None:
            return self._tf.lookup(settings.frame, msg.header.frame_id, msg.header.stamp,
                                   settings.tf_timeout_s)
        pose = setup.poses.get(camera.name)
        if pose is None:
            raise GridUnavailable('no_pose', (
                f"camera pose not set: set {pose_parameter(camera.name, 'height')} (and "
                f"{pose_parameter(camera.name, 'pitch')} ...) or publish TF"))
        return pose
