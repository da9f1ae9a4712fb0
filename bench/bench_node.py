"""
Node benchmark: end-to-end latency of the segmentation node process over ROS 2.

A publisher sends frames at a fixed rate to the node (its own process, started
with config/segment.yaml), a subscriber records the outputs; both live in this
process so one wall clock stamps the publish and the receipt. Latency is
receipt time minus publish time (the stamp). With only ``~/labels`` subscribed
the node computes only labels; with all four outputs it computes them all and
the latency is to the last of the four. The Segmenter alone (same model,
device and frame, in this process while the node idles) is timed in the same
run, before and after: with calls paced at the publish rate (the like-for-like
figure, since an idle gap before each call makes it slower) and back to back;
the table gives the ratio to each. The node's own /diagnostics split its part
of the latency into stamp to publish, callback to publish, and the Segmenter
call inside the node.

With ``--load N`` every scenario runs twice, idle and then beside N busy
processes (``cpu_load.BusyLoad``, as ``bench_segmenter.py --load``), the node
with its shipped process defaults (``inference_backend: auto``, the OpenMP
wait the node sets).

    python bench/bench_node.py --sizes 480x360 1280x720 --frames 100 --rate 5
    python bench/bench_node.py --sizes 480x360 --frames 60 --rate 5 --load 2

With ``--stub-segmenter`` the node runs through ``bench/stub_node.py``: its
Segmenter returns a fixed label map at once, so the latency left is the
node's own work (decoding, drawing the output images, filling the messages,
publishing) plus the transport; labels only against all four outputs gives
what the image outputs cost. The Segmenter columns are then empty.

    python bench/bench_node.py --stub-segmenter --sizes 1280x720 --frames 100 --rate 5
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
        self.diagnostics: List[Dict[str, str]] = []
        from diagnostic_msgs.msg import DiagnosticArray
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.endswith(': segmentation'):
                with self.lock:
                    self.diagnostics.append({kv.key: kv.value for kv in status.values})

    def node_timings(self) -> Dict[str, Optional[float]]:
        """
        Median over the diagnostics received of the node's own per-second medians (ms).

        ``latency``: frame stamp to publish; ``processing``: callback to publish;
        ``inference``: the Segmenter call inside the node.
        """
        with self.lock:
            reports = list(self.diagnostics)
        timings: Dict[str, Optional[float]] = {}
        for key in ('latency', 'processing', 'inference'):
            values = [float(r[f'{key}_median_ms']) for r in reports
                      if r.get(f'{key}_median_ms', 'n/a') != 'n/a']
            timings[f'node_{key}_ms'] = float(np.median(values)) if values else None
        return timings

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
            self.diagnostics.clear()
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
        timings = self.node_timings()  # before the node's window empties in the settle time
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
        per_output = {}
        for name in outputs:
            values = [receipts[k][name] - v for k, v in sent.items()
                      if name in receipts.get(k, {})]
            per_output[name] = _percentiles(values)
        arrivals.sort()
        rate_out = ((len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
                    if len(arrivals) > 1 else None)
        return {'sent': frames, 'answered': len(latencies), 'dropped': frames - len(latencies),
                'output_rate_hz': rate_out, **_percentiles(latencies), **timings,
                'per_output': per_output}

    def close(self) -> None:
        """Shut the context down."""
        self.executor.shutdown(timeout_sec=1.0)
        self.rclpy.try_shutdown(context=self.context)


def time_segmenter(segmenter, rgb: np.ndarray, frames: int,
                   rate: Optional[float] = None) -> List[float]:
    """
    Seconds per ``segment`` call over ``frames`` calls after two warm-up calls.

    With ``rate`` the calls start ``1 / rate`` s apart, as frames reach the node
    (an idle gap before each call makes it slower than back to back here).
    """
    for _ in range(2):
        segmenter.segment(rgb)
    times = []
    next_start = time.perf_counter()
    for _ in range(frames):
        if rate:
            time.sleep(max(0.0, next_start - time.perf_counter()))
            next_start += 1.0 / rate
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
    parser.add_argument('--load', type=int, default=0,
                        help='also run every scenario beside N busy processes (default 0)')
    parser.add_argument('--load-seconds', type=float, default=900.0,
                        help='the busy processes end by themselves after this long')
    parser.add_argument('--load-nice', type=int, default=0,
                        help='niceness of the busy processes (default 0, the same priority as '
                             'the node; e.g. 10: the node given priority over the rest)')
    parser.add_argument('--stub-segmenter', action='store_true',
                        help='run the node with a Segmenter that returns labels at once '
                             '(bench/stub_node.py): the cost of the node around inference')
    parser.add_argument('--dds', choices=('profile', 'large-data'), default='profile',
                        help="Fast DDS set-up of every process: the package's XML profile "
                             '(unless one is set), or FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA')
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cpu_load import BusyLoad  # the benchmark's helper next to this file
    from enet_ros.inference.cpu_runtime import apply_process_defaults
    # The Segmenter timed here runs in the process environment the node gives itself.
    apply_process_defaults(os.environ)
    from enet_ros.ros_io.dds import PROFILE_VARIABLES, with_large_image_transport
    from enet_ros.evaluation.node_subprocess import node_command, NodeProcess
    from enet_ros.segmenter import Segmenter

    domain = random.Random().randint(150, 230)
    if args.dds == 'profile':
        # The package's Fast DDS profile unless one is set (the publisher sends big frames too).
        os.environ.update(with_large_image_transport(os.environ))
    else:
        for name in PROFILE_VARIABLES:
            os.environ.pop(name, None)
        os.environ['FASTDDS_BUILTIN_TRANSPORTS'] = 'LARGE_DATA'
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    command = node_command({'model_path': args.model, 'device': args.device})
    if args.stub_segmenter:
        command = [sys.executable, str(Path(__file__).resolve().parent / 'stub_node.py'),
                   *command[3:]]  # in place of '-m enet_ros.node.main'
        segmenter = None
    else:
        segmenter = Segmenter.from_file(args.model or None, device=args.device)
    node = NodeProcess(command, env=env)
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
            for outputs, load in [(o, n) for o in (('labels',), OUTPUTS)
                                  for n in sorted({0, args.load})]:
                count = max(20, args.frames // 2)
                paced, back_to_back = [], []
                with BusyLoad(load, args.load_seconds, args.load_nice):
                    if segmenter is not None:
                        back_to_back = time_segmenter(segmenter, rgb, count)
                        paced = time_segmenter(segmenter, rgb, count, args.rate)
                    peer.subscribe(outputs)
                    peer.wait_matched(outputs)
                    result = peer.run(msg, args.frames, args.rate, outputs)
                    peer.subscribe(())
                    if segmenter is not None:
                        paced += time_segmenter(segmenter, rgb, count, args.rate)
                        back_to_back += time_segmenter(segmenter, rgb, count)
                paced_ms = float(np.median(paced) * 1e3) if paced else None
                back_to_back_ms = float(np.median(back_to_back) * 1e3) if back_to_back else None
                rows.append({'size': size, 'outputs': 'labels' if len(outputs) == 1 else 'all',
                             'load': load,
                             'segmenter_median_ms': paced_ms,
                             'segmenter_back_to_back_ms': back_to_back_ms, **result,
                             'stub_segmenter': args.stub_segmenter,
                             'ratio': (result['median'] / paced_ms
                                       if result['median'] and paced_ms else None),
                             'ratio_back_to_back': (result['median'] / back_to_back_ms
                                                    if result['median'] and back_to_back_ms
                                                    else None)})
    finally:
        peer.close()
        node.stop()

    print(f'\nNode end to end ({platform.node()}, {os.cpu_count()} CPUs, '
          f'{segmenter.describe() if segmenter else "STUB Segmenter (bench/stub_node.py)"}; '
          f'{args.frames} frames at {args.rate:g} Hz; DDS {args.dds})')
    header = (f'{"size":>9} {"outputs":>7} {"busy":>4} {"e2e med":>8} {"p90":>7} {"p99":>7} '
              f'{"out Hz":>7} {"dropped":>7} {"segm. ms":>8} {"ratio":>6} '
              f'{"b2b ms":>7} {"ratio":>6} '
              f'{"node: stamp>pub":>15} {"cb>pub":>7} {"infer":>6}')
    print(header)
    print('-' * len(header))

    def fmt(value, spec='.1f'):
        return 'n/a' if value is None else format(value, spec)

    for row in rows:
        print(f'{row["size"]:>9} {row["outputs"]:>7} {row["load"]:>4} {fmt(row["median"]):>8} '
              f'{fmt(row["p90"]):>7} {fmt(row["p99"]):>7} {fmt(row["output_rate_hz"]):>7} '
              f'{row["dropped"]:>7} {fmt(row["segmenter_median_ms"]):>8} '
              f'{fmt(row["ratio"], ".2f"):>6} {fmt(row["segmenter_back_to_back_ms"]):>7} '
              f'{fmt(row["ratio_back_to_back"], ".2f"):>6} {fmt(row["node_latency_ms"]):>15} '
              f'{fmt(row["node_processing_ms"]):>7} {fmt(row["node_inference_ms"]):>6}')
    print(f'p99 of at most {args.frames} answered frames: near the slowest one, not a tail '
          'estimate')
    print('segm. ms: the Segmenter alone in this process (labels only, no output images), '
          'calls paced at the publish rate; b2b: back to back')
    print('busy: processes spinning beside the node and this benchmark (--load)')
    print('node columns: medians from its /diagnostics (frame stamp to publish, callback to '
          'publish, Segmenter call)')
    for row in rows:
        if row['outputs'] == 'all':
            per_output = ', '.join(f'{name} {fmt(v["median"])} / {fmt(v["p90"])}'
                                   for name, v in row['per_output'].items())
            print(f'{row["size"]} all outputs, {row["load"]} busy, latency per output '
                  f'(median / p90 ms): {per_output}')
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
