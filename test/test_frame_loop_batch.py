"""
The node's frame loop with a batching Segmenter, in process (batching is off on the CPU).

A real rclpy node in its own context gives the cameras real publishers, and
a subscription to every output makes them wanted, as in the node;
:class:`FrameLoop` serves the frames the cameras have waiting. A Segmenter
built with ``batch_frames=True`` (the CUDA default; off on the CPU, see
bench/README.md "Batched frames") runs the frames of one size as one batch:
each camera's labels equal a one-at-a-time ``segment`` of its frame, the
images follow from them, the labels are published first, and a camera with
no frame waiting is not waited for.
"""

import os
import random
import time

from enet_ros import masks
from enet_ros.node.cameras import Camera, FrameSlots
from enet_ros.node.frame_loop import FrameLoop, PUBLISH_ORDER
from enet_ros.node.frame_setup import FrameSetup
from enet_ros.node.grid_output import GridOutput
from enet_ros.node.model_holder import ModelHolder
from enet_ros.node.parameter_table import PARAMETERS
from enet_ros.node.settings import runtime_settings
from enet_ros.node.throttled_log import ThrottledWarnings
from enet_ros.ros_io.image_msgs import ImageBuffer
from enet_ros.segmenter import Segmenter
import numpy as np
import pytest
from ros_harness import make_image_msg

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')
OUTPUTS = ('labels', 'colored', 'overlay', 'drivable')
#: (camera, width, height): two cameras of one size (a batch) and one of another.
CAMERAS = (('front', 96, 64), ('left', 96, 64), ('wide', 128, 72))


def _frame(seed: int, width: int, height: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def rig(random_model_file, monkeypatch):
    """Build a node, three cameras with wanted outputs, a FrameLoop with a batching model."""
    import rclpy
    from sensor_msgs.msg import Image

    monkeypatch.setenv('ROS_DOMAIN_ID', str(random.Random().randint(101, 200)))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.pop('ROS_LOCALHOST_ONLY', None)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('frame_loop_batch_test', context=context)
    segmenter = Segmenter.from_file(str(random_model_file), device='cpu', input_size=(96, 64),
                                    torch_compile=False, inference_backend='torch',
                                    batch_frames=True)
    assert segmenter.batches
    values = {name: default for name, (default, _) in PARAMETERS.items()}
    values.update(publish=list(OUTPUTS),
                  drivable_classes=list(segmenter.metadata.drivable_classes))
    names = [name for name, _, _ in CAMERAS]
    settings = runtime_settings(values, segmenter.metadata.class_names, names)
    holder = ModelHolder(lambda setup: None)
    holder.install(FrameSetup(segmenter, settings))
    warnings = ThrottledWarnings(node.get_logger())
    loop = FrameLoop(node, holder, GridOutput(node, warnings), warnings)
    cameras, subscriptions = [], []
    for name in names:
        camera = Camera(name)
        for output in OUTPUTS:
            topic = f'~/{name}/{output}'
            camera.publishers[output] = node.create_publisher(Image, topic, 10)
            camera.buffers[output] = ImageBuffer(
                Image, 'rgb8' if masks.OUTPUT_CHANNELS[output] == 3 else 'mono8')
            subscriptions.append(node.create_subscription(Image, topic, lambda msg: None, 10))
        cameras.append(camera)
    deadline = time.monotonic() + 20
    while any(p.get_subscription_count() == 0 for c in cameras for p in c.publishers.values()):
        assert time.monotonic() < deadline, 'the subscriptions did not match'
        time.sleep(0.05)
    loop.slots = FrameSlots(cameras)
    loop.active = True
    yield loop, cameras, segmenter
    node.destroy_node()
    rclpy.try_shutdown(context=context)


def _spy(monkeypatch, segmenter, cameras):
    """Record segment / segment_batch calls (frame counts) and the order of publish calls."""
    calls, published = [], []
    real_one, real_batch = segmenter.segment, segmenter.segment_batch
    monkeypatch.setattr(segmenter, 'segment',
                        lambda image, **kw: calls.append(1) or real_one(image, **kw))
    monkeypatch.setattr(segmenter, 'segment_batch',
                        lambda frames, **kw: calls.append(len(frames)) or real_batch(frames,
                                                                                     **kw))
    for camera in cameras:
        for output, publisher in camera.publishers.items():
            real = publisher.publish
            monkeypatch.setattr(publisher, 'publish',
                                lambda msg, real=real, key=(camera.name, output):
                                published.append(key) or real(msg))
    return calls, published


def _labels(camera: Camera) -> np.ndarray:
    msg = camera.buffers['labels'].msg
    return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width)


def test_waiting_frames_of_one_size_run_as_one_batch_and_equal_one_at_a_time(rig, monkeypatch):
    """front+left (96x64) batched, wide (128x72) alone; labels as segment(); images follow."""
    loop, cameras, segmenter = rig
    frames = {name: _frame(seed, width, height)
              for seed, (name, width, height) in enumerate(CAMERAS)}
    expected = {name: segmenter.segment(frame).labels for name, frame in frames.items()}
    for camera in cameras:
        loop.slots.offer(camera, make_image_msg(frames[camera.name], 'rgb8', stamp_ns=10**9))
    calls, published = _spy(monkeypatch, segmenter, cameras)
    taken = loop.slots.take(timeout=1.0)
    others = loop.slots.take_waiting()
    assert [camera.name for camera, _, _ in [taken] + others] == ['front', 'left', 'wide']
    assert not loop.serve([taken] + others)
    assert sorted(calls) == [1, 2]  # one batch of two, one frame alone
    renderer = loop._model.setup.renderer
    for camera in cameras:
        labels = _labels(camera)
        np.testing.assert_array_equal(labels, expected[camera.name])
        drawn = renderer.render(labels, frames[camera.name], OUTPUTS)
        for output in ('colored', 'overlay', 'drivable'):
            msg = camera.buffers[output].msg
            np.testing.assert_array_equal(
                np.frombuffer(msg.data, np.uint8).reshape(drawn[output].shape), drawn[output])
        order = [output for name, output in published if name == camera.name]
        assert order == [name for name in PUBLISH_ORDER if name in OUTPUTS]
        assert order[0] == 'labels'


def test_a_camera_without_a_frame_is_not_waited_for(rig, monkeypatch):
    """Only front has a frame: it is served at once, alone; left's later frame comes next."""
    loop, cameras, segmenter = rig
    front, left, _ = cameras
    calls, published = _spy(monkeypatch, segmenter, cameras)
    loop.slots.offer(front, make_image_msg(_frame(5, 96, 64), 'rgb8', stamp_ns=10**9))
    start = time.monotonic()
    taken = loop.slots.take(timeout=1.0)
    others = loop.slots.take_waiting()
    assert taken[0] is front and others == []
    assert not loop.serve([taken] + others)
    assert time.monotonic() - start < 10.0  # no wait for left or wide (they never send)
    assert calls == [1]
    assert {name for name, _ in published} == {'front'}
    frame = _frame(6, 96, 64)
    loop.slots.offer(left, make_image_msg(frame, 'rgb8', stamp_ns=2 * 10**9))
    taken = loop.slots.take(timeout=1.0)
    assert taken[0] is left and loop.slots.take_waiting() == []
    assert not loop.serve([taken])
    np.testing.assert_array_equal(_labels(left), segmenter.segment(frame).labels)


def test_the_loop_takes_the_waiting_frames_with_the_first(rig, monkeypatch):
    """FrameLoop.run: frames waiting in three cameras go through one batch and one single."""
    import threading

    loop, cameras, segmenter = rig
    calls, published = _spy(monkeypatch, segmenter, cameras)
    for seed, (camera, (_, width, height)) in enumerate(zip(cameras, CAMERAS)):
        loop.slots.offer(camera, make_image_msg(_frame(seed, width, height), 'rgb8',
                                                stamp_ns=10**9))
    runner = threading.Thread(target=loop.run)
    runner.start()
    deadline = time.monotonic() + 60
    while len(published) < len(cameras) * len(OUTPUTS) and time.monotonic() < deadline:
        time.sleep(0.05)
    loop.stop()
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert sorted(calls) == [1, 2]
    assert len(published) == len(cameras) * len(OUTPUTS)
