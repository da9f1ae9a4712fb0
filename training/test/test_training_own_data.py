"""
Datasets of your own: the VOC / CVAT and plain layouts, and every bad input they refuse.

Each tree is built tiny in tmp_path (:mod:`tiny_datasets`). Bad input stops in
``enet-train train`` before any training with exit status 2 and one line
naming the file and the problem.
"""

from pathlib import Path
import shutil
from typing import List

import cv2
from enet_ros.dataset_layouts import (check_label_header, DatasetError, fingerprint,
                                      list_pairs, load_layout, read_header, voc_color)
from enet_training.cli import main
from enet_training.datasets import LayoutOptions, make_dataset
import numpy as np
import pytest
from tiny_datasets import (color_mask, make_plain_tree, make_voc_tree, PLAIN_CLASSES, scene,
                           VOC_ENTRIES, VOC_VOID, write_gray, write_rgb)
import yaml


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    """Build a VOC / CVAT tree: 4 train and 2 val frames of 64x48."""
    return make_voc_tree(tmp_path / 'voc', {'train': 4, 'val': 2})


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    """Build a plain tree: 4 train and 2 val frames of 64x48."""
    return make_plain_tree(tmp_path / 'plain', {'train': 4, 'val': 2})


def _expected_ids(seed: int, void: int = 255) -> np.ndarray:
    return scene(seed, classes=(0, 1, 2), void=void)[1]


def test_voc_layout_classes_colours_void_and_ids(voc: Path):
    """labelmap.txt gives the classes in order (background a class); colours decode to ids."""
    dataset = make_dataset('voc', voc, 'train')
    table = dataset.table
    assert table.names == ('background', 'road', 'vehicle')
    assert table.colors == tuple(color for _, color in VOC_ENTRIES)
    assert table.void_id == 255 and table.drivable == ('road',)
    assert table.dataset == 'voc'  # the folder's name
    assert len(dataset) == 4
    image, label = dataset.load(0)
    assert image.shape == (48, 64, 3) and label.dtype == np.uint8
    np.testing.assert_array_equal(label, _expected_ids(200))  # void strip: VOC's 224,224,192
    assert (label == 255).sum() == 2 * 48
    val = make_dataset('voc', voc, 'val')
    np.testing.assert_array_equal(val.load(1)[1], _expected_ids(205))
    assert len(make_dataset('voc', voc, 'train+val')) == 6


def test_voc_void_entries_and_void_label(voc: Path):
    """Entries named void / ignored are void; --void-label makes background void (sparse)."""
    labelmap = voc / 'labelmap.txt'
    labelmap.write_text(labelmap.read_text() + 'ignored:10,20,30::\n')
    label = voc / 'SegmentationClass' / 'train_0000.png'
    mask = cv2.imread(str(label))
    mask[5, 7] = (30, 20, 10)  # BGR of the 'ignored' colour
    cv2.imwrite(str(label), mask)
    dataset = make_dataset('voc', voc, 'train')
    assert dataset.table.names == ('background', 'road', 'vehicle')
    ids = dataset.load(0)[1]
    assert ids[5, 7] == 255
    sparse = make_dataset('voc', voc, 'train', options=LayoutOptions(('background',)))
    assert sparse.table.names == ('road', 'vehicle') and sparse.table.void_id == 255
    expected = np.where(_expected_ids(200) == 0, 255, _expected_ids(200) - 1).astype(np.uint8)
    expected[expected == 254] = 255  # the void strip stays void
    expected[5, 7] = 255
    np.testing.assert_array_equal(sparse.load(0)[1], expected)
    # Colours keep their classes: the model's palette is the label map's.
    assert sparse.table.colors == (VOC_ENTRIES[1][1], VOC_ENTRIES[2][1])
    with pytest.raises(DatasetError, match=r"void label\(s\) \['sky'\] are not in"):
        make_dataset('voc', voc, 'train', options=LayoutOptions(('sky',)))


def test_voc_palette_and_index_masks(voc: Path):
    """A palette PNG (VOC's own format) and a single-channel index mask decode alike."""
    image = pytest.importorskip('PIL.Image', reason='Pillow writes palette PNGs')
    ids = _expected_ids(200)
    palette = [v for index in range(256) for v in voc_color(index)]
    for index, (_, color) in enumerate(VOC_ENTRIES):
        palette[3 * index:3 * index + 3] = color
    indexed = image.fromarray(ids, mode='P')
    indexed.putpalette(palette)
    path = voc / 'SegmentationClass' / 'train_0000.png'
    indexed.save(path)
    assert read_header(path).color_type == 3
    dataset = make_dataset('voc', voc, 'train')
    np.testing.assert_array_equal(dataset.load(0)[1], ids)
    write_gray(path, ids)  # CVAT's 1-channel masks: label map entry indices, 255 void
    np.testing.assert_array_equal(dataset.load(0)[1], ids)
    bad = ids.copy()
    bad[3, 9] = 7
    write_gray(path, bad)
    with pytest.raises(DatasetError, match=r"train_0000.png': pixel \(x=9, y=3\) has index 7, "
                                           r'which is no entry of labelmap.txt'):
        dataset.load(0)


def test_voc_without_labelmap_has_the_pascal_classes(voc: Path):
    """No labelmap.txt: the 21 Pascal VOC classes and colours, as CVAT and Datumaro read it."""
    (voc / 'labelmap.txt').unlink()
    layout = load_layout('voc', voc)
    assert layout.table.names[:3] == ('background', 'aeroplane', 'bicycle')
    assert layout.table.num_classes == 21
    assert layout.table.colors[1] == (128, 0, 0) and voc_color(255) == VOC_VOID


def test_voc_unknown_colour_names_file_pixel_and_colour(voc: Path):
    """A mask colour in no label map entry is an error, never silently void."""
    path = voc / 'SegmentationClass' / 'train_0001.png'
    mask = color_mask(_expected_ids(201), [c for _, c in VOC_ENTRIES])
    mask[7, 5] = (1, 2, 3)
    mask[8, 5] = (1, 2, 3)
    write_rgb(path, mask)
    dataset = make_dataset('voc', voc, 'train')
    with pytest.raises(DatasetError) as error:
        dataset.load(1)
    message = str(error.value)
    assert f"label '{path}': pixel (x=5, y=7) has colour (1, 2, 3)" in message
    assert 'in no entry of labelmap.txt (2 pixels of unknown colours' in message
    assert '\n' not in message


def test_plain_layout_classes_ids_and_drivable(plain: Path):
    """classes.yaml gives names, colours, void id and drivable classes; ids pass through."""
    dataset = make_dataset('plain', plain, 'train')
    table = dataset.table
    assert table.dataset == 'tiny_plain'
    assert table.names == tuple(name for name, _ in PLAIN_CLASSES)
    assert table.colors == tuple(color for _, color in PLAIN_CLASSES)
    assert table.void_id == 255 and table.drivable == ('road',)
    np.testing.assert_array_equal(dataset.load(2)[1], _expected_ids(302))
    assert make_dataset('plain', plain, 'train', options=LayoutOptions(drivable=('grass',))
                        ).table.drivable == ('grass',)
    # Explicit ids, listed out of order, and a void id right after the classes.
    data = yaml.safe_load((plain / 'classes.yaml').read_text())
    data['classes'] = [dict(data['classes'][2], id=2), dict(data['classes'][0], id=0),
                       dict(data['classes'][1], id=1)]
    data['void_id'] = 3
    (plain / 'classes.yaml').write_text(yaml.safe_dump(data))
    assert load_layout('plain', plain).table.names == ('road', 'grass', 'sky')
    assert load_layout('plain', plain).table.void_id == 3
    with pytest.raises(DatasetError, match=r'pixel \(x=0, y=0\) has id 255, which is no class '
                                           r'of classes.yaml \(ids 0-2, void 3\)'):
        make_dataset('plain', plain, 'train').load(0)


def test_layouts_are_detected_and_fingerprinted(voc: Path, plain: Path):
    """``auto`` finds each layout; the fingerprint changes with a file's size or the classes."""
    assert load_layout('auto', voc).kind == 'voc' and load_layout('auto', plain).kind == 'plain'
    with pytest.raises(DatasetError, match='holds neither'):
        load_layout('auto', voc.parent)
    layout = load_layout('voc', voc)
    pairs = {'train': list_pairs(layout, 'train')}
    first = fingerprint(voc, layout.cache_key(), pairs)
    assert fingerprint(voc, layout.cache_key(), pairs) == first
    assert fingerprint(voc, load_layout('voc', voc, ('background',)).cache_key(), pairs) != first
    with open(pairs['train'][0][1], 'ab') as stream:
        stream.write(b'\0')
    assert fingerprint(voc, layout.cache_key(), pairs) != first


def test_png_headers_say_what_opencv_reads(tmp_path: Path):
    """Header sizes and formats equal what OpenCV decodes, for PNG and JPEG."""
    cases = {'rgb.png': np.zeros((37, 53, 3), np.uint8),
             'grey.png': np.zeros((37, 53), np.uint8),
             'rgba.png': np.zeros((37, 53, 4), np.uint8),
             'deep.png': np.zeros((37, 53), np.uint16),
             'photo.jpg': np.full((37, 53, 3), 99, np.uint8)}
    for name, array in cases.items():
        path = tmp_path / name
        assert cv2.imwrite(str(path), array)
        header = read_header(path)
        decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert (header.height, header.width) == decoded.shape[:2], name
    assert read_header(tmp_path / 'rgba.png').alpha
    assert read_header(tmp_path / 'deep.png').bit_depth == 16
    assert read_header(tmp_path / 'photo.jpg').kind == 'jpeg'
    truncated = tmp_path / 'cut.png'
    truncated.write_bytes((tmp_path / 'rgb.png').read_bytes()[:12])
    with pytest.raises(DatasetError, match='truncated'):
        read_header(truncated)
    with pytest.raises(DatasetError, match='not a PNG'):
        check_label_header(load_layout('plain', make_plain_tree(tmp_path / 'p', {})),
                           tmp_path / 'photo.jpg', read_header(tmp_path / 'photo.jpg'))


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the problem, before any training


def _edit_yaml(root: Path, **changes) -> None:
    data = yaml.safe_load((root / 'classes.yaml').read_text())
    data.update(changes)
    (root / 'classes.yaml').write_text(yaml.safe_dump(data))


def _classes(*names_and_ids) -> List[dict]:
    return [{'name': name, 'id': class_id} for name, class_id in names_and_ids]


def _break_voc(root: Path, case: str) -> str:
    """Break the VOC tree as ``case`` says; return what the error must contain."""
    if case == 'image_without_label':
        (root / 'SegmentationClass' / 'train_0002.png').unlink()
        return f"image '{root / 'JPEGImages' / 'train_0002.jpg'}' has no label"
    if case == 'label_without_image':
        (root / 'JPEGImages' / 'train_0001.jpg').unlink()
        return f"label '{root / 'SegmentationClass' / 'train_0001.png'}' has no image"
    if case == 'no_images_folder':
        shutil.rmtree(root / 'JPEGImages')
        return "'Save images' box"
    if case == 'empty_split':
        (root / 'ImageSets' / 'Segmentation' / 'train.txt').write_text('\n')
        return "split 'train' is empty"
    if case == 'missing_split':
        (root / 'ImageSets' / 'Segmentation' / 'train.txt').rename(
            root / 'ImageSets' / 'Segmentation' / 'default.txt')
        return "train.txt' does not exist (splits there: default, val"
    if case == 'sizes_differ':
        write_rgb(root / 'JPEGImages' / 'train_0003.jpg', np.zeros((40, 64, 3), np.uint8))
        return "is 64x40 but label '"
    if case == 'alpha_label':
        path = root / 'SegmentationClass' / 'train_0000.png'
        cv2.imwrite(str(path), cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2BGRA))
        return f"label '{path}' has an alpha channel"
    if case == '16_bit_label':
        path = root / 'SegmentationClass' / 'train_0000.png'
        cv2.imwrite(str(path), cv2.imread(str(path)).astype(np.uint16) * 257)
        return f"label '{path}' is a 16-bit PNG"
    if case == 'labelmap_duplicate':
        with open(root / 'labelmap.txt', 'a') as stream:
            stream.write('road:1,1,1::\n')
        return "line 5: label 'road' is defined twice"
    if case == 'labelmap_bad_colour':
        with open(root / 'labelmap.txt', 'a') as stream:
            stream.write('curb:300,0,0::\n')
        return "line 5: colour '300,0,0' is not r,g,b"
    raise AssertionError(case)


def _break_plain(root: Path, case: str) -> str:
    """Break the plain tree as ``case`` says; return what the error must contain."""
    yaml_path = root / 'classes.yaml'
    if case == 'image_without_label':
        (root / 'labels' / 'train' / 'frame_0001.png').unlink()
        return f"image '{root / 'images' / 'train' / 'frame_0001.png'}' has no label"
    if case == 'label_without_image':
        (root / 'images' / 'train' / 'frame_0003.png').unlink()
        return f"label '{root / 'labels' / 'train' / 'frame_0003.png'}' has no image"
    if case == 'empty_split':
        for folder in ('images', 'labels'):
            shutil.rmtree(root / folder / 'train')
            (root / folder / 'train').mkdir()
        return "split 'train' is empty: no images in"
    if case == 'sizes_differ':
        write_gray(root / 'labels' / 'train' / 'frame_0002.png', np.zeros((48, 60), np.uint8))
        return "is 64x48 but label '"
    if case == 'alpha_label':
        path = root / 'labels' / 'train' / 'frame_0000.png'
        cv2.imwrite(str(path), np.zeros((48, 64, 4), np.uint8))
        return f"label '{path}' has an alpha channel"
    if case == '16_bit_label':
        path = root / 'labels' / 'train' / 'frame_0000.png'
        cv2.imwrite(str(path), np.zeros((48, 64), np.uint16))
        return f"label '{path}' is a 16-bit PNG"
    if case == 'colour_label':
        path = root / 'labels' / 'train' / 'frame_0000.png'
        write_rgb(path, np.zeros((48, 64, 3), np.uint8))
        return f"label '{path}' (8-bit RGB PNG): the plain layout wants single-channel"
    if case == 'duplicate_names':
        _edit_yaml(root, classes=[{'name': 'road'}, {'name': 'grass'}, {'name': 'road'}])
        return f"class table '{yaml_path}': duplicate class names ['road']"
    if case == 'duplicate_ids':
        _edit_yaml(root, classes=_classes(('road', 0), ('grass', 1), ('sky', 1)))
        return 'duplicate class ids [1]'
    if case == 'id_past_254':
        _edit_yaml(root, classes=_classes(('road', 0), ('grass', 1), ('sky', 300)))
        return "class 'sky': id 300 is past 254"
    if case == 'ids_with_gap':
        _edit_yaml(root, classes=_classes(('road', 0), ('grass', 1), ('sky', 3)))
        return 'class ids must be 0-2 without gaps'
    if case == 'void_among_classes':
        _edit_yaml(root, void_id=1)
        return 'void_id 1 must be null or an id in [3, 255]'
    if case == 'drivable_not_a_class':
        _edit_yaml(root, drivable=['road', 'lawn'])
        return "drivable class(es) ['lawn'] are not classes"
    if case == 'unknown_key':
        _edit_yaml(root, colours=[])
        return "unknown keys ['colours']"
    raise AssertionError(case)


VOC_CASES = ['image_without_label', 'label_without_image', 'no_images_folder', 'empty_split',
             'missing_split', 'sizes_differ', 'alpha_label', '16_bit_label',
             'labelmap_duplicate', 'labelmap_bad_colour']
PLAIN_CASES = ['image_without_label', 'label_without_image', 'empty_split', 'sizes_differ',
               'alpha_label', '16_bit_label', 'colour_label', 'duplicate_names', 'duplicate_ids',
               'id_past_254', 'ids_with_gap', 'void_among_classes', 'drivable_not_a_class',
               'unknown_key']


def _train_refuses(root: Path, layout: str, out: Path, capsys, *extra: str) -> str:
    """Run ``enet-train train`` on a broken tree: status 2, one stderr line, nothing trained."""
    status = main(['train', '--dataset', layout, '--data', str(root), '--out', str(out),
                   '--epochs', '1', '--batch-size', '2', '--workers', '0', '--device', 'cpu',
                   '--input-size', '64', '48', *extra])
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('enet-train: error: '), captured.err
    assert not (out / 'checkpoint.pth').exists()
    assert 'step' not in captured.out
    return lines[0]


@pytest.mark.parametrize('case', VOC_CASES)
def test_voc_bad_input_stops_before_training(case: str, voc: Path, tmp_path: Path, capsys):
    """Each broken VOC tree stops ``enet-train train`` with one line naming file and problem."""
    expected = _break_voc(voc, case)
    assert expected in _train_refuses(voc, 'voc', tmp_path / 'run', capsys)


@pytest.mark.parametrize('case', PLAIN_CASES)
def test_plain_bad_input_stops_before_training(case: str, plain: Path, tmp_path: Path, capsys):
    """Each broken plain tree stops ``enet-train train`` with one line naming file and problem."""
    expected = _break_plain(plain, case)
    assert expected in _train_refuses(plain, 'plain', tmp_path / 'run', capsys)


def test_voc_drivable_class_that_is_no_class(voc: Path, tmp_path: Path, capsys):
    """--drivable-classes with a name the label map lacks stops training."""
    line = _train_refuses(voc, 'voc', tmp_path / 'run', capsys, '--drivable-classes', 'lawn')
    assert f"drivable class(es) ['lawn'] are not classes of label map '{voc / 'labelmap.txt'}'" \
        in line


def test_bad_val_label_stops_before_training(voc: Path, tmp_path: Path, capsys):
    """A val mask colour outside the label map is found before the first epoch, not after."""
    path = voc / 'SegmentationClass' / 'val_0001.png'
    mask = cv2.imread(str(path))
    mask[0, 3] = (9, 9, 9)
    cv2.imwrite(str(path), mask)
    line = _train_refuses(voc, 'voc', tmp_path / 'run', capsys)
    assert f"label '{path}': pixel (x=3, y=0) has colour (9, 9, 9)" in line


@pytest.mark.slow
def test_plain_layout_trains_and_evaluates_without_void(tmp_path: Path, capsys, monkeypatch):
    """A plain tree whose classes.yaml has no void trains, and the model carries its table."""
    from enet_ros.model_file import load_model_file

    monkeypatch.setenv('ENET_ROS_COMPILE', '0')
    root = make_plain_tree(tmp_path / 'plain', {'train': 4, 'val': 2}, void_id=255)
    for path in (root / 'labels').rglob('*.png'):  # every pixel a class: the void strip is sky
        ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        ids[ids == 255] = 2
        cv2.imwrite(str(path), ids)
    _edit_yaml(root, void_id=None)
    out = tmp_path / 'run'
    assert main(['train', '--dataset', 'plain', '--data', str(root), '--out', str(out),
                 '--epochs', '1', '--batch-size', '2', '--workers', '0', '--device', 'cpu',
                 '--max-iterations', '1', '--rotate', '5', '--progress', 'off']) == 0
    metadata = load_model_file(out / 'best.safetensors').metadata
    assert metadata.dataset == 'tiny_plain' and metadata.void_id is None
    assert metadata.class_names == ('road', 'grass', 'sky')
    assert metadata.drivable_classes == ('road',) and metadata.input_size == (64, 48)
    assert 'network input 64x48' in (out / 'train.log').read_text()
    capsys.readouterr()
    assert main(['evaluate', '--model', str(out / 'best.safetensors'), '--data', str(root),
                 '--device', 'cpu', '--precision', 'fp32']) == 0
    assert 'val: 2 images' in capsys.readouterr().out


def test_camvid_to_voc_script_writes_a_readable_tree(camvid_root: Path, tmp_path: Path):
    """training/scripts/camvid_to_voc.py: 4 classes, CamVid's ids mapped, void kept void."""
    import importlib.util

    from enet_ros.labels import CAMVID_11

    script = Path(__file__).resolve().parents[1] / 'scripts' / 'camvid_to_voc.py'
    spec = importlib.util.spec_from_file_location('camvid_to_voc', script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / 'camvid4'
    assert module.convert(camvid_root, out, limit=2) == [2, 2]
    dataset = make_dataset('voc', out, 'val')
    assert dataset.table.names == ('background', 'road', 'sidewalk', 'vehicle')
    _, ids = dataset.load(0)
    camvid = cv2.imread(str(camvid_root / 'valannot' / dataset.pairs[0][1].name),
                        cv2.IMREAD_UNCHANGED)
    names = CAMVID_11.names
    expected = np.zeros_like(camvid)
    expected[camvid == names.index('Road')] = 1
    expected[camvid == names.index('Pavement')] = 2
    expected[(camvid == names.index('Car')) | (camvid == names.index('Bicyclist'))] = 3
    expected[camvid == CAMVID_11.void_id] = 255
    np.testing.assert_array_equal(ids, expected)
