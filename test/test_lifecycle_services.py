"""
The managed node's lifecycle services and diagnostics, driven as a lifecycle manager drives them.

``get_state`` answers within a second while ``configure`` loads the model
(it took 12 s and more to compile; nothing answered until it ended); a
transition requested during another, or by an id not valid in the current
state, is refused with ``success: false`` and the node goes on;
``/diagnostics`` (diagnostic_updater's Updater, its status named
``segmentation_node: segmentation``) only while active, at
``diagnostics_period``, also after cleanup and a new configure (the Updater
declares a parameter, which a second configure must not declare twice).
"""

import re
import time

from enet_ros.node.lifecycle_node import CONFIGURING_LINE, UNCONFIGURED_LINE
import pytest
from ros_harness import LifecycleClient, NodeProcess, RosPeer

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings('ignore::DeprecationWarning')]
NODE = '/segmentation_node'
#: How long get_state may take to answer while configure runs.
ANSWER_WITHIN_S = 1.0


class ParameterClient:
    """set_parameters through one client, made (and matched) before it matters."""

    def __init__(self, peer: RosPeer):
        from rcl_interfaces.srv import SetParameters

        self.peer = peer
        self.client = peer.node.create_client(SetParameters, f'{NODE}/set_parameters')
        assert self.client.wait_for_service(timeout_sec=30.0)

    def set_one(self, name: str, value, timeout: float = 20.0):
        """Set one parameter; return (successful, reason), or None without an answer."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        future = self.client.call_async(SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg()]))
        if not self.peer.wait_for(future.done, timeout):
            return None
        [result] = future.result().results
        return result.successful, result.reason


def _change_request(label: str = '', transition_id: int = 0):
    from lifecycle_msgs.srv import ChangeState

    request = ChangeState.Request()
    request.transition.label = label
    request.transition.id = transition_id
    return request


@pytest.mark.slow
def test_get_state_answers_during_configure(ros_env, random_model_file):
    """
    While configure builds and warms a large network, get_state says 'configuring' at once.

    A second change_state and a parameter change during configure are
    refused at once with a reason; configure then succeeds.
    """
    from lifecycle_msgs.srv import GetState

    node = NodeProcess(ros_env, {
        'model_path': str(random_model_file), 'network_width': 1024, 'network_height': 768,
        'warmup_sizes': ['1280x720'], 'torch_compile': False,
        'grid_pose_source': 'parameters'}, lifecycle=True)
    peer = RosPeer(ros_env)
    try:
        node.wait_for_text(UNCONFIGURED_LINE)
        lifecycle = LifecycleClient(peer, NODE)
        assert lifecycle.state() == 'unconfigured'  # get_state's client is matched now
        parameters = ParameterClient(peer)
        assert parameters.set_one('max_rate_hz', 0.0) == (True, '')  # so is this one
        configure = lifecycle._send(lifecycle._change, _change_request('configure'), 30.0)
        node.wait_for_text(CONFIGURING_LINE, timeout=60.0)
        answers, refused = [], None
        while not configure.done():
            asked = time.monotonic()
            future = lifecycle._get.call_async(GetState.Request())
            assert peer.wait_for(future.done, ANSWER_WITHIN_S), (
                f'get_state: no answer within {ANSWER_WITHIN_S} s during configure\n'
                f'{node.tail(20)}')
            answers.append((future.result().current_state.label, configure.done(),
                            round(time.monotonic() - asked, 3)))
            if refused is None and not configure.done():
                activate = lifecycle._change.call_async(_change_request('activate'))
                assert peer.wait_for(activate.done, ANSWER_WITHIN_S), 'activate: no answer'
                refused = (activate.result().success,
                           parameters.set_one('max_rate_hz', 5.0, ANSWER_WITHIN_S),
                           configure.done())
            time.sleep(0.2)
        print(f'get_state during configure (label, configure answered, seconds): {answers}')
        assert ('configuring', False) in [answer[:2] for answer in answers], answers
        assert configure.result().success is True, node.log()
        assert refused is not None and refused[2] is False, refused
        assert refused[0] is False, 'a change_state during configure was not refused'
        assert refused[1] is not None and refused[1][0] is False, refused
        assert 'configure transition is reading the parameters' in refused[1][1], refused
        assert "transition 'activate' refused: the 'configure' transition is still running" \
            in node.log(), node.log()
        assert lifecycle.state() == 'inactive'
        assert lifecycle.change('activate') is True
        assert node.stop() == 0, node.log()
        assert 'Traceback' not in node.log(), node.log()
    finally:
        peer.close()
        if node.exited() is None:
            node.stop()


def _statuses(peer: RosPeer, since: float) -> list:
    """Return the node's diagnostic statuses received after ``since`` (wall clock)."""
    with peer._lock:
        return [status for received, msg in peer.received['/diagnostics'] if received >= since
                for status in msg.status if status.name.startswith('segmentation_node: ')]


def _expect_diagnostics(peer: RosPeer, period_s: float) -> None:
    """Check a few diagnostics periods: the keys, one status per period (about)."""
    peer.wait_for(lambda: _statuses(peer, time.time() - 1.0), 10.0)
    since = time.time()
    time.sleep(6 * period_s)
    statuses = [s for s in _statuses(peer, since) if s.message != 'Node starting up']
    assert 3 <= len(statuses) <= 9, f'{len(statuses)} statuses in {6 * period_s} s'
    for status in statuses:
        assert status.name == 'segmentation_node: segmentation', status.name
        assert status.hardware_id == 'cpu'
        values = {kv.key: kv.value for kv in status.values}
        for key in ('frames_received', 'input_rate_hz', 'latency_median_ms', 'grid_status',
                    'classes', 'device', 'backend'):
            assert key in values, (key, values)
        assert values['backend'] in ('torch', 'openvino'), values
        assert values['openmp_wait'] in ('spin', 'brief spin', 'fixed'), values
        assert re.fullmatch(r'all \d+|\d+ of \d+ \(CPU [\d, ]+\)', values['openmp_cpus']), values


def _expect_no_diagnostics(peer: RosPeer) -> None:
    time.sleep(0.5)
    since = time.time()
    time.sleep(1.5)
    assert not _statuses(peer, since), 'diagnostics while not active'


def test_transitions_and_diagnostics_through_the_lifecycle(ros_env, random_model_file):
    """
    An invalid transition id is refused; diagnostics only while active, also after cleanup.

    ``diagnostic_updater.period`` (the Updater's own parameter) is refused
    at run time with the reason; ``diagnostics_period`` sets it.
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.msg import Transition
    from vision_msgs.msg import LabelInfo

    period_s = 0.5
    node = NodeProcess(ros_env, {
        'model_path': str(random_model_file), 'network_width': 64, 'network_height': 48,
        'torch_compile': False, 'grid_pose_source': 'parameters',
        'diagnostics_period': period_s}, lifecycle=True)
    peer = RosPeer(ros_env)
    try:
        peer.subscribe(DiagnosticArray, '/diagnostics')
        node.wait_for_text(UNCONFIGURED_LINE)
        lifecycle = LifecycleClient(peer, NODE)
        assert lifecycle.state() == 'unconfigured'
        # Not valid from unconfigured, asked by id as nav2's lifecycle manager asks.
        invalid = lifecycle._send(lifecycle._change, _change_request(
            transition_id=Transition.TRANSITION_ACTIVATE), 30.0)
        if peer.wait_for(invalid.done, 5.0):  # else the answer was lost (see LifecycleClient)
            assert invalid.result().success is False
        assert lifecycle.state() == 'unconfigured', node.log()
        assert node.exited() is None, node.log()

        for _ in range(2):
            assert lifecycle.change('configure') is True, node.log()
            _expect_no_diagnostics(peer)
            assert lifecycle.change('activate') is True
            _expect_diagnostics(peer, period_s)
            result = ParameterClient(peer).set_one('diagnostic_updater.period', 0.1)
            assert result is not None and result[0] is False, result
            assert 'diagnostic_updater.period applies when the node starts' in result[1], result
            label_info = peer.node.create_subscription(
                LabelInfo, f'{NODE}/label_info', lambda msg: peer.received.setdefault(
                    'label_info', []).append((time.time(), msg)), _latched())
            assert peer.wait_for(lambda: peer.messages('label_info'), 10.0), 'no LabelInfo'
            peer.node.destroy_subscription(label_info)
            peer.received.pop('label_info')
            assert lifecycle.change('deactivate') is True
            _expect_no_diagnostics(peer)
            assert lifecycle.change('cleanup') is True, node.log()
        assert node.stop() == 0, node.log()
        log = node.log()
        assert 'Traceback' not in log and 'executor failed' not in log, log
    finally:
        peer.close()
        if node.exited() is None:
            node.stop()


def _latched():
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def test_a_bad_updater_period_is_a_configuration_error(ros_env, random_model_file):
    """diagnostic_updater.period 0 (a busy timer) or a string: one line, exit code 2."""
    for value, reason in ((0.0, '0.0 s is outside [0.1, 60] s'), ('often', "of type 'STRING'")):
        node = NodeProcess(ros_env, {'model_path': str(random_model_file),
                                     'network_width': 64, 'network_height': 48,
                                     'torch_compile': False, 'diagnostic_updater.period': value})
        assert node.wait_exit() == 2, node.log()
        log = node.log()
        assert 'cannot start: parameter diagnostic_updater.period:' in log, log
        assert reason in log and 'Traceback' not in log, log
