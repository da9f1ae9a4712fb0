"""The node's /diagnostics message: one status per camera, from its counters and the model."""

from typing import Any, Dict, Optional, Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from .cameras import Camera
from .health import HealthThresholds, WARN

#: Frame counters reported as ``frames_<key>``.
FRAME_COUNTERS = ('received', 'processed', 'rejected', 'dropped_superseded',
                  'dropped_rate_limit', 'dropped_deactivated', 'skipped_no_subscribers',
                  'failed')


def _fmt(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value:.1f}'


def camera_status(node_name: str, camera: Camera, thresholds: HealthThresholds,
                  segmenter: Any, single: bool, grid_pose_source: str = '') -> DiagnosticStatus:
    """
    Return one camera's status: rates, latency, timings, counters, device, model and grid.

    ``single``: the node has one unnamed camera; its status keeps the name
    '<node>: segmentation' (else '<node>: segmentation <camera>'). The grid's
    keys: ``grid_pose_source`` ('tf' or 'parameters'), ``grid_status`` (why
    the last frame got no grid, else 'ok'; such a problem makes the level
    WARN), ``grid_build_ms`` (the last pixel-to-cell map build),
    ``grid_published``, ``grid_rebuilt_<cause>`` and ``grid_skipped_<reason>`` counters.
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
    suffix = '' if single else f' {camera.label}'
    return DiagnosticStatus(
        level=bytes([level]), name=f'{node_name}: segmentation{suffix}',
        message=message, hardware_id=str(segmenter.device),
        values=[KeyValue(key=k, value=v) for k, v in values.items()])


def diagnostic_array(node_name: str, cameras: Sequence[Camera], thresholds: HealthThresholds,
                     segmenter: Any, stamp: Any, grid_pose_source: str = '') -> DiagnosticArray:
    """Return the DiagnosticArray of all cameras, stamped ``stamp``."""
    single = len(cameras) == 1 and not cameras[0].name
    array = DiagnosticArray(status=[
        camera_status(node_name, camera, thresholds, segmenter, single, grid_pose_source)
        for camera in cameras])
    array.header.stamp = stamp
    return array
