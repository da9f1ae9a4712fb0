"""
The model swap's hand-over, in process with the real rclpy.

Built on the swap thread, installed (or refused) on the executor thread,
discarded when it ends after a cleanup.

The swap in a running node process, frames flowing, is in test_node_cameras.py.
"""

import threading
import time

from enet_ros.labels import ClassTable
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings('ignore::DeprecationWarning')]
#: The ROS domains of rclpy_context here.
ROS_DOMAIN_IDS = (150, 199)
TINY = {'network_width': 64, 'network_height': 48, 'torch_compile': False,
        'device': 'cpu', 'precision': 'fp32'}
THREE = ClassTable(dataset='test3', names=('ground', 'thing', 'sky'),
                   colors=((10, 200, 10), (200, 10, 10), (10, 10, 200)), void_id=3,
                   drivable=('ground',))


@pytest.fixture
def managed(random_model_file, rclpy_context):
    """Yield a configured lifecycle node in this process and a function spinning it."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from enet_ros.node.lifecycle_node import SegmentationLifecycleNode

    context = rclpy_context
    overrides = [Parameter(k, value=v) for k, v in
                 {**TINY, 'model_path': str(random_model_file)}.items()]
    node = SegmentationLifecycleNode(context=context, parameter_overrides=overrides)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    threads = []

    def spin_until(condition, timeout: float = 60.0) -> bool:
        threads.append(threading.get_ident())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
            if condition():
                return True
        return False

    node.trigger_configure()
    assert node.segmenter is not None
    try:
        yield node, spin_until
    finally:
        executor.shutdown()
        node.destroy_node()


def test_built_model_is_installed_on_the_executor_thread(managed, tmp_path):
    """class_names and the state follow the new model, set from the spinning thread."""
    from model_files import write_random_model
    from rclpy.parameter import Parameter

    node, spin_until = managed
    other = write_random_model(tmp_path / 'three.safetensors', table=THREE, input_size=(64, 48))
    installed_on = []
    install = node._on_swap_outcome
    node._swap_guard.callback = lambda: (installed_on.append(threading.get_ident()), install())
    result = node.set_parameters_atomically([Parameter('model_path', value=str(other)),
                                             Parameter('drivable_classes', value=['ground'])])
    assert result.successful, result.reason
    assert spin_until(lambda: node.segmenter.model_path == str(other))
    assert installed_on == [threading.get_ident()]
    assert node.get_parameter('class_names').value == list(THREE.names)
    assert node._state.settings.drivable_classes == ('ground',)


def test_failed_build_puts_the_parameters_back(managed, tmp_path):
    """A build that fails after validation keeps the model and reverts model_path."""
    from model_files import write_random_model
    from rclpy.parameter import Parameter

    node, spin_until = managed
    model = node.segmenter
    previous = node.get_parameter('model_path').value
    other = write_random_model(tmp_path / 'other.safetensors', input_size=(64, 48))
    attempts = []

    def failing_build(loaded):
        attempts.append(loaded)
        raise RuntimeError('CUDA out of memory (simulated, while warming the new model)')

    node._swap._build = failing_build
    result = node.set_parameters([Parameter('model_path', value=str(other))])[0]
    assert result.successful, result.reason  # the file checks out; the build fails later
    assert spin_until(lambda: node.get_parameter('model_path').value == previous)
    assert len(attempts) == 1
    assert node.segmenter is model
    assert node._state.segmenter is model


def test_build_ending_after_cleanup_is_discarded(managed, tmp_path):
    """A model that finishes building after cleanup is not installed into the next config."""
    from model_files import write_random_model
    from rclpy.parameter import Parameter

    node, spin_until = managed
    other = write_random_model(tmp_path / 'late.safetensors', input_size=(64, 48))
    release = threading.Event()
    build = node._swap._build
    node._swap._build = lambda loaded: (release.wait(30), build(loaded))[1]
    assert node.set_parameters([Parameter('model_path', value=str(other))])[0].successful
    node.trigger_cleanup()
    node.trigger_configure()
    configured = node.segmenter
    release.set()
    node._swap.join(60)
    spin_until(lambda: False, timeout=1.0)
    assert node.segmenter is configured


def test_managed_node_takes_start_up_settings_at_configure(random_model_file, rclpy_context):
    """A bad device is fixed while unconfigured, then configure; refused while configured."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from enet_ros.node.lifecycle_node import SegmentationLifecycleNode

    context = rclpy_context
    overrides = [Parameter(k, value=v) for k, v in
                 {**TINY, 'device': 'tpu', 'model_path': str(random_model_file)}.items()]
    node = SegmentationLifecycleNode(context=context, parameter_overrides=overrides)
    try:
        assert node.on_configure(None) == TransitionCallbackReturn.FAILURE
        assert node.set_parameters([Parameter('device', value='cpu')])[0].successful
        assert node.on_configure(None) == TransitionCallbackReturn.SUCCESS
        assert node.segmenter.device.type == 'cpu'
        refused = node.set_parameters([Parameter('precision', value='bf16')])[0]
        assert not refused.successful and 'cleanup, set it, configure again' in refused.reason
        cameras = node.set_parameters([Parameter('cameras', value=['front'])])[0]
        assert not cameras.successful
    finally:
        node.destroy_node()
