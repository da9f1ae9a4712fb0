"""
The bond (bondpy heartbeat) that Nav2's lifecycle manager expects from an active node.

``nav2_lifecycle_manager`` activates each node of its ``node_names``, then
starts a bond on topic ``bond`` (in its namespace; ``/bond`` by default) with
the id it knows the node by, its name, and waits up to ``bond_timeout / 2``
(2 s) for it to form; while the stack is active, a bond broken (the node's
heartbeat silent for ``bond_timeout``, 4 s, or broken by the node) makes it
take the whole stack down. Nav2's own servers (``nav2_util::LifecycleNode``)
start their side on activate with a heartbeat period of
``bond_heartbeat_period`` (0.1 s; 0 = no bond) and break it cleanly on
deactivate, cleanup and shutdown, and in the process's pre-shutdown; their
side never times out (``bond_disable_heartbeat_timeout``), so a manager busy
for a while does not make the node break the bond and bring the stack down.

bondpy checks that parameter only by declaring it when its heartbeat timer
fires, which raises in its timer thread if it is already declared (fixed
upstream in ros/bond_core#114, not in every release), so this side's
heartbeat timeout is set too long to fire instead: :data:`NEVER_S`.
"""

import math
from typing import Optional

from bondpy.bondpy import Bond
from rclpy.duration import Duration

#: The topic and the heartbeat period Nav2's servers use (nav2_util::LifecycleNode).
BOND_TOPIC = 'bond'
DEFAULT_HEARTBEAT_PERIOD_S = 0.1
#: This side's heartbeat timeout: in effect never (about 31 years; threading.Timer's limit is
#: ~292 years), as Nav2's servers, whose side of the bond does not time out.
NEVER_S = 1e9
#: How long a clean break waits for the manager to acknowledge the last status message.
BREAK_ACK_WAIT_S = 0.5


class LifecycleBond:
    """
    This node's side of the bond with a lifecycle manager: :meth:`start` on activate.

    ``node``: the rclpy node (its name is the bond id, its executor runs the
    bond's subscription); ``heartbeat_period_s`` <= 0: no bond at all.
    """

    def __init__(self, node, heartbeat_period_s: float = DEFAULT_HEARTBEAT_PERIOD_S):
        self._node = node
        self.heartbeat_period_s = float(heartbeat_period_s)
        self._bond: Optional[Bond] = None

    @property
    def enabled(self) -> bool:
        """Whether this node makes a bond at all (``bond_heartbeat_period`` > 0)."""
        return math.isfinite(self.heartbeat_period_s) and self.heartbeat_period_s > 0

    def start(self) -> None:
        """Start heartbeating on ``bond`` with this node's name as the id (on activate)."""
        if not self.enabled or self._bond is not None:
            return
        node = self._node
        bond = Bond(node, BOND_TOPIC, node.get_name())
        bond.heartbeat_period = self.heartbeat_period_s
        bond.heartbeat_timeout = NEVER_S
        bond.set_formed_callback(lambda: self._formed(bond))
        bond.set_broken_callback(lambda: self._broken(bond))
        self._bond = bond
        bond.start()
        node.get_logger().info(
            f"bond '{bond.id}' on {bond.pub.topic_name} started (heartbeat every "
            f'{self.heartbeat_period_s:g} s) for a lifecycle manager')

    def stop(self, why: str) -> None:
        """Break the bond cleanly (the manager sees it at once), e.g. on deactivate."""
        bond, self._bond = self._bond, None
        if bond is None:
            return
        acknowledged = shut_down(self._node, bond)
        self._node.get_logger().info(f"bond '{bond.id}' broken: {why}")
        if not acknowledged:
            self._node.get_logger().warning(
                f"bond '{bond.id}': the lifecycle manager did not acknowledge the break within "
                f'{BREAK_ACK_WAIT_S:g} s; it may see a heartbeat timeout instead')

    def _formed(self, bond: Bond) -> None:
        if bond is self._bond:
            self._node.get_logger().info(f"bond '{bond.id}' formed with the lifecycle manager")

    def _broken(self, bond: Bond) -> None:
        """
        Say why the bond ended when this node did not end it (called on bondpy's threads).

        Never formed: no manager within bondpy's connect timeout (10 s), e.g.
        a node driven by ``ros2 lifecycle set``. Formed: the manager broke it
        (it shut down or reset the stack).
        """
        if bond is not self._bond:
            return  # stopped by this node: already said
        if bond.sister_instance_id is None:
            self._node.get_logger().info(
                f"bond '{bond.id}': no lifecycle manager answered within "
                f'{bond.connect_timeout:g} s (none manages this node?); no heartbeat is sent '
                'until the next activate')
        else:
            self._node.get_logger().warning(
                f"bond '{bond.id}' broken by the lifecycle manager (it shut down or reset the "
                'stack); no heartbeat is sent until the next activate')


def shut_down(node, bond: Bond) -> bool:
    """
    Break ``bond`` (``active: false`` once, so the sister's side breaks at once) and end it.

    Return whether every subscriber acknowledged the break (within :data:`BREAK_ACK_WAIT_S`).

    bondpy's own ``Bond.shutdown()`` destroys its subscription and publisher
    behind the node's back: their QoS event handlers stay in the node, and
    the next wait set of the node's executor raised InvalidHandle, which
    ended the executor. So the two are destroyed through ``node``, around
    bondpy's steps of a shutdown (its heartbeat thread ends, its timers
    are cancelled).
    """
    node.destroy_subscription(bond.sub)
    with bond.lock:
        bond.is_shutdown = True  # ends its heartbeat thread
        if not bond.is_broken():
            bond.break_bond()
        bond.condition.notify_all()
    # The break is one message on a depth-1 reliable publisher: destroyed at once, the
    # manager may never get it (then it waits out bond_timeout and calls it a failure).
    acknowledged = bond.pub.wait_for_all_acked(Duration(seconds=BREAK_ACK_WAIT_S))
    node.destroy_publisher(bond.pub)
    for timer in (bond.connect_timer, bond.heartbeat_timer, bond.disconnect_timer):
        timer.cancel()
    return bool(acknowledged)
