"""
Multi-camera benchmark: throughput of one node serving 1, 2 and 4 cameras.

For each camera count a node process is started (config/segment.yaml, the
bundled model, ``cameras: [cam0, cam1, ...]``); this process publishes a
480x360 rgb8 frame on every camera at ``--rate`` Hz (faster than the node can
serve them all, so it is saturated) and records ``~/<camera>/labels``. Over
``--seconds`` after a warm-up it reports frames answered per second in all
and per camera (the least-served camera shows fairness), and the median
latency (receipt minus the frame's stamp). The node drops the older frames
of each camera, so latency stays bounded while throughput is what the model
gives.

    python bench/bench_cameras.py --cameras 1 2 4 --seconds 20 --rate 15
"""

import argparse
import json
import os
from pathlib import Path
import platform
import random
import sys
import threading
import time
from typing import Dict, List, Optional

import numpy as np


class Peer:
    """Publishes frames on every camera's topic and records each camera's labels."""

    def __init__(self, domain_id: int, cameras: List[str]):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.rclpy, self.image_type = rclpy, Image
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node('bench_cameras_peer', context=self.context)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.publishers = {c: self.node.create_publisher(Image, f'/{c}/image', reliable)
                           for c in cameras}
        self.lock = threading.Lock()
        self.answers: Dict[str, List[tuple]] = {c: [] for c in cameras}
        for camera in cameras:
            self.node.create_subscription(
                Image, f'/segmentation_node/{camera}/labels',
                lambda msg, camera=camera: self._record(camera, msg), reliable)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except Exception:  # noqa: B902 - the context was shut down under the executor
            pass

    def _record(self, camera: str, msg) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self.lock:
            self.answers[camera].append((time.time(), time.time() - stamp))

    def ready(self) -> bool:
        """Whether the node subscribes every camera topic and answers on every labels topic."""
        return all(p.get_subscription_count() > 0 for p in self.publishers.values())

    def close(self) -> None:
        """Shut the context down and join the spinner, then destroy the node."""
        self.context.try_shutdown()
        self.thread.join(5.0)
        self.executor.shutdown()
        self.node.destroy_node()


def _frame_msg(image_type, rgb: np.ndarray, stamp_ns: int, frame_id: str):
    """Return an rgb8 sensor_msgs/Image of HxWx3 uint8 ``rgb`` with the given stamp."""
    import array

    height, width = rgb.shape[:2]
    msg = image_type(height=height, width=width, encoding='rgb8', is_bigendian=0,
                     step=width * 3)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.data = array.array('B', rgb.tobytes())
    return msg


def run_count(count: int, args, rgb: np.ndarray) -> Dict[str, object]:
    """Start a node with ``count`` cameras, saturate it, return the throughput figures."""
    from enet_ros.evaluation.node_subprocess import node_command, NodeProcess

    cameras = [f'cam{i}' for i in range(count)]
    domain = random.Random().randint(150, 230)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    node = NodeProcess(node_command({'cameras': cameras}), env=env)
    peer = Peer(domain, cameras)
    try:
        if not node.wait_ready(300):
            raise SystemExit(f'node did not start:\n{node.tail()}')
        deadline = time.monotonic() + 60
        while not peer.ready() and time.monotonic() < deadline:
            time.sleep(0.1)
        start = time.time()
        period = 1.0 / args.rate
        measure_from = start + args.warmup
        end = measure_from + args.seconds
        tick = 0
        while time.time() < end:
            for camera, publisher in peer.publishers.items():
                publisher.publish(_frame_msg(peer.image_type, rgb, time.time_ns(), camera))
            tick += 1
            time.sleep(max(0.0, start + tick * period - time.time()))
        time.sleep(1.0)
        with peer.lock:
            answers = {c: [a for a in peer.answers[c] if measure_from <= a[0] <= end]
                       for c in cameras}
    finally:
        peer.close()
        node.stop()
    per_camera = {c: len(a) / args.seconds for c, a in answers.items()}
    latencies = [latency for a in answers.values() for _, latency in a]
    return {'cameras': count, 'total_fps': sum(per_camera.values()),
            'per_camera_fps': per_camera, 'min_camera_fps': min(per_camera.values()),
            'latency_median_ms': float(np.median(latencies) * 1e3) if latencies else None}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark and print the table (and optionally a JSON file)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cameras', type=int, nargs='+', default=[1, 2, 4])
    parser.add_argument('--seconds', type=float, default=20.0)
    parser.add_argument('--warmup', type=float, default=5.0)
    parser.add_argument('--rate', type=float, default=15.0, help='frames per second per camera')
    parser.add_argument('--repeats', type=int, default=3, help='runs per count (median)')
    parser.add_argument('--json', type=Path)
    args = parser.parse_args(argv)

    from enet_ros.ros_io.dds import with_large_image_transport

    os.environ.update(with_large_image_transport(os.environ))
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    rgb = np.random.default_rng(0).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    rows = []
    for count in args.cameras:
        runs = [run_count(count, args, rgb) for _ in range(args.repeats)]
        if any(r['latency_median_ms'] is None for r in runs):
            print(f'bench_cameras: the node answered no frame in a run with {count} cameras; '
                  'no figures', file=sys.stderr)
            return 1
        rows.append({
            'cameras': count,
            'total_fps': float(np.median([r['total_fps'] for r in runs])),
            'min_camera_fps': float(np.median([r['min_camera_fps'] for r in runs])),
            'latency_median_ms': float(np.median([r['latency_median_ms'] for r in runs])),
            'runs': runs})
    print(f'\nOne node, bundled model, 480x360 frames at {args.rate:g} Hz per camera, '
          f'{args.seconds:g} s per run, median of {args.repeats} runs '
          f'({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)\n')
    print('| cameras | frames/s, all cameras | frames/s, least-served camera | '
          'latency median ms |')
    print('| ---: | ---: | ---: | ---: |')
    for row in rows:
        print(f"| {row['cameras']} | {row['total_fps']:.1f} | {row['min_camera_fps']:.1f} | "
              f"{row['latency_median_ms']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
