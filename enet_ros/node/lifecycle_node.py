"""
The managed (lifecycle) segmentation node: the same node, driven by lifecycle transitions.

A separate executable, ``segmentation_lifecycle_node``, rather than a parameter
of ``segmentation_node``: whether a node is managed decides its interface
(the lifecycle services, and that it starts doing nothing) before any
parameter is read, launch files start the two with different actions
(``launch_ros``'s ``LifecycleNode``), and nav2's lifecycle manager expects a
node that is always managed. Both executables run the same code
(:class:`~enet_ros.node.segmentation_node.SegmentationParts`); only the order
of its steps differs:

- start: parameters declared, nothing loaded, nothing published
  (``unconfigured``);
- ``configure``: the parameters are validated and the model is loaded and
  warmed; on a bad parameter or model the transition fails, the reason is
  logged, and the node stays ``unconfigured``: fix the parameter with ``ros2
  param set`` (start-up settings such as ``device`` too: they are read at
  each configure; only ``cameras`` needs a restart) and configure again.
  Publishers are made, as lifecycle publishers (``inactive``);
- ``activate``: the camera subscriptions and the diagnostics start, the class
  map is published on ``~/label_info``, and the bond that Nav2's lifecycle
  manager waits for starts (:mod:`~enet_ros.node.lifecycle_bond`);
- ``deactivate``: they stop (a frame in progress finishes first, and is not
  published) and the bond is broken cleanly; the model stays loaded;
- ``cleanup``: the model, the publishers and the TF listener are released
  (``unconfigured`` again; ``configure`` works again, e.g. after a
  ``model_path`` change);
- ``shutdown`` (from any state): everything is released and the process
  exits with code 0 once the transition has answered.

Parameters stay declared through every state; ``class_names`` and
``drivable_classes`` appear at the first configure (they come from the model).

The lifecycle services answer during a transition: configure (loading and
compiling the model, up to a minute) runs on a thread of its own while the
executor thread keeps serving ``get_state`` (it says ``configuring``) and
the rest. rclpy runs a transition inside its ``change_state`` service
callback, and a single executor thread (os_process.py says why there is one)
then answers nothing else until the callback returns; here that callback is
a coroutine that awaits the configure thread. Another ``change_state``
during a transition is refused (as rclcpp's lifecycle nodes do), and so are
parameter changes during configure, which reads them.
"""

import threading
from typing import Any, List, Optional

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleNodeMixin, LifecycleState
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.task import Future

from .lifecycle_bond import DEFAULT_HEARTBEAT_PERIOD_S, LifecycleBond
from .segmentation_node import NODE_NAME, SegmentationParts, SegmentationShell

#: Printed once the node is up and waiting for its configure transition.
UNCONFIGURED_LINE = 'unconfigured: waiting for the configure transition'
#: Printed when the configure transition starts loading and warming the model.
CONFIGURING_LINE = 'configuring: loading and warming the model'
#: Seconds between the shutdown transition's answer and the node's exit.
EXIT_DELAY_S = 0.2
BOND_PERIOD_DESCRIPTION = ParameterDescriptor(
    description="seconds between the heartbeats of the bond that Nav2's lifecycle manager "
    "waits for after activate (topic bond, id = the node name), as Nav2's own servers; "
    '0 = no bond (then give the manager bond_timeout: 0.0)', read_only=True,
    type=ParameterType.PARAMETER_DOUBLE)


class SegmentationLifecycleNode(SegmentationShell, LifecycleNode):
    """The managed segmentation node; see the module docstring."""

    def __init__(self, **node_kwargs: Any):
        # LifecycleNode.__init__ without its callback group: the lifecycle services get a
        # reentrant one, so get_state runs while a change_state coroutine awaits configure.
        Node.__init__(self, NODE_NAME, **node_kwargs)
        LifecycleNodeMixin.__init__(self, callback_group=ReentrantCallbackGroup())
        self.parts = SegmentationParts(self, True, self.create_lifecycle_publisher,
                                       self.destroy_lifecycle_publisher,
                                       first_parameter_check=self._refuse_while_configuring)
        #: Set while the configure transition runs (on :attr:`configure_thread`): a stop then
        #: does not wait for the model build to end (os_process.py).
        self.configuring = threading.Event()
        self.configure_thread: Optional[threading.Thread] = None
        #: The thread running on_configure (configure_thread, or a trigger_configure caller).
        self._configuring_on: Optional[threading.Thread] = None
        self._transition: Optional[str] = None
        self._exit_timer = None
        period = self.declare_parameter('bond_heartbeat_period', DEFAULT_HEARTBEAT_PERIOD_S,
                                        BOND_PERIOD_DESCRIPTION).value
        self._bond = LifecycleBond(self, period)
        self.add_on_set_parameters_callback(self._refuse_while_configuring)
        [change_state] = [s for s in self.services if s.srv_type is ChangeState]
        self._change_state = change_state.callback
        change_state.callback = self._on_change_state
        self.get_logger().info(
            f'{UNCONFIGURED_LINE} (a lifecycle manager, or: ros2 lifecycle set '
            f'{self.get_fully_qualified_name()} configure, then activate)')

    async def _on_change_state(self, request: ChangeState.Request,
                               response: ChangeState.Response) -> ChangeState.Response:
        """
        Run a transition: configure on its own thread (awaited), the others at once.

        Runs on the executor thread; rclpy's callback does the transition.
        """
        configure = (request.transition.label == 'configure' if request.transition.label
                     else request.transition.id == Transition.TRANSITION_CONFIGURE)
        label = 'configure' if configure else (request.transition.label
                                               or f'transition id {request.transition.id}')
        if self._transition is not None:
            self.get_logger().warning(f"transition '{label}' refused: the '{self._transition}' "
                                      'transition is still running')
            response.success = False
            return response
        self._transition = label
        try:
            if configure:
                done = Future(executor=self.executor)
                done.add_done_callback(lambda _: None)  # its result then wakes the executor
                self.configure_thread = threading.Thread(
                    target=self._transition_on_thread, args=(request, response, done),
                    name='configure', daemon=True)
                self.configure_thread.start()
                return await done
            return self._change_state(request, response)
        finally:
            self._transition = None

    def _transition_on_thread(self, request: ChangeState.Request,
                              response: ChangeState.Response, done: Future) -> None:
        try:
            result = self._change_state(request, response)
        except Exception as error:  # noqa: B902 - the request must get its answer
            self.get_logger().error(f'the configure transition failed: '
                                    f'{type(error).__name__}: {error}')
            response.success = False
            result = response
        try:
            done.set_result(result)
        except Exception:  # noqa: B902 - the executor is gone: the process is exiting
            pass

    def _refuse_while_configuring(self, parameters: List[Any]) -> SetParametersResult:
        """Refuse parameter changes from outside while configure reads the parameters."""
        if self.configuring.is_set() and threading.current_thread() is not self._configuring_on:
            return SetParametersResult(successful=False, reason=(
                'the configure transition is reading the parameters and loading the model; '
                'set it when it has finished'))
        return SetParametersResult(successful=True)

    def prepare_exit(self) -> None:
        """Break the bond before the process ends (the context must still be up)."""
        self._bond.stop('the node is exiting')

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate the parameters and load the model; fail with the reason if they are bad."""
        self._configuring_on = threading.current_thread()
        self.configuring.set()
        self.get_logger().info(f'{CONFIGURING_LINE} (compiled on the CPU: up to a minute)')
        try:
            self.parts.configure()
        except Exception as error:  # noqa: B902 - ConfigError, ParameterException, ...
            self.get_logger().error(f'configure failed, staying unconfigured: {error}')
            self.parts.cleanup()
            return TransitionCallbackReturn.FAILURE
        finally:
            self.configuring.clear()
        self.get_logger().info('configured (inactive): activate to start segmenting')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable the publishers, subscribe to the cameras, start the bond."""
        result = super().on_activate(state)  # enables the lifecycle publishers
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        self.parts.activate()
        self._bond.start()
        self.get_logger().info('active')
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe (after the frame in progress), disable the publishers, break the bond."""
        self.parts.deactivate()
        self._bond.stop('deactivate')
        self.get_logger().info('deactivated (inactive): the model stays loaded')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the model, the publishers and the TF listener."""
        self.parts.cleanup()
        self.get_logger().info(f'cleaned up: {UNCONFIGURED_LINE}')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything; the process exits once this transition has answered."""
        self._bond.stop('shutdown')
        self.parts.cleanup()
        # A timer runs on the executor thread, after this transition's response has been sent.
        self._exit_timer = self.create_timer(EXIT_DELAY_S, self._exit_after_shutdown)
        self.get_logger().info('shut down (finalized): exiting')
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything after a transition raised; the node becomes unconfigured."""
        self.get_logger().error(f'error in a transition from {state.label}: releasing '
                                'everything (unconfigured)')
        self._bond.stop('error in a transition')
        self.parts.cleanup()
        return TransitionCallbackReturn.SUCCESS

    def _exit_after_shutdown(self) -> None:
        if self._exit_timer is not None:
            self._exit_timer.cancel()
        self.stop()
