"""max_rate_hz's schedule (enet_ros.node.cameras.RateLimit) on simulated camera clocks."""

import random
from typing import List

from enet_ros.node.cameras import RateLimit


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
