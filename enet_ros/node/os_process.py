"""
The node's process: rclpy start-up, the executor on a helper thread, inference on this one.

Exit codes (README): 0 after SIGINT / SIGTERM (and after the lifecycle node's
shutdown transition), 1 if the executor failed, 2 for bad configuration
(parameters, model file, ROS arguments; the lifecycle node instead fails its
configure transition and stays unconfigured), 3 after
``max_consecutive_failures`` failed frames with ``exit_on_failure``. The
entry points are :func:`enet_ros.node.main.main` and
:func:`enet_ros.node.lifecycle_main.main`, which install the signal handlers
before this module's heavy imports (torch, rclpy).
"""

import ctypes
import os
import sys
import threading
from typing import List, Optional, Tuple, Union

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation
from rclpy.signals import SignalHandlerOptions

from .lifecycle_node import SegmentationLifecycleNode
from .parameter_table import ConfigError
from .segmentation_node import NODE_NAME, SegmentationNode
from .signal_handling import StopOnSignal
from ..inference.backends import preload_openvino_modules

EXIT_OK, EXIT_EXECUTOR_FAILED, EXIT_CONFIG_ERROR, EXIT_FAILED_FRAMES = 0, 1, 2, 3
SPIN_JOIN_TIMEOUT_S = 10.0
#: How long a stop waits for a configure transition in progress before leaving it behind.
CONFIGURE_JOIN_TIMEOUT_S = 1.0
RCLError = rclpy_implementation.RCLError
AnyNode = Union[SegmentationNode, SegmentationLifecycleNode]


def _spin(executor: SingleThreadedExecutor, node: AnyNode) -> None:
    """Run the executor; if it fails, stop inference too so the process exits."""
    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    except Exception as error:  # noqa: B902 - reported, then the process ends
        if node.context.ok():  # errors from entities torn down by a shutdown are no failure
            node.get_logger().fatal(f'executor failed: {type(error).__name__}: {error}')
            node.failed = True
    finally:
        node.stop()


def run(args: Optional[List[str]], stop_on_signal: StopOnSignal, lifecycle: bool = False) -> int:
    """
    Run the node until ``stop_on_signal`` fires or it fails; return the exit code.

    ``lifecycle``: run the managed node (it also ends after its shutdown transition).
    """
    node = None
    executor = None
    spinner = None
    code = EXIT_OK
    try:
        try:
            rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        except RCLError as error:  # e.g. a --params-file that is missing or not YAML
            raise ConfigError(f'invalid ROS arguments: {error}') from None
        # Before the node answers anything: its configure transition and model swaps build
        # on their own thread, and a first import there held the GIL (and the executor) 0.9 s.
        preload_openvino_modules()
        node = SegmentationLifecycleNode() if lifecycle else SegmentationNode()
        # One executor thread: a multi-threaded executor's Python threads competed with
        # inference for the GIL (p99 latency under overload 3-15x higher, test_node_robustness).
        # A model swap builds on its own thread; the TF listener's /tf subscriptions run on
        # this executor too (spin_thread=False: no third Python thread for the GIL).
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spinner = threading.Thread(target=_spin, args=(executor, node), name='ros-executor',
                                   daemon=True)
        spinner.start()
        stop_on_signal.target = node
        if stop_on_signal.received is None:
            node.run_inference()
        if node.failed_frames:
            code = EXIT_FAILED_FRAMES
        elif node.failed:
            code = EXIT_EXECUTOR_FAILED
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ConfigError, ParameterException) as error:
        rclpy.logging.get_logger(NODE_NAME).fatal(f'cannot start: {error}')
        code = EXIT_CONFIG_ERROR
    finally:
        stop_on_signal.ignore_from_now()
        code, thread_left_behind = _shut_down(node, executor, spinner, code)
    if code == EXIT_OK and node is not None:
        rclpy.logging.get_logger(NODE_NAME).info('stopped cleanly')
    if thread_left_behind:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """
    End the process at once with ``code``, output flushed, the interpreter not finalized.

    Used when a thread is still inside torch.compile: finalizing the
    interpreter under it destroyed C++ threads that were still running
    (``terminate called without an active exception``, exit -6, now and then).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed or replaced streams
            pass
    ctypes.CDLL(None).fflush(None)  # C stdio, where rcutils writes the log lines
    os._exit(code)


def _shut_down(node: Optional[AnyNode], executor: Optional[SingleThreadedExecutor],
               spinner: Optional[threading.Thread], code: int) -> Tuple[int, bool]:
    """
    End the spin, then tear the executor and the node down.

    Return the exit code and whether a thread was left running (the executor,
    or a configure transition building the model). Order matters: tearing the
    executor down under a running spin crashed the process now and then, so if
    the spin thread does not end, nothing is torn down and the process exits
    with an error instead. The managed node breaks its bond first, while the
    context can still publish that.
    """
    if node is not None:
        node.stop()
        if isinstance(node, SegmentationLifecycleNode):
            node.prepare_exit()
    rclpy.try_shutdown()  # ends the spin (wakes the executor)
    if spinner is not None:
        spinner.join(timeout=SPIN_JOIN_TIMEOUT_S)
        if spinner.is_alive():
            rclpy.logging.get_logger(NODE_NAME).error(
                f'the ROS executor did not stop within {SPIN_JOIN_TIMEOUT_S:.0f} s; exiting '
                'without tearing it down')
            return code or EXIT_EXECUTOR_FAILED, True
    configure_thread = getattr(node, 'configure_thread', None)
    if configure_thread is not None and configure_thread.is_alive():
        # Building the model (torch.compile: up to a minute) cannot be interrupted; waiting
        # would outlast ros2 launch's SIGTERM and SIGKILL.
        configure_thread.join(timeout=CONFIGURE_JOIN_TIMEOUT_S)
        if configure_thread.is_alive():
            rclpy.logging.get_logger(NODE_NAME).info(
                'stopped during the configure transition: the model being built is abandoned')
            return code, True
    if executor is not None:
        executor.shutdown()
    if node is not None:
        node.destroy_node()
    return code, False
