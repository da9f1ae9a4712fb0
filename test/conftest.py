"""Shared fixtures: small random model files, an isolated ROS 2 environment, rclpy contexts."""

import os
from pathlib import Path
import random
import signal
import sys

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / 'test'))

# A terminal starts commands with SIGINT at its default. A test run started in the background
# by a non-interactive shell (`make test &` in a script) inherits SIGINT ignored, and so would
# every process the tests start: `ros2 launch` then ignores Ctrl-C while the node (which sets
# its own handler) stops, and launch respawns it. Catching SIGINT here gives the children the
# default again (a caught signal is reset on exec) and this run its KeyboardInterrupt.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope='session')
def one_torch_thread():
    """
    Run torch on one intra-op thread in the test process.

    The node processes the tests start run beside it on a 2-core machine;
    two-thread inference in both stalls each other (OpenMP spin-waits).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope='module')
def torch_backend():
    """
    Run the module's Segmenters on torch (``ENET_ROS_BACKEND=torch``).

    For tests of the torch execution paths (``pytestmark =
    pytest.mark.usefixtures('torch_backend')``): ``inference_backend`` auto
    picks OpenVINO on CPUs without AVX-512 where it is installed.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('ENET_ROS_BACKEND', 'torch')
        yield


@pytest.fixture
def core_logs(caplog, monkeypatch):
    """
    Return ``caplog``, seeing the log records of the core's ``enet_ros.*`` loggers.

    launch_testing's pytest plugin imports ``launch.logging``, which installs a
    logger class with ``propagate = False`` for every logger made afterwards,
    so records never reach caplog's handler on the root logger.
    """
    import logging

    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.split('.')[0] == 'enet_ros' and isinstance(logger, logging.Logger):
            monkeypatch.setattr(logger, 'propagate', True)
    return caplog


@pytest.fixture(scope='session')
def random_model_file(tmp_path_factory) -> Path:
    """Write a CamVid-class model file with seeded random weights and a 480x360 input."""
    from model_files import write_random_model

    return write_random_model(tmp_path_factory.mktemp('models') / 'random.safetensors')


@pytest.fixture(scope='module')
def loaded(random_model_file: Path):
    """Load the shared random model file (CamVid classes, 480x360 network input)."""
    from enet_ros.model_file import load_model_file

    return load_model_file(random_model_file)


@pytest.fixture(scope='module')
def model_file(tmp_path_factory) -> Path:
    """Write a random CamVid model file with a 64x48 network input (the bag tools' tests)."""
    from bag_helpers import HEIGHT, WIDTH
    from model_files import write_random_model

    return write_random_model(tmp_path_factory.mktemp('model') / 'tiny.safetensors',
                              input_size=(WIDTH, HEIGHT))


@pytest.fixture
def rclpy_context(request):
    """
    Yield an rclpy Context for nodes in the test process, shut down after the test.

    Initialised on a random ROS domain from the test module's ``ROS_DOMAIN_IDS``
    (low, high) if it sets one, else 1-100.
    """
    import rclpy
    from rclpy.context import Context

    low, high = getattr(request.module, 'ROS_DOMAIN_IDS', (1, 100))
    context = Context()
    rclpy.init(context=context, domain_id=random.Random().randint(low, high))
    yield context
    context.try_shutdown()


def _ros_process_env(low: int, high: int) -> dict:
    """
    Environment for ROS 2 processes: a random domain id in low-high, loopback only.

    Large images travel over DDS (``with_large_image_transport``), output is
    unbuffered, and torch runs one thread (see ``one_torch_thread``).
    """
    from enet_ros.ros_io.dds import with_large_image_transport

    env = with_large_image_transport(os.environ)
    env['ROS_DOMAIN_ID'] = str(random.Random().randint(low, high))
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['PYTHONUNBUFFERED'] = '1'
    env['OMP_NUM_THREADS'] = '1'
    env.pop('ROS_LOCALHOST_ONLY', None)
    return env


@pytest.fixture
def ros_env() -> dict:
    """Environment for one test's ROS 2 processes (domain 1-100)."""
    return _ros_process_env(1, 100)


@pytest.fixture(scope='module')
def module_ros_env() -> dict:
    """Environment for ROS 2 processes that a test module shares (domain 101-200)."""
    return _ros_process_env(101, 200)
