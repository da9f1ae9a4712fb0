"""
Publishing breakdown: where an output image's time goes between the labels and DDS.

For each output image of the node (labels, colored, overlay, drivable) at the
given sizes, in this process, with the package's own code:

* ``fill``: drawing the image from a label map into the reused message
  (:class:`enet_ros.masks.OutputRenderer` into an
  :class:`~enet_ros.ros_io.image_msgs.ImageBuffer` view), the node's per-frame work;
* ``numpy``: the same fill with OpenCV hidden from :mod:`enet_ros.masks` (its
  numpy rules, the drawing before issue 33's phase 2), in the same process;
* ``convert``: ``rclpy.serialization.serialize_message`` of that message: the C
  conversion of the Python message (``uint8[]`` data through the buffer
  protocol) plus the CDR serialisation rmw does in a publish;
* ``publish``: ``Publisher.publish`` with one subscriber in another process
  (Fast DDS with the package's profile, as the node runs), and ``dds``:
  publish minus convert, i.e. what rmw and Fast DDS add;
* ``receive``: ``deserialize_message`` of it, what a Python subscriber (RViz is
  not one; ``bench_node.py``'s recorder is) pays before its callback runs;
* the four together as the node publishes them (each drawn and published in
  turn, labels first, the overlay blended from the colour image already
  drawn), the same with numpy drawing, labels alone likewise, and the four
  publish calls without drawing.

Then, for sensor_msgs/Image.data at the largest size, what the C conversion
costs per form of the data (``array.array`` as the message class stores it,
``bytes``, a numpy array, a memoryview; set on the message's slot directly,
since the generated setter copies anything but an ``array.array`` element by
element), and what the generated setter costs for each.

    python bench/bench_publish.py --sizes 480x360 1280x720 --repeats 60
"""

import argparse
import array
import contextlib
import json
import os
from pathlib import Path
import platform
import random
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

OUTPUTS = ('labels', 'colored', 'overlay', 'drivable')

#: The subscriber process: takes every output, counts what arrives, prints it at the end.
SUBSCRIBER = r"""
import sys, time, rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node('bench_publish_sink')
got = {}
qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
for name in sys.argv[1:]:
    node.create_subscription(Image, f'/bench_publish/{name}',
                             lambda msg, n=name: got.__setitem__(n, got.get(n, 0) + 1), qos)
print('ready', flush=True)
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
print('received', got, flush=True)
"""


def _median_ms(function: Callable[[], object], repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


@contextlib.contextmanager
def numpy_drawing():
    """Hide OpenCV from enet_ros.masks for a while: its numpy rules draw (same pixels)."""
    from enet_ros import masks

    saved, masks.cv2 = masks.cv2, None
    try:
        yield
    finally:
        masks.cv2 = saved


def data_forms(size: int, repeats: int) -> Dict[str, Dict[str, float]]:
    """serialize_message and the setter per form of Image.data (``size`` bytes), ms."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    base = array.array('B', bytes(size))
    forms = {'array.array': base, 'bytes': bytes(size), 'numpy': np.zeros(size, np.uint8),
             'memoryview': memoryview(base)}
    results = {}
    for name, value in forms.items():
        msg = Image(height=1, width=size, step=size, encoding='mono8')
        msg._data = value  # the slot the setter fills: what the C conversion reads
        convert = _median_ms(lambda: serialize_message(msg), repeats)
        setter = (_median_ms(lambda: setattr(msg, 'data', value), max(3, repeats // 10))
                  if name != 'numpy' or size <= 1 << 20 else None)
        results[name] = {'serialize_ms': convert, 'setter_ms': setter}
    return results


def main(argv: Optional[List[str]] = None) -> int:
    """Run the breakdown and print the table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', nargs='+', default=['480x360', '1280x720'])
    parser.add_argument('--repeats', type=int, default=60)
    parser.add_argument('--json', type=Path, default=None)
    args = parser.parse_args(argv)

    from enet_ros.ros_io.dds import with_large_image_transport
    os.environ.update(with_large_image_transport(os.environ))
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    domain = random.Random().randint(150, 230)
    os.environ['ROS_DOMAIN_ID'] = str(domain)

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    from enet_ros import masks
    from enet_ros.model_file import load_model_file
    from enet_ros.ros_io.image_msgs import ImageBuffer

    metadata = load_model_file(None).metadata
    drivable_ids = [metadata.class_names.index(name) for name in metadata.drivable_classes]
    renderer = masks.OutputRenderer(metadata.colors, drivable_ids, 0.5)
    sink = subprocess.Popen([sys.executable, '-c', SUBSCRIBER, *OUTPUTS],
                            stdout=subprocess.PIPE, text=True)
    rclpy.init()
    node = rclpy.create_node('bench_publish')
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    publishers = {name: node.create_publisher(Image, f'/bench_publish/{name}', qos)
                  for name in OUTPUTS}
    rows = []
    try:
        if sink.stdout.readline().strip() != 'ready':
            raise SystemExit('the subscriber process did not start')
        deadline = time.monotonic() + 30
        while any(p.get_subscription_count() == 0 for p in publishers.values()):
            if time.monotonic() > deadline:
                raise SystemExit('the subscriber process did not match')
            time.sleep(0.05)
        time.sleep(1.0)
        rng = np.random.default_rng(0)
        for size in args.sizes:
            width, height = (int(v) for v in size.split('x'))
            rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            bands = (np.arange(width) * metadata.num_classes // width).astype(np.uint8)
            labels = np.broadcast_to(bands, (height, width)).copy()
            buffers = {name: ImageBuffer(Image, 'rgb8' if masks.OUTPUT_CHANNELS[name] == 3
                                         else 'mono8') for name in OUTPUTS}
            views = {name: buffers[name].view(height, width, masks.OUTPUT_CHANNELS[name])
                     for name in OUTPUTS}
            header = Image().header
            header.frame_id = 'camera'
            row = {'size': size, 'outputs': {}}
            for name in OUTPUTS:
                buffer = buffers[name]

                def fill(name=name, buffer=buffer):
                    renderer.render(labels, rgb, (name,), out={name: views[name]})
                    buffer.msg.header = header

                fill_ms = _median_ms(fill, args.repeats)
                with numpy_drawing():
                    fill_numpy_ms = _median_ms(fill, args.repeats)
                convert_ms = _median_ms(lambda: serialize_message(buffer.msg), args.repeats)
                publish_ms = _median_ms(lambda: publishers[name].publish(buffer.msg),
                                        args.repeats)
                serialized = serialize_message(buffer.msg)
                receive_ms = _median_ms(lambda: deserialize_message(serialized, Image),
                                        args.repeats)
                row['outputs'][name] = {'fill_ms': fill_ms, 'fill_numpy_ms': fill_numpy_ms,
                                        'convert_ms': convert_ms,
                                        'publish_ms': publish_ms, 'receive_ms': receive_ms,
                                        'dds_ms': publish_ms - convert_ms,
                                        'bytes': len(buffer.msg.data)}

            def all_four():  # as FrameLoop publishes them: each from where it is ready
                colored = None
                for name in ('labels', 'drivable', 'colored', 'overlay'):
                    renderer.render(labels, rgb, (name,), out={name: views[name]},
                                    colored=colored)
                    if name == 'colored':
                        colored = views[name]
                    buffers[name].msg.header = header
                    publishers[name].publish(buffers[name].msg)

            def labels_only():
                renderer.render(labels, rgb, ('labels',), out=views)
                buffers['labels'].msg.header = header
                publishers['labels'].publish(buffers['labels'].msg)

            def publish_four():
                for name in OUTPUTS:
                    publishers[name].publish(buffers[name].msg)

            row['publish_four_ms'] = _median_ms(publish_four, args.repeats)
            row['all_four_ms'] = _median_ms(all_four, args.repeats)
            with numpy_drawing():
                row['all_four_numpy_ms'] = _median_ms(all_four, args.repeats)
            row['labels_only_ms'] = _median_ms(labels_only, args.repeats)
            rows.append(row)
        largest = max(rows, key=lambda r: r['outputs']['colored']['bytes'])
        forms = data_forms(largest['outputs']['colored']['bytes'], args.repeats)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        sink.terminate()
        try:
            received = sink.communicate(timeout=30)[0].strip().splitlines()
        except subprocess.TimeoutExpired:
            sink.kill()
            received = sink.communicate()[0].strip().splitlines()

    print(f'\nPublishing breakdown ({platform.node()}, {os.cpu_count()} CPUs, '
          f'median of {args.repeats}, one subscriber in another process; ms)')
    header = (f'{"size":>9} {"output":>9} {"MB":>5} {"fill":>7} {"numpy":>7} {"convert":>8} '
              f'{"dds":>7} {"publish":>8} {"total":>7} {"receive":>8}')
    print(header)
    print('-' * len(header))
    for row in rows:
        for name, v in row['outputs'].items():
            print(f'{row["size"]:>9} {name:>9} {v["bytes"] / 1e6:>5.2f} {v["fill_ms"]:>7.2f} '
                  f'{v["fill_numpy_ms"]:>7.2f} {v["convert_ms"]:>8.2f} {v["dds_ms"]:>7.2f} '
                  f'{v["publish_ms"]:>8.2f} '
                  f'{v["fill_ms"] + v["publish_ms"]:>7.2f} {v["receive_ms"]:>8.2f}')
        print(f'{row["size"]:>9} labels only, drawn and published: {row["labels_only_ms"]:.2f}; '
              f'all four: {row["all_four_ms"]:.2f} '
              f'(+{row["all_four_ms"] - row["labels_only_ms"]:.2f}; numpy drawing: '
              f'{row["all_four_numpy_ms"]:.2f}); the four publish calls '
              f'alone: {row["publish_four_ms"]:.2f}')
    print('fill: drawing into the reused message (numpy: OpenCV hidden); convert: '
          'serialize_message (C conversion + CDR); dds: publish - convert; total: fill + '
          'publish; receive: deserialize_message in a Python subscriber')
    print(f'Image.data of {largest["outputs"]["colored"]["bytes"]} bytes, per form (ms): '
          + ', '.join(f'{name}: serialize {v["serialize_ms"]:.3f}, setter '
                      + ('n/a' if v['setter_ms'] is None else f'{v["setter_ms"]:.3f}')
                      for name, v in forms.items()))
    print('subscriber:', received[-1] if received else 'no report')
    if args.json:
        args.json.write_text(json.dumps({'rows': rows, 'data_forms': forms,
                                         'machine': platform.node(),
                                         'cpus': os.cpu_count()}, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
