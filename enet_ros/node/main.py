"""
Entry point of the segmentation node: signal handling first, then the heavy imports.

A terminal's Ctrl-C reaches every process in its group, and ``ros2 launch``
forwards its own SIGINT (then SIGTERM) to the node, so one key press gives the
node two or three signals, and impatient users press it twice. rclpy's handler
raised KeyboardInterrupt in the main thread wherever it was, e.g. in the
middle of the shutdown, and the node died with code -2 and a traceback.
Here the first signal asks the node to stop (or, while it is still
importing torch, loading or compiling the model, abandons start-up) and
every later one is ignored, including while the interpreter exits.

Before torch loads, the node also gives its own process the OpenMP wait it
was measured best with (:func:`enet_ros.inference.cpu_runtime.apply_process_defaults`:
``ENET_ROS_OPENMP_WAIT=adaptive``: full spinning on idle cores, brief
spinning while other processes keep them busy, and the OpenMP team on the
CPUs they leave free, so that they do not make inference collapse), unless
the user set ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME`` or
``ENET_ROS_OPENMP_WAIT``.
"""

import sys
from typing import List, Optional

from .signal_handling import stop_with_parent, StopOnSignal


def main(args: Optional[List[str]] = None, lifecycle: bool = False) -> int:
    """
    Run the segmentation node until SIGINT / SIGTERM; see its ``run`` for exit codes.

    ``lifecycle``: the managed node (executable ``segmentation_lifecycle_node``).
    """
    stop_on_signal = StopOnSignal()
    stop_on_signal.install()
    try:
        stop_with_parent()  # started by a tool (NodeProcess): stop when it ends, even killed
        from ..inference.cpu_runtime import apply_process_defaults  # standard library only
        apply_process_defaults()  # the node owns its process: before torch reads it
        from .os_process import run
    except KeyboardInterrupt:  # Ctrl-C (or the parent gone) while importing torch, rclpy
        stop_on_signal.ignore_from_now()
        return 0
    return run(args, stop_on_signal, lifecycle=lifecycle)


if __name__ == '__main__':
    sys.exit(main())
