"""Bad input to the bag tools: clear messages, non-zero exit for fatal ones, the rest goes on."""

from pathlib import Path

from bag_helpers import (EchoSegmenterDouble, make_camvid, make_image, make_labels, quick_cpu,
                         WIDTH)
from enet_ros.evaluation import bag_io
from enet_ros.evaluation.dataset_to_bag import main as dataset_to_bag
from enet_ros.evaluation.evaluate_bag import evaluate_bag, EvaluateOptions, main as evaluate_main
from enet_ros.evaluation.outputs import OutputPathError
import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures(quick_cpu.__name__)


@pytest.fixture(scope='module')
def good_bag(tmp_path_factory) -> Path:
    """Write a 2-frame bag from a generated CamVid split."""
    root = tmp_path_factory.mktemp('camvid')
    make_camvid(root, 2)
    assert dataset_to_bag([str(root), str(root / 'bag'), '--start-time', '5',
                           '--no-progress']) == 0
    return root / 'bag'


def run_evaluate(capsys, *args: str):
    """(exit code, stdout, stderr) of evaluate_bag."""
    code = evaluate_main([*map(str, args), '--no-progress'])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_missing_bag(capsys, tmp_path, model_file):
    code, _, err = run_evaluate(capsys, tmp_path / 'nope', '--model', model_file)
    assert code == 1
    assert f"bag '{tmp_path / 'nope'}' does not exist" in err


@pytest.mark.parametrize('kind', ['garbage_db3', 'bad_metadata', 'empty_dir'])
def test_unreadable_bag(capsys, tmp_path, model_file, kind):
    if kind == 'garbage_db3':
        bag = tmp_path / 'x.db3'
        bag.write_bytes(b'this is not sqlite' * 10)
    else:
        bag = tmp_path / 'bag'
        bag.mkdir()
        if kind == 'bad_metadata':
            (bag / 'metadata.yaml').write_text('rosbag2_bagfile_information: [oops\n')
    code, _, err = run_evaluate(capsys, bag, '--model', model_file)
    assert code == 1
    assert f"bag '{bag}' cannot be read" in err


def test_missing_topic_lists_topics(capsys, good_bag, model_file):
    code, _, err = run_evaluate(capsys, good_bag, '--model', model_file, '--image-topic',
                                '/front/image')
    assert code == 1
    assert "topic '/front/image' is not in the bag" in err
    assert '/camera/image_raw (sensor_msgs/msg/Image, 2 messages)' in err
    assert '/camera/labels (sensor_msgs/msg/Image, 2 messages)' in err
    code, _, err = run_evaluate(capsys, good_bag, '--model', model_file, '--labels-topic',
                                '/gt')
    assert code == 1 and "topic '/gt' is not in the bag" in err


def test_unsupported_message_type(capsys, tmp_path, model_file):
    bag = tmp_path / 'bag'
    with bag_io.BagWriter(bag) as writer:
        writer.add_topic('/camera/image_raw', 'std_msgs/msg/String')
        string = bag_io.TYPESTORE.types['std_msgs/msg/String']
        writer.write('/camera/image_raw', string(data='hello'), 1)
    code, _, err = run_evaluate(capsys, bag, '--model', model_file)
    assert code == 1
    assert "topic '/camera/image_raw' has type std_msgs/msg/String, which is not supported" \
        in err


def test_unknown_drivable_class(capsys, good_bag, model_file):
    code, _, err = run_evaluate(capsys, good_bag, '--model', model_file,
                                '--drivable-classes', 'Road,Runway')
    assert code == 1 and "unknown class name(s) ['Runway']" in err


def test_frames_without_ground_truth_are_skipped_and_counted(capsys, tmp_path, model_file):
    root = tmp_path / 'camvid'
    make_camvid(root, 3, with_labels=[True, False, True])
    assert dataset_to_bag([str(root), str(root / 'bag'), '--no-progress']) == 0
    code, out, _ = run_evaluate(capsys, root / 'bag', '--model', model_file)
    assert code == 0
    assert 'read 3, segmented 3, evaluated 2, skipped 1' in out
    assert 'skipped 1: no ground truth for the stamp' in out
    (root / 'empty').mkdir()
    code, out, err = run_evaluate(capsys, root / 'bag', '--model', model_file, '--labels-dir',
                                  root / 'empty')
    assert code == 1
    assert 'skipped 3: no ground truth for the stamp' in out
    assert 'no frame could be evaluated' in err


def test_no_ground_truth_at_all_reports_latency(capsys, tmp_path, model_file):
    root = tmp_path / 'camvid'
    make_camvid(root, 2)
    assert dataset_to_bag([str(root), str(root / 'bag'), '--labels-topic', '',
                           '--no-progress']) == 0
    code, out, err = run_evaluate(capsys, root / 'bag', '--model', model_file)
    assert code == 0
    assert 'warning: no ground truth' in err
    assert 'accuracy: no frame had ground truth' in out and 'p50' in out


def write_frames_bag(path: Path, frames, with_truth=True) -> None:
    """Write (encoding, pixels, labels) frames to /camera/image_raw and /camera/labels."""
    with bag_io.BagWriter(path) as writer:
        writer.add_topic('/camera/image_raw', bag_io.IMAGE)
        writer.add_topic('/camera/labels', bag_io.IMAGE)
        for index, (encoding, pixels, labels) in enumerate(frames):
            stamp = (index + 1) * 100_000_000
            header = bag_io.make_header(stamp, 'cam')
            channels = 1 if pixels.ndim == 2 else pixels.shape[2]
            image = bag_io.TYPESTORE.types[bag_io.IMAGE](
                header=header, height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                is_bigendian=0, step=pixels.shape[1] * channels,
                data=np.ascontiguousarray(pixels).reshape(-1))
            writer.write('/camera/image_raw', image, stamp)
            if with_truth and labels is not None:
                writer.write('/camera/labels', bag_io.array_to_image(labels, 'mono8', header),
                             stamp)


def test_encodings_and_bad_frames(tmp_path):
    """rgb8 / bgr8 / rgba8 / bgra8 frames all reach the double as the same RGB image."""
    labels = make_labels(7)
    rgb = make_image(labels, 7)
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    frames = [('rgb8', rgb, labels), ('bgr8', rgb[:, :, ::-1], labels),
              ('rgba8', np.concatenate([rgb, alpha], 2), labels),
              ('bgra8', np.concatenate([rgb[:, :, ::-1], alpha], 2), labels),
              ('yuv422', rgb[:, :, :2], labels),
              ('rgb8', rgb, labels[:-8])]
    write_frames_bag(tmp_path / 'bag', frames)
    double = EchoSegmenterDouble({'f': (rgb, labels)})
    report = evaluate_bag(EvaluateOptions(bag=tmp_path / 'bag', progress=False), double)
    assert report['frames']['read'] == 6
    assert report['frames']['evaluated'] == 4
    reasons = report['frames']['skipped_reasons']
    assert any("encoding 'yuv422' is not supported" in r for r in reasons)
    assert any('ground truth size differs' in r for r in reasons)
    assert report['accuracy']['mean_iou'] == 1.0


def test_mono8_frames_are_gray_rgb(tmp_path):
    labels = make_labels(3)
    gray = make_image(labels, 3)[:, :, 1]
    write_frames_bag(tmp_path / 'bag', [('mono8', gray, labels)])
    double = EchoSegmenterDouble({'g': (np.repeat(gray[:, :, None], 3, axis=2), labels)})
    report = evaluate_bag(EvaluateOptions(bag=tmp_path / 'bag', progress=False), double)
    assert report['frames']['evaluated'] == 1 and report['accuracy']['mean_iou'] == 1.0


def test_bad_step_and_undecodable_compressed_are_skipped(tmp_path):
    labels = make_labels(1)
    rgb = make_image(labels, 1)
    bag = tmp_path / 'bag'
    with bag_io.BagWriter(bag) as writer:
        writer.add_topic('/camera/image_raw/compressed', bag_io.COMPRESSED_IMAGE)
        writer.add_topic('/camera/labels', bag_io.IMAGE)
        for index, data in enumerate([None, b'not an image']):
            header = bag_io.make_header(index + 1, 'cam')
            msg = bag_io.array_to_compressed(rgb, 'png', header)
            if data is not None:
                msg = bag_io.TYPESTORE.types[bag_io.COMPRESSED_IMAGE](
                    header=header, format='png', data=np.frombuffer(data, np.uint8))
            writer.write('/camera/image_raw/compressed', msg, index + 1)
            writer.write('/camera/labels', bag_io.array_to_image(labels, 'mono8', header),
                         index + 1)
    double = EchoSegmenterDouble({'f': (rgb, labels)})
    report = evaluate_bag(EvaluateOptions(bag=bag, progress=False), double)
    assert report['image_topic'] == '/camera/image_raw/compressed'
    assert report['frames']['read'] == 2 and report['frames']['evaluated'] == 1
    assert any('neither PNG nor JPEG' in r for r in report['frames']['skipped_reasons'])

    bad = bag_io.array_to_image(rgb, 'rgb8', bag_io.make_header(0, ''))
    bad.step = WIDTH  # too short for rgb8
    with pytest.raises(bag_io.MessageError, match='step'):
        bag_io.message_to_frame(bad, bag_io.IMAGE)


def test_dataset_to_bag_bad_source_and_existing_output(capsys, tmp_path, good_bag):
    assert dataset_to_bag([str(tmp_path / 'none'), str(tmp_path / 'out'), '--layout', 'camvid',
                           '--no-progress']) == 1
    assert 'CamVid split folder' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    assert dataset_to_bag([str(tmp_path / 'empty'), str(tmp_path / 'out'),
                           '--no-progress']) == 1
    assert 'no images' in capsys.readouterr().err
    root = good_bag.parent
    assert dataset_to_bag([str(root), str(good_bag), '--no-progress']) == 2  # refused output
    assert 'exists already (use --overwrite' in capsys.readouterr().err


def test_output_bag_never_replaces_the_bag_being_read(capsys, good_bag, model_file):
    """--output-bag naming the input bag (or a path inside it) is refused; the input stays."""
    before = sorted(p.name for p in good_bag.iterdir())
    for output in (good_bag, good_bag / 'outputs'):
        code, _, err = run_evaluate(capsys, good_bag, '--model', model_file, '--output-bag',
                                    output, '--overwrite')
        assert code == 2  # a refused output path
        assert 'would overwrite or sit inside the bag being read' in err
    assert sorted(p.name for p in good_bag.iterdir()) == before
    from enet_ros.evaluation.live_evaluate import live_evaluate, LiveOptions

    with pytest.raises(OutputPathError, match='bag being read'):
        live_evaluate(LiveOptions(bag=good_bag, record_bag=good_bag.parent), log=print)
