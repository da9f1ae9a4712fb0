"""
Node benchmark: end-to-end latency of the segmentation node process over ROS 2.

A publisher sends frames at a fixed rate to the node (its own process, started
with config/segment.yaml), a subscriber records the outputs; both live in this
process so one wall clock stamps the publish and the receipt. Latency is
receipt time minus publish time (the stamp). With only ``~/labels`` subscribed
the node computes only labels; with all four outputs it computes them all and
the latency is to the last of the four. The Segmenter alone (same model,
device and frame, in this process while the node idles) is timed in the same
run, before and after, and the table gives the ratio.

    python bench/bench_node.py --sizes 480x360 1280x720 --frames 100 --rate 5
"""

import argparse
import json
import os
from pathlib import Path
import platform
import random
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

OUTPUTS = ('labels', 'colored', 'overlay', 'drivable')


def _percentiles(values: List[float]) -> Dict[str, Optional[float]]:
    if not values:
        return {'median': None, 'p90': None, 'p99': None}
    array = np.asarray(values) * 1e3
    return {'median': float(np.median(array)), 'p90': float(np.percentile(array, 90)),
            'p99': float(np.percentile(array, 99))}


class Peer:
    """Publisher of frames and recorder of the node's outputs, one rclpy context."""

    def __init__(self, domain_id: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.rclpy, self.image_type = rclpy, Image
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node('bench_node_peer', context=self.context)
        self.publisher = self.node.create_publisher(
            Image, '/image', QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self.qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.lock = threading.Lock()
        self.receipts: Dict[int, Dict[str, float]] = {}
        self.subscriptions = []
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def subscribe(self, outputs: Tuple[str, ...]) -> None:
        """Subscribe to exactly ``outputs`` of the node (dropping earlier subscriptions)."""
        for subscription in self.subscriptions:
            self.node.destroy_subscription(subscription)
        self.subscriptions = []
        for name in outputs:
            def record(msg, name=name):
                now = time.time()
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                with self.lock:
                    self.receipts.setdefault(stamp, {})[name] = now
            self.subscriptions.append(self.node.create_subscription(
                self.image_type, f'/segmentation_node/{name}', record, self.qos))

    def wait_matched(self, outputs: Tuple[str, ...], timeout: float = 60.0) -> None:
        """Wait until the node subscribes to frames and publishes every output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.publisher.get_subscription_count() > 0 and all(
                    self.node.count_publishers(f'/segmentation_node/{n}') > 0 for n in outputs):
                time.sleep(1.0)  # let the node see our subscriptions too
                return
            time.sleep(0.05)
        raise RuntimeError('the node did not connect')

    def frame_message(self, rgb: np.ndarray):
        """Build an rgb8 sensor_msgs/Image of HxWx3 uint8 ``rgb`` (one copy)."""
        import array

        msg = self.image_type(height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8',
                              step=rgb.shape[1] * 3)
        msg.header.frame_id = 'camera'
        msg.data = array.array('B', rgb.tobytes())
        return msg

    def run(self, msg, frames: int, rate: float, outputs: Tuple[str, ...],
            settle: float = 3.0) -> Dict[str, object]:
        """Publish ``frames`` frames at ``rate`` Hz; latency to the last of ``outputs``."""
        with self.lock:
            self.receipts.clear()
        sent: Dict[int, float] = {}
        period = 1.0 / rate
        start = time.time()
        for index in range(frames):
            target = start + index * period
            time.sleep(max(0.0, target - time.time()))
            now = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
            sent[now] = now / 1e9
            self.publisher.publish(msg)
        time.sleep(settle)
        with self.lock:
            receipts = {k: dict(v) for k, v in self.receipts.items()}
        latencies, arrivals = [], []
        for stamp, published in sent.items():
            got = receipts.get(stamp, {})
            if all(name in got for name in outputs):
                last = max(got[name] for name in outputs)
                latencies.append(last - published)
                arrivals.append(last)
        arrivals.sort()
        rate_out = ((len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
                    if len(arrivals) > 1 else None)
        return {'sent': frames, 'answered': len(latencies), 'dropped': frames - len(latencies),
                'output_rate_hz': rate_out, **_percentiles(latencies)}

    def close(self) -> None:
        """Shut the context down."""
        self.executor.shutdown(timeout_sec=1.0)
        self.rclpy.try_shutdown(context=self.context)


def time_segmenter(segmenter, rgb: np.ndarray, frames: int) -> List[float]:
    """Seconds per ``segment`` call over ``frames`` calls after two warm-up calls."""
    for _ in range(2):
        segmenter.segment(rgb)
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        segmenter.segment(rgb)
        times.append(time.perf_counter() - start)
    return times


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', nargs='+', default=['480x360', '1280x720'])
    parser.add_argument('--frames', type=int, default=100, help='frames per scenario')
    parser.add_argument('--rate', type=float, default=5.0, help='publish rate, Hz')
    parser.add_argument('--model', default='', help='model file (default: bundled)')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--json', type=Path, default=None)
    args = parser.parse_args(argv)

    from enet_ros.ros.node_process import node_command, NodeProcess
    from enet_ros.segmenter import Segmenter

    domain = random.Random().randint(150, 230)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               FASTDDS_BUILTIN_TRANSPORTS=os.environ.get('FASTDDS_BUILTIN_TRANSPORTS',
                                                         'LARGE_DATA'))
    os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
                      FASTDDS_BUILTIN_TRANSPORTS=env['FASTDDS_BUILTIN_TRANSPORTS'])
    segmenter = Segmenter.from_file(args.model or None, device=args.device)
    node = NodeProcess(node_command({'model_path': args.model, 'device': args.device}),
                       env=env)
    peer = Peer(domain)
    rows = []
    try:
        if not node.wait_ready():
            raise SystemExit(f'node did not start:\n{node.tail()}')
        rng = np.random.default_rng(0)
        for size in args.sizes:
            width, height = (int(v) for v in size.split('x'))
            rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            msg = peer.frame_message(rgb)
            for outputs in (('labels',), OUTPUTS):
                alone = time_segmenter(segmenter, rgb, max(20, args.frames // 2))
                peer.subscribe(outputs)
                peer.wait_matched(outputs)
                result = peer.run(msg, args.frames, args.rate, outputs)
                peer.subscribe(())
                alone += time_segmenter(segmenter, rgb, max(20, args.frames // 2))
                segmenter_ms = float(np.median(alone) * 1e3)
                rows.append({'size': size, 'outputs': 'labels' if len(outputs) == 1 else 'all',
                             'segmenter_median_ms': segmenter_ms, **result,
                             'ratio': (result['median'] / segmenter_ms
                                       if result['median'] else None)})
    finally:
        peer.close()
        node.stop()

    print(f'\nNode end to end ({platform.node()}, {os.cpu_count()} CPUs, '
          f'{segmenter.describe()}; {args.frames} frames at {args.rate:g} Hz)')
    header = (f'{"size":>9} {"outputs":>7} {"e2e med":>8} {"p90":>7} {"p99":>7} '
              f'{"out Hz":>7} {"dropped":>7} {"segm. ms":>8} {"ratio":>6}')
    print(header)
    print('-' * len(header))

    def fmt(value, spec='.1f'):
        return 'n/a' if value is None else format(value, spec)

    for row in rows:
        print(f'{row["size"]:>9} {row["outputs"]:>7} {fmt(row["median"]):>8} '
              f'{fmt(row["p90"]):>7} {fmt(row["p99"]):>7} {fmt(row["output_rate_hz"]):>7} '
              f'{row["dropped"]:>7} {fmt(row["segmenter_median_ms"]):>8} '
              f'{fmt(row["ratio"], ".2f"):>6}')
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
