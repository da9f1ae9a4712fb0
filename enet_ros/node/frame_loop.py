"""
The node's frames: parked by the subscription callbacks, segmented on the inference thread.

See :mod:`~enet_ros.node.segmentation_node` for the threading. Per frame:
decode, segment (with confidence when wanted), void low-confidence pixels,
render the subscribed images into reused messages, publish them with the
input header, and project the drivable mask onto the ground grid when it is
subscribed (:class:`~enet_ros.node.grid_output.GridOutput`).
"""

import threading
import time
from typing import Any, Optional

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from .cameras import Camera, FrameSlots
from .grid_output import GridOutput
from .model_holder import ModelHolder
from .parameter_table import GRID_OUTPUT
from .throttled_log import ThrottledWarnings
from .. import masks
from ..inference.device_images import DEVICE_IMAGES
from ..ros_io.image_msgs import (CameraFrame, check_raw_image, compressed_image_to_frame,
                                 InvalidImage, raw_image_to_frame)
from ..segmenter import Segmenter


class FrameLoop:
    """
    Frame intake (subscription callbacks), the inference loop and publishing.

    ``node``: its context, clock and log; ``model``: the model in use (read
    once per frame); ``grid``: the drivable grid output; ``warnings``: the
    throttled warnings. Configure sets :attr:`slots` (the cameras' newest
    frames); activate and deactivate set :attr:`active` under :attr:`lock`,
    which a frame in progress holds, so they wait for it to finish.
    """

    def __init__(self, node: Any, model: ModelHolder, grid: GridOutput,
                 warnings: ThrottledWarnings):
        self._node = node
        self._model = model
        self._grid = grid
        self._warnings = warnings
        self._stop = threading.Event()
        self.lock = threading.Lock()  # a frame in progress vs. (de)activate and cleanup
        self.active = False
        self.slots: Optional[FrameSlots] = None
        #: Set when ``exit_on_failure`` ends the loop (the process exits with code 3).
        self.failed_frames = False

    def on_image(self, msg: Image, camera: Camera) -> None:
        """Check a raw image's header and park it as the camera's newest frame (executor)."""
        camera.stats.received()
        try:
            check_raw_image(msg, self._model.setup.settings.max_pixels)
        except InvalidImage as error:
            self._reject(camera, error)
            return
        self.slots.offer(camera, msg)

    def on_compressed(self, msg: CompressedImage, camera: Camera) -> None:
        """Park a compressed image as the camera's newest frame (executor thread)."""
        camera.stats.received()
        self.slots.offer(camera, msg)  # decoding is too slow for the callback: done later

    def _reject(self, camera: Camera, error: InvalidImage) -> None:
        camera.stats.rejected_frame(error.reason)
        self._warnings.warn(f'reject:{camera.name}:{error.reason}',
                            f'dropping image from {camera.label}: {error} [{error.reason}]')

    def run(self) -> None:
        """
        Segment the cameras' newest frames, round robin, until :meth:`stop`.

        Call it on the thread that built the node (see the module docstring);
        it also returns when the node's context shuts down, and after
        ``max_consecutive_failures`` failed frames with ``exit_on_failure``.
        """
        while not self._stop.is_set() and self._node.context.ok():
            slots = self.slots
            if slots is None:  # not configured (lifecycle node)
                self._stop.wait(0.2)
                continue
            taken = slots.take(timeout=0.2)
            if taken is None:
                continue
            camera, msg, received = taken
            with self.lock:
                if not self.active or self._model.setup is None:
                    continue  # deactivated while the frame waited
                try:
                    self.process(camera, msg, received)
                except Exception as error:  # noqa: B902 - a frame must never kill the node
                    if self._failed(camera, error):
                        return

    def _failed(self, camera: Camera, error: Exception) -> bool:
        """Count a failed frame; return True when the node should exit (exit_on_failure)."""
        failures = camera.stats.failed()
        self._warnings.warn(f'failure:{camera.name}', f'frame from {camera.label} failed '
                            f'({type(error).__name__}: {error}); {failures} in a row')
        settings = self._model.setup.settings
        if settings.exit_on_failure and failures >= settings.max_consecutive_failures:
            self._node.get_logger().fatal(
                f'{failures} frames failed in a row (last: {type(error).__name__}: {error}); '
                'exiting with code 3 (exit_on_failure)')
            self.failed_frames = True
        return self.failed_frames

    def process(self, camera: Camera, msg: Any, received: float) -> None:
        """Segment and publish one frame of ``camera`` (the inference thread, under the lock)."""
        setup = self._model.setup
        wanted = camera.subscribed_outputs(setup.settings.publish)
        if not wanted:
            camera.stats.count('skipped_no_subscribers')
            camera.grid.problem = None
            return
        if not camera.rate.due(received, setup.min_interval_s):
            camera.stats.count('dropped_rate_limit')
            return
        try:
            if isinstance(msg, CompressedImage):
                frame = compressed_image_to_frame(msg, setup.settings.max_pixels)
            else:
                frame = raw_image_to_frame(msg, setup.settings.max_pixels)
        except InvalidImage as error:
            self._reject(camera, error)
            return
        camera.rate.processed(received, setup.min_interval_s)
        images = [name for name in wanted if name != GRID_OUTPUT]
        with_confidence = 'confidence' in images or setup.settings.min_confidence > 0
        # On CUDA the colour, overlay and drivable images come from the frame's graph, unless
        # min_confidence voids labels on the host first (then they are drawn after it).
        on_device = ([name for name in images if name in DEVICE_IMAGES]
                     if setup.images_on_device else [])
        height, width = frame.height, frame.width  # the outputs' size (_check_labels checks)
        buffers = {name: camera.buffers[name].view(height, width, masks.OUTPUT_CHANNELS[name])
                   for name in images}
        setup.prepare_device_images()
        inference_start = time.monotonic()
        result = setup.segmenter.segment(frame.pixels, bgr=frame.bgr,
                                         with_confidence=with_confidence, images=on_device,
                                         out={name: buffers[name] for name in on_device})
        inference_s = time.monotonic() - inference_start
        labels = result.labels
        self._check_labels(labels, frame, setup.segmenter)
        if setup.settings.min_confidence > 0:
            masks.void_low_confidence(labels, result.confidence, setup.settings.min_confidence,
                                      setup.void_id)
        on_host = [name for name in images if name not in on_device]
        setup.renderer.render(labels, frame.rgb() if 'overlay' in on_host else None, on_host,
                              out=buffers, confidence=result.confidence)
        if not self.active:  # deactivated while this frame ran: it is not published
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
                drivable = masks.drivable_mask(labels, setup.renderer.drivable,
                                               out=camera.grid.drivable_scratch(height, width))
            self._grid.publish(camera, msg, drivable, setup)
        else:
            camera.grid.problem = None

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
        now = self._node.get_clock().now().nanoseconds
        return (now - (stamp.sec * 1_000_000_000 + stamp.nanosec)) / 1e9

    def stop(self) -> None:
        """Make :meth:`run` return after the frame in progress."""
        self._stop.set()
        slots = self.slots
        if slots is not None:
            slots.stop()
