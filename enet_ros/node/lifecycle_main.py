"""
Entry point of the managed segmentation node (executable ``segmentation_lifecycle_node``).

The same process as :mod:`enet_ros.node.main` (signal handling, exit codes)
around :class:`~enet_ros.node.lifecycle_node.SegmentationLifecycleNode`, which
waits unconfigured for its lifecycle transitions.
"""

import sys
from typing import List, Optional

from .main import main as _main


def main(args: Optional[List[str]] = None) -> int:
    """Run the managed segmentation node until SIGINT / SIGTERM or its shutdown transition."""
    return _main(args, lifecycle=True)


if __name__ == '__main__':
    sys.exit(main())
