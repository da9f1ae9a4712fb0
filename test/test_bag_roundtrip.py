"""Dataset -> bag -> offline evaluation round trips on a tiny generated CamVid split."""

from pathlib import Path

from bag_helpers import (EchoSegmenterDouble, expected_stamps, HEIGHT, make_camvid,
                         quick_cpu, RATE_HZ, START_S, VOID, WIDTH)
import cv2
from enet_ros.evaluation import bag_io
from enet_ros.evaluation.dataset_to_bag import main as dataset_to_bag
from enet_ros.evaluation.evaluate_bag import evaluate_bag, EvaluateOptions, main as evaluate_main
from enet_ros.labels import CAMVID_11
from enet_ros.metrics import ConfusionMatrix
from enet_ros.segmenter import Segmenter
import numpy as np
import pytest

COUNT = 4
pytestmark = pytest.mark.usefixtures(quick_cpu.__name__)
ROAD = CAMVID_11.names.index('Road')
SKY = CAMVID_11.names.index('Sky')
BUILDING = CAMVID_11.names.index('Building')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """(root, frames) of a 4-frame CamVid-layout val split, 64x48."""
    root = tmp_path_factory.mktemp('camvid')
    return root, make_camvid(root, COUNT)


@pytest.fixture(scope='module')
def segmenter(model_file) -> Segmenter:
    """Build the real Segmenter on the CPU."""
    return Segmenter.from_file(str(model_file), device='cpu', precision='fp32')


def make_bag(root: Path, output: Path, *extra: str) -> Path:
    """Run dataset_to_bag on ``root``'s val split with fixed stamps."""
    code = dataset_to_bag([str(root), str(output), '--split', 'val', '--start-time',
                           str(START_S), '--rate', str(RATE_HZ), '--no-progress', *extra])
    assert code == 0
    return output


def direct_miou(segmenter: Segmenter, pairs) -> float:
    """Compute the mIoU of the Segmenter's outputs on (HxWx3 RGB image, labels) pairs."""
    confusion = ConfusionMatrix(CAMVID_11.num_classes, VOID)
    for image, labels in pairs:
        confusion.update(segmenter.segment(image).labels, labels)
    return confusion.scores().mean_iou


def evaluate(bag: Path, segmenter, **kwargs):
    """evaluate_bag without a progress bar."""
    return evaluate_bag(EvaluateOptions(bag=bag, progress=False, **kwargs), segmenter)


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
@pytest.mark.parametrize('image_format', ['raw', 'png'])
def test_round_trip_matches_direct_segmenter(dataset, segmenter, tmp_path, storage,
                                             image_format):
    root, frames = dataset
    bag = make_bag(root, tmp_path / 'bag', '--storage', storage, '--format', image_format)
    stamps = expected_stamps(COUNT)
    with bag_io.open_bag(bag) as reader:
        topics = bag_io.bag_topics(reader)
        camera = '/camera/image_raw' + ('/compressed' if image_format == 'png' else '')
        assert topics[camera].count == COUNT
        assert topics['/camera/labels'].count == COUNT
        assert bag_io.frame_names(reader) == dict(zip(stamps, sorted(frames)))
        seen = {camera: [], '/camera/labels': []}
        for raw in bag_io.read_messages(reader, list(seen)):
            msg = bag_io.deserialize(raw.data, raw.msgtype)
            assert msg.header.frame_id == 'camera'
            assert raw.log_time == bag_io.stamp_to_ns(msg.header.stamp)
            seen[raw.topic].append(bag_io.stamp_to_ns(msg.header.stamp))
            if raw.topic == '/camera/labels':
                name = sorted(frames)[stamps.index(seen[raw.topic][-1])]
                np.testing.assert_array_equal(bag_io.message_to_labels(msg, raw.msgtype),
                                              frames[name][1])
        assert seen[camera] == stamps and seen['/camera/labels'] == stamps

    report = evaluate(bag, segmenter)
    assert report['frames']['read'] == COUNT
    assert report['frames']['evaluated'] == COUNT
    assert report['frames']['skipped'] == 0
    assert [r['stamp_ns'] for r in report['per_frame']] == stamps
    expected = direct_miou(segmenter, frames.values())
    assert report['accuracy']['mean_iou'] == pytest.approx(expected, abs=1e-12)


def test_jpeg_round_trip_matches_segmenter_on_decoded_frames(dataset, segmenter, tmp_path):
    root, frames = dataset
    bag = make_bag(root, tmp_path / 'bag', '--format', 'jpeg', '--jpeg-quality', '80')
    pairs = []
    with bag_io.open_bag(bag) as reader:
        for raw in bag_io.read_messages(reader, ['/camera/image_raw/compressed']):
            msg = bag_io.deserialize(raw.data, raw.msgtype)
            assert 'jpeg' in msg.format
            decoded = cv2.imdecode(np.asarray(msg.data), cv2.IMREAD_COLOR)[:, :, ::-1]
            name = sorted(frames)[expected_stamps(COUNT).index(raw.log_time)]
            pairs.append((np.ascontiguousarray(decoded), frames[name][1]))
    report = evaluate(bag, segmenter)
    assert report['frames']['evaluated'] == COUNT
    assert report['accuracy']['mean_iou'] == pytest.approx(direct_miou(segmenter, pairs),
                                                           abs=1e-12)


def test_perfect_model_double_scores_100_percent(dataset, tmp_path):
    root, frames = dataset
    bag = make_bag(root, tmp_path / 'bag', '--storage', 'mcap')
    double = EchoSegmenterDouble(frames)
    report = evaluate(bag, double)
    accuracy = report['accuracy']
    assert double.calls == COUNT
    assert accuracy['mean_iou'] == 1.0
    assert accuracy['global_accuracy'] == 1.0
    assert accuracy['mean_class_accuracy'] == 1.0
    assert accuracy['drivable']['iou'] == 1.0


def half_road_half_sky(index: int) -> np.ndarray:
    """Labels: top 8 rows void, left half Road, right half Sky."""
    labels = np.full((HEIGHT, WIDTH), SKY, dtype=np.uint8)
    labels[:, :WIDTH // 2] = ROAD
    labels[:8] = VOID
    return labels


@pytest.fixture(scope='module')
def half_dataset(tmp_path_factory):
    """(bag, frames): 2 frames of half Road, half Sky with a void band, in a bag."""
    root = tmp_path_factory.mktemp('half')
    frames = make_camvid(root, 2, labels_fn=half_road_half_sky)
    return make_bag(root, root / 'bag'), frames


def test_known_confusion_everything_road(half_dataset):
    bag, frames = half_dataset
    report = evaluate(bag, EchoSegmenterDouble(frames, lambda t: np.full_like(t, ROAD)))
    accuracy = report['accuracy']
    # Road: TP 1280, union 2560 -> 0.5; Sky: no TP -> 0; void band ignored.
    assert accuracy['per_class_iou']['Road'] == pytest.approx(0.5)
    assert accuracy['per_class_iou']['Sky'] == 0.0
    assert accuracy['per_class_iou']['Car'] is None
    assert accuracy['mean_iou'] == pytest.approx(0.25)
    assert accuracy['global_accuracy'] == pytest.approx(0.5)
    assert accuracy['mean_class_accuracy'] == pytest.approx(0.5)
    assert accuracy['drivable']['iou'] == pytest.approx(0.5)
    assert accuracy['pixels'] == 2 * (HEIGHT - 8) * WIDTH


def test_known_confusion_sky_as_building(half_dataset):
    bag, frames = half_dataset
    report = evaluate(bag, EchoSegmenterDouble(
        frames, lambda t: np.where(t == SKY, BUILDING, t)))
    accuracy = report['accuracy']
    # Road perfect (1), Sky missed (0), Building predicted but absent (0): mean 1/3.
    assert accuracy['mean_iou'] == pytest.approx(1 / 3)
    assert accuracy['drivable']['iou'] == 1.0


def test_labels_folder_matched_by_recorded_name(dataset, segmenter, tmp_path):
    root, frames = dataset
    bag = make_bag(root, tmp_path / 'bag', '--labels-topic', '')
    with bag_io.open_bag(bag) as reader:
        assert '/camera/labels' not in bag_io.bag_topics(reader)
    report = evaluate(bag, segmenter, labels_dir=root / 'valannot')
    assert report['frames']['evaluated'] == COUNT
    assert report['ground_truth'] == f"folder {root / 'valannot'}"
    assert report['accuracy']['mean_iou'] == pytest.approx(
        direct_miou(segmenter, frames.values()), abs=1e-12)


@pytest.mark.slow
def test_outputs_json_report_and_cli(dataset, model_file, tmp_path, capsys):
    root, frames = dataset
    bag = make_bag(root, tmp_path / 'bag')
    out = tmp_path / 'seg'
    code = evaluate_main([str(bag), '--model', str(model_file), '--device', 'cpu',
                          '--json', str(tmp_path / 'eval.json'), '--report',
                          str(tmp_path / 'eval.png'), '--output-bag', str(out),
                          '--output-storage', 'mcap', '--no-progress'])
    printed = capsys.readouterr().out
    assert code == 0
    assert 'mIoU' in printed and 'drivable IoU' in printed and 'p99' in printed
    import json
    report = json.loads((tmp_path / 'eval.json').read_text())
    assert report['frames'] == {'read': COUNT, 'segmented': COUNT, 'evaluated': COUNT,
                                'skipped': 0, 'skipped_reasons': {}}
    for key in ('p50_ms', 'p90_ms', 'p99_ms'):
        assert report['latency'][key] > 0
    assert report['fps'] > 0
    assert (tmp_path / 'eval.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

    stamps = expected_stamps(COUNT)
    with bag_io.open_bag(out) as reader:
        topics = bag_io.bag_topics(reader)
        for name in ('labels', 'colored', 'overlay', 'drivable'):
            assert topics[f'/segmentation_node/{name}'].count == COUNT
        assert topics['/camera/image_raw'].count == COUNT
        labels = {}
        for raw in bag_io.read_messages(reader, ['/segmentation_node/labels',
                                                 '/segmentation_node/drivable',
                                                 '/segmentation_node/overlay']):
            msg = bag_io.deserialize(raw.data, raw.msgtype)
            stamp = bag_io.stamp_to_ns(msg.header.stamp)
            assert stamp in stamps and msg.header.frame_id == 'camera'
            assert (msg.width, msg.height) == (WIDTH, HEIGHT)
            if raw.topic.endswith('labels'):
                assert msg.encoding == 'mono8'
                labels[stamp] = bag_io.message_to_labels(msg, raw.msgtype)
            elif raw.topic.endswith('drivable'):
                mask = bag_io.message_to_labels(msg, raw.msgtype)
                assert set(np.unique(mask)) <= {0, 255}
                np.testing.assert_array_equal(mask == 255, labels[stamp] == ROAD)
            else:
                assert msg.encoding == 'rgb8'
    segmenter = Segmenter.from_file(str(model_file), device='cpu')
    for stamp, (image, _) in zip(stamps, (frames[n] for n in sorted(frames))):
        np.testing.assert_array_equal(labels[stamp], segmenter.segment(image).labels)


def test_cityscapes_layout_maps_label_ids_to_train_ids(tmp_path):
    from bag_helpers import write_png

    root = tmp_path / 'cityscapes'
    ids = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)  # 0: unlabeled -> 255
    ids[HEIGHT // 2:] = 7                              # road -> 0
    ids[:, :8] = 26                                    # car -> 13
    for city, frame in (('aachen', 1), ('bochum', 2)):
        prefix = f'{city}_000000_{frame:06d}'
        write_png(root / 'leftImg8bit' / 'val' / city / f'{prefix}_leftImg8bit.png',
                  np.full((HEIGHT, WIDTH, 3), 90, np.uint8))
        write_png(root / 'gtFine' / 'val' / city / f'{prefix}_gtFine_labelIds.png', ids)
    bag = make_bag(root, tmp_path / 'bag')
    expected = np.full((HEIGHT, WIDTH), 255, np.uint8)
    expected[HEIGHT // 2:] = 0
    expected[:, :8] = 13
    with bag_io.open_bag(bag) as reader:
        assert sorted(bag_io.frame_names(reader).values()) == [
            'aachen_000000_000001_leftImg8bit', 'bochum_000000_000002_leftImg8bit']
        labels = [bag_io.message_to_labels(bag_io.deserialize(raw.data, raw.msgtype),
                                           raw.msgtype)
                  for raw in bag_io.read_messages(reader, ['/camera/labels'])]
    assert len(labels) == 2
    for array in labels:
        np.testing.assert_array_equal(array, expected)


@pytest.mark.parametrize('layout', ['voc', 'plain'])
def test_layouts_of_your_own_are_written_as_class_ids(tmp_path, layout):
    """dataset_to_bag reads a VOC / CVAT colour-mask tree and a plain id tree, as enet-train."""
    from bag_helpers import write_png

    root = tmp_path / layout
    ids = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    ids[HEIGHT // 2:] = 1
    ids[:, :8] = 2
    colors = [(0, 0, 0), (128, 64, 128), (0, 0, 142)]
    names = ['background', 'road', 'vehicle']
    for stem in ('b', 'a'):
        if layout == 'voc':
            write_png(root / 'JPEGImages' / f'{stem}.png', np.full((HEIGHT, WIDTH, 3), 90,
                                                                   np.uint8))
            write_png(root / 'SegmentationClass' / f'{stem}.png',
                      np.array(colors, np.uint8)[ids])
        else:
            write_png(root / 'images' / 'val' / f'{stem}.png',
                      np.full((HEIGHT, WIDTH, 3), 90, np.uint8))
            write_png(root / 'labels' / 'val' / f'{stem}.png', ids)
    if layout == 'voc':
        (root / 'labelmap.txt').write_text('# label:color_rgb:parts:actions\n' + ''.join(
            f'{name}:{r},{g},{b}::\n' for name, (r, g, b) in zip(names, colors)))
        (root / 'ImageSets' / 'Segmentation').mkdir(parents=True)
        (root / 'ImageSets' / 'Segmentation' / 'val.txt').write_text('a\nb\n')
    else:
        (root / 'classes.yaml').write_text(
            'name: own\nvoid_id: 255\ndrivable: [road]\nclasses:\n' + ''.join(
                f'  - {{name: {name}, color: [{r}, {g}, {b}]}}\n'
                for name, (r, g, b) in zip(names, colors)))
    bag = make_bag(root, tmp_path / 'bag')
    with bag_io.open_bag(bag) as reader:
        assert sorted(bag_io.frame_names(reader).values()) == ['a', 'b']
        labels = [bag_io.message_to_labels(bag_io.deserialize(raw.data, raw.msgtype),
                                           raw.msgtype)
                  for raw in bag_io.read_messages(reader, ['/camera/labels'])]
    assert len(labels) == 2
    for array in labels:
        np.testing.assert_array_equal(array, ids)
