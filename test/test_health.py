"""FrameStats: counters, windowed timings and the OK / WARN / ERROR verdict."""

from enet_ros.node.health import ERROR, FrameStats, HealthThresholds, OK, WARN


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_timings_are_medians_over_the_window():
    clock = FakeClock()
    stats = FrameStats(window_s=5.0, clock=clock)
    for latency, processing, inference in ((0.030, 0.020, 0.015), (0.050, 0.040, 0.035),
                                           (0.040, 0.030, 0.025)):
        stats.received()
        stats.published(latency, processing, inference)
        clock.now += 0.1
    snapshot = stats.snapshot(HealthThresholds())
    assert snapshot.level == OK and snapshot.message == 'ok'
    assert abs(snapshot.latency_median_ms - 40.0) < 1e-9
    assert abs(snapshot.latency_max_ms - 50.0) < 1e-9
    assert abs(snapshot.processing_median_ms - 30.0) < 1e-9
    assert abs(snapshot.inference_median_ms - 25.0) < 1e-9
    assert snapshot.totals == {'received': 3, 'processed': 3}

    clock.now += 10.0  # the window empties; the totals stay
    snapshot = stats.snapshot(HealthThresholds())
    assert snapshot.inference_median_ms is None and snapshot.latency_median_ms is None
    assert snapshot.totals['processed'] == 3
    assert snapshot.level == WARN and 'no input' in snapshot.message


def test_frames_without_a_stamp_have_no_latency_but_count():
    stats = FrameStats(clock=FakeClock())
    stats.received()
    stats.published(None, 0.020, 0.010)
    snapshot = stats.snapshot(HealthThresholds())
    assert snapshot.latency_median_ms is None
    assert abs(snapshot.inference_median_ms - 10.0) < 1e-9


def test_failures_in_a_row_raise_error_and_a_success_clears_it():
    stats = FrameStats(clock=FakeClock())
    stats.received()
    thresholds = HealthThresholds(max_consecutive_failures=3)
    assert [stats.failed() for _ in range(3)] == [1, 2, 3]
    snapshot = stats.snapshot(thresholds)
    assert snapshot.level == ERROR and '3 consecutive' in snapshot.message
    stats.published(0.01, 0.01, 0.005)
    assert stats.snapshot(thresholds).level == OK


def test_high_latency_warns():
    stats = FrameStats(clock=FakeClock())
    stats.received()
    stats.published(0.800, 0.700, 0.600)
    snapshot = stats.snapshot(HealthThresholds(latency_warn_ms=500.0))
    assert snapshot.level == WARN and 'median latency 800 ms' in snapshot.message
