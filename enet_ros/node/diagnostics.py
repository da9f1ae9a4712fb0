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

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_updater import DiagnosticStatusWrapper, DiagnosticTask, Updater
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.impl.implementation_singleton import rclpy_implementation

from .cameras import Camera
from .health import HealthThresholds, WARN
from .parameter_table import ConfigError

RCLError = rclpy_implementation.RCLError
#: diagnostic_updater's parameter for its period; ``diagnostics_period`` is its default.
UPDATER_PERIOD = 'diagnostic_updater.period'
#: The range of both: a period of 0 would publish as fast as the executor turns.
DIAGNOSTICS_PERIOD_S = (0.1, 60.0)

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
        'backend': segmenter.backend,
        'openmp_wait': segmenter.openmp_wait,
        'openmp_cpus': segmenter.openmp_cpus,
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


class NodeDiagnostics:
    """
    The node's /diagnostics: an Updater made at configure, one task per camera while active.

    :meth:`create` (configure) makes the Updater, its timer stopped; its period
    is its own parameter ``diagnostic_updater.period`` (declared then, with
    ``diagnostics_period`` as the default; undeclared again by :meth:`destroy`,
    so the next configure declares it afresh). Both apply at configure:
    :meth:`refuse_changes` makes the node refuse later changes of the
    Updater's parameters. :meth:`start` (activate) adds the cameras' tasks and
    starts the timer, :meth:`stop` (deactivate) removes them. ``source`` gives
    the current thresholds, model and grid pose source (None while not configured).
    """

    def __init__(self, node: Any, source: Source):
        self._node = node
        self._source = source
        self._updater: Optional[Updater] = None
        self._refusal = None
        self._tasks: List[CameraDiagnostics] = []

    def create(self, period_s: float, hardware_id: str) -> None:
        """Create the Updater with its timer stopped; ConfigError if its period is bad."""
        node = self._node
        try:
            self._updater = Updater(node, period=period_s)
        except (ParameterException, RCLError, TypeError, ValueError) as error:
            for publisher in [p for p in node.publishers if p.topic_name == '/diagnostics']:
                node.destroy_publisher(publisher)  # the Updater's, made before it failed
            if node.has_parameter(UPDATER_PERIOD):
                node.undeclare_parameter(UPDATER_PERIOD)
            raise ConfigError(f'parameter {UPDATER_PERIOD}: {error}') from None
        self._updater.timer.cancel()
        period = self._updater.period
        if not DIAGNOSTICS_PERIOD_S[0] <= period <= DIAGNOSTICS_PERIOD_S[1]:
            self.destroy()
            raise ConfigError(f'parameter {UPDATER_PERIOD}: {period} s is outside '
                              f'[{DIAGNOSTICS_PERIOD_S[0]:g}, {DIAGNOSTICS_PERIOD_S[1]:g}] s, '
                              'the range of diagnostics_period')
        self._updater.setHardwareID(hardware_id)

    def refuse_changes(self) -> None:
        """Refuse changes of the Updater's parameters from now (the last added runs first)."""
        self._refusal = self._refuse_updater_changes
        self._node.add_on_set_parameters_callback(self._refusal)

    @staticmethod
    def _refuse_updater_changes(parameters: List[Any]) -> SetParametersResult:
        for parameter in parameters:
            if parameter.name.startswith('diagnostic_updater.'):
                return SetParametersResult(successful=False, reason=(
                    f'{parameter.name} applies when the node starts (the managed node: at '
                    'configure; set diagnostics_period while unconfigured)'))
        return SetParametersResult(successful=True)

    def start(self, cameras: Sequence[Camera]) -> None:
        """Add one task per camera (each publishes 'Node starting up' at once); start the timer."""
        single = len(cameras) == 1 and not cameras[0].name
        self._tasks = [CameraDiagnostics(camera, single, self._source) for camera in cameras]
        for task in self._tasks:
            self._updater.add(task)
        self._updater.timer.reset()

    def stop(self) -> None:
        """Stop the timer and remove the cameras' tasks."""
        if self._updater is not None:
            self._updater.timer.cancel()
            for task in self._tasks:
                self._updater.removeByName(task.getName())
        self._tasks = []

    def destroy(self) -> None:
        """Destroy the Updater's timer and publisher, undeclare its period, drop the refusal."""
        updater, self._updater = self._updater, None
        if updater is None:
            return
        if self._refusal is not None:
            self._node.remove_on_set_parameters_callback(self._refusal)
            self._refusal = None
        node = self._node
        node.destroy_timer(updater.timer)
        node.destroy_publisher(updater.publisher)
        node.undeclare_parameter(UPDATER_PERIOD)
