"""
The node's parameters while it runs: declared, read, changes checked, the model swap handed over.

:class:`ParameterController` declares the parameters (the table:
:mod:`~enet_ros.node.parameter_table`), reads them for configure, and checks
every change against the model in use: an accepted change applies as a new
:class:`~enet_ros.node.frame_setup.FrameSetup` on the next frame; a new
``model_path`` is validated here and built on the swap thread
(:mod:`~enet_ros.node.model_swap`), then handed back to the executor thread.
"""

import copy
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from .frame_setup import FrameSetup
from .model_holder import ModelHolder
from .model_swap import ModelSwap
from .parameter_table import (CAMERA_NAME, CAMERAS_DESCRIPTION, CLASS_NAMES_DESCRIPTION,
                              ConfigError, CONFIGURE_TIME_PARAMETERS, DRIVABLE_DESCRIPTION,
                              PARAMETERS, pose_descriptor, POSE_FIELDS, pose_parameter,
                              READ_ONLY_PARAMETERS, WARMUP_SIZES_DESCRIPTION)
from .settings import runtime_settings, RuntimeSettings
from ..segmenter import Segmenter

STRING_ARRAY = Parameter.Type.STRING_ARRAY


class ParameterController:
    """
    Declares, reads and guards the node's parameters; hands a swapped model to the executor.

    ``node``: the rclpy node whose parameters these are. ``managed``: the
    lifecycle node, which reads the start-up settings at each configure (so
    they stay settable while it is unconfigured). ``model``: the model in use,
    which accepted changes replace. Everything here runs on the executor
    thread (parameter callbacks, the swap hand-over) or in configure, except
    the swap thread's two callbacks, which only hand their result over.
    """

    def __init__(self, node: Any, managed: bool, model: ModelHolder):
        self._node = node
        self._managed = managed
        self._model = model
        self._cameras: Tuple[str, ...] = ('',)
        self._callback = None
        self._model_drivable_default: Optional[List[str]] = None
        self._internal_update = False
        self.swap = ModelSwap(model.build, self._swap_ready, self._swap_failed)
        self._swap_outcome = None
        self._swap_outcome_lock = threading.Lock()
        self.swap_guard = node.create_guard_condition(self.on_swap_outcome)
        self._declare()

    def _declare(self) -> None:
        node = self._node
        for name, (default, descriptor) in PARAMETERS.items():
            node.declare_parameter(name, default, self._start_up_descriptor(name, descriptor))
        node.declare_parameter('cameras', STRING_ARRAY, CAMERAS_DESCRIPTION)
        node.declare_parameter('warmup_sizes', STRING_ARRAY,
                               self._start_up_descriptor('warmup_sizes', WARMUP_SIZES_DESCRIPTION))
        for camera in self.camera_names():
            if camera and not CAMERA_NAME.match(camera):
                continue  # refused by configure, with the reason
            for field in POSE_FIELDS:
                name = pose_parameter(camera, field)
                if not node.has_parameter(name):
                    node.declare_parameter(name, 0.0, pose_descriptor(field))

    def _start_up_descriptor(self, name: str, descriptor: Any) -> Any:
        """
        Return ``descriptor``, writable for the managed node if it is a start-up setting.

        The managed node reads them at each configure, so they can be fixed
        while it is unconfigured (its parameter callback, installed by
        configure, refuses them while configured). ``cameras`` stays read-only:
        the per-camera pose parameters are declared from it at start.
        """
        if not self._managed or name not in CONFIGURE_TIME_PARAMETERS:
            return descriptor
        writable = copy.deepcopy(descriptor)
        writable.read_only = False
        return writable

    def camera_names(self) -> Tuple[str, ...]:
        """Return the ``cameras`` parameter's names, ('',) when not set; not validated."""
        return tuple(self._string_list('cameras')) or ('',)

    def _values(self, names) -> Dict[str, Any]:
        return {name: self._node.get_parameter(name).value for name in names}

    def _string_list(self, name: str) -> List[str]:
        """Return a string-array parameter declared by type only; [] when it is not set."""
        try:
            return list(self._node.get_parameter(name).value or [])
        except ParameterUninitializedException:
            return []

    def start_up_values(self) -> Dict[str, Any]:
        """Return the values :func:`~enet_ros.node.settings.startup_settings` checks."""
        values = self._values(PARAMETERS)
        values['cameras'] = self._string_list('cameras')
        values['warmup_sizes'] = self._string_list('warmup_sizes')
        return values

    def declare_model_parameters(self, metadata: Any) -> None:
        """
        Declare class_names and drivable_classes with the model's values (first configure).

        On a later configure (lifecycle) class_names follows the new model, and
        so does drivable_classes unless it was changed from the old model's default.
        """
        node = self._node
        names = list(metadata.class_names)
        default = list(metadata.drivable_classes) or ['']
        if not node.has_parameter('class_names'):
            node.declare_parameter('class_names', names, CLASS_NAMES_DESCRIPTION)
            node.declare_parameter('drivable_classes', default, DRIVABLE_DESCRIPTION)
        else:
            updates = [Parameter('class_names', STRING_ARRAY, names)]
            if list(node.get_parameter('drivable_classes').value) == \
                    self._model_drivable_default:
                updates.append(Parameter('drivable_classes', STRING_ARRAY, default))
            node.set_parameters(updates)
        self._model_drivable_default = default

    def runtime_settings(self, changes: Dict[str, Any], class_names) -> RuntimeSettings:
        """Return the run-time settings: the parameters' values with ``changes`` applied."""
        names = [n for n, (_, d) in PARAMETERS.items() if not d.read_only]
        names += [pose_parameter(camera, field)
                  for camera in self._cameras for field in POSE_FIELDS]
        values = self._values(names + ['drivable_classes'])
        values.update(changes)
        values['drivable_classes'] = [n for n in values['drivable_classes'] if n]
        return runtime_settings(values, class_names, self._cameras)

    def configure(self, cameras: Sequence[str]) -> None:
        """Take the start-up's camera names (their pose parameters are run-time settings)."""
        self._cameras = tuple(cameras) or ('',)

    def watch(self) -> None:
        """Check and apply every change from now on (configure, after the model's parameters)."""
        self._callback = self._on_set_parameters
        self._node.add_on_set_parameters_callback(self._callback)

    def unwatch(self) -> None:
        """Stop checking changes (cleanup): an unconfigured node takes any value in range."""
        if self._callback is not None:
            self._node.remove_on_set_parameters_callback(self._callback)
            self._callback = None

    def _on_set_parameters(self, parameters: List[Parameter]) -> SetParametersResult:
        changes = {}
        for parameter in parameters:
            if parameter.name in READ_ONLY_PARAMETERS:
                managed = self._managed and parameter.name in CONFIGURE_TIME_PARAMETERS
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
            segmenter = self._model.segmenter
            setup = FrameSetup(segmenter, self.runtime_settings(
                changes, segmenter.metadata.class_names))
        except (ConfigError, TypeError, ValueError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        self._model.install(setup)
        return SetParametersResult(successful=True)

    def _start_swap(self, changes: Dict[str, Any]) -> None:
        """Validate a new model_path now; build and warm it on the swap thread."""
        loaded = self._model.load(str(changes['model_path']))
        try:
            settings = self.runtime_settings(changes, loaded.metadata.class_names)
        except ConfigError as error:
            raise ConfigError(f'model_path: the new model does not fit: {error} (set '
                              'drivable_classes in the same request, atomically)') from None
        previous = {name: self._node.get_parameter(name).value
                    for name in ('model_path', 'drivable_classes')}
        self.swap.start(loaded, (settings, previous, self._model.generation))
        self._node.get_logger().info(f"loading model {changes['model_path']} (the current "
                                     'model answers until it is ready)')

    def _swap_ready(self, segmenter: Segmenter, seconds: float, context: Any) -> None:
        """Hand a built model to the executor thread (called on the swap thread)."""
        self._hand_over(('ready', (segmenter, seconds), context))

    def _swap_failed(self, reason: str, context: Any) -> None:
        """Hand a failed build's reason to the executor thread (called on the swap thread)."""
        self._hand_over(('failed', reason, context))

    def _hand_over(self, outcome: Tuple[str, Any, Any]) -> None:
        with self._swap_outcome_lock:
            self._swap_outcome = outcome
        self.swap_guard.trigger()

    def on_swap_outcome(self) -> None:
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
        logger = self._node.get_logger()
        kind, value, (requested, previous, generation) = outcome
        if self._model.setup is None or generation != self._model.generation:
            logger.info('a model build finished after cleanup: discarded')
            return
        if kind == 'failed':
            logger.error(f'the new model could not be used ({value}); keeping '
                         f'{self._model.segmenter.model_path}')
            self._set_internally([Parameter(name, value=v) for name, v in previous.items()])
            return
        segmenter, seconds = value
        try:  # parameters changed since the request apply too
            settings = self.runtime_settings({}, segmenter.metadata.class_names)
        except ConfigError:
            settings = requested
        self._model.install(FrameSetup(segmenter, settings))
        self._set_internally([Parameter('class_names', STRING_ARRAY,
                                        list(segmenter.metadata.class_names))])
        logger.info(f'model swapped in after {seconds:.1f} s of loading and warm-up: '
                    f'{segmenter.describe()}')

    def _set_internally(self, parameters: List[Parameter]) -> None:
        """Set parameters the node owns (class_names, reverted values) past the checks."""
        # Only on the executor thread (swap outcomes), where the parameter
        # callback runs too: no other thread can see the flag set.
        self._internal_update = True
        try:
            self._node.set_parameters(parameters)
        finally:
            self._internal_update = False
