"""
The node's /diagnostics: diagnostic_updater's Updater with one task per camera.

The Updater (created at configure, see the node) owns the publisher, the
timer (``diagnostics_period``, the default of its own
``diagnostic_updater.period``) and the status names (``<node name>:
<task name>``). Each camera's :class:`CameraDiagnostics` task fills its
status from the camera's own counters and windowed timings
(:class:`~enet_ros.node.health.FrameStats`), the model and the grid.

diagnostic_updater's FrequencyStatus and TimeStampStatus are not used: their
verdicts are not this node's. FrequencyStatus reports ERROR for a window
without events (no subscriber, hence no output, is normal here) and counts
its window in updates; TimeStampStatus reports ERROR for any stamp older
than 5 s (a replayed bag, sim time) and its figures cover one update. The
documented keys, ``stale_input_timeout`` (WARN) and ``latency_warn_ms`` (WARN
on the median) come from FrameStats.
"""

from typing import Any, Callable, Dict, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_updater import DiagnosticStatusWrapper, DiagnosticTask

from .cameras import Camera
from .health import HealthThresholds, WARN

#: Frame counters reported as ``frames_<key>``.
FRAME_COUNTERS = ('received', 'processed', 'rejected', 'dropped_superseded',
                  'dropped_rate_limit', 'dropped_deactivated', 'skipped_no_subscribers',
                  'failed')
#: What a task reads at each update: (thresholds, segmenter, grid_pose_source), or None
#: while the node is not configured.
Source = Callable[[], Optional[Tuple[HealthThresholds, Any, str]]]


def _fmt(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value:.1f}'


def task_name(camera: Camera, single: bool) -> str:
    """
    Return a camera's task name: 'segmentation', or 'segmentation <camera>'.

    ``single``: the node has one unnamed camera. The Updater prefixes the
    node's name: 'segmentation_node: segmentation front'.
    """
    return 'segmentation' if single else f'segmentation {camera.label}'


def fill_camera_status(stat: DiagnosticStatusWrapper, camera: Camera,
                       thresholds: HealthThresholds, segmenter: Any,
                       grid_pose_source: str = '') -> DiagnosticStatusWrapper:
    """
    Fill ``stat`` with one camera's rates, latency, timings, counters, device, model and grid.

    The grid's keys: ``grid_pose_source`` ('tf' or 'parameters'),
    ``grid_status`` (why the last frame got no grid, else 'ok'; such a
    problem makes the level WARN), ``grid_build_ms`` (the last pixel-to-cell
    map build), ``grid_published``, ``grid_rebuilt_<cause>`` and
    ``grid_skipped_<reason>`` counters.
    """
    snapshot = camera.stats.snapshot(thresholds)
    values: Dict[str, str] = {
        'camera': camera.label,
        'input_rate_hz': _fmt(snapshot.input_rate_hz),
        'output_rate_hz': _fmt(snapshot.output_rate_hz),
        'latency_median_ms': _fmt(snapshot.latency_median_ms),
        'latency_max_ms': _fmt(snapshot.latency_max_ms),
        'processing_median_ms': _fmt(snapshot.processing_median_ms),
        'inference_median_ms': _fmt(snapshot.inference_median_ms),
        'consecutive_failures': str(snapshot.consecutive_failures),
        'device': str(segmenter.device),
        'precision': segmenter.precision,
        'model_path': segmenter.model_path,
        'classes': ','.join(segmenter.metadata.class_names),
    }
    for key in FRAME_COUNTERS:
        values[f'frames_{key}'] = str(snapshot.totals.get(key, 0))
    for reason, count in sorted(snapshot.rejected.items()):
        values[f'rejected_{reason}'] = str(count)
    level, message = snapshot.level, snapshot.message
    problem = camera.grid.problem
    values['grid_pose_source'] = grid_pose_source
    values['grid_status'] = problem or 'ok'
    values['grid_build_ms'] = _fmt(camera.grid.build_ms)
    values['grid_published'] = str(snapshot.totals.get('grid_published', 0))
    values['grid_rebuilt_moving_pose'] = str(snapshot.totals.get('grid_rebuilt_moving_pose', 0))
    for key, count in sorted(snapshot.totals.items()):
        if key.startswith(('grid_skipped_', 'grid_rebuilt_')):
            values[key] = str(count)
    if problem:
        level = max(level, WARN)
        grid_message = f'no drivable grid: {problem}'
        message = grid_message if message == 'ok' else f'{message}; {grid_message}'
    stat.summary(bytes([level]), message)
    stat.hardware_id = str(segmenter.device)
    for key, value in values.items():
        stat.add(key, value)
    return stat


def camera_status(node_name: str, camera: Camera, thresholds: HealthThresholds,
                  segmenter: Any, single: bool, grid_pose_source: str = '') -> DiagnosticStatus:
    """Return one camera's status as the Updater publishes it, named '<node>: <task>'."""
    stat = DiagnosticStatusWrapper(name=f'{node_name}: {task_name(camera, single)}')
    return fill_camera_status(stat, camera, thresholds, segmenter, grid_pose_source)


class CameraDiagnostics(DiagnosticTask):
    """One camera's diagnostic task; ``source`` gives the node's current model and settings."""

    def __init__(self, camera: Camera, single: bool, source: Source):
        super().__init__(task_name(camera, single))
        self.camera = camera
        self._source = source

    def run(self, stat: DiagnosticStatusWrapper) -> DiagnosticStatusWrapper:
        """Fill ``stat`` (the Updater calls this each period, on the executor thread)."""
        current = self._source()
        if current is None:  # cleaned up between the timer's start and this task
            stat.summary(DiagnosticStatus.WARN, 'not configured')
            return stat
        thresholds, segmenter, grid_pose_source = current
        return fill_camera_status(stat, self.camera, thresholds, segmenter, grid_pose_source)
