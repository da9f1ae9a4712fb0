"""max_rate_hz's schedule (enet_ros.node.cameras.RateLimit): simulated clocks, a real node."""

import random
import threading
import time
from typing import List

from enet_ros.node.cameras import RateLimit
import numpy as np
import pytest
from ros_harness import make_image_msg, NodeProcess, RosPeer, set_parameters


def _processed(stamps: List[float], interval: float) -> List[float]:
    rate = RateLimit()
    kept = []
    for received in stamps:
        if rate.due(received, interval):
            rate.processed(received, interval)
            kept.append(received)
    return kept


def test_jittery_30_hz_camera_limited_to_10_hz_gets_10_hz():
    """Every third frame of a 30 Hz camera with +-3 ms jitter: 10 Hz, not 7.5 Hz."""
    jitter = random.Random(4)
    stamps = [i / 30 + jitter.uniform(-0.003, 0.003) for i in range(300)]
    kept = _processed(stamps, 0.1)
    assert len(kept) == 100
    gaps = [b - a for a, b in zip(kept, kept[1:])]
    assert min(gaps) > 0.09 and max(gaps) < 0.11


def test_30_hz_camera_limited_to_20_hz_averages_20_hz_at_most():
    """Two frames in three: the average never passes the limit, and gets to it."""
    kept = _processed([i / 30 for i in range(300)], 0.05)
    assert len(kept) == 200
    for start in range(0, len(kept) - 20):
        assert kept[start + 20] - kept[start] >= 20 * 0.05 - 0.05 * 0.25 - 1e-9


def test_no_limit_keeps_every_frame_and_a_gap_restarts_the_schedule():
    """Interval 0 keeps all; after a pause the next frame is due at once, with no burst."""
    assert _processed([0.0, 0.001, 0.002], 0.0) == [0.0, 0.001, 0.002]
    stamps = [i / 30 for i in range(30)] + [10 + i / 30 for i in range(30)]
    kept = _processed(stamps, 0.1)
    assert kept[10] == 10.0
    assert all(b - a > 0.09 for a, b in zip(kept, kept[1:]))


def test_a_rate_change_applies_from_the_last_frame():
    """Lowered then raised, or raised then lowered: the next frame is due by the new rate."""
    rate = RateLimit()
    assert rate.due(0.0, 1000.0)  # 0.001 Hz: the first frame is due
    rate.processed(0.0, 1000.0)
    assert not rate.due(5.0, 1000.0)
    assert rate.due(5.0, 0.1)  # raised to 10 Hz: due again (it used to wait 1000 s)
    rate.processed(5.0, 0.1)
    assert not rate.due(5.05, 0.1) and rate.due(5.1, 0.1)
    rate = RateLimit()
    rate.processed(0.0, 0.1)
    assert not rate.due(0.5, 1.0)  # lowered to 1 Hz: not before 0.75 s
    assert rate.due(0.75, 1.0)
    for interval in (1e300, float('inf')):  # 1e-300 Hz, and 5e-324 Hz (1 / 5e-324 is inf)
        rate = RateLimit()
        assert rate.due(0.0, interval)
        rate.processed(0.0, interval)
        assert not rate.due(1e6, interval)
        assert rate.due(1.0, 0.1)  # raised to 10 Hz: due (it used to be never)


def _stream_frames(publisher, stop: threading.Event, period: float = 0.05) -> None:
    """Publish a 64x48 frame every ``period`` seconds, new stamps, until ``stop``."""
    pixels = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    index = 0
    while not stop.is_set():
        index += 1
        publisher.publish(make_image_msg(pixels, 'rgb8', 1_900_000_000_000_000_000 + index))
        stop.wait(period)


@pytest.mark.integration
def test_node_rate_lowered_then_raised_resumes(ros_env, random_model_file):
    """
    max_rate_hz set to 0.001 (one frame), then 10: frames flow again at once; 1e-300 too.

    The node used to keep the next slot of the slow rate: after 0.001 Hz nothing came
    for 1000 s whatever the rate was raised to, after 1e-300 Hz never.
    """
    from sensor_msgs.msg import Image

    node = NodeProcess(ros_env, {'model_path': str(random_model_file), 'network_width': 64,
                                 'network_height': 48, 'torch_compile': False,
                                 'publish': ['labels']})
    peer = RosPeer(ros_env)
    stop = threading.Event()
    streamer = None
    try:
        node.wait_ready()
        peer.subscribe(Image, '/segmentation_node/labels', 'labels')
        publisher = peer.publisher(Image, '/image')
        peer.wait_for_subscribers(publisher)

        def outputs() -> int:
            return len(peer.messages('labels'))

        for slow in (0.001, 1e-300):
            [result] = set_parameters(peer, {'max_rate_hz': slow})
            assert result.successful, result.reason
            if streamer is None:
                streamer = threading.Thread(target=_stream_frames, args=(publisher, stop))
                streamer.start()
                assert peer.wait_for(lambda: outputs() >= 1, 30.0), node.log()
            time.sleep(1.0)  # a frame in flight when the rate changed may still come
            before = outputs()
            time.sleep(2.0)
            assert outputs() == before, f'frames at {slow} Hz'
            [result] = set_parameters(peer, {'max_rate_hz': 10.0})
            assert result.successful, result.reason
            assert peer.wait_for(lambda: outputs() >= before + 5, 10.0), \
                f'{outputs() - before} frames in 10 s after raising {slow} Hz to 10 Hz'
        assert node.process.poll() is None, node.log()
    finally:
        stop.set()
        if streamer is not None:
            streamer.join()
        peer.close()
        assert node.stop() == 0
