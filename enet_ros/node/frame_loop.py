"""
The node's frames: parked by the subscription callbacks, segmented on the main thread.

A mixin of :class:`~enet_ros.node.segmentation_node.SegmentationMixin`; see
that module for the threading. Per frame: decode, segment (with confidence
when wanted), void low-confidence pixels, render the subscribed images into
reused messages, publish them with the input header, and project the
drivable mask onto the ground grid when it is subscribed.
"""

import time
from typing import Any

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from .cameras import Camera
from .config import GRID_OUTPUT, pose_parameter
from .grid import GridUnavailable
from .image_msgs import (CameraFrame, check_raw_image, compressed_image_to_frame, InvalidImage,
                         raw_image_to_frame)
from .state import NodeState
from .. import masks
from ..ground_grid import CameraPose
from ..inference.device_images import DEVICE_IMAGES
from ..segmenter import Segmenter

WARN_THROTTLE_S = 5.0
#: Projections built in consecutive frames from which the grid pose counts as moving (warned).
MOVING_POSE_BUILDS = 3


class FrameProcessing:
    """Frame intake, the inference loop and publishing (a node mixin)."""

    def _warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) >= WARN_THROTTLE_S:
            self._warned[key] = now
            self.get_logger().warning(message)

    def _on_image(self, msg: Image, camera: Camera) -> None:
        camera.stats.received()
        try:
            check_raw_image(msg, self._state.settings.max_pixels)
        except InvalidImage as error:
            self._reject(camera, error)
            return
        self._slots.offer(camera, msg)

    def _on_compressed(self, msg: CompressedImage, camera: Camera) -> None:
        camera.stats.received()
        self._slots.offer(camera, msg)  # decoding is too slow for the callback: done later

    def _reject(self, camera: Camera, error: InvalidImage) -> None:
        camera.stats.rejected_frame(error.reason)
        self._warn(f'reject:{camera.name}:{error.reason}',
                   f'dropping image from {camera.label}: {error} [{error.reason}]')

    def run_inference(self) -> None:
        """
        Segment the cameras' newest frames, round robin, until :meth:`stop`.

        Call it on the thread that built the node (see the module docstring);
        it also returns when the node's context shuts down, and after
        ``max_consecutive_failures`` failed frames with ``exit_on_failure``.
        """
        while not self._stop.is_set() and self.context.ok():
            slots = self._slots
            if slots is None:  # not configured (lifecycle node)
                self._stop.wait(0.2)
                continue
            taken = slots.take(timeout=0.2)
            if taken is None:
                continue
            camera, msg, received = taken
            with self._lock:
                if not self._active or self._state is None:
                    continue  # deactivated while the frame waited
                try:
                    self._process(camera, msg, received)
                except Exception as error:  # noqa: B902 - a frame must never kill the node
                    if self._failed(camera, error):
                        return

    def _failed(self, camera: Camera, error: Exception) -> bool:
        """Count a failed frame; return True when the node should exit (exit_on_failure)."""
        failures = camera.stats.failed()
        self._warn(f'failure:{camera.name}', f'frame from {camera.label} failed '
                   f'({type(error).__name__}: {error}); {failures} in a row')
        settings = self._state.settings
        if settings.exit_on_failure and failures >= settings.max_consecutive_failures:
            self.get_logger().fatal(
                f'{failures} frames failed in a row (last: {type(error).__name__}: {error}); '
                'exiting with code 3 (exit_on_failure)')
            self.failed_frames = True
        return self.failed_frames

    def _process(self, camera: Camera, msg: Any, received: float) -> None:
        state = self._state
        wanted = camera.subscribed_outputs(state.settings.publish)
        if not wanted:
            camera.stats.count('skipped_no_subscribers')
            camera.grid.problem = None
            return
        if not camera.rate.due(received, state.min_interval_s):
            camera.stats.count('dropped_rate_limit')
            return
        try:
            if isinstance(msg, CompressedImage):
                frame = compressed_image_to_frame(msg, state.settings.max_pixels)
            else:
                frame = raw_image_to_frame(msg, state.settings.max_pixels)
        except InvalidImage as error:
            self._reject(camera, error)
            return
        camera.rate.processed(received, state.min_interval_s)
        images = [name for name in wanted if name != GRID_OUTPUT]
        with_confidence = 'confidence' in images or state.settings.min_confidence > 0
        # On CUDA the colour, overlay and drivable images come from the frame's graph, unless
        # min_confidence voids labels on the host first (then they are drawn after it).
        on_device = ([name for name in images if name in DEVICE_IMAGES]
                     if state.images_on_device else [])
        height, width = frame.height, frame.width  # the outputs' size (_check_labels checks)
        buffers = {name: camera.buffers[name].view(height, width, masks.OUTPUT_CHANNELS[name])
                   for name in images}
        state.prepare_device_images()
        inference_start = time.monotonic()
        result = state.segmenter.segment(frame.pixels, bgr=frame.bgr,
                                         with_confidence=with_confidence, images=on_device,
                                         out={name: buffers[name] for name in on_device})
        inference_s = time.monotonic() - inference_start
        labels = result.labels
        self._check_labels(labels, frame, state.segmenter)
        if state.settings.min_confidence > 0:
            masks.void_low_confidence(labels, result.confidence, state.settings.min_confidence,
                                      state.void_id)
        on_host = [name for name in images if name not in on_device]
        state.renderer.render(labels, frame.rgb() if 'overlay' in on_host else None, on_host,
                              out=buffers, confidence=result.confidence)
        if not self._active:  # deactivated while this frame ran: it is not published
            camera.stats.count('dropped_deactivated')
            return
        for name in images:
            buffer = camera.buffers[name]
            buffer.msg.header = msg.header
            camera.publishers[name].publish(buffer.msg)
        camera.stats.published(self._latency_s(msg), time.monotonic() - received, inference_s)
        if GRID_OUTPUT in wanted:
            drivable = buffers.get('drivable')
            if drivable is None:
                drivable = masks.drivable_mask(labels, state.renderer.drivable,
                                               out=camera.grid.drivable_scratch(height, width))
            self._publish_grid(camera, msg, drivable, state)
        else:
            camera.grid.problem = None

    def _publish_grid(self, camera: Camera, msg: Any, drivable: np.ndarray,
                      state: NodeState) -> None:
        """Project ``drivable`` onto the ground and publish it, or count and warn why not."""
        grid = camera.grid
        settings = state.settings.grid
        height, width = drivable.shape
        try:
            intrinsics = grid.intrinsics(settings.rectified_image)
            if (intrinsics.width, intrinsics.height) != (width, height):
                raise GridUnavailable('camera_info_size_mismatch', (
                    f'camera_info is {intrinsics.width}x{intrinsics.height} but the image is '
                    f'{width}x{height}; they must describe the same image'))
            pose = self._grid_pose(camera, msg, state)
            projection, built = grid.projection_for(intrinsics, pose, state.grid_spec,
                                                    settings.ground_z)
        except GridUnavailable as error:
            camera.stats.count(f'grid_skipped_{error.reason}')
            topic = camera.info_subscription.topic_name if camera.info_subscription else ''
            grid.problem = f'{error} [{error.reason}]'
            self._warn(f'grid:{camera.name}:{error.reason}',
                       f'no drivable grid for {camera.label} ({topic}): {error} '
                       f'[{error.reason}]; the other outputs are published')
            return
        if built:
            self._report_build(camera, state)
        projection.fill(drivable, out=grid.buffer.view(state.grid_spec, settings.ground_z))
        camera.publishers[GRID_OUTPUT].publish(grid.buffer.stamp(msg.header.stamp,
                                                                 settings.frame))
        camera.stats.count('grid_published')
        grid.problem = None

    def _report_build(self, camera: Camera, state: NodeState) -> None:
        """Log a projection build; warn (throttled) when an input changes frame after frame."""
        grid, settings, spec = camera.grid, state.settings.grid, state.grid_spec
        repeated = [name for name, count in grid.changed_in_a_row.items()
                    if count >= MOVING_POSE_BUILDS]
        if 'pose' in repeated:
            camera.stats.count('grid_rebuilt_moving_pose')
            self._warn(f'grid:{camera.name}:moving', (
                f'{camera.label}: the ground projection was rebuilt for '
                f'{grid.builds_in_a_row} frames in a row ({grid.build_ms:.0f} ms each): the '
                f"camera's pose in grid_frame '{settings.frame}' keeps changing; use a frame "
                'fixed to the vehicle (base_link, base_footprint), not odom or map'))
        if 'camera_info' in repeated:
            camera.stats.count('grid_rebuilt_changing_camera_info')
            self._warn(f'grid:{camera.name}:camera_info', (
                f'{camera.label}: the ground projection was rebuilt for '
                f'{grid.builds_in_a_row} frames in a row ({grid.build_ms:.0f} ms each): the '
                f"camera_info's intrinsics keep changing ({grid.intrinsics_change}); a "
                'calibrated camera sends the same camera_info with every frame'))
        if 'grid' in repeated:
            self._warn(f'grid:{camera.name}:layout', (
                f'{camera.label}: the ground projection was rebuilt for '
                f'{grid.builds_in_a_row} frames in a row: the grid_* parameters keep changing'))
        if not repeated:
            self.get_logger().info(
                f'{camera.label}: ground projection built in {grid.build_ms:.0f} ms '
                f'({grid.projection.intrinsics.width}x{grid.projection.intrinsics.height} '
                f'camera, {spec.width}x{spec.height} cells of {spec.resolution:g} m in '
                f'{settings.frame}, pose from {self.grid_pose_source})')

    def _grid_pose(self, camera: Camera, msg: Any, state: NodeState) -> CameraPose:
        """Return the camera's optical-frame pose in grid_frame at ``msg``'s stamp."""
        settings = state.settings.grid
        if self._tf is not None:
            return self._tf.lookup(settings.frame, msg.header.frame_id, msg.header.stamp,
                                   settings.tf_timeout_s)
        pose = state.poses.get(camera.name)
        if pose is None:
            raise GridUnavailable('no_pose', (
                f"camera pose not set: set {pose_parameter(camera.name, 'height')} (and "
                f"{pose_parameter(camera.name, 'pitch')} ...) or publish TF"))
        return pose

    @staticmethod
    def _check_labels(labels: np.ndarray, frame: CameraFrame, segmenter: Segmenter) -> None:
        if labels.shape != (frame.height, frame.width) or labels.dtype != np.uint8:
            raise RuntimeError(f'labels {labels.dtype} {labels.shape} do not match the '
                               f'{frame.width}x{frame.height} input')
        if int(labels.max()) >= segmenter.num_classes:
            raise RuntimeError(f'label id {int(labels.max())} outside [0, '
                               f'{segmenter.num_classes})')

    def _latency_s(self, msg: Any):
        stamp = msg.header.stamp
        if stamp.sec == 0 and stamp.nanosec == 0:
            return None
        now = self.get_clock().now().nanoseconds
        return (now - (stamp.sec * 1_000_000_000 + stamp.nanosec)) / 1e9
