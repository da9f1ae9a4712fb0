"""
The rclpy side of ``live_evaluate``: publishes camera frames, receives the node's outputs.

The only evaluation module that uses rclpy, and only once a :class:`LivePeer`
is made (so importing it, or ``live_evaluate``, needs no ROS). The peer has its
own rclpy context and spins it in a thread; labels arrive on :attr:`LivePeer.received`
as ``(stamp_ns, time.monotonic() at receipt, labels or MessageError)``.

Fast DDS reads its XML profile when the first participant of a process starts:
set the profile in the environment before making a peer (``live_evaluate``'s
``main()`` does; see :func:`enet_ros.ros_io.dds.with_large_image_transport`).
"""

import queue
import threading
import time
from typing import Any, Optional, Tuple

from .bag_io import (BagWriter, COMPRESSED_IMAGE, IMAGE, message_to_labels, MessageError,
                     stamp_to_ns)
from .node_subprocess import NodeProcess
from .outputs import OutputWriteError
from .. import masks


class LiveError(RuntimeError):
    """The live evaluation cannot run: the node did not start or never became ready."""


def _record(recorder: BagWriter, topic: str, data: bytes) -> None:
    """Write a received output; a failed bag (disk full) is kept in ``recorder.failure``."""
    if recorder.failure is None:
        try:
            recorder.write_raw(topic, data, time.time_ns())
        except OutputWriteError:
            pass  # the writer removed the bag; live_evaluate reports recorder.failure


class LivePeer:
    """A publisher of camera frames and a recorder of the node's labels (and outputs)."""

    def __init__(self, input_topic: str, msgtype: str, labels_topic: str,
                 recorder: Optional[BagWriter] = None):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        self._rclpy = rclpy
        self.context = rclpy.Context()
        # No arguments: rcl would read this tool's own command line (its -p name:=value) as
        # deprecated remapping rules for this peer.
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node('enet_live_evaluate', context=self.context)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                              reliability=ReliabilityPolicy.RELIABLE)
        self.input_topic = input_topic
        self.publisher = self.node.create_publisher(
            CompressedImage if msgtype == COMPRESSED_IMAGE else Image, input_topic, reliable)
        self.labels_topic = labels_topic
        self.received: 'queue.SimpleQueue[Tuple[int, float, Any]]' = queue.SimpleQueue()
        record = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                            reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions = [
            self.node.create_subscription(Image, labels_topic, self._on_labels, record)]
        if recorder is not None:
            for output in masks.LABEL_IMAGES:
                topic = labels_topic.rsplit('/', 1)[0] + '/' + output
                recorder.add_topic(topic, IMAGE)
                self.subscriptions.append(self.node.create_subscription(
                    Image, topic, lambda data, topic=topic: _record(recorder, topic, data),
                    record, raw=True))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name='ros', daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:  # close() shut the context down
            pass

    def _on_labels(self, msg: Any) -> None:
        received = time.monotonic()
        try:
            labels: Any = message_to_labels(msg, IMAGE).copy()
        except MessageError as error:
            labels = error
        self.received.put((stamp_to_ns(msg.header.stamp), received, labels))

    def ready(self) -> bool:
        """Whether the node subscribes to our frames and is matched with our recorders."""
        return (self.publisher.get_subscription_count() > 0
                and all(s.get_publisher_count() > 0 for s in self.subscriptions))

    def publish(self, data: bytes) -> None:
        """Publish one serialised camera message."""
        self.publisher.publish(data)

    def close(self) -> None:
        """
        End the spin, then tear the executor and the node down.

        Shutting the context down wakes the spinning executor; only after its
        thread has ended are the executor and node destroyed (tearing them down
        under a running spin can crash the process).
        """
        self._rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=10.0)
        if self._thread.is_alive():
            return  # a daemon thread: left to the interpreter's exit
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


def wait_ready(peer: LivePeer, node: Optional[NodeProcess], timeout: float,
               settle: float) -> None:
    """
    Wait until the node and ``peer`` are matched both ways, then ``settle`` seconds more.

    Raises :class:`LiveError` (with the node's log) when the started ``node``
    exits first or nothing matches within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not peer.ready():
        if node is not None and node.exited() is not None:
            raise LiveError(f'the segmentation node exited with code {node.exited()} before '
                            f'it was ready; its log ({node.log_path}):\n{node.tail()}')
        if time.monotonic() > deadline:
            log = f'; its log ({node.log_path}):\n{node.tail()}' if node else ''
            raise LiveError(
                f'the segmentation node was not ready within {timeout:.0f} s '
                f'(subscribers of {peer.input_topic}: {peer.publisher.get_subscription_count()}, '
                f'publishers of {peer.labels_topic}: '
                f'{peer.node.count_publishers(peer.labels_topic)}){log}')
        time.sleep(0.1)
    time.sleep(settle)  # discovery completes on both sides
