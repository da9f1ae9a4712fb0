"""
Several cameras, a model swapped at run time, and confidence: the real node process.

Each test starts ``python -m enet_ros.node.main`` with config/segment.yaml and a
small random model (64x48 network, torch.compile off) and talks to it over
ROS 2 from a peer in the test process.
"""

import threading
import time

from enet_ros import masks
from enet_ros.labels import CAMVID_11, ClassTable
from enet_ros.segmenter import Segmenter
import numpy as np
import pytest
from ros_harness import (get_parameter, image_array, make_image_msg, NodeProcess, RosPeer,
                         set_parameters, stamp_ns)

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.filterwarnings('ignore::DeprecationWarning')]
NODE = '/segmentation_node'
TINY = {'network_width': 64, 'network_height': 48, 'torch_compile': False}
#: A second model with other classes, colours and drivable class than CamVid's.
THREE_CLASSES = ClassTable(dataset='test3', names=('ground', 'thing', 'sky'),
                           colors=((10, 200, 10), (200, 10, 10), (10, 10, 200)), void_id=3,
                           drivable=('ground',))


def _segmenter(model_file, **kwargs) -> Segmenter:
    return Segmenter.from_file(str(model_file), device='cpu', input_size=(64, 48),
                               torch_compile=False, **kwargs)


def _frame(seed: int, width: int, height: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _answer(peer: RosPeer, key: str, stamp: int):
    return next((m for m in peer.messages(key) if stamp_ns(m) == stamp), None)


def _send_until_answered(peer, publisher, msg, key, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publisher.publish(msg)
        if peer.wait_for(lambda: _answer(peer, key, stamp_ns(msg)) is not None, 3.0):
            return _answer(peer, key, stamp_ns(msg))
    raise AssertionError(f'no {key} for stamp {stamp_ns(msg)}')


@pytest.fixture
def started(ros_env, random_model_file):
    """Start a node with ``parameters`` and a peer; stop both afterwards (exit code 0)."""
    running = []

    def start(parameters):
        node = NodeProcess(ros_env, {'model_path': random_model_file, **TINY, **parameters})
        peer = RosPeer(ros_env)
        running.append((node, peer))
        node.wait_ready()
        return node, peer

    yield start
    for node, peer in running:
        peer.close()
        assert node.stop() == 0, node.log()


def test_two_cameras_each_get_their_own_outputs(started, random_model_file):
    """Two cameras, two sizes, two rates: right topics, headers, sizes; one stopping is fine."""
    from sensor_msgs.msg import Image

    node, peer = started({'cameras': ['front', 'left']})
    assert 'listening on /front/image' in node.log() and 'listening on /left/image' in node.log()
    sizes = {'front': (320, 240), 'left': (160, 120)}
    for camera in sizes:
        for output in ('labels', 'colored', 'drivable'):
            peer.subscribe(Image, f'{NODE}/{camera}/{output}', f'{camera}/{output}')
    publishers = {camera: peer.publisher(Image, f'/{camera}/image') for camera in sizes}
    for publisher in publishers.values():
        peer.wait_for_subscribers(publisher)
    frames = {camera: _frame(i, *size) for i, (camera, size) in enumerate(sizes.items())}
    reference = _segmenter(random_model_file)
    expected = {camera: reference.segment(frames[camera]).labels for camera in sizes}
    sent = {camera: [] for camera in sizes}
    start = time.time()
    tick = 0
    while time.time() - start < 4.0:  # front at 10 Hz, left at 4 Hz, interleaved
        for camera, every in (('front', 1), ('left', 3)):
            if tick % every == 0:
                stamp = time.time_ns()
                publishers[camera].publish(make_image_msg(frames[camera], 'rgb8', stamp,
                                                          frame_id=f'{camera}_optical'))
                sent[camera].append(stamp)
        tick += 1
        time.sleep(0.1)
    assert peer.wait_for(lambda: all(len(peer.messages(f'{c}/labels')) >= 3 for c in sizes), 20)
    for camera, (width, height) in sizes.items():
        for output in ('labels', 'colored', 'drivable'):
            for msg in peer.messages(f'{camera}/{output}'):
                assert msg.header.frame_id == f'{camera}_optical', (camera, output)
                assert stamp_ns(msg) in sent[camera], (camera, output)
                assert (msg.width, msg.height) == (width, height), (camera, output)
        for msg in peer.messages(f'{camera}/labels'):
            agreement = np.mean(image_array(msg) == expected[camera])
            assert agreement >= 0.999, (camera, agreement)
    # The left camera stops; the front one keeps being answered.
    answered = len(peer.messages('front/labels'))
    for _ in range(10):
        publishers['front'].publish(make_image_msg(frames['front'], 'rgb8', time.time_ns(),
                                                   frame_id='front_optical'))
        time.sleep(0.1)
    assert peer.wait_for(lambda: len(peer.messages('front/labels')) >= answered + 5, 10)


def test_model_swap_at_run_time(started, random_model_file, tmp_path):
    """A valid model swaps in without a restart; bad files are refused; a stream never stops."""
    from model_files import write_random_model
    from sensor_msgs.msg import Image

    node, peer = started({})
    for output in ('labels', 'colored'):
        peer.subscribe(Image, f'{NODE}/{output}', output)
    publisher = peer.publisher(Image, '/image')
    peer.wait_for_subscribers(publisher)
    rgb = _frame(5, 64, 48)
    other = write_random_model(tmp_path / 'three.safetensors', THREE_CLASSES, (64, 48), seed=3)

    for path, reason in _bad_model_files(tmp_path):
        [result] = set_parameters(peer, {'model_path': str(path)})
        assert not result.successful and reason in result.reason, (path, result.reason)
    [result] = set_parameters(peer, {'model_path': str(other)})
    assert not result.successful and 'Road' in result.reason  # drivable_classes do not fit
    assert get_parameter(peer, 'model_path') == str(random_model_file)
    first = _send_until_answered(peer, publisher, make_image_msg(rgb, 'rgb8', 1_000), 'labels')
    assert image_array(first).max() < CAMVID_11.num_classes

    answers_during_swap = []
    stop = threading.Event()

    def stream():
        stamp = 10_000
        while not stop.is_set():
            publisher.publish(make_image_msg(rgb, 'rgb8', stamp))
            stamp += 1
            stop.wait(0.05)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        time.sleep(0.5)
        before = len(peer.messages('labels'))
        [result] = set_parameters(peer, {'model_path': str(other),
                                         'drivable_classes': ['ground']}, atomically=True)
        assert result.successful, result.reason
        assert peer.wait_for(lambda: get_parameter(peer, 'class_names') == list(
            THREE_CLASSES.names), 120.0), 'the new model was not swapped in'
        answers_during_swap = len(peer.messages('labels')) - before
        time.sleep(1.0)
    finally:
        stop.set()
        streamer.join(5.0)
    assert answers_during_swap > 0, 'frames stopped flowing during the swap'
    assert node.exited() is None, node.log()
    assert get_parameter(peer, 'model_path') == str(other)
    new_answer = _send_until_answered(peer, publisher, make_image_msg(rgb, 'rgb8', 99_999),
                                      'colored')
    labels = _send_until_answered(peer, publisher, make_image_msg(rgb, 'rgb8', 99_999),
                                  'labels')
    expected = _segmenter(other).segment(rgb).labels
    assert np.mean(image_array(labels) == expected) >= 0.999
    palette = masks.palette_lut(THREE_CLASSES.colors)
    np.testing.assert_array_equal(image_array(new_answer), palette[image_array(labels)])
    for msg in peer.messages('labels'):  # every answer came from one model or the other
        assert image_array(msg).max() < CAMVID_11.num_classes


def _bad_model_files(folder):
    """(path, reason fragment) of model files the node must refuse."""
    import pickle

    from model_files import write_random_model
    from safetensors import safe_open
    from safetensors.torch import save_file

    good = write_random_model(folder / 'good.safetensors', CAMVID_11, (64, 48))
    truncated = folder / 'truncated.safetensors'
    truncated.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    pickled = folder / 'pickled.pth'
    pickled.write_bytes(pickle.dumps({'state_dict': {}}, protocol=2))
    with safe_open(str(good), framework='pt') as handle:
        metadata = handle.metadata()
    from model_files import random_enet
    wrong = folder / 'wrong_shapes.safetensors'
    save_file({k: v.contiguous() for k, v in random_enet(19).state_dict().items()}, str(wrong),
              metadata=metadata)
    return [(folder / 'missing.safetensors', 'does not exist'),
            (truncated, 'truncated or corrupt'), (pickled, 'pickle'),
            (wrong, 'wrong shape')]


def test_confidence_output_and_threshold(started, random_model_file):
    """~/confidence is round(p * 255); min_confidence 1 voids every pixel, 0 restores."""
    from sensor_msgs.msg import Image

    _, peer = started({})
    for output in ('labels', 'confidence', 'drivable', 'colored'):
        peer.subscribe(Image, f'{NODE}/{output}', output)
    publisher = peer.publisher(Image, '/image')
    peer.wait_for_subscribers(publisher)
    rgb = _frame(8, 96, 72)
    msg = make_image_msg(rgb, 'rgb8', 5_000, frame_id='cam')
    confidence = _send_until_answered(peer, publisher, msg, 'confidence')
    assert confidence.encoding == 'mono8' and confidence.header.frame_id == 'cam'
    assert (confidence.width, confidence.height) == (96, 72)
    reference = _segmenter(random_model_file).segment(rgb, with_confidence=True)
    difference = np.abs(image_array(confidence).astype(int)
                        - masks.confidence_image(reference.confidence).astype(int))
    assert difference.max() <= 1 and np.mean(difference == 0) >= 0.99

    [result] = set_parameters(peer, {'min_confidence': 1.0})
    assert result.successful
    voided = make_image_msg(rgb, 'rgb8', 6_000)
    labels = _send_until_answered(peer, publisher, voided, 'labels')
    assert (image_array(labels) == CAMVID_11.void_id).all()
    drivable = _send_until_answered(peer, publisher, voided, 'drivable')
    assert not image_array(drivable).any()
    colored = _send_until_answered(peer, publisher, voided, 'colored')
    void_colour = masks.palette_lut(CAMVID_11.colors)[CAMVID_11.void_id]
    assert (image_array(colored) == void_colour).all()

    [result] = set_parameters(peer, {'min_confidence': 0.0})
    assert result.successful
    labels = _send_until_answered(peer, publisher, make_image_msg(rgb, 'rgb8', 7_000), 'labels')
    assert np.mean(image_array(labels) == reference.labels) >= 0.999
