"""
Per-camera state of the node and the newest-frame slots the inference loop serves.

Each camera has its own input subscription, output publishers, reusable output
messages and frame counters. :class:`FrameSlots` keeps the newest frame of
each camera (a newer one replaces it and counts the old one as dropped) and
hands them out round robin, so a fast camera cannot starve a slow one.
"""

from dataclasses import dataclass, field
import math
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .camera_grid import CameraGrid
from .health import FrameStats
from ..ros_io.image_msgs import ImageBuffer


def topic_prefix(camera: str) -> str:
    """Return the prefix of a camera's topics: '' for the unnamed camera, else 'name/'."""
    return f'{camera}/' if camera else ''


#: Of ``max_rate_hz``'s interval, how early a frame may come and still be due: camera jitter
#: must not turn a 30 Hz camera limited to 10 Hz into 7.5 Hz (every fourth frame).
RATE_SLACK = 0.25


@dataclass
class RateLimit:
    """
    ``max_rate_hz`` for one camera: frames are due on a schedule of one per interval.

    A frame is due from a quarter interval before its slot (:data:`RATE_SLACK`),
    and the next slot is one interval after the last, not after the frame, so
    jitter neither lowers the rate nor lets the average pass the limit. After a
    gap of more than an interval the schedule restarts from the frame.

    Only the last slot used is kept, and the next one is that plus the interval
    asked with: a changed ``max_rate_hz`` applies from the last frame at once.
    (Keeping the next slot instead meant that a frame processed at 0.001 Hz
    put the next one 1000 s ahead, and a rate raised later waited for it.)
    """

    last_slot: float = float('-inf')

    def due(self, received: float, interval: float) -> bool:
        """Return whether a frame received at ``received`` (s) is due; 0 interval: always."""
        if not interval or self.last_slot == float('-inf'):
            return True
        return received >= self.last_slot + (1.0 - RATE_SLACK) * interval

    def processed(self, received: float, interval: float) -> None:
        """Book the frame received at ``received`` as processed: its slot is used."""
        slot = self.last_slot + interval
        # An infinite interval (a rate of 5e-324 Hz) gives no slot: restart from the frame.
        in_time = math.isfinite(slot) and slot + interval >= received
        self.last_slot = slot if in_time else received


@dataclass
class Camera:
    """One camera: its topics, reusable output messages and counters."""

    name: str
    subscription: Any = None
    info_subscription: Any = None
    publishers: Dict[str, Any] = field(default_factory=dict)
    buffers: Dict[str, ImageBuffer] = field(default_factory=dict)
    stats: FrameStats = field(default_factory=FrameStats)
    grid: CameraGrid = field(default_factory=CameraGrid)
    rate: RateLimit = field(default_factory=RateLimit)

    @property
    def label(self) -> str:
        """Name for logs and diagnostics ('image' for the unnamed camera)."""
        return self.name or 'image'

    def subscribed_outputs(self, publish: Sequence[str]) -> List[str]:
        """Return the outputs in ``publish`` that have at least one subscriber right now."""
        return [name for name in publish
                if self.publishers[name].get_subscription_count() > 0]


class FrameSlots:
    """The newest frame of each camera, handed out round robin; thread-safe."""

    def __init__(self, cameras: Sequence[Camera]):
        self._cameras = list(cameras)
        self._slots: Dict[str, Tuple[Any, float]] = {}
        self._next = 0
        self._condition = threading.Condition()
        self._stopped = False

    def offer(self, camera: Camera, msg: Any) -> None:
        """Park ``msg`` as ``camera``'s newest frame; a frame it replaces counts as dropped."""
        with self._condition:
            if camera.name in self._slots:
                camera.stats.count('dropped_superseded')
            self._slots[camera.name] = (msg, time.monotonic())
            self._condition.notify()

    def take(self, timeout: float) -> Optional[Tuple[Camera, Any, float]]:
        """
        Return (camera, message, receipt time) of the next camera with a frame waiting.

        Cameras are visited in turn starting after the one served last, so each
        waiting camera is served before any camera is served twice. Returns
        None after ``timeout`` seconds without a frame, or once stopped.
        """
        with self._condition:
            deadline = time.monotonic() + timeout
            while not self._slots and not self._stopped:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._condition.wait(remaining)
            if self._stopped:
                return None
            count = len(self._cameras)
            for step in range(count):
                index = (self._next + step) % count
                camera = self._cameras[index]
                if camera.name in self._slots:
                    self._next = (index + 1) % count
                    msg, received = self._slots.pop(camera.name)
                    return camera, msg, received
            return None  # unreachable: a slot exists only for a known camera

    def take_waiting(self) -> List[Tuple[Camera, Any, float]]:
        """
        Return every frame waiting now, in round-robin order, without waiting for any.

        (camera, message, receipt time) each, as :meth:`take`; the batch a
        batching Segmenter runs together with the frame :meth:`take` gave. A
        camera without a frame is not waited for: it is simply not in the list.
        """
        with self._condition:
            if self._stopped:
                return []
            count = len(self._cameras)
            taken = []
            for step in range(count):
                camera = self._cameras[(self._next + step) % count]
                if camera.name in self._slots:
                    msg, received = self._slots.pop(camera.name)
                    taken.append((camera, msg, received))
            return taken

    def clear(self) -> None:
        """Forget the frames waiting (they are not counted as dropped)."""
        with self._condition:
            self._slots.clear()

    def stop(self) -> None:
        """Make :meth:`take` return None from now on."""
        with self._condition:
            self._stopped = True
            self._condition.notify_all()
