"""
Test harness: the segmentation node as a real process, and a ROS 2 peer in the test.

The node is started exactly as a user would start it without ``ros2 launch``:
``python -m enet_ros.node.main --ros-args --params-file
config/segment.yaml -p ...``. The peer publishes camera frames and records
what the node publishes, each in a private ROS domain.
"""

import os
from pathlib import Path
import signal
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional

from enet_ros.evaluation import node_subprocess as node_process
from enet_ros.ros_io.dds import PROFILE_VARIABLES
import numpy as np
from printed import wait_for_printed
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO_ROOT / 'config' / 'segment.yaml'
OUTPUT_TOPICS = ('labels', 'colored', 'overlay', 'drivable')


class NodeProcess(node_process.NodeProcess):
    """The node started with ``params_file`` plus overrides; its log kept for assertions."""

    def __init__(self, env: dict, parameters: Optional[Dict[str, object]] = None,
                 remaps: Optional[Dict[str, str]] = None, params_file: Path = PARAMS_FILE,
                 lifecycle: bool = False):
        log_path = Path(tempfile.mkstemp(prefix='segmentation_node_', suffix='.log')[1])
        module = node_process.LIFECYCLE_NODE_MODULE if lifecycle else node_process.NODE_MODULE
        super().__init__(node_process.node_command(parameters, remaps, params_file,
                                                   module=module),
                         env=env, log_path=log_path)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait for the node's ready line; fail with its log if it exits or times out."""
        if not super().wait_ready(timeout):
            raise AssertionError(f'node not ready (exit code {self.exited()}):\n{self.log()}')

    def wait_for_text(self, text: str, timeout: float = 90.0) -> None:
        """Wait until the node prints ``text``; fail with its log if it exits or times out."""
        wait_for_printed(self.process, self.log, text, timeout)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        """Send ``sig`` (escalating after ``timeout``) and return the exit code."""
        return super().stop(sig, timeout)


class RosPeer:
    """A node in the test process (own context and domain) with a spinning executor."""

    def __init__(self, env: dict, name: str = 'test_peer'):
        # Fast DDS reads these once per process, when its first participant starts.
        for variable in PROFILE_VARIABLES + ('FASTDDS_BUILTIN_TRANSPORTS',):
            if env.get(variable):
                os.environ[variable] = env[variable]
        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = env['ROS_AUTOMATIC_DISCOVERY_RANGE']
        self.context = Context()
        rclpy.init(context=self.context, domain_id=int(env['ROS_DOMAIN_ID']))
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self.received: Dict[str, List] = {}
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except Exception:  # noqa: B902 - the context was shut down under the executor
            pass

    def subscribe(self, msg_type, topic: str, key: Optional[str] = None,
                  reliable: bool = True) -> None:
        """Record (wall-clock receipt time, message) on ``topic`` under ``key``."""
        key = key or topic
        self.received.setdefault(key, [])
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE if reliable
                         else ReliabilityPolicy.BEST_EFFORT)

        def record(msg, key=key):
            with self._lock:
                self.received[key].append((time.time(), msg))

        self.node.create_subscription(msg_type, topic, record, qos)

    def publisher(self, msg_type, topic: str, reliable: bool = True):
        """Create a publisher with depth 10."""
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE if reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        return self.node.create_publisher(msg_type, topic, qos)

    def messages(self, key: str) -> List:
        """Messages received so far under ``key``."""
        with self._lock:
            return [msg for _, msg in self.received.get(key, [])]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Poll ``predicate`` until true or ``timeout``; return its last value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def wait_for_subscribers(self, publisher, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until ``publisher`` is matched by ``count`` subscriptions."""
        if not self.wait_for(lambda: publisher.get_subscription_count() >= count, timeout):
            raise AssertionError(f'no subscriber on {publisher.topic_name} after {timeout} s')

    def close(self) -> None:
        """Shut the context down and join the spinner."""
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)


def make_image_msg(pixels: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = 'camera',
                   step: Optional[int] = None):
    """Build a sensor_msgs/Image from HxW or HxWxC uint8 ``pixels``; ``step`` pads rows."""
    import array

    from sensor_msgs.msg import Image

    height, width = pixels.shape[:2]
    row = pixels.reshape(height, -1)
    step = step or row.shape[1]
    padded = np.zeros((height, step), dtype=np.uint8)
    padded[:, :row.shape[1]] = row
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0, step=step)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.data = array.array('B', padded.tobytes())
    return msg


def stamp_ns(msg) -> int:
    """Return a message header's stamp in nanoseconds."""
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def image_array(msg) -> np.ndarray:
    """Return an output image as HxW (mono8) or HxWx3 (rgb8) uint8, checking its layout."""
    channels = {'mono8': 1, 'rgb8': 3}[msg.encoding]
    assert msg.step == msg.width * channels
    assert len(msg.data) == msg.height * msg.step
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if channels == 1:
        return data.reshape(msg.height, msg.width)
    return data.reshape(msg.height, msg.width, channels)


def set_parameters(peer: RosPeer, parameters: Dict[str, object], node: str = '/segmentation_node',
                   timeout: float = 20.0, atomically: bool = False) -> List:
    """
    Set ``parameters`` in one request through the node's service; return the results.

    ``atomically``: through ``set_parameters_atomically`` (all or none, one
    result); else ``set_parameters`` (each on its own, one result each).
    """
    from rcl_interfaces.srv import SetParameters, SetParametersAtomically
    from rclpy.parameter import Parameter

    service = SetParametersAtomically if atomically else SetParameters
    suffix = 'set_parameters_atomically' if atomically else 'set_parameters'
    client = peer.node.create_client(service, f'{node}/{suffix}')
    assert client.wait_for_service(timeout_sec=20.0)
    request = service.Request(
        parameters=[Parameter(name, value=value).to_parameter_msg()
                    for name, value in parameters.items()])
    future = client.call_async(request)
    assert peer.wait_for(future.done, timeout=timeout), f'no answer to setting {parameters}'
    result = future.result()
    return [result.result] if atomically else result.results


def get_parameter(peer: RosPeer, name: str, node: str = '/segmentation_node'):
    """Return the value of the node's parameter ``name``."""
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    client = peer.node.create_client(GetParameters, f'{node}/get_parameters')
    assert client.wait_for_service(timeout_sec=20.0)
    future = client.call_async(GetParameters.Request(names=[name]))
    assert peer.wait_for(future.done, timeout=20.0)
    return parameter_value_to_python(future.result().values[0])


class LifecycleClient:
    """
    A managed node's lifecycle services (lifecycle_msgs ChangeState, GetState) from a peer.

    Fast DDS (rmw_fastrtps) drops a service's answer when the server has not
    yet matched the client's reader, which can happen to a client that
    ``wait_for_service`` has just found on a loaded machine. The node is not
    at fault and a user's tool would ask again, so this client does too:
    GetState is re-sent; a ChangeState whose answer is overdue is checked
    against the state the transition leads to.
    """

    #: The state each transition this client drives leads to.
    GOALS = {'configure': 'inactive', 'activate': 'active', 'deactivate': 'inactive',
             'cleanup': 'unconfigured', 'shutdown': 'finalized'}
    #: How long an answer may take before a lost one is suspected.
    RETRY_AFTER = 5.0

    def __init__(self, peer: RosPeer, node_name: str):
        from lifecycle_msgs.srv import ChangeState, GetState

        self.peer = peer
        self._change = peer.node.create_client(ChangeState, f'{node_name}/change_state')
        self._get = peer.node.create_client(GetState, f'{node_name}/get_state')

    def _send(self, client, request, timeout: float):
        """Return the future of ``request`` once ``client``'s service is available."""
        if not client.wait_for_service(timeout_sec=timeout):
            raise AssertionError(f'{client.srv_name} not available after {timeout} s')
        return client.call_async(request)

    def state(self, timeout: float = 30.0) -> str:
        """Return the node's current state label ('unconfigured', 'inactive', 'active' ...)."""
        from lifecycle_msgs.srv import GetState

        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            future = self._send(self._get, GetState.Request(), max(remaining, 0.1))
            if self.peer.wait_for(future.done, min(self.RETRY_AFTER, max(remaining, 0.1))):
                return future.result().current_state.label
            if time.monotonic() >= deadline:
                raise AssertionError(f'{self._get.srv_name}: no answer after {timeout} s')

    def change(self, transition: str, timeout: float = 120.0) -> bool:
        """Request a transition by label ('configure', 'activate' ...); return its success."""
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.label = transition
        deadline = time.monotonic() + timeout
        future = self._send(self._change, request, timeout)
        while not self.peer.wait_for(future.done, self.RETRY_AFTER):
            # Still transitioning (configure loads the model), or the answer was lost: the
            # state answers once the transition is over.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f'{self._change.srv_name}: no answer after {timeout} s')
            if not future.done() and self.state(remaining) == self.GOALS[transition]:
                return True
        return future.result().success
