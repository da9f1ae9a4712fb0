"""The core's Python log records (logger 'enet_ros') forwarded to the node's ROS logger."""

import logging
from typing import Callable


class _RosLogHandler(logging.Handler):
    """Forwards the core's Python log records (logger 'enet_ros') to a ROS logger."""

    def __init__(self, ros_logger):
        super().__init__()
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        """Log ``record`` at the matching ROS severity."""
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            self.ros_logger.error(message)
        elif record.levelno >= logging.WARNING:
            self.ros_logger.warning(message)
        else:
            self.ros_logger.info(message)


def forward_core_logs(ros_logger) -> Callable[[], None]:
    """Send the core's log records (logger 'enet_ros') to ``ros_logger``; return the undo."""
    core_logger = logging.getLogger('enet_ros')
    handler = _RosLogHandler(ros_logger)
    previous = core_logger.level, core_logger.propagate
    core_logger.addHandler(handler)
    core_logger.setLevel(logging.INFO)
    core_logger.propagate = False

    def undo() -> None:
        core_logger.removeHandler(handler)
        core_logger.setLevel(previous[0])
        core_logger.propagate = previous[1]
    return undo
