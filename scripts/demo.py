"""
The demo: the node on the bundled model over a replayed CamVid sequence.

1. ``dataset_to_bag``: the CamVid split (default val, one driving sequence) to an
   MCAP bag with frames on ``/camera/image_raw`` and labels on ``/camera/labels``.
2. ``live_evaluate``: starts the segmentation node as its own process with
   config/segment.yaml, replays the bag into it over ROS 2, records the node's
   four outputs into a bag, and scores its labels against the ground truth.
3. Writes PNGs of a few of the node's outputs (overlay, colour, drivable) and
   prints the scores, latency and drops.

Everything lands in ``--out`` (default ``demo_output/``)::

    python scripts/demo.py --data ../shared/data/camvid
"""

import argparse
import json
import os
from pathlib import Path
import random
import sys
from typing import List, Optional

import cv2
from enet_ros.evaluation.bag_io import deserialize, open_bag, read_messages, stamp_to_ns
from enet_ros.evaluation.dataset_to_bag import main as dataset_to_bag
from enet_ros.evaluation.live_evaluate import live_evaluate, LiveError, LiveOptions
from enet_ros.evaluation.report import format_table
from enet_ros.model_file import load_model_file
from enet_ros.ros_io.dds import with_large_image_transport
import numpy as np

OUTPUTS = ('overlay', 'colored', 'drivable')


def write_output_pngs(recorded_bag: Path, folder: Path, every: int) -> int:
    """Write every ``every``-th recorded output frame as PNG; return how many frames."""
    folder.mkdir(parents=True, exist_ok=True)
    topics = [f'/segmentation_node/{name}' for name in OUTPUTS]
    stamps = []
    with open_bag(recorded_bag) as reader:
        for raw in read_messages(reader, topics):
            msg = deserialize(raw.data, raw.msgtype)
            stamp = stamp_to_ns(msg.header.stamp)
            if stamp not in stamps:
                stamps.append(stamp)
            index = stamps.index(stamp)
            if index % every:
                continue
            channels = 3 if msg.encoding == 'rgb8' else 1
            pixels = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(
                msg.height, msg.width, channels)
            if channels == 3:
                pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
            name = raw.topic.rsplit('/', 1)[1]
            cv2.imwrite(str(folder / f'frame{index:03d}_{name}.png'), pixels)
    return len(range(0, len(stamps), every))


def main(argv: Optional[List[str]] = None) -> int:
    """Run the demo; 0 when the node answered frames, 1 otherwise."""
    parser = argparse.ArgumentParser(prog='scripts/demo.py', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', type=Path, default=Path('../shared/data/camvid'),
                        help='CamVid root (train/, val/, valannot/, ...)')
    parser.add_argument('--split', default='val')
    parser.add_argument('--out', type=Path, default=Path('demo_output'))
    parser.add_argument('--model', default='', help='model file (default: bundled)')
    parser.add_argument('--fps', type=float, default=5.0,
                        help='camera rate of the replayed sequence, frames per second')
    parser.add_argument('--limit', type=int, default=None, help='only the first N frames')
    args = parser.parse_args(argv)

    if not (args.data / args.split).is_dir():
        print(f"demo: no CamVid split at '{args.data / args.split}' (give --data)",
              file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    # This script owns its process: a private ROS domain on loopback, and the package's
    # large-image Fast DDS profile (unless one is set) before the first participant starts,
    # for the frames this process publishes (live_evaluate leaves os.environ alone).
    os.environ.setdefault('ROS_DOMAIN_ID', str(random.Random().randint(1, 100)))
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.update(with_large_image_transport(os.environ))

    camera_bag = args.out / f'camvid_{args.split}'
    bag_args = [str(args.data), str(camera_bag), '--layout', 'camvid', '--split', args.split,
                '--storage', 'mcap', '--rate', str(args.fps), '--overwrite']
    if args.limit:
        bag_args += ['--limit', str(args.limit)]
    if dataset_to_bag(bag_args) != 0:
        return 1
    recorded = args.out / 'node_outputs'
    try:
        report = live_evaluate(LiveOptions(
            bag=camera_bag, model=args.model, json_path=args.out / 'live.json',
            node_log=args.out / 'node.log', record_bag=recorded, wait=10.0))
    except LiveError as error:
        print(f'demo: {error}', file=sys.stderr)
        return 1
    frames = write_output_pngs(recorded, args.out / 'frames', every=10)
    print(format_table(report))
    note = load_model_file(args.model or None).metadata.seen_split_note(args.split)
    if note:
        print(f'demo: {note}')
    print(f'\ndemo: wrote {args.out}/: camvid_{args.split}/ (the replayed camera bag), '
          f'node_outputs/ (what the node published, MCAP), frames/ ({frames} frames as PNG), '
          'live.json (every figure), node.log')
    (args.out / 'summary.json').write_text(json.dumps(
        {'frames': report['frames'], 'mean_iou': report['accuracy'].get('mean_iou'),
         'end_to_end_latency': report['end_to_end_latency']}, indent=2) + '\n')
    return 0 if report['frames']['answered'] else 1


if __name__ == '__main__':
    sys.exit(main())
