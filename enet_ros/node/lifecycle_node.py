"""
The managed (lifecycle) segmentation node: the same node, driven by lifecycle transitions.

A separate executable, ``segmentation_lifecycle_node``, rather than a parameter
of ``segmentation_node``: whether a node is managed decides its interface
(the lifecycle services, and that it starts doing nothing) before any
parameter is read, launch files start the two with different actions
(``launch_ros``'s ``LifecycleNode``), and nav2's lifecycle manager expects a
node that is always managed. Both executables run the same code
(:class:`~enet_ros.node.segmentation_node.SegmentationMixin`); only the order
of its steps differs:

- start: parameters declared, nothing loaded, nothing published
  (``unconfigured``);
- ``configure``: the parameters are validated and the model is loaded and
  warmed; on a bad parameter or model the transition fails, the reason is
  logged, and the node stays ``unconfigured``: fix the parameter with ``ros2
  param set`` (start-up settings such as ``device`` too: they are read at
  each configure; only ``cameras`` needs a restart) and configure again.
  Publishers are made, as lifecycle publishers (``inactive``);
- ``activate``: the camera subscriptions and the diagnostics start;
- ``deactivate``: they stop (a frame in progress finishes first, and is not
  published); the model stays loaded;
- ``cleanup``: the model, the publishers and the TF listener are released
  (``unconfigured`` again; ``configure`` works again, e.g. after a
  ``model_path`` change);
- ``shutdown`` (from any state): everything is released and the process
  exits with code 0 once the transition has answered.

Parameters stay declared through every state; ``class_names`` and
``drivable_classes`` appear at the first configure (they come from the model).
"""

import threading
from typing import Any

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from .segmentation_node import NODE_NAME, SegmentationMixin

#: Printed once the node is up and waiting for its configure transition.
UNCONFIGURED_LINE = 'unconfigured: waiting for the configure transition'
#: Printed when the configure transition starts loading and warming the model.
CONFIGURING_LINE = 'configuring: loading and warming the model'
#: Seconds between the shutdown transition's answer and the node's exit.
EXIT_DELAY_S = 0.2


class SegmentationLifecycleNode(SegmentationMixin, LifecycleNode):
    """The managed segmentation node; see the module docstring."""

    MANAGED = True

    def __init__(self, **node_kwargs: Any):
        LifecycleNode.__init__(self, NODE_NAME, **node_kwargs)
        self._init_segmentation()
        #: Set while the configure transition runs (on the executor thread): a stop then
        #: does not wait for the model build to end (process.py).
        self.configuring = threading.Event()
        self._exit_timer = None
        self.get_logger().info(
            f'{UNCONFIGURED_LINE} (a lifecycle manager, or: ros2 lifecycle set '
            f'{self.get_fully_qualified_name()} configure, then activate)')

    def _create_output_publisher(self, msg_type: Any, topic: str, qos: Any,
                                 event_callbacks: Any = None) -> Any:
        return self.create_lifecycle_publisher(msg_type, topic, qos,
                                               event_callbacks=event_callbacks)

    def _destroy_output_publisher(self, publisher: Any) -> None:
        self.destroy_lifecycle_publisher(publisher)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate the parameters and load the model; fail with the reason if they are bad."""
        self.configuring.set()
        self.get_logger().info(f'{CONFIGURING_LINE} (compiled on the CPU: up to a minute)')
        try:
            self._configure()
        except Exception as error:  # noqa: B902 - ConfigError, ParameterException, ...
            self.get_logger().error(f'configure failed, staying unconfigured: {error}')
            self._cleanup()
            return TransitionCallbackReturn.FAILURE
        finally:
            self.configuring.clear()
        self.get_logger().info('configured (inactive): activate to start segmenting')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable the publishers, then subscribe to the cameras."""
        result = super().on_activate(state)  # enables the lifecycle publishers
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        self._activate()
        self.get_logger().info('active')
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe (after the frame in progress), then disable the publishers."""
        self._deactivate()
        self.get_logger().info('deactivated (inactive): the model stays loaded')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the model, the publishers and the TF listener."""
        self._cleanup()
        self.get_logger().info(f'cleaned up: {UNCONFIGURED_LINE}')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything; the process exits once this transition has answered."""
        self._cleanup()
        # A timer in the lifecycle services' callback group (mutually exclusive) runs only
        # after this transition's response has been sent.
        self._exit_timer = self.create_timer(EXIT_DELAY_S, self._exit_after_shutdown)
        self.get_logger().info('shut down (finalized): exiting')
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything after a transition raised; the node becomes unconfigured."""
        self.get_logger().error(f'error in a transition from {state.label}: releasing '
                                'everything (unconfigured)')
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    def _exit_after_shutdown(self) -> None:
        if self._exit_timer is not None:
            self._exit_timer.cancel()
        self.stop()
