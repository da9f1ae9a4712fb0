"""
The node's parameters at run time: validation of changes, the model swap hand-over.

A mixin of :class:`~enet_ros.node.segmentation_node.SegmentationMixin`: changes
are checked against the model and applied as a new
:class:`~enet_ros.node.state.NodeState` on the next frame; a new ``model_path``
is validated here and built on the swap thread (:mod:`enet_ros.node.model_swap`).
"""

from typing import Any, Dict, List, Tuple

from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from .config import (CLASS_NAMES_DESCRIPTION, ConfigError, DRIVABLE_DESCRIPTION, PARAMETERS,
                     POSE_FIELDS, pose_parameter, runtime_settings, RuntimeSettings)
from .state import NodeState
from ..model_file import load_model_file, LoadedModel, ModelFileError
from ..segmenter import Segmenter, SegmenterConfigError

STRING_ARRAY = Parameter.Type.STRING_ARRAY
_READ_ONLY_RESTART = ('device', 'precision', 'network_width', 'network_height',
                      'torch_compile', 'cameras', 'warmup_sizes', 'input_transport',
                      'input_reliability', 'input_depth', 'output_reliability', 'output_depth',
                      'diagnostics_period', 'grid_pose_source', 'inference_backend',
                      'cpu_threads')
#: Start-up settings the managed node takes at each configure: settable while unconfigured.
CONFIGURE_TIME_PARAMETERS = tuple(n for n in _READ_ONLY_RESTART if n != 'cameras')


class ParameterHandling:
    """Parameter reading, checking and the model swap hand-over (a node mixin)."""

    #: Whether the node is the managed (lifecycle) one; it reads start-up settings at configure.
    MANAGED = False

    def _values(self, names) -> Dict[str, Any]:
        return {name: self.get_parameter(name).value for name in names}

    def _string_list(self, name: str) -> List[str]:
        """Return a string-array parameter declared by type only; [] when it is not set."""
        try:
            return list(self.get_parameter(name).value or [])
        except ParameterUninitializedException:
            return []

    def _load_model(self, model_path: str) -> LoadedModel:
        """
        Read and validate a model file; raise ConfigError naming the parameter.

        Any failure is a refused file: in the parameter callback an exception
        other than ConfigError would end the executor, and with it the node.
        """
        try:
            return load_model_file(model_path or None)
        except ModelFileError as error:
            raise ConfigError(f'parameter model_path: {error}') from None
        except Exception as error:  # noqa: B902 - e.g. MemoryError: refused, the node lives
            raise ConfigError(f"parameter model_path: model file '{model_path}' cannot be "
                              f'loaded ({type(error).__name__}: {error})') from None

    def _make_segmenter(self, loaded: LoadedModel) -> Segmenter:
        """Build and warm a Segmenter for ``loaded`` with the start-up device settings."""
        startup = self.startup
        size = ((startup.network_width, startup.network_height)
                if startup.network_width else None)
        try:
            return Segmenter(loaded, device=startup.device, precision=startup.precision,
                             input_size=size,
                             torch_compile=None if startup.torch_compile else False,
                             warmup_sizes=startup.warmup_sizes or None,
                             inference_backend=(None if startup.inference_backend == 'auto'
                                                else startup.inference_backend),
                             cpu_threads=startup.cpu_threads or None)
        except SegmenterConfigError as error:
            raise ConfigError('parameters device / precision / network size / warmup_sizes / '
                              f'inference_backend / cpu_threads: {error}') from None

    def _declare_model_parameters(self, metadata: Any) -> None:
        """
        Declare class_names and drivable_classes with the model's values (first configure).

        On a later configure (lifecycle) class_names follows the new model, and
        so does drivable_classes unless it was changed from the old model's default.
        """
        names = list(metadata.class_names)
        default = list(metadata.drivable_classes) or ['']
        if not self.has_parameter('class_names'):
            self.declare_parameter('class_names', names, CLASS_NAMES_DESCRIPTION)
            self.declare_parameter('drivable_classes', default, DRIVABLE_DESCRIPTION)
        else:
            updates = [Parameter('class_names', STRING_ARRAY, names)]
            if list(self.get_parameter('drivable_classes').value) == \
                    self._model_drivable_default:
                updates.append(Parameter('drivable_classes', STRING_ARRAY, default))
            self.set_parameters(updates)
        self._model_drivable_default = default

    def _runtime_settings(self, changes: Dict[str, Any], class_names) -> RuntimeSettings:
        cameras = self.startup.cameras or ('',)
        names = [n for n, (_, d) in PARAMETERS.items() if not d.read_only]
        names += [pose_parameter(camera, field) for camera in cameras for field in POSE_FIELDS]
        values = self._values(names + ['drivable_classes'])
        values.update(changes)
        values['drivable_classes'] = [n for n in values['drivable_classes'] if n]
        return runtime_settings(values, class_names, cameras)

    def _on_set_parameters(self, parameters: List[Parameter]) -> SetParametersResult:
        changes = {}
        for parameter in parameters:
            if parameter.name in _READ_ONLY_RESTART:
                managed = self.MANAGED and parameter.name in CONFIGURE_TIME_PARAMETERS
                return SetParametersResult(successful=False, reason=(
                    f'{parameter.name} applies at configure: cleanup, set it, configure again'
                    if managed else f'{parameter.name} is read-only: restart the node'))
            if parameter.name == 'class_names' and not self._internal_update:
                return SetParametersResult(
                    successful=False, reason='class_names is set by the node from the model')
            changes[parameter.name] = parameter.value
        if self._internal_update:
            return SetParametersResult(successful=True)
        try:
            if 'model_path' in changes:
                self._start_swap(changes)
                return SetParametersResult(successful=True)
            segmenter = self._state.segmenter
            state = NodeState(segmenter, self._runtime_settings(
                changes, segmenter.metadata.class_names))
        except (ConfigError, TypeError, ValueError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        self._state = state
        return SetParametersResult(successful=True)

    def _start_swap(self, changes: Dict[str, Any]) -> None:
        """Validate a new model_path now; build and warm it on the swap thread."""
        loaded = self._load_model(str(changes['model_path']))
        try:
            settings = self._runtime_settings(changes, loaded.metadata.class_names)
        except ConfigError as error:
            raise ConfigError(f'model_path: the new model does not fit: {error} (set '
                              'drivable_classes in the same request, atomically)') from None
        previous = {name: self.get_parameter(name).value
                    for name in ('model_path', 'drivable_classes')}
        self._swap.start(loaded, (settings, previous, self._generation))
        self.get_logger().info(f"loading model {changes['model_path']} (the current model "
                               'answers until it is ready)')

    def _swap_ready(self, segmenter: Segmenter, context: Any) -> None:
        """Hand a built model to the executor thread (called on the swap thread)."""
        self._hand_over(('ready', segmenter, context))

    def _swap_failed(self, reason: str, context: Any) -> None:
        """Hand a failed build's reason to the executor thread (called on the swap thread)."""
        self._hand_over(('failed', reason, context))

    def _hand_over(self, outcome: Tuple[str, Any, Any]) -> None:
        with self._swap_outcome_lock:
            self._swap_outcome = outcome
        self._swap_guard.trigger()

    def _on_swap_outcome(self) -> None:
        """
        Install a built model, or keep the old one and put the parameters back.

        Runs on the executor thread, like the parameter callback: the two never
        interleave, so a parameter set while the model was being built is
        neither lost nor undone, and the parameters read here are the stored ones.
        """
        with self._swap_outcome_lock:
            outcome, self._swap_outcome = self._swap_outcome, None
        if outcome is None:
            return
        kind, value, (requested, previous, generation) = outcome
        if self._state is None or generation != self._generation:
            self.get_logger().info('a model build finished after cleanup: discarded')
            return
        if kind == 'failed':
            self.get_logger().error(f'the new model could not be used ({value}); keeping '
                                    f'{self._state.segmenter.model_path}')
            self._set_internally([Parameter(name, value=v) for name, v in previous.items()])
            return
        segmenter = value
        try:  # parameters changed since the request apply too
            settings = self._runtime_settings({}, segmenter.metadata.class_names)
        except ConfigError:
            settings = requested
        self._state = NodeState(segmenter, settings)
        self._set_internally([Parameter('class_names', STRING_ARRAY,
                                        list(segmenter.metadata.class_names))])
        self.get_logger().info(f'model swapped in after {segmenter.swap_seconds:.1f} s of '
                               f'loading and warm-up: {segmenter.describe()}')

    def _set_internally(self, parameters: List[Parameter]) -> None:
        """Set parameters the node owns (class_names, reverted values) past the checks."""
        # Only on the executor thread (swap outcomes), where the parameter
        # callback runs too: no other thread can see the flag set.
        self._internal_update = True
        try:
            self.set_parameters(parameters)
        finally:
            self._internal_update = False
