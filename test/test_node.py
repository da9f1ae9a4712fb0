"""The segmentation node as a real process on the real rclpy, with config/segment.yaml."""

import signal
import time

from enet_ros import masks
from enet_ros.labels import CAMVID_11
from enet_ros.segmenter import Segmenter
import numpy as np
import pytest
from ros_harness import image_array, make_image_msg, NodeProcess, OUTPUT_TOPICS, RosPeer, stamp_ns

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings('ignore::DeprecationWarning')]
NODE = '/segmentation_node'


@pytest.fixture(scope='module')
def running_node(module_ros_env, random_model_file):
    """One node on the random model at its 480x360 network size, plus a peer."""
    node = NodeProcess(module_ros_env, {'model_path': random_model_file})
    peer = RosPeer(module_ros_env)
    try:
        node.wait_ready()
        from sensor_msgs.msg import Image

        for name in OUTPUT_TOPICS:
            peer.subscribe(Image, f'{NODE}/{name}', name)
        publisher = peer.publisher(Image, '/image')
        peer.wait_for_subscribers(publisher)
        yield node, peer, publisher
    finally:
        peer.close()
        code = node.stop(signal.SIGINT)
        assert code == 0, node.log()


def _send_and_collect(peer, publisher, msg, timeout=30.0):
    """Publish ``msg`` (repeating if lost) until all four outputs with its stamp arrive."""
    wanted = stamp_ns(msg)

    def outputs():
        found = {}
        for name in OUTPUT_TOPICS:
            for out in peer.messages(name):
                if stamp_ns(out) == wanted:
                    found[name] = out
        return found

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publisher.publish(msg)
        if peer.wait_for(lambda: len(outputs()) == len(OUTPUT_TOPICS), timeout=5.0):
            return outputs()
    raise AssertionError(f'outputs for stamp {wanted} incomplete: {sorted(outputs())}')


def _check_outputs(outputs, msg, expected_labels):
    """Headers, sizes, encodings and values of the four outputs for input ``msg``."""
    palette = masks.palette_lut(CAMVID_11.colors)
    drivable = masks.drivable_lut(CAMVID_11.ids_of(CAMVID_11.drivable))
    for name, out in outputs.items():
        assert out.header.frame_id == msg.header.frame_id, name
        assert stamp_ns(out) == stamp_ns(msg), name
        assert (out.width, out.height) == (msg.width, msg.height), name
        assert out.encoding == ('mono8' if name in ('labels', 'drivable') else 'rgb8'), name
    labels = image_array(outputs['labels'])
    assert labels.max() < CAMVID_11.num_classes
    agreement = np.mean(labels == expected_labels)
    assert agreement >= 0.999, f'node labels agree with the Segmenter on {agreement:.4%}'
    np.testing.assert_array_equal(image_array(outputs['colored']), palette[labels])
    np.testing.assert_array_equal(image_array(outputs['drivable']), drivable[labels])
    assert set(np.unique(image_array(outputs['drivable']))) <= {0, 255}
    assert image_array(outputs['overlay']).shape == (msg.height, msg.width, 3)


@pytest.mark.parametrize('height, width', [(360, 480), (720, 1280)])
def test_outputs_match_input_header_size_and_segmenter(running_node, random_model_file,
                                                       height, width):
    """Each output carries the input header, the input size, its encoding and right values."""
    _, peer, publisher = running_node
    rng = np.random.default_rng(height)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    msg = make_image_msg(rgb, 'rgb8', stamp_ns=1_700_000_000_000_000_000 + height,
                         frame_id=f'camera_{width}')
    outputs = _send_and_collect(peer, publisher, msg)
    expected = Segmenter.from_file(str(random_model_file), device='auto').segment(rgb).labels
    _check_outputs(outputs, msg, expected)
    # Overlay = 50/50 blend of the camera and the colours (config/segment.yaml alpha 0.5).
    colored = image_array(outputs['colored'])
    np.testing.assert_array_equal(image_array(outputs['overlay']),
                                  masks.overlay(rgb, colored, 0.5))


ENCODINGS = ['bgr8', 'rgba8', 'bgra8', 'mono8']


@pytest.mark.parametrize('encoding', ENCODINGS)
def test_supported_encodings(running_node, random_model_file, encoding):
    """bgr8, rgba8, bgra8 and mono8 give the labels of the equivalent RGB image."""
    _, peer, publisher = running_node
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    if encoding == 'mono8':
        gray = rgb[..., 0]
        pixels, reference = gray, np.repeat(gray[..., None], 3, axis=2)
    else:
        pixels = rgb[..., ::-1] if encoding.startswith('bgr') else rgb
        if encoding.endswith('a8'):
            pixels = np.concatenate([pixels, np.full((120, 160, 1), 255, np.uint8)], axis=2)
        reference = rgb
    msg = make_image_msg(np.ascontiguousarray(pixels), encoding,
                         stamp_ns=1_700_000_001_000_000_000 + ENCODINGS.index(encoding))
    outputs = _send_and_collect(peer, publisher, msg)
    expected = Segmenter.from_file(str(random_model_file), device='auto').segment(
        np.ascontiguousarray(reference)).labels
    _check_outputs(outputs, msg, expected)


def test_padded_step_gives_the_unpadded_labels(running_node):
    """Rows padded by whole pixels or an odd byte count give the same labels."""
    _, peer, publisher = running_node
    rgb = np.random.default_rng(3).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    results = []
    for index, step in enumerate((120 * 3, 120 * 3 + 3 * 5, 120 * 3 + 7)):
        msg = make_image_msg(rgb, 'rgb8', stamp_ns=1_700_000_002_000_000_000 + index,
                             step=step)
        results.append(image_array(_send_and_collect(peer, publisher, msg)['labels']))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_malformed_image_then_good_image(running_node):
    """A malformed image is dropped without output; the next good one is answered."""
    node, peer, publisher = running_node
    good = np.zeros((48, 64, 3), dtype=np.uint8)
    bad = make_image_msg(good, 'rgb8', stamp_ns=1_700_000_003_000_000_000, step=64 * 3)
    bad.step = 64  # too small for rgb8
    publisher.publish(bad)
    assert peer.wait_for(lambda: 'bad_step' in node.log(), 15.0), node.log()
    msg = make_image_msg(good, 'rgb8', stamp_ns=1_700_000_003_000_000_001)
    _send_and_collect(peer, publisher, msg)
    assert not any(stamp_ns(out) == stamp_ns(bad) for out in peer.messages('labels'))
    assert node.process.poll() is None


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_exits_cleanly(ros_env, random_model_file, sig):
    """SIGINT and SIGTERM stop the node with exit code 0 and no traceback."""
    node = NodeProcess(ros_env, {'model_path': random_model_file, 'network_width': 64,
                                 'network_height': 48, 'torch_compile': False,
                                 'inference_backend': 'torch'})
    node.wait_ready()
    code = node.stop(sig)
    assert code == 0, node.log()
    assert 'Traceback' not in node.log()
    assert 'network input 64x48' in node.log()
    if ' on cpu ' in node.log():  # torch_compile only applies to the CPU path
        assert 'torch.compile off' in node.log()
    else:
        assert 'CUDA graphs' in node.log()
