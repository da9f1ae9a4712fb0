"""
Thin frames: memory bounded whatever the aspect ratio, and frames over 16:1 refused (bad_shape).

A 4x2073600 (width x height) frame has as many pixels as 3840x2160, within
max_pixels, but torch's antialiased resize went through a 2073600x480
intermediate (12 GB), and the label resize through another (1 GB); 1x8294400
asked for 48 GB. The Segmenter's memory is checked in a child process under
an address-space limit (a failed allocation there is an error, not a machine
out of memory).
"""

import json
import os
import subprocess
import sys
import textwrap
import time

from bag_helpers import make_image, make_labels
import cv2
from enet_ros.evaluation import bag_io
from enet_ros.evaluation.evaluate_bag import main as evaluate_main
from enet_ros.ros_io.image_msgs import (check_raw_image, compressed_image_to_frame, InvalidImage,
                                        raw_image_to_frame)
from enet_ros.segmenter import normalization_constants, normalize, Segmenter
import numpy as np
import pytest
from ros_harness import make_image_msg, NodeProcess, RosPeer, stamp_ns
from sensor_msgs.msg import CompressedImage
import torch
import torch.nn.functional as F

MAX_PIXELS = 3840 * 2160
#: image_msgs.MAX_ASPECT_RATIO, the limit the README documents.
RATIO = 16

#: Segments a 4K frame, then frames of as many pixels 4 and 1 pixel wide (and 4 high), with
#: confidence, under RLIMIT_AS = the address space after the 4K frame plus 1 GiB; prints one
#: JSON line.
CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    from enet_ros.segmenter import normalization_constants, normalize, Segmenter

    segmenter = Segmenter.from_file(sys.argv[1], device='cpu', optimize=False, warmup=False)
    segmenter.segment(np.zeros((2160, 3840, 3), np.uint8), with_confidence=True)

    def vm_kib():
        with open('/proc/self/status') as status:
            return next(int(line.split()[1]) for line in status if line.startswith('VmSize:'))

    limit = (vm_kib() + 1024 * 1024) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    seconds = {}
    for height, width in [(2160, 3840), (2073600, 4), (8294400, 1), (4, 2073600)]:
        image = np.zeros((height, width, 3), np.uint8)
        started = time.perf_counter()
        try:
            result = segmenter.segment(image, with_confidence=True)
            assert result.labels.shape == result.confidence.shape == (height, width)
            seconds[f'{width}x{height}'] = time.perf_counter() - started
        except (MemoryError, RuntimeError) as error:  # torch: RuntimeError "can't allocate"
            seconds[f'{width}x{height}'] = f'{type(error).__name__}: {str(error)[:200]}'
        del image
    print(json.dumps(seconds))
""")


@pytest.mark.integration
def test_segmenter_memory_does_not_depend_on_the_aspect_ratio(random_model_file):
    """Frames of 4K's pixel count but 4 or 1 pixel wide fit in 1 GiB beyond a 4K frame's."""
    result = subprocess.run([sys.executable, '-c', CHILD, str(random_model_file)],
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stderr[-3000:]
    seconds = json.loads(result.stdout.strip().splitlines()[-1])
    failed = {size: outcome for size, outcome in seconds.items() if isinstance(outcome, str)}
    assert not failed, failed
    # The work grows with the pixels, not the shape: no thin frame takes far longer than 4K.
    assert all(value < 10 * seconds['3840x2160'] + 5 for value in seconds.values()), seconds


@pytest.mark.parametrize('height, width', [(2000, 20), (20, 2000), (700, 90)])
def test_thin_frames_give_the_labels_of_a_plain_resize(random_model_file, height, width):
    """Rows-first resizing of tall frames gives the labels a single resize gives."""
    segmenter = Segmenter.from_file(str(random_model_file), device='cpu', optimize=False,
                                    warmup=False)
    rng = np.random.default_rng(height)
    small = torch.from_numpy(rng.integers(0, 256, (1, 3, 4, 5)).astype(np.float32))
    smooth = F.interpolate(small, size=(height, width), mode='bilinear', align_corners=False)
    noise = torch.from_numpy(rng.normal(0, 8, (1, 3, height, width)).astype(np.float32))
    image = (smooth + noise).clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    labels = segmenter.segment(image).labels
    net_width, net_height = segmenter.input_size
    frame = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float()
    frame = F.interpolate(frame, size=(net_height, net_width), mode='bilinear',
                          align_corners=False, antialias=True)
    mean, inv_std = normalization_constants(segmenter.metadata, torch.device('cpu'))
    with torch.no_grad():
        logits = segmenter.network(normalize(frame, mean, inv_std))
    grid = logits.argmax(1)[0].to(torch.uint8).numpy()
    rows = ((2 * np.arange(height) + 1) * net_height) // (2 * height)
    cols = ((2 * np.arange(width) + 1) * net_width) // (2 * width)
    reference = grid[rows[:, None], cols[None, :]]
    assert labels.shape == (height, width)
    # Same sums in another order: a rare flip where two logits nearly tie.
    assert np.count_nonzero(labels != reference) <= max(1, labels.size // 1000)


def _reason(msg) -> str:
    with pytest.raises(InvalidImage) as caught:
        check_raw_image(msg, MAX_PIXELS)
    return caught.value.reason


def test_raw_frames_over_16_to_1_are_bad_shape():
    """16:1 passes; 17:1 either way is refused, after the checks of the message's layout."""
    ratio = RATIO
    raw_image_to_frame(make_image_msg(np.zeros((2, 2 * ratio, 3), np.uint8), 'rgb8', 1),
                       MAX_PIXELS)
    raw_image_to_frame(make_image_msg(np.zeros((2 * ratio, 2, 3), np.uint8), 'rgb8', 1),
                       MAX_PIXELS)
    for shape in [(2, 2 * ratio + 1, 3), (2 * ratio + 1, 2, 3), (2073600, 4, 1)]:
        msg = make_image_msg(np.zeros(shape, np.uint8), 'rgb8' if shape[2] == 3 else 'mono8', 1)
        assert _reason(msg) == 'bad_shape'
    with pytest.raises(InvalidImage, match='more than 16 times'):
        check_raw_image(make_image_msg(np.zeros((1, 17, 3), np.uint8), 'rgb8', 1), MAX_PIXELS)
    short = make_image_msg(np.zeros((1, 40, 3), np.uint8), 'rgb8', 1)
    short.step = 100
    assert _reason(short) == 'bad_step'  # a broken message names what is broken


def test_compressed_frames_over_16_to_1_are_refused_before_decoding():
    """The size comes from the header: a thin PNG or JPEG is refused without decoding it."""
    for extension in ('.png', '.jpg'):
        msg = CompressedImage(format=extension[1:])
        msg.data = cv2.imencode(extension, np.zeros((2000, 100, 3), np.uint8))[1].tobytes()
        with pytest.raises(InvalidImage) as caught:
            compressed_image_to_frame(msg, MAX_PIXELS)
        assert caught.value.reason == 'bad_shape', str(caught.value)
        msg.data = cv2.imencode(extension, np.zeros((1600, 100, 3), np.uint8))[1].tobytes()
        assert compressed_image_to_frame(msg, MAX_PIXELS).pixels.shape == (1600, 100, 3)


def test_evaluate_bag_skips_a_thin_frame_with_its_reason(tmp_path, random_model_file, capsys):
    """evaluate_bag (the node's conversion, the Segmenter) skips a 40x800 frame and goes on."""
    bag = tmp_path / 'bag'
    with bag_io.BagWriter(bag) as writer:
        writer.add_topic('/camera/image_raw', bag_io.IMAGE)
        writer.add_topic('/camera/labels', bag_io.IMAGE)
        for index, (height, width) in enumerate([(48, 64), (800, 40), (48, 64)]):
            labels = np.resize(make_labels(index), (height, width)).astype(np.uint8)
            header = bag_io.make_header(index + 1, 'cam')
            writer.write('/camera/image_raw',
                         bag_io.array_to_image(make_image(labels, index), 'rgb8', header),
                         index + 1)
            writer.write('/camera/labels', bag_io.array_to_image(labels, 'mono8', header),
                         index + 1)
    report_path = tmp_path / 'report.json'
    code = evaluate_main([str(bag), '--model', str(random_model_file), '--device', 'cpu',
                          '--json', str(report_path), '--no-progress'])
    assert code == 0, capsys.readouterr().err
    frames = json.loads(report_path.read_text())['frames']
    assert frames['read'] == 3 and frames['evaluated'] == 2, frames
    assert any('40x800: one side is more than 16 times the other' in reason
               for reason in frames['skipped_reasons']), frames


def _diagnostics(peer) -> dict:
    for msg in reversed(peer.messages('/diagnostics')):
        for status in msg.status:
            if 'segmentation' in status.name:
                return {kv.key: kv.value for kv in status.values}
    return {}


@pytest.mark.integration
@pytest.mark.parametrize('transport', ['raw', 'compressed'])
def test_node_refuses_thin_frames_and_counts_them(ros_env, random_model_file, transport):
    """A 4x2073600-like thin frame (here 2x40) is refused as bad_shape, counted, and survived."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    node = NodeProcess(ros_env, {'model_path': str(random_model_file), 'network_width': 64,
                                 'network_height': 48, 'torch_compile': False,
                                 'input_transport': transport, 'publish': ['labels']})
    peer = RosPeer(ros_env)
    try:
        node.wait_ready()
        peer.subscribe(Image, '/segmentation_node/labels', 'labels')
        peer.subscribe(DiagnosticArray, '/diagnostics')
        compressed = transport == 'compressed'
        publisher = peer.publisher(CompressedImage if compressed else Image,
                                   '/image/compressed' if compressed else '/image')
        peer.wait_for_subscribers(publisher)
        time.sleep(1.0)  # the labels subscription matched at the node too

        def frame(height: int, width: int, stamp: int):
            pixels = np.full((height, width, 3), 90, np.uint8)
            if not compressed:
                return make_image_msg(pixels, 'rgb8', stamp)
            msg = CompressedImage(format='png')
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            msg.data = cv2.imencode('.png', pixels)[1].tobytes()
            return msg

        publisher.publish(frame(40, 2, 5_000_000_000))
        assert peer.wait_for(lambda: _diagnostics(peer).get('rejected_bad_shape') == '1',
                             timeout=15.0), _diagnostics(peer)
        good = frame(48, 64, 6_000_000_000)
        publisher.publish(good)
        assert peer.wait_for(lambda: any(stamp_ns(m) == 6_000_000_000
                                         for m in peer.messages('labels')), 20.0)
        assert not any(stamp_ns(m) == 5_000_000_000 for m in peer.messages('labels'))
        assert peer.wait_for(lambda: _diagnostics(peer).get('frames_processed') == '1', 10.0)
        assert _diagnostics(peer)['frames_rejected'] == '1'
        assert 'one side is more than 16 times the other [bad_shape]' in node.log()
    finally:
        peer.close()
        assert node.stop() == 0
