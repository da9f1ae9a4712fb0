"""End to end on a tiny CamVid tree: train, resume, two-stage, export, evaluate, CLI errors."""

import json
import os
from pathlib import Path
import pickle
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Tuple

from enet_ros.model_file import load_model_file
from enet_ros.segmenter import cpu_supports_bf16, Segmenter
from enet_training.cli import main
import numpy as np
import pytest
from tiny_datasets import make_camvid_tree, make_cityscapes_tree, scene
import torch

STEP_LINE = re.compile(r'^epoch (\d+)/\d+ step (\d+)/\d+ loss (\S+) ')


def _train_argv(data: Path, out: Path, *extra: str) -> List[str]:
    """Arguments of a fast, seeded run: 64x48 input, batch 4, no scaling, one log line a step."""
    return ['train', '--data', str(data), '--out', str(out), '--input-size', '64', '48',
            '--batch-size', '4', '--workers', '0', '--lr', '5e-3', '--seed', '3',
            '--scale', '1', '1', '--log-interval', '1', '--device', 'cpu', *extra]


def _step_losses(out: Path) -> Dict[Tuple[int, int], str]:
    """Return {(epoch, step): loss as logged} from a run's train.log (the last of repeats)."""
    losses = {}
    for line in (out / 'train.log').read_text().splitlines():
        match = STEP_LINE.match(line)
        if match:
            losses[int(match.group(1)), int(match.group(2))] = match.group(3)
    return losses


def _history(out: Path) -> List[dict]:
    """Return the per-epoch records of a run's checkpoint."""
    return torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)['history']


@pytest.fixture(scope='module')
def tree(tmp_path_factory) -> Path:
    """Build a tiny CamVid tree: 8 train and 2 val images of 64x48."""
    return make_camvid_tree(tmp_path_factory.mktemp('data') / 'camvid', {'train': 8, 'val': 2})


@pytest.fixture(scope='module')
def run_a(tree: Path, tmp_path_factory) -> Path:
    """Train three epochs without interruption; return the run folder."""
    out = tmp_path_factory.mktemp('run_a')
    assert main(_train_argv(tree, out, '--epochs', '3')) == 0
    return out


@pytest.fixture(scope='module')
def run_b(tree: Path, tmp_path_factory) -> Path:
    """Train one epoch, then resume from that epoch-1 checkpoint up to epoch 2."""
    out = tmp_path_factory.mktemp('run_b')
    assert main(_train_argv(tree, out, '--epochs', '1')) == 0
    epoch1 = out / 'epoch1.pth'
    shutil.copyfile(out / 'checkpoint.pth', epoch1)
    assert main(_train_argv(tree, out, '--epochs', '2', '--resume', str(epoch1))) == 0
    return out


@pytest.mark.slow
def test_loss_goes_down(run_a: Path):
    """Each epoch's mean loss is below the previous one, and the last step below the first."""
    history = _history(run_a)
    assert [record['epoch'] for record in history] == [1, 2, 3]
    losses = [record['loss'] for record in history]
    assert all(np.isfinite(losses))
    assert losses[2] < losses[1] < losses[0], losses
    steps = _step_losses(run_a)
    assert len(steps) == 3 * 2  # 8 images, batch 4
    assert float(steps[3, 2]) < float(steps[1, 1])


@pytest.mark.slow
def test_run_writes_checkpoint_and_best_model(run_a: Path):
    """The run folder holds checkpoint.pth, best.safetensors, the log and the weights cache."""
    state = torch.load(run_a / 'checkpoint.pth', map_location='cpu', weights_only=True)
    assert state['epoch'] == 3
    assert set(state) >= {'model', 'optimizer', 'lr_scheduler', 'scaler', 'epoch', 'best_miou',
                          'history', 'args'}
    assert state['args']['dataset'] == 'camvid' and state['args']['input_size'] == [64, 48]
    best = load_model_file(run_a / 'best.safetensors')
    val_mious = [record['val_miou'] for record in state['history']]
    assert best.metadata.val_miou == pytest.approx(max(val_mious), abs=1e-6)
    assert state['best_miou'] == pytest.approx(max(val_mious))
    assert best.metadata.input_size == (64, 48)
    assert best.metadata.training['epoch'] == 1 + int(np.argmax(val_mious))
    assert len(list(run_a.glob('class_counts_*.json'))) == 1
    log = (run_a / 'train.log').read_text()
    assert log.startswith('training on 8 frames (train), validating on 2 (val)\n'
                          'class weights: Sky ')
    assert not list(run_a.glob('*.tmp'))
    # The recipe options are off by default: no weight average, nothing held out.
    assert 'ema' not in state and state['args']['ema'] == 0.0
    assert state['args']['holdout_sequence'] == [] and state['args']['loss'] == 'ce'
    for record in state['history']:
        assert 'holdout_miou' not in record
        # The val split is one sequence: one per-sequence entry, the whole split's score.
        assert record['val_sequence_miou'] == {'0001TP': record['val_miou']}
    assert best.metadata.training['val_sequence_miou'] == \
        state['history'][best.metadata.training['epoch'] - 1]['val_sequence_miou']


@pytest.mark.slow
def test_same_seed_same_run(run_a: Path, run_b: Path):
    """Two runs with one seed log identical epoch-1 losses (initial weights are seeded too)."""
    a, b = _step_losses(run_a), _step_losses(run_b)
    assert a[1, 1] == b[1, 1] and a[1, 2] == b[1, 2]


@pytest.mark.slow
def test_resume_replays_the_uninterrupted_run(run_a: Path, run_b: Path):
    """Resuming from the epoch-1 checkpoint gives epoch 2 exactly as in the unbroken run."""
    a, b = _step_losses(run_a), _step_losses(run_b)
    assert b[2, 1] == a[2, 1] and b[2, 2] == a[2, 2]
    assert 'resumed from' in (run_b / 'train.log').read_text()
    history_a, history_b = _history(run_a), _history(run_b)
    assert [r['epoch'] for r in history_b] == [1, 2]
    assert history_b[1]['loss'] == history_a[1]['loss']
    assert history_b[1]['val_miou'] == history_a[1]['val_miou']


@pytest.mark.slow
def test_resume_auto(tree: Path, run_b: Path):
    """--resume auto continues from <out>/checkpoint.pth; a finished run trains no more."""
    assert main(_train_argv(tree, run_b, '--epochs', '2', '--resume', 'auto')) == 0
    assert len(_history(run_b)) == 2
    assert (run_b / 'train.log').read_text().count('resumed from') == 2


@pytest.mark.slow
def test_export_checkpoint_loads_in_segmenter(run_a: Path, tmp_path: Path, capsys):
    """Export checkpoint.pth to a model file the Segmenter loads and runs."""
    out = tmp_path / 'exported' / 'enet.safetensors'
    assert main(['export', str(run_a / 'checkpoint.pth'), '--out', str(out)]) == 0
    assert 'exported' in capsys.readouterr().out
    loaded = load_model_file(out)
    assert loaded.metadata.class_names[3] == 'Road'
    assert loaded.metadata.input_size == (64, 48)
    assert loaded.metadata.training['epoch'] == 3
    state = torch.load(run_a / 'checkpoint.pth', map_location='cpu', weights_only=True)
    # The last epoch's weights carry the last epoch's own validation score.
    assert loaded.metadata.val_miou == pytest.approx(state['history'][-1]['val_miou'], abs=1e-6)
    for name, tensor in loaded.state_dict.items():
        assert torch.equal(tensor, state['model'][f'enet.{name}']), name
    segmenter = Segmenter.from_file(str(out), device='cpu', warmup=False)
    image, _ = scene(0)
    labels = segmenter.segment(image).labels
    assert labels.shape == (48, 64) and labels.max() < 11


@pytest.mark.slow
def test_export_best_copies_validated_file(run_a: Path, tmp_path: Path):
    """Export best.safetensors by copying it (after validating) byte for byte."""
    out = tmp_path / 'best_copy.safetensors'
    assert main(['export', str(run_a / 'best.safetensors'), '--out', str(out)]) == 0
    assert out.read_bytes() == (run_a / 'best.safetensors').read_bytes()
    Segmenter.from_file(str(out), device='cpu', warmup=False).segment(scene(1)[0])


@pytest.mark.slow
def test_export_record_is_merged_into_the_training_record(run_a: Path, tmp_path: Path,
                                                          capsys):
    """``--record`` adds keys to the file's training record; weights and scores stay."""
    record = tmp_path / 'record.json'
    record.write_text(json.dumps({'machine': 'test box', 'wall_time_s': 12}))
    best = load_model_file(run_a / 'best.safetensors')
    for source in ('best.safetensors', 'checkpoint.pth'):
        out = tmp_path / f'with_record_{Path(source).stem}.safetensors'
        assert main(['export', str(run_a / source), '--out', str(out),
                     '--record', str(record)]) == 0
        exported = load_model_file(out)
        assert exported.metadata.training['machine'] == 'test box'
        assert exported.metadata.training['wall_time_s'] == 12
        assert 'args' in exported.metadata.training
    assert exported.metadata.training['epoch'] == 3  # the checkpoint, exported last
    best_out = load_model_file(tmp_path / 'with_record_best.safetensors')
    assert best_out.metadata.val_miou == best.metadata.val_miou
    assert all(torch.equal(best_out.state_dict[k], v) for k, v in best.state_dict.items())
    record.write_text('[1, 2]')
    assert main(['export', str(run_a / 'best.safetensors'), '--out',
                 str(tmp_path / 'x.safetensors'), '--record', str(record)]) == 2
    assert 'JSON object' in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_cli_prints_table(run_a: Path, tree: Path, tmp_path: Path, capsys):
    """Print per-class rows and the summary; the mIoU is the one recorded in training."""
    model = run_a / 'best.safetensors'
    report = tmp_path / 'scores.json'
    # fp32: the precision training's validation recorded the mIoU in (the CPU's 'auto' may
    # be bf16, whose labels differ on a few pixels).
    assert main(['evaluate', '--model', str(model), '--data', str(tree), '--split', 'val',
                 '--device', 'cpu', '--precision', 'fp32', '--json', str(report)]) == 0
    text = capsys.readouterr().out
    assert 'val: 2 images' in text
    for name in ('Sky', 'Building', 'Road', 'Bicyclist', 'mIoU', 'class-average accuracy',
                 'global accuracy'):
        assert re.search(rf'^{name}\s', text, re.MULTILINE), name
    printed = float(re.search(r'^mIoU\s+(\S+)', text, re.MULTILINE).group(1))
    recorded = load_model_file(model).metadata.val_miou
    assert printed == pytest.approx(100 * recorded, abs=0.006)
    scores = json.loads(report.read_text())
    assert scores['mean_iou'] == pytest.approx(recorded, abs=1e-6)
    assert scores['pixels'] == 2 * 48 * 62  # void strips excluded
    assert scores['per_class_iou']['Sky'] is not None
    # Pole is absent from the ground truth: no IoU if never predicted, else 0.
    assert scores['per_class_iou']['Pole'] in (None, 0.0)


@pytest.mark.slow
def test_evaluate_cli_refuses_labels_of_other_classes(run_a: Path, tmp_path: Path, capsys):
    """A CamVid model scored on Cityscapes labels (--dataset): one line, exit 2, no table."""
    cityscapes = make_cityscapes_tree(tmp_path / 'cityscapes', {'val': {'lindau': 1}})
    assert main(['evaluate', '--model', str(run_a / 'best.safetensors'), '--data',
                 str(cityscapes), '--dataset', 'cityscapes', '--device', 'cpu']) == 2
    captured = capsys.readouterr()
    assert 'scores would pair the wrong classes' in captured.err
    assert 'mIoU' not in captured.out


@pytest.mark.slow
def test_two_stage_training(tree: Path, tmp_path: Path):
    """--encoder-epochs 1 trains the encoder first, then the whole network, and validates."""
    out = tmp_path / 'two_stage'
    assert main(_train_argv(tree, out, '--epochs', '2', '--encoder-epochs', '1')) == 0
    history = _history(out)
    assert [r['stage'] for r in history] == ['encoder', 'full']
    assert 'val_miou' not in history[0] and 0 <= history[1]['val_miou'] <= 1
    assert all(np.isfinite(r['loss']) for r in history)
    load_model_file(out / 'best.safetensors')


@pytest.mark.slow
def test_export_score_records_the_deployed_precisions(run_a: Path, tree: Path,
                                                      tmp_path: Path, monkeypatch, capsys):
    """``--score`` records val mIoU per precision the node runs; fp32 equals evaluate's."""
    monkeypatch.setenv('ENET_ROS_COMPILE', '0')  # the same precisions, minus compile time
    out = tmp_path / 'scored.safetensors'
    assert main(['export', str(run_a / 'best.safetensors'), '--out', str(out),
                 '--score', str(tree)]) == 0
    printed = capsys.readouterr().out
    record = load_model_file(out).metadata.training['deployed_scores']
    expected = ['cpu fp32'] + (['cpu bf16'] if cpu_supports_bf16() else []) + (
        ['cuda fp16'] if torch.cuda.is_available() else [])
    assert record['split'] == 'val' and record['frames'] == 2
    assert sorted(record['results']) == sorted(expected)
    for name, result in record['results'].items():
        assert 0 <= result['mean_iou'] <= 1 and set(result['per_class_iou']) >= {'Road', 'Sky'}
        assert f'val at {name}' in printed
    report = tmp_path / 'fp32.json'
    assert main(['evaluate', '--model', str(out), '--data', str(tree), '--device', 'cpu',
                 '--precision', 'fp32', '--json', str(report)]) == 0
    fp32 = json.loads(report.read_text())['mean_iou']
    assert record['results']['cpu fp32']['mean_iou'] == pytest.approx(fp32, abs=1e-9)
    # The weights are the exported ones, unchanged by the rewrite that added the record.
    best = load_model_file(run_a / 'best.safetensors')
    scored = load_model_file(out)
    assert all(torch.equal(scored.state_dict[k], v) for k, v in best.state_dict.items())
    assert scored.metadata.val_miou == best.metadata.val_miou


@pytest.mark.slow
def test_training_on_train_plus_val_notes_the_shared_split(tree: Path, tmp_path: Path):
    """``--train-split train+val`` trains on both; the log says val is no longer held out."""
    out = tmp_path / 'final'
    assert main(_train_argv(tree, out, '--epochs', '1', '--train-split', 'train+val')) == 0
    log = (out / 'train.log').read_text()
    assert 'note: the validation split val is also trained on' in log
    plain = tmp_path / 'plain'
    assert main(_train_argv(tree, plain, '--epochs', '1')) == 0
    plain_log = (plain / 'train.log').read_text()
    assert 'also trained on' not in plain_log
    assert 'training on 10 frames (train+val), validating on 2 (val)' in log
    assert 'training on 8 frames (train), validating on 2 (val)' in plain_log


@pytest.mark.slow
def test_model_trained_on_val_records_no_held_out_val_miou(tree: Path, tmp_path: Path,
                                                           capsys):
    """Trained on train+val, best.safetensors and an exported checkpoint have val_miou null."""
    out = tmp_path / 'final'
    assert main(_train_argv(tree, out, '--epochs', '1', '--train-split', 'train+val')) == 0
    seen_score = _history(out)[-1]['val_miou']
    exported = tmp_path / 'final.safetensors'
    assert main(['export', str(out / 'checkpoint.pth'), '--out', str(exported)]) == 0
    assert 'no held-out val mIoU (val trained on; seen-data mIoU' in capsys.readouterr().out
    for path in (out / 'best.safetensors', exported):
        metadata = load_model_file(path).metadata
        assert metadata.val_miou is None, path
        assert metadata.training['val_seen_in_training'] == ['val'], path
        assert metadata.training['seen_val_miou'] == pytest.approx(seen_score, abs=1e-6), path
    assert main(['evaluate', '--model', str(exported), '--data', str(tree), '--split', 'val',
                 '--device', 'cpu', '--precision', 'fp32']) == 0
    assert "note: this model was trained on the 'val' split too" in capsys.readouterr().out


def test_batch_larger_than_split_refused(tree: Path, tmp_path: Path):
    """A training split smaller than one batch is an error, not a silent empty run."""
    with pytest.raises(SystemExit, match='fewer than --batch-size 16'):
        main(_train_argv(tree, tmp_path / 'run', '--epochs', '1', '--batch-size', '16'))


@pytest.mark.slow
def test_cli_user_errors_are_one_line(tmp_path: Path, run_a: Path, capsys):
    """A missing dataset or model file is an 'enet-train: error:' line and status 2."""
    assert main(['evaluate', '--model', str(run_a / 'best.safetensors'), '--data',
                 str(tmp_path / 'nowhere'), '--device', 'cpu']) == 2
    error = capsys.readouterr().err
    assert error.startswith('enet-train: error: ') and 'nowhere' in error
    assert main(['export', str(tmp_path / 'missing.pth'), '--out',
                 str(tmp_path / 'x.safetensors')]) == 2
    assert 'missing.pth' in capsys.readouterr().err
    assert main(['evaluate', '--model', str(tmp_path / 'none.safetensors'), '--data',
                 str(tmp_path), '--device', 'cpu']) == 2
    assert 'none.safetensors' in capsys.readouterr().err


class _Payload:
    """Pickles to a call of ``os.mkdir(marker)``: unpickling it would run code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        """Ask the unpickler to call os.mkdir."""
        return os.mkdir, (self.marker,)


def test_export_refuses_foreign_checkpoint(tmp_path: Path, capsys):
    """Export of a pickle that is no checkpoint fails cleanly, and its code never runs."""
    marker = tmp_path / 'code-ran'
    source = tmp_path / 'evil.pth'
    with open(source, 'wb') as stream:
        pickle.dump({'model': _Payload(marker)}, stream, protocol=2)
    assert main(['export', str(source), '--out', str(tmp_path / 'x.safetensors')]) == 2
    error = capsys.readouterr().err
    assert 'evil.pth' in error and 'not an enet-train checkpoint' in error
    assert not marker.exists()
    assert not (tmp_path / 'x.safetensors').exists()


def test_resume_missing_checkpoint(tree: Path, tmp_path: Path):
    """--resume naming a file that does not exist is an error, not a fresh start."""
    with pytest.raises(SystemExit, match='no such checkpoint'):
        main(_train_argv(tree, tmp_path / 'run', '--epochs', '1', '--resume',
                         str(tmp_path / 'nothing.pth')))


@pytest.mark.integration
def test_training_package_imports_no_ros():
    """Importing the training package's modules pulls in no rclpy (it runs without ROS)."""
    code = ('import sys\n'
            'import enet_training.cli, enet_training.train, enet_training.evaluate\n'
            'import enet_training.datasets, enet_training.class_weights\n'
            'bad = sorted(m for m in sys.modules if m.split(".")[0] in '
            '("rclpy", "sensor_msgs", "std_msgs", "rosbags"))\n'
            'assert not bad, bad\n'
            'print("ok")\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith('ok')
