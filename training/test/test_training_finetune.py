"""
Fine-tuning the bundled model into new classes on a tiny VOC tree, and what the run leaves.

One module-wide run: ``--init bundled`` into the tree's 3 classes with the
encoder frozen for epoch 1, resumed for epoch 2. Then: which weights were
kept, the run folder's records (log, metrics.csv, TensorBoard, run.json), the
class table in the model file and the Segmenter, evaluate on the layout, and
the checked ONNX export.
"""

import contextlib
import csv
import io
import json
import os
from pathlib import Path
import shutil

from enet_ros.labels import CAMVID_11, ClassTable
from enet_ros.model_file import BUNDLED_MODEL, load_model_file
from enet_ros.segmenter import Segmenter
from enet_training import onnx_export
from enet_training.cli import main
from enet_training.finetune import encoder_modules
from enet_training.model import TrainingModel
from enet_training.run_setup import make_model, seed_everything
import numpy as np
import pytest
from tiny_datasets import make_voc_tree, VOC_ENTRIES
import torch
from train_flags import parse_train_flags

CLASSES = tuple(name for name, _ in VOC_ENTRIES)


@pytest.fixture(scope='module', autouse=True)
def eager_validation():
    """Validate without torch.compile (seconds, not minutes, for 64x48 frames)."""
    before = os.environ.get('ENET_ROS_COMPILE')
    os.environ['ENET_ROS_COMPILE'] = '0'
    yield
    if before is None:
        os.environ.pop('ENET_ROS_COMPILE')
    else:
        os.environ['ENET_ROS_COMPILE'] = before


@pytest.fixture(scope='module')
def voc(tmp_path_factory) -> Path:
    """Build a VOC / CVAT tree of 8 train and 2 val frames, 64x48."""
    return make_voc_tree(tmp_path_factory.mktemp('data') / 'street', {'train': 8, 'val': 2})


def _argv(voc: Path, out: Path, *extra: str):
    return ['train', '--dataset', 'voc', '--data', str(voc), '--out', str(out),
            '--init', 'bundled', '--freeze-encoder-epochs', '1', '--batch-size', '4',
            '--workers', '0', '--device', 'cpu', '--lr', '2e-3', '--seed', '5',
            '--log-interval', '1', '--progress', 'on', *extra]


@pytest.fixture(scope='module')
def run(voc: Path, tmp_path_factory):
    """Epoch 1 (encoder frozen), then a resume for epoch 2; return (folder, stderr, epoch 1)."""
    out = tmp_path_factory.mktemp('finetune')
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert main(_argv(voc, out, '--epochs', '1')) == 0
        shutil.copyfile(out / 'checkpoint.pth', out / 'epoch1.pth')
        assert main(_argv(voc, out, '--epochs', '2', '--resume', 'auto')) == 0
    return out, stderr.getvalue(), out / 'epoch1.pth'


def _model_state(path: Path) -> dict:
    state = torch.load(path, map_location='cpu', weights_only=True)['model']
    return {k[len('enet.'):]: v for k, v in state.items() if k.startswith('enet.')}


def _encoder_parameter_names() -> list:
    enet = TrainingModel(3).enet
    return [f'{prefix}.{name}' for prefix, module in encoder_modules(enet)
            for name, _ in module.named_parameters()]


def test_new_classes_keep_every_tensor_but_the_classifier():
    """--init bundled into 3 classes: 590 of 591 tensors kept, fullconv fresh and seeded."""
    bundled = load_model_file(None).state_dict
    args = parse_train_flags('--init', 'bundled', '--seed', '5')
    table = ClassTable('street', CLASSES, ((0, 0, 0), (1, 1, 1), (2, 2, 2)), 255, ())
    lines = []
    model = make_model(args, table, torch.device('cpu'), torch.contiguous_format, lines.append)
    state = model.enet.state_dict()
    kept = [name for name in state if name != 'fullconv.weight']
    assert len(kept) == 590
    for name in kept:
        assert torch.equal(state[name], bundled[name]), name
    seed_everything(5)
    fresh = TrainingModel(3).enet.state_dict()['fullconv.weight']
    assert torch.equal(state['fullconv.weight'], fresh)
    assert state['fullconv.weight'].shape == (16, 3, 3, 3)
    assert len(lines) == 1 and 'kept 590 of 591 tensors; re-initialised the classifier (11 ' \
        'classes there, 3 here): fullconv.weight (16x11x3x3 in the init model, 16x3x3x3 here)' \
        in lines[0]
    # The same classes: everything is kept, the classifier too.
    same = make_model(parse_train_flags('--init', str(BUNDLED_MODEL)), CAMVID_11,
                      torch.device('cpu'), torch.contiguous_format, lines.append)
    assert torch.equal(same.enet.state_dict()['fullconv.weight'], bundled['fullconv.weight'])
    assert 'all 591 tensors' in lines[1]


@pytest.mark.slow
def test_encoder_frozen_for_the_first_epoch_then_trained(run):
    """After epoch 1 the encoder's parameters are the bundled model's; after epoch 2 not."""
    out, _, epoch1 = run
    bundled = load_model_file(None).state_dict
    first, second = _model_state(epoch1), _model_state(out / 'checkpoint.pth')
    encoder = _encoder_parameter_names()
    assert len(encoder) > 100
    for name in encoder:
        assert torch.equal(first[name], bundled[name]), name
    assert not torch.equal(first['regular5_1.branch.0.weight'],
                           bundled['regular5_1.branch.0.weight'])  # the decoder trained
    assert sum(not torch.equal(second[name], first[name]) for name in encoder) > 100
    log = (out / 'train.log').read_text()
    assert 'epoch 1: encoder frozen until epoch 1 (' in log
    assert 'parameters train: the decoder and classifier)' in log
    assert log.count('encoder frozen') == 1  # the resumed run starts past the frozen epochs


@pytest.mark.slow
def test_run_log_metrics_tensorboard_and_record(run, voc: Path):
    """Progress bar with ETA, one validation line per epoch, metrics.csv, events, run.json."""
    out, stderr, _ = run
    assert 'epoch 1/1: 100%' in stderr and 'epoch 2/2: 100%' in stderr
    assert '<00:00' in stderr or '<' in stderr.split('epoch 2/2')[-1]  # tqdm's ETA field
    log = (out / 'train.log').read_text()
    for epoch in (1, 2):
        line = next(line for line in log.splitlines()
                    if line.startswith(f'validation after epoch {epoch}: mIoU '))
        assert all(f'{name} ' in line for name in CLASSES)
    assert "voc layout '" in log and 'class weights: background ' in log
    counts = json.loads(next(out.glob('class_counts_*.json')).read_text())
    assert counts['classes'] == list(CLASSES)
    with open(out / 'metrics.csv') as stream:
        rows = list(csv.DictReader(stream))
    assert [row['epoch'] for row in rows] == ['1', '2']
    assert set(rows[0]) >= {'loss', 'lr', 'seconds', 'images_per_second', 'val_miou',
                            'iou_background', 'iou_road', 'iou_vehicle'}
    history = torch.load(out / 'checkpoint.pth', weights_only=True)['history']
    assert float(rows[1]['val_miou']) == pytest.approx(history[1]['val_miou'])
    record = json.loads((out / 'run.json').read_text())
    assert record['args']['dataset'] == 'voc' and record['args']['init'] == 'bundled'
    assert record['versions']['torch'].startswith(torch.__version__.split('+')[0])
    assert record['versions']['enet_ros'] and record['versions']['python']
    assert record['data']['splits'] == {'train': 8, 'val': 2}
    assert record['data']['classes'] == list(CLASSES)
    assert len(record['data']['fingerprint']) == 64
    assert [start['resumed_from'] for start in record['starts']] == \
        [None, str(out / 'checkpoint.pth')]
    event_accumulator = pytest.importorskip(
        'tensorboard.backend.event_processing.event_accumulator')
    events = event_accumulator.EventAccumulator(str(out / 'tensorboard'))
    events.Reload()
    tags = events.Tags()['scalars']
    assert {'train/loss', 'train/step_loss', 'val/val_miou', 'val_iou/road'} <= set(tags)
    assert [e.step for e in events.Scalars('val/val_miou')] == [1, 2]


@pytest.mark.slow
def test_class_table_travels_into_the_model_file_and_the_segmenter(run, tmp_path: Path):
    """best.safetensors and an exported checkpoint carry the new names, colours, void, drivable."""
    out, _, _ = run
    exported = tmp_path / 'street.safetensors'
    assert main(['export', str(out / 'checkpoint.pth'), '--out', str(exported)]) == 0
    for path in (out / 'best.safetensors', exported):
        metadata = load_model_file(path).metadata
        assert metadata.class_names == CLASSES
        assert metadata.colors == tuple(color for _, color in VOC_ENTRIES)
        assert metadata.void_id == 255 and metadata.drivable_classes == ('road',)
        assert metadata.dataset == 'street' and metadata.input_size == (64, 48)
        # What the node reads: the Segmenter's metadata and its class table.
        segmenter = Segmenter.from_file(str(path), device='cpu', precision='fp32',
                                        warmup=False, torch_compile=False)
        assert segmenter.num_classes == 3
        assert segmenter.metadata.class_table.names == CLASSES
        assert segmenter.metadata.class_table.ids_of(segmenter.metadata.drivable_classes) == (1,)
        labels = segmenter.segment(np.zeros((48, 64, 3), np.uint8)).labels
        assert labels.max() < 3


@pytest.mark.slow
def test_evaluate_finds_the_layout(run, voc: Path, capsys):
    """``enet-train evaluate`` on a VOC folder reads it as the VOC layout, no --dataset needed."""
    out, _, _ = run
    assert main(['evaluate', '--model', str(out / 'best.safetensors'), '--data', str(voc),
                 '--device', 'cpu', '--precision', 'fp32']) == 0
    printed = capsys.readouterr().out
    assert 'val: 2 images' in printed and 'vehicle' in printed
    status = main(['evaluate', '--data', str(voc), '--device', 'cpu', '--precision', 'fp32'])
    assert status == 2 and 'the model predicts' in capsys.readouterr().err


@pytest.mark.slow
def test_onnx_export_agrees_with_the_segmenter(run, voc: Path, tmp_path: Path, capsys):
    """--onnx writes the index-free network with its metadata; ONNX Runtime agrees."""
    onnx = pytest.importorskip('onnx', reason='onnx is not installed (requirements-dev.txt)')
    pytest.importorskip('onnxruntime', reason='onnxruntime is not installed')
    out, _, _ = run
    path = tmp_path / 'street.onnx'
    assert main(['export', str(out / 'best.safetensors'), '--onnx', str(path)]) == 0
    printed = capsys.readouterr().out
    assert 'input 1x3x48x64, 3 classes; ONNX Runtime agrees with the Segmenter on' in printed
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert 'MaxUnpool' not in ops and 'DepthToSpace' in ops
    props = {p.key: p.value for p in model.metadata_props}
    assert props['input_size'] == '64x48'
    assert json.loads(props['class_names']) == list(CLASSES)
    assert json.loads(props['drivable_classes']) == ['road']
    assert json.loads(props['mean']) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(props['enet_ros'])['void_id'] == 255
    # A frame of the data as the check frame, and the checkpoint as the source, also work.
    frame = voc / 'JPEGImages' / 'val_0000.jpg'
    assert main(['export', str(out / 'checkpoint.pth'), '--onnx', str(path),
                 '--check-image', str(frame)]) == 0
    assert 'on 100.000% of the check pixels' in capsys.readouterr().out


@pytest.mark.slow
def test_onnx_export_fails_with_the_figure(run, tmp_path: Path, monkeypatch):
    """A network that disagrees with the Segmenter fails the check; no file is left."""
    pytest.importorskip('onnx', reason='onnx is not installed (requirements-dev.txt)')
    pytest.importorskip('onnxruntime', reason='onnxruntime is not installed')
    out, _, _ = run
    loaded = load_model_file(out / 'best.safetensors')
    real_export = onnx_export.export_network
    torch.manual_seed(0)
    other = {k: (torch.randn_like(v) if k == 'fullconv.weight' else v)
             for k, v in loaded.state_dict.items()}

    def export_other_weights(model, path):
        return real_export(type(loaded)(loaded.path, loaded.metadata, other), path)

    monkeypatch.setattr(onnx_export, 'export_network', export_other_weights)
    path = tmp_path / 'bad.onnx'
    with pytest.raises(onnx_export.OnnxExportError) as error:
        onnx_export.export_onnx(loaded, path)
    message = str(error.value)
    assert f"ONNX export '{path}' failed its check: ONNX Runtime's labels equal the " \
           "Segmenter's on" in message and 'below the 99.9% required; nothing written' in message
    assert not path.exists() and not list(tmp_path.iterdir())
