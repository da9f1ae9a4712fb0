"""A dead device: frames that keep failing, with and without exit_on_failure (in process)."""

import os
import textwrap
import threading
import time

from enet_ros.node.segmentation_node import SegmentationNode
import numpy as np
import pytest
from ros_harness import make_image_msg, NodeProcess, RosPeer

#: Frames of this size fail in the process below (warm-up and other sizes do not).
DEAD_SIZE = (55, 77)
#: sitecustomize.py for the node process: the Segmenter fails on DEAD_SIZE frames, as a dead
#: GPU does on every frame after warm-up.
DEAD_DEVICE_HOOK = textwrap.dedent(f"""\
    import enet_ros.segmenter as segmenter

    _segment = segmenter.Segmenter.segment


    def segment(self, image, *args, **kwargs):
        if image.shape[:2] == {DEAD_SIZE}:
            raise RuntimeError('CUDA error: an illegal memory access was encountered (test)')
        return _segment(self, image, *args, **kwargs)


    segmenter.Segmenter.segment = segment
    """)

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')


@pytest.fixture
def failing_node(random_model_file, rclpy_context):
    """Build a node whose Segmenter always raises, with a subscriber on its labels."""
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    context = rclpy_context

    def build(exit_on_failure: bool) -> SegmentationNode:
        node = SegmentationNode(context=context, parameter_overrides=[
            Parameter('model_path', value=str(random_model_file)),
            Parameter('torch_compile', value=False),
            Parameter('max_consecutive_failures', value=3),
            Parameter('exit_on_failure', value=exit_on_failure)])

        def dead_device(*args, **kwargs):
            raise RuntimeError('CUDA error: an illegal memory access was encountered')

        node.segmenter.segment = dead_device
        node.create_subscription(Image, '~/labels', lambda msg: None, 1)
        deadline = time.monotonic() + 10
        while (node.cameras[0].publishers['labels'].get_subscription_count() == 0
               and time.monotonic() < deadline):
            time.sleep(0.01)
        built.append(node)
        return node

    built = []
    yield build
    for node in built:
        node.destroy_node()


def _feed_frames(node: SegmentationNode, stop: threading.Event) -> threading.Thread:
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)

    def feed():
        while not stop.is_set():
            node._on_image(make_image_msg(pixels, 'rgb8', time.time_ns()), node.cameras[0])
            stop.wait(0.02)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def _run_until(node: SegmentationNode, timeout_s: float, stop_after_failures: int = 0):
    """Run inference on this thread; a watchdog stops it after ``timeout_s``."""
    stop = threading.Event()
    feeder = _feed_frames(node, stop)
    fired = []

    def watchdog():
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not stop.is_set():
            failed = node.cameras[0].stats.totals.get('failed', 0)
            if stop_after_failures and failed >= stop_after_failures:
                break
            time.sleep(0.01)
        if not stop.is_set():
            fired.append(True)
            node.stop()

    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    node.run_inference()
    stop.set()
    feeder.join(5)
    guard.join(5)
    return bool(fired)


@pytest.mark.slow
def test_exit_on_failure_ends_inference_after_the_limit(failing_node):
    """exit_on_failure: true returns from inference after 3 failures in a row (in process)."""
    node = failing_node(exit_on_failure=True)
    stopped_by_watchdog = _run_until(node, timeout_s=30)
    assert not stopped_by_watchdog
    assert node.failed_frames
    assert node.cameras[0].stats.totals['failed'] == 3


@pytest.mark.integration
def test_exit_on_failure_exits_the_process_with_code_3(ros_env, random_model_file, tmp_path):
    """The node as a process: failed frames in a row with exit_on_failure end it with code 3."""
    from sensor_msgs.msg import Image

    (tmp_path / 'sitecustomize.py').write_text(DEAD_DEVICE_HOOK)
    env = dict(ros_env, PYTHONPATH=os.pathsep.join(
        p for p in (str(tmp_path), ros_env.get('PYTHONPATH', '')) if p))
    node = NodeProcess(env, {'model_path': str(random_model_file), 'torch_compile': False,
                             'network_width': 64, 'network_height': 48,
                             'max_consecutive_failures': 3, 'exit_on_failure': True})
    peer = RosPeer(env)
    try:
        node.wait_ready()
        peer.subscribe(Image, '/segmentation_node/labels', 'labels')
        publisher = peer.publisher(Image, '/image')
        peer.wait_for_subscribers(publisher)
        frame = np.zeros((*DEAD_SIZE, 3), dtype=np.uint8)
        deadline = time.monotonic() + 60
        while node.exited() is None and time.monotonic() < deadline:
            publisher.publish(make_image_msg(frame, 'rgb8', time.time_ns()))
            time.sleep(0.1)
        assert node.wait_exit(30) == 3, node.log()
        log = node.log()
        assert 'illegal memory access was encountered (test)' in log, log
        assert 'Traceback' not in log, log
        assert not peer.messages('labels')
    finally:
        peer.close()
        if node.exited() is None:
            node.stop()


@pytest.mark.slow
def test_without_exit_on_failure_the_node_keeps_going(failing_node):
    """exit_on_failure: false (default) keeps taking frames past the limit, reporting ERROR."""
    node = failing_node(exit_on_failure=False)
    assert _run_until(node, timeout_s=30, stop_after_failures=6)
    assert not node.failed_frames
    assert node.cameras[0].stats.totals['failed'] >= 6
    from enet_ros.node.health import HealthThresholds

    snapshot = node.cameras[0].stats.snapshot(HealthThresholds(3.0, 500.0, 3))
    assert snapshot.level == 2  # ERROR
