"""
The camera's pose for the drivable grid: from TF, or from the ``camera_pose.*`` parameters.

The pose comes from TF (:class:`TfPoseSource`: ``grid_frame`` <- the image's
``frame_id`` at the image's stamp, waiting at most ``grid_tf_timeout`` for a
transform newer than the image) when ``tf2_ros`` is importable, as on every
ROS 2 install, otherwise from the ``camera_pose.*`` parameters
(:func:`resolve_pose_source`). :class:`GridUnavailable` says why a frame gets
no grid. The grid itself: :mod:`~enet_ros.node.camera_grid`.
"""

import math
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from .parameter_table import ConfigError
from ..camera_model import CameraPose


class GridUnavailable(Exception):
    """Why a frame gets no grid; ``reason`` is a counter key, the message is for people."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def tf_importable() -> bool:
    """Tell whether tf2_ros can be imported (every ROS 2 install has it)."""
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_pose_source(setting: str) -> str:
    """
    Return 'tf' or 'parameters' for the grid_pose_source parameter's value.

    'auto' is TF where tf2_ros is importable, else the parameters; 'tf' without
    tf2_ros is a configuration error.
    """
    if setting == 'parameters':
        return 'parameters'
    available = tf_importable()
    if setting == 'tf' and not available:
        raise ConfigError("parameter grid_pose_source: 'tf', but tf2_ros cannot be imported "
                          "(install ros-$ROS_DISTRO-tf2-ros, or use 'parameters')")
    return 'tf' if available else 'parameters'


#: Largest accepted | |q|^2 - 1 | of a transform's rotation (Humble's tf2 refused beyond
#: this; Jazzy's normalizes any non-zero quaternion silently, so a rotation written into the
#: wrong fields would pass unnoticed).
QUATERNION_TOLERANCE = 0.01


def transform_problem(transform: Any) -> Optional[str]:
    """Return why a geometry_msgs/TransformStamped is not a pose (NaN, non-unit), or None."""
    t, q = transform.transform.translation, transform.transform.rotation
    translation, rotation = (t.x, t.y, t.z), (q.x, q.y, q.z, q.w)
    if not all(math.isfinite(v) for v in translation + rotation):
        return (f'non-finite values in translation {translation} / rotation (x, y, z, w) '
                f'{rotation}')
    norm2 = sum(v * v for v in rotation)
    if abs(norm2 - 1.0) > QUATERNION_TOLERANCE:
        return (f'rotation (x, y, z, w) {rotation} is not a unit quaternion (norm '
                f'{math.sqrt(norm2):.4g})')
    return None


def _stamp_s(stamp: Any) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _checked_buffer(cache_s: float) -> Any:
    """
    Return a tf2_ros Buffer that refuses invalid transforms and wakes waiters on new data.

    A transform with NaN or a non-unit quaternion (:func:`transform_problem`)
    is not stored; the newest refusal per child frame is kept for the
    lookup's message, and so is the newest stored parent of every frame
    (:func:`frame_chain` walks them). ``new_data`` (a Condition) is notified
    after every transform, stored or refused.
    """
    from rclpy.duration import Duration
    from tf2_ros.buffer import Buffer

    class CheckedBuffer(Buffer):
        def __init__(self):
            super().__init__(cache_time=Duration(seconds=cache_s))
            self.new_data = threading.Condition()
            #: child frame -> (parent frame, problem) of its newest refused transform
            self.refused: Dict[str, Tuple[str, str]] = {}
            #: child frame -> parent frame of its newest stored transform
            self.parents: Dict[str, str] = {}

        def set_transform(self, transform: Any, authority: str) -> None:
            self._store(transform, authority, super().set_transform)

        def set_transform_static(self, transform: Any, authority: str) -> None:
            self._store(transform, authority, super().set_transform_static)

        def _store(self, transform: Any, authority: str, store: Any) -> None:
            problem = transform_problem(transform)
            if problem is None:
                store(transform, authority)
            with self.new_data:
                if problem is None:
                    self.refused.pop(transform.child_frame_id, None)
                    self.parents[transform.child_frame_id] = transform.header.frame_id
                else:
                    self.refused[transform.child_frame_id] = (transform.header.frame_id,
                                                              problem)
                self.new_data.notify_all()

    return CheckedBuffer()


def frame_chain(frame: str, parents: Dict[str, str]) -> List[str]:
    """Return ``frame`` and its ancestors in ``parents`` (child -> parent), nearest first."""
    chain = [frame]
    while chain[-1] in parents and parents[chain[-1]] not in chain:
        chain.append(parents[chain[-1]])
    return chain


class TfPoseSource:
    """
    The camera's pose from TF, looked up at the image's stamp with a short, bounded wait.

    A tf2_ros Buffer (that refuses NaN and non-unit quaternions, see
    :func:`_checked_buffer`) is filled by a TransformListener on the node
    (``spin_thread=False``: the node's executor, on its helper thread, runs
    the listener's callbacks). :meth:`lookup` runs on the inference thread;
    it waits only when the transforms exist but end before the image's stamp
    (the next one is on its way), and never longer than ``timeout_s``, on a
    condition the listener's callbacks notify, so it cannot deadlock with the
    executor. An image stamped 0 (no time) gets the newest transform, as tf2
    gives it for time 0; a static transform answers every stamp.
    """

    #: Seconds of transforms kept (tf2's default); an older image is refused.
    CACHE_S = 10.0

    def __init__(self, node: Any):
        from tf2_ros.transform_listener import TransformListener

        self._buffer = _checked_buffer(self.CACHE_S)
        self._listener = TransformListener(self._buffer, node, spin_thread=False)

    def lookup(self, grid_frame: str, camera_frame: str, stamp: Any,
               timeout_s: float = 0.0) -> CameraPose:
        """
        Return the pose of ``camera_frame`` (optical) in ``grid_frame`` at ``stamp``, or raise.

        ``stamp``: the image's builtin_interfaces/Time. Waits at most
        ``timeout_s`` for a transform newer than the image. GridUnavailable
        reasons: ``no_frame_id``, ``no_transform``, ``invalid_transform``,
        ``stale_transform`` (the newest transform is older than the image by
        more than the wait), ``old_image`` (older than the transforms kept).
        """
        from rclpy.time import Time
        from tf2_ros import ExtrapolationException, TransformException

        if not camera_frame:
            raise GridUnavailable('no_frame_id', 'the image has no frame_id: no TF pose for '
                                                 'the drivable grid')
        when = Time(seconds=stamp.sec, nanoseconds=stamp.nanosec)
        try:
            try:
                transform = self._buffer.lookup_transform_core(grid_frame, camera_frame, when)
            except ExtrapolationException as error:
                transform = self._wait_newer(grid_frame, camera_frame, when, stamp, timeout_s,
                                             error)
        except TransformException as error:
            raise self._unavailable(grid_frame, camera_frame, error) from None
        problem = transform_problem(transform)
        if problem is None:
            translation, rotation = transform.transform.translation, transform.transform.rotation
            try:
                return CameraPose.from_quaternion(
                    (translation.x, translation.y, translation.z),
                    (rotation.x, rotation.y, rotation.z, rotation.w))
            except ValueError as error:
                problem = str(error)
        raise GridUnavailable('invalid_transform', f'transform {grid_frame} <- {camera_frame}: '
                                                   f'{problem}')

    def _wait_newer(self, grid_frame: str, camera_frame: str, when: Any, stamp: Any,
                    timeout_s: float, error: Exception) -> Any:
        """After an extrapolation error: wait (bounded) if the image is newer than the data."""
        from rclpy.time import Time

        newest = self._buffer.lookup_transform_core(grid_frame, camera_frame, Time())
        image_s, newest_s = _stamp_s(stamp), _stamp_s(newest.header.stamp)
        if image_s < newest_s:
            raise GridUnavailable('old_image', (
                f'the image (stamp {image_s:.3f}) is older than the transforms {grid_frame} '
                f'<- {camera_frame} that TF keeps ({self.CACHE_S:g} s; {str(error).strip()}); '
                "is the camera's clock TF's clock?"))
        deadline = time.monotonic() + timeout_s
        buffer = self._buffer
        with buffer.new_data:
            while not buffer.can_transform_core(grid_frame, camera_frame, when)[0]:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GridUnavailable('stale_transform', (
                        f'the newest transform {grid_frame} <- {camera_frame} (stamp '
                        f'{newest_s:.3f}) is {image_s - newest_s:.3f} s older than the image '
                        f'(stamp {image_s:.3f}), and none newer came within {timeout_s:g} s '
                        '(grid_tf_timeout)'))
                buffer.new_data.wait(remaining)
        return buffer.lookup_transform_core(grid_frame, camera_frame, when)

    def _unavailable(self, grid_frame: str, camera_frame: str,
                     error: Exception) -> GridUnavailable:
        """
        Return the reason of a failed lookup, naming the refused transforms it needed.

        A refused transform was needed where storing it would have joined the two
        frames' trees: its child frame is the top of one frame's chain of stored
        parents, and its parent leads up to the top of the other's. A refusal
        elsewhere (another camera under the same grid frame, say) is only listed as
        also refused.
        """
        with self._buffer.new_data:
            refused = dict(self._buffer.refused)
            parents = dict(self._buffer.parents)
        tops = {frame_chain(grid_frame, parents)[-1], frame_chain(camera_frame, parents)[-1]}
        touching = [f'{parent} -> {child}: {problem}' for child, (parent, problem)
                    in refused.items()
                    if {child, frame_chain(parent, parents)[-1]} == tops]
        if touching:
            return GridUnavailable('invalid_transform', (
                f'no transform {grid_frame} <- {camera_frame}: refused {"; ".join(touching)}'))
        others = (f' (also refused: {"; ".join(f"{p} -> {c}" for c, (p, _) in refused.items())})'
                  if refused else '')
        text = str(error).strip() or type(error).__name__
        return GridUnavailable('no_transform', f'no transform {grid_frame} <- {camera_frame} '
                                               f'for the drivable grid: {text}{others}')

    def close(self) -> None:
        """Destroy the listener's subscriptions."""
        self._listener.unregister()
