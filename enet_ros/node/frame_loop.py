"""
The node's frames: parked by the subscription callbacks, segmented on the inference thread.

See :mod:`~enet_ros.node.segmentation_node` for the threading. Per frame:
decode, segment (with confidence when wanted), void low-confidence pixels,
then each subscribed image from where it is ready: drawn into its reused
message and published with the input header one after another, cheapest
first (:data:`PUBLISH_ORDER`: labels, drivable, confidence, colour, then the
overlay, blended from the colour image already drawn), so a subscriber to the
labels does not wait for the overlay. Then the ground grid when it is
subscribed (:class:`~enet_ros.node.grid_output.GridOutput`) and the frame's
counters. On CUDA the colour, overlay and drivable images come with the labels
from the frame's graph; the labels still go out first.

Batched cameras: where the Segmenter batches (:attr:`Segmenter.batches`: CUDA
by default, off on the CPU), after taking one camera's frame the loop also
takes the frames other cameras already have waiting (never waiting for one
that has none) and segments those of one size together with
:meth:`Segmenter.segment_batch`; each camera's images are then published as
above, camera by camera.
"""

from dataclasses import dataclass
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

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

#: The order a frame's images are drawn and published in: cheapest first; the overlay after
#: the colour image it is blended from.
PUBLISH_ORDER = ('labels', 'drivable', 'confidence', 'colored', 'overlay')


@dataclass
class PendingFrame:
    """A decoded frame, due and wanted, on its way to the Segmenter and its publishers."""

    camera: Camera
    msg: Any
    received: float
    frame: CameraFrame
    images: List[str]  # the image outputs to publish, in PUBLISH_ORDER
    grid: bool  # the drivable grid is subscribed
    with_confidence: bool
    on_device: List[str]  # images the Segmenter draws in the frame's CUDA graph
    buffers: Dict[str, np.ndarray]  # views into the camera's reused messages

    def group_key(self) -> Tuple[Any, ...]:
        """Frames with the same key can go through one :meth:`Segmenter.segment_batch` call."""
        return (self.frame.height, self.frame.width, self.with_confidence,
                tuple(self.on_device))


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
            with self.lock:
                setup = self._model.setup
                if not self.active or setup is None:
                    continue  # deactivated while the frame waited
                # Only a batching Segmenter takes the other cameras' frames now: one at a time,
                # a frame taken early could not be replaced by a newer one while it waits.
                others = slots.take_waiting() if setup.segmenter.batches else []
                if self.serve([taken] + others):
                    return

    def serve(self, taken: Sequence[Tuple[Camera, Any, float]]) -> bool:
        """
        Segment and publish frames taken from the slots, batched where the Segmenter batches.

        ``taken``: (camera, message, receipt time) per camera, one frame each
        (the inference thread, under the lock). A failure counts against the
        camera(s) it hit only. Returns True when the node should exit
        (``exit_on_failure``).
        """
        setup = self._model.setup
        pending = []
        for camera, msg, received in taken:
            try:
                frame = self._prepare(camera, msg, received, setup)
            except Exception as error:  # noqa: B902 - a frame must never kill the node
                if self._failed(camera, error):
                    return True
                continue
            if frame is not None:
                pending.append(frame)
        for group in self._groups(pending, setup.segmenter.batches):
            try:
                results, inference_s = self._segment(group, setup)
            except Exception as error:  # noqa: B902
                failed = [self._failed(frame.camera, error) for frame in group]  # count each
                if failed[-1]:
                    return True
                continue
            for frame, result in zip(group, results):
                try:
                    self._publish(frame, result, inference_s, setup)
                except Exception as error:  # noqa: B902
                    if self._failed(frame.camera, error):
                        return True
        return False

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
        pending = self._prepare(camera, msg, received, setup)
        if pending is not None:
            results, inference_s = self._segment([pending], setup)
            self._publish(pending, results[0], inference_s, setup)

    def _prepare(self, camera: Camera, msg: Any, received: float,
                 setup: Any) -> Optional[PendingFrame]:
        """Decode a frame that is wanted and due; None when it is skipped (counted)."""
        wanted = camera.subscribed_outputs(setup.settings.publish)
        if not wanted:
            camera.stats.count('skipped_no_subscribers')
            camera.grid.problem = None
            return None
        if not camera.rate.due(received, setup.min_interval_s):
            camera.stats.count('dropped_rate_limit')
            return None
        try:
            if isinstance(msg, CompressedImage):
                frame = compressed_image_to_frame(msg, setup.settings.max_pixels)
            else:
                frame = raw_image_to_frame(msg, setup.settings.max_pixels)
        except InvalidImage as error:
            self._reject(camera, error)
            return None
        camera.rate.processed(received, setup.min_interval_s)
        images = [name for name in PUBLISH_ORDER if name in wanted]
        with_confidence = 'confidence' in images or setup.settings.min_confidence > 0
        # On CUDA the colour, overlay and drivable images come from the frame's graph, unless
        # min_confidence voids labels on the host first (then they are drawn after it).
        on_device = ([name for name in wanted if name in DEVICE_IMAGES]
                     if setup.images_on_device else [])
        height, width = frame.height, frame.width  # the outputs' size (_check_labels checks)
        buffers = {name: camera.buffers[name].view(height, width, masks.OUTPUT_CHANNELS[name])
                   for name in images}
        return PendingFrame(camera, msg, received, frame, images, GRID_OUTPUT in wanted,
                            with_confidence, on_device, buffers)

    @staticmethod
    def _groups(pending: List[PendingFrame], batches: bool) -> List[List[PendingFrame]]:
        """One frame a group, or with a batching Segmenter the frames of one key together."""
        if not batches:
            return [[frame] for frame in pending]
        groups: Dict[Tuple[Any, ...], List[PendingFrame]] = {}
        for frame in pending:
            groups.setdefault(frame.group_key(), []).append(frame)
        return list(groups.values())

    @staticmethod
    def _segment(group: List[PendingFrame], setup: Any) -> Tuple[List[Any], float]:
        """Segment a group (one frame: ``segment``; more: ``segment_batch``); results, seconds."""
        setup.prepare_device_images()
        first = group[0]
        start = time.monotonic()
        if len(group) == 1:
            results = [setup.segmenter.segment(
                first.frame.pixels, bgr=first.frame.bgr, with_confidence=first.with_confidence,
                images=first.on_device,
                out={name: first.buffers[name] for name in first.on_device})]
        else:
            results = setup.segmenter.segment_batch(
                [frame.frame.pixels for frame in group],
                bgr=[frame.frame.bgr for frame in group],
                with_confidence=first.with_confidence, images=first.on_device,
                out=[{name: frame.buffers[name] for name in frame.on_device}
                     for frame in group])
        return results, time.monotonic() - start

    def _publish(self, pending: PendingFrame, result: Any, inference_s: float,
                 setup: Any) -> None:
        """Draw and publish a segmented frame's images one by one (:data:`PUBLISH_ORDER`)."""
        camera, frame, buffers = pending.camera, pending.frame, pending.buffers
        labels = result.labels
        self._check_labels(labels, frame, setup.segmenter)
        if setup.settings.min_confidence > 0:
            masks.void_low_confidence(labels, result.confidence, setup.settings.min_confidence,
                                      setup.void_id)
        colored = None
        for name in pending.images:
            if name not in pending.on_device:
                setup.renderer.render(labels, frame.rgb() if name == 'overlay' else None,
                                      (name,), out={name: buffers[name]},
                                      confidence=result.confidence, colored=colored)
            if name == 'colored':
                colored = buffers[name]  # the overlay blends it instead of drawing it again
            if not self.active:  # deactivated while this frame ran: the rest is not published
                camera.stats.count('dropped_deactivated')
                return
            buffer = camera.buffers[name]
            buffer.msg.header = pending.msg.header
            camera.publishers[name].publish(buffer.msg)
        camera.stats.published(self._latency_s(pending.msg), time.monotonic() - pending.received,
                               inference_s)
        if pending.grid:
            drivable = buffers.get('drivable')
            if drivable is None:
                drivable = masks.drivable_mask(
                    labels, setup.renderer.drivable,
                    out=camera.grid.drivable_scratch(frame.height, frame.width))
            self._grid.publish(camera, pending.msg, drivable, setup)
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
