"""
The managed node under Nav2's lifecycle manager: the bond, with the real bondpy as the manager.

The test plays ``nav2_lifecycle_manager`` (navigation2's
nav2_lifecycle_manager/src/lifecycle_manager.cpp): transitions through the
node's lifecycle services, then, after activate, a bond on ``/bond`` whose
id is the node's name, heartbeat period 0.1 s and timeout ``bond_timeout``
(4 s), which must form within ``bond_timeout / 2`` (the manager's
``waitUntilFormed``); a broken bond while active takes the stack down. So:
the bond forms after activate; the node's heartbeat stops (cleanly, not by
a timeout) on deactivate and on SIGINT; a SIGKILL breaks it on the manager's
side within the timeout; garbage on ``/bond`` stops neither the node nor
its bond.
"""

import math
import signal
import time

from enet_ros.node.lifecycle_node import UNCONFIGURED_LINE
import numpy as np
import pytest
from ros_harness import LifecycleClient, make_image_msg, NodeProcess, RosPeer

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings('ignore::DeprecationWarning')]
NODE = '/segmentation_node'
BOND_ID = 'segmentation_node'
#: nav2_lifecycle_manager's defaults: bond_timeout, its wait for the bond to form, the period.
BOND_TIMEOUT_S = 4.0
FORM_WITHIN_S = BOND_TIMEOUT_S / 2
MANAGER_PERIOD_S = 0.1
#: How late after the timeout a broken heartbeat may be noticed (bondpy's timer, a busy host).
TIMEOUT_SLACK_S = 1.5


def _parameters(model_file) -> dict:
    return {'model_path': str(model_file), 'network_width': 64, 'network_height': 48,
            'torch_compile': False, 'grid_pose_source': 'parameters'}


class Manager:
    """What nav2_lifecycle_manager does for one node, with the peer's node as the manager."""

    def __init__(self, peer: RosPeer):
        from bond.msg import Status

        self.peer = peer
        self.lifecycle = LifecycleClient(peer, NODE)
        self.bond = None
        self.instances = set()  # the manager's own bond instances (the same id as the node's)
        peer.subscribe(Status, '/bond', 'bond')

    def bring_up(self) -> float:
        """Configure, activate, start the bond; return the seconds it took to form."""
        assert self.lifecycle.change('configure') is True
        assert self.lifecycle.change('activate') is True
        return self.start_bond()

    def start_bond(self) -> float:
        """Start the manager's side of the bond (after activate); return when it formed."""
        from bondpy.bondpy import Bond
        from rclpy.duration import Duration

        started = time.monotonic()
        self.bond = Bond(self.peer.node, 'bond', BOND_ID)
        self.bond.heartbeat_period = MANAGER_PERIOD_S
        self.bond.heartbeat_timeout = BOND_TIMEOUT_S
        self.instances.add(self.bond.instance_id)
        self.bond.start()
        formed = self.bond.wait_until_formed(Duration(seconds=FORM_WITHIN_S))
        took = time.monotonic() - started
        assert formed, f'no bond within {FORM_WITHIN_S} s of activate'
        return took

    def broken_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the manager's side of the bond to break."""
        from rclpy.duration import Duration

        return self.bond.wait_until_broken(Duration(seconds=seconds))

    def drop_bond(self) -> None:
        """Forget the bond, as the manager does after deactivate (bond_map_.erase)."""
        from enet_ros.node.lifecycle_bond import shut_down

        if self.bond is not None:
            shut_down(self.peer.node, self.bond)  # bondpy's shutdown() ends the executor
            self.bond = None

    def heartbeats(self, since: float, alive: bool = True) -> int:
        """Count the node's Status messages with ``active == alive`` received after ``since``."""
        with self.peer._lock:
            return sum(1 for received, msg in self.peer.received['bond']
                       if received >= since and msg.id == BOND_ID and msg.active == alive
                       and msg.instance_id not in self.instances)


@pytest.fixture
def managed(ros_env, random_model_file):
    """Yield the managed node (waiting unconfigured) and a Manager for it."""
    node = NodeProcess(ros_env, _parameters(random_model_file), lifecycle=True)
    peer = RosPeer(ros_env, name='lifecycle_manager')
    try:
        node.wait_for_text(UNCONFIGURED_LINE)
        manager = Manager(peer)
        yield node, manager
        manager.drop_bond()
    finally:
        peer.close()
        if node.exited() is None:
            node.stop()


def test_bond_forms_on_activate_and_breaks_cleanly(managed):
    """
    No bond while inactive, formed within bond_timeout / 2 of activate, broken on deactivate.

    The manager's side sees the node's break at once as the sister's death
    (not a missed heartbeat), so a deactivate is no failure; activate forms
    a new bond; SIGINT breaks it cleanly too and exits 0.
    """
    node, manager = managed
    assert manager.lifecycle.change('configure') is True
    quiet_from = time.time()
    time.sleep(1.0)
    assert manager.heartbeats(quiet_from) == 0, 'a bond heartbeat while inactive'

    assert manager.lifecycle.change('activate') is True
    took = manager.start_bond()
    print(f'bond formed {took:.2f} s after the activate answer')
    counting_from = time.time()
    time.sleep(2.0)
    beats = manager.heartbeats(counting_from)
    assert beats >= 10, f'{beats} node heartbeats in 2 s (period 0.1 s)'
    assert not manager.bond.is_broken()

    assert manager.lifecycle.change('deactivate') is True
    assert manager.broken_within(1.0), (
        f'the node did not break the bond on deactivate:\n{node.log()}')
    assert manager.bond.sister_died_first, 'broken by a timeout, not by the node'
    manager.drop_bond()
    time.sleep(0.5)
    quiet_from = time.time()
    time.sleep(1.0)
    assert manager.heartbeats(quiet_from) == 0, 'heartbeats after deactivate'
    log = node.log()
    assert "bond 'segmentation_node' broken: deactivate" in log, log

    assert manager.lifecycle.change('activate') is True, node.log()
    manager.start_bond()
    assert node.exited() is None
    node.process.send_signal(signal.SIGINT)
    assert manager.broken_within(2.0), f'SIGINT did not break the bond:\n{node.log()}'
    assert manager.bond.sister_died_first, 'broken by a timeout, not by the exiting node'
    assert node.wait_exit(30) == 0, node.log()
    log = node.log()
    assert 'Traceback' not in log and '[ERROR]' not in log, log


def test_sigkill_breaks_the_bond_within_the_timeout(managed):
    """A killed node's heartbeat stops: the manager's bond breaks bond_timeout after it."""
    node, manager = managed
    manager.bring_up()
    time.sleep(1.0)
    assert not manager.bond.is_broken()
    node.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert manager.broken_within(BOND_TIMEOUT_S + TIMEOUT_SLACK_S + 2.0), repr(manager.bond)
    took = time.monotonic() - killed
    print(f'bond broken {took:.2f} s after SIGKILL')
    assert took <= BOND_TIMEOUT_S + TIMEOUT_SLACK_S, took
    assert not manager.bond.sister_died_first
    assert node.wait_exit(10) == -signal.SIGKILL


def _garbage() -> list:
    """Return Status messages that are not this bond's, or are malformed."""
    from bond.msg import Status

    def status(**fields) -> Status:
        msg = Status(**fields)
        msg.header.stamp.sec = 1
        return msg

    return [
        status(id='controller_server', instance_id='a', active=True, heartbeat_timeout=4.0,
               heartbeat_period=0.1),
        status(id='planner_server', instance_id='b', active=False),
        status(id='', instance_id='', active=True),
        status(id='x' * 65536, instance_id='c', active=False),
        status(id='segmentation_node ', instance_id='d', active=False),
        status(id='seg\u00e9\u2603', instance_id='\u2603', active=True,
               heartbeat_timeout=math.nan, heartbeat_period=math.inf),
        status(id='controller_server', instance_id='a', active=True, heartbeat_timeout=-1.0,
               heartbeat_period=-1e30),
    ]


def test_garbage_on_the_bond_topic_stops_nothing(managed, ros_env):
    """
    Other ids, malformed Status, a third instance with this id, another type on /bond.

    The node keeps segmenting and keeps its bond with the manager for
    longer than bond_timeout; the third instance is refused with bondpy's
    reason in the log.
    """
    from bond.msg import Status
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    node, manager = managed
    peer = manager.peer
    image = peer.publisher(Image, '/image')
    peer.subscribe(Image, f'{NODE}/labels', 'labels')
    manager.bring_up()
    attacker = RosPeer(ros_env, name='attacker')
    # Another participant: one participant cannot have /bond with two types.
    other_type = RosPeer(ros_env, name='other_type')
    try:
        status = attacker.node.create_publisher(Status, '/bond', 10)
        wrong_type = other_type.node.create_publisher(String, '/bond', 10)
        garbage = _garbage()
        intruder = Status(id=BOND_ID, instance_id='intruder', active=False)
        stamp = 1_750_000_000_000_000_000
        started = time.monotonic()
        while time.monotonic() - started < BOND_TIMEOUT_S + 1.5:
            for msg in garbage:
                status.publish(msg)
            status.publish(intruder)
            wrong_type.publish(String(data='bond'))
            stamp += 1_000_000
            pixels = np.full((48, 64, 3), stamp % 251, dtype=np.uint8)
            frame = make_image_msg(pixels, 'rgb8', stamp)
            image.publish(frame)
            time.sleep(0.02)
        answered = len(peer.messages('labels'))
        assert not manager.bond.is_broken(), 'the garbage broke the bond'
        assert answered >= 5, f'{answered} frames segmented during the garbage'
    finally:
        attacker.close()
        other_type.close()
    time.sleep(BOND_TIMEOUT_S / 2)
    assert not manager.bond.is_broken(), 'the bond broke after the garbage'
    assert node.exited() is None, node.log()
    log = node.log()
    assert 'More than two locations are trying to use a single bond' in log, log
    assert 'Traceback' not in log, log
