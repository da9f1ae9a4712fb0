"""Recipe options: colour jitter, rotation, median weights, EMA, OHEM, per-sequence scores."""

import argparse
import json
from pathlib import Path
import random
import shutil
from types import SimpleNamespace
from typing import List

from enet_ros.labels import CAMVID_11
from enet_ros.model import ENet
from enet_ros.model_file import load_model_file, ModelMetadata
from enet_ros.segmenter import normalization_constants
from enet_training.batchnorm import recompute_batchnorm
from enet_training.checkpoint import checkpoint_enet_weights
import enet_training.class_weights as class_weights
from enet_training.class_weights import (cached_class_counts, cached_median_weights,
                                         class_counts, median_frequency_weights)
from enet_training.cli import main
from enet_training.datasets import DatasetError, hold_out, make_dataset, sequence_name
from enet_training.distributed import DistributedEnv
from enet_training.evaluate import evaluate_segmenter, evaluate_sequences
from enet_training.losses import ohem_keep_count, OhemCrossEntropyLoss
from enet_training.run_setup import (check_recipe, make_batchnorm_loader, make_datasets,
                                     make_ema, recipe_changes, seed_batchnorm_pass)
from enet_training.train import evaluate
from enet_training.transforms import adjust_colors, rotate_pair, TrainTransform
import numpy as np
import pytest
from tiny_datasets import make_camvid_tree, scene
import torch
from torch import nn
from train_flags import parse_train_flags

SEQUENCES = ('0001TP', '0006R0')


def test_recipe_flags_default_off():
    """Every recipe flag defaults to today's behaviour; out-of-range values are refused."""
    args = parse_train_flags()
    assert tuple(args.color_jitter) == (0, 0, 0) and args.rotate == 0
    assert args.class_weighting == 'enet' and args.ema == 0
    assert args.loss == 'ce' and args.ohem_keep == 0.25 and args.holdout_sequence == []
    check_recipe(args)
    args = parse_train_flags('--holdout-sequence', 'a', '--holdout-sequence', 'b',
                             '--color-jitter', '0.1', '0.2', '0.3', '--class-weighting', 'median')
    assert args.holdout_sequence == ['a', 'b'] and args.color_jitter == [0.1, 0.2, 0.3]
    # The default list is not shared between parses.
    assert parse_train_flags().holdout_sequence == []
    for bad, message in ((('--color-jitter', '1.5', '0', '0'), '--color-jitter'),
                         (('--rotate', '-5'), '--rotate'), (('--ema', '1'), '--ema'),
                         (('--ohem-keep', '0'), '--ohem-keep')):
        with pytest.raises(SystemExit, match=message):
            check_recipe(parse_train_flags(*bad))


def test_recipe_changes_on_resume():
    """A checkpoint from before the flags stands for their defaults; changes are named."""
    args = parse_train_flags()
    assert recipe_changes(args, {}) == {}
    assert recipe_changes(args, {'color_jitter': [0.0, 0.0, 0.0], 'ema': 0.0}) == {}
    changed = recipe_changes(parse_train_flags('--ema', '0.99', '--color-jitter', '0.2', '0', '0'),
                             {'ema': 0.0})
    assert changed == {'--ema': (0.0, 0.99), '--color-jitter': ([0.0, 0.0, 0.0],
                                                                [0.2, 0.0, 0.0])}
    # Checkpoints from before --ema-bn averaged the statistics; without --ema it is moot.
    assert recipe_changes(parse_train_flags('--ema', '0.99'), {'ema': 0.99}) == \
        {'--ema-bn': ('average', 'recompute')}
    assert recipe_changes(parse_train_flags('--ema', '0.99', '--ema-bn', 'average'),
                          {'ema': 0.99}) == {}
    assert recipe_changes(parse_train_flags('--ema-bn', 'average'), {}) == {}


# Colour jitter and rotation.

def test_adjust_colors_values():
    """Brightness scales and clips; contrast 0 gives the mean luma; saturation 0 the luma."""
    image = np.array([[[100, 50, 200], [10, 20, 30]]], dtype=np.uint8)
    assert adjust_colors(image) is image  # factors 1: the identity, not even a copy
    np.testing.assert_array_equal(adjust_colors(image, brightness=1.5),
                                  [[[150, 75, 255], [15, 30, 45]]])
    luma = image.astype(float) @ [0.299, 0.587, 0.114]
    np.testing.assert_array_equal(adjust_colors(image, contrast=0.0),
                                  np.full_like(image, round(luma.mean())))
    gray = adjust_colors(image, saturation=0.0)
    np.testing.assert_array_equal(gray, np.repeat(np.rint(luma)[..., None], 3, axis=2))
    # Contrast 2 doubles each pixel's distance from the mean luma, clipped to [0, 255].
    expected = np.clip((image - luma.mean()) * 2 + luma.mean(), 0, 255).round()
    np.testing.assert_array_equal(adjust_colors(image, contrast=2.0), expected)


def test_color_jitter_changes_image_never_label():
    """Jitter changes the image but not the label; factor 0 is the identity, drawing nothing."""
    image, label = scene(2)
    plain = TrainTransform((48, 32), 11, (0.8, 1.2))
    zero = TrainTransform((48, 32), 11, (0.8, 1.2), color_jitter=(0, 0, 0))
    jitter = TrainTransform((48, 32), 11, (0.8, 1.2), color_jitter=(0.4, 0.4, 0.4))
    changed = 0
    for seed in range(8):
        random.seed(seed)
        want_image, want_label = plain(image, label)
        after_plain = random.random()
        random.seed(seed)
        got_image, got_label = zero(image, label)
        np.testing.assert_array_equal(got_image, want_image)
        np.testing.assert_array_equal(got_label, want_label)
        assert random.random() == after_plain  # factor 0 consumed no random numbers
        random.seed(seed)
        jittered, jittered_label = jitter(image, label)
        # The jitter comes last: same crop and flip, so the label is the plain one exactly.
        np.testing.assert_array_equal(jittered_label, want_label)
        assert jittered.dtype == np.uint8 and jittered.shape == want_image.shape
        changed += not np.array_equal(jittered, want_image)
    assert changed == 8


def test_rotate_pair_fills_void_and_black():
    """A rotated constant pair keeps its class inside, void and black in the corners."""
    image = np.full((40, 60, 3), 200, np.uint8)
    label = np.full((40, 60), 3, np.uint8)
    out_image, out_label = rotate_pair(image, label, 30.0, 11)
    assert out_image.shape == image.shape and out_label.shape == label.shape
    assert set(np.unique(out_label)) == {3, 11}
    for corner in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        assert out_label[corner] == 11 and np.all(out_image[corner] == 0)
    assert out_label[20, 30] == 3 and np.all(out_image[20, 30] == 200)


def test_rotate_pair_about_the_centre():
    """A square turned by 90 degrees is np.rot90 exactly (the centre stays put), 0 the identity."""
    image, label = scene(3, (32, 32))
    out_image, out_label = rotate_pair(image, label, 90.0, 11)
    np.testing.assert_array_equal(out_label, np.rot90(label))
    np.testing.assert_array_equal(out_image, np.rot90(image))
    same_image, same_label = rotate_pair(image, label, 0.0, 11)
    np.testing.assert_array_equal(same_label, label)
    np.testing.assert_array_equal(same_image, image)


def test_train_transform_rotation_keeps_label_ids():
    """With --rotate the labels stay in {classes, void}; rotations bring in void corners."""
    image, label = scene(0)
    label = label.copy()
    label[:, :2] = 0  # no void to start from
    transform = TrainTransform((64, 48), 11, (1, 1), flip=False, rotate=20)
    with_void = 0
    for seed in range(10):
        random.seed(seed)
        out_image, out_label = transform(image, label)
        assert out_label.shape == (48, 64) and out_image.shape == (48, 64, 3)
        assert set(np.unique(out_label)) <= {0, 1, 3, 11}
        with_void += bool((out_label == 11).any())
    assert with_void >= 8  # all but near-zero angles turn void into the corners


# Median-frequency weights.

def test_median_frequency_weights_known_histogram():
    """w_c = median(freq) / freq_c, freq_c = pixels / pixels of the images with c; absent 0."""
    counts = [10, 40, 0, 60, 5]
    image_pixels = [100, 100, 0, 200, 50]
    # freq = 0.1, 0.4, -, 0.3, 0.1: median of the four present ones is 0.2.
    np.testing.assert_allclose(median_frequency_weights(counts, image_pixels),
                               [2.0, 0.5, 0.0, 2 / 3, 2.0])
    np.testing.assert_allclose(median_frequency_weights([5, 5, 20], [10, 100, 20]),
                               [0.5 / 0.5, 0.5 / 0.05, 0.5 / 1.0])
    with pytest.raises(ValueError, match='no labelled pixels'):
        median_frequency_weights([0, 0], [0, 0])


def test_class_counts_and_median_cache(tmp_path: Path, monkeypatch):
    """Image pixels count every pixel of the images a class is in; old caches are redone."""
    root = make_camvid_tree(tmp_path / 'camvid', {'train': 3})
    dataset = make_dataset('camvid', root, 'train')
    counts = class_counts(dataset)
    expected = np.zeros(11, np.int64)
    for seed in range(3):
        expected += np.bincount(scene(seed)[1].ravel(), minlength=12)[:11]
    np.testing.assert_array_equal(counts.pixels, expected)
    # Classes 0, 1 and 3 are in all three 64x48 frames, the others in none.
    np.testing.assert_array_equal(counts.image_pixels,
                                  [3 * 64 * 48 if c in (0, 1, 3) else 0 for c in range(11)])
    cache_dir = tmp_path / 'cache'
    old = cached_class_counts(dataset, cache_dir)
    cache = next(cache_dir.glob('class_counts_*.json'))
    stored = json.loads(cache.read_text())
    assert stored['image_pixels'] == counts.image_pixels.tolist()
    # A cache written before image_pixels existed is recomputed and rewritten, not a crash.
    cache.write_text(json.dumps({'counts': stored['counts'], 'classes': stored['classes']}))
    weights = cached_median_weights(dataset, cache_dir)
    np.testing.assert_allclose(weights, median_frequency_weights(old.pixels, old.image_pixels))
    assert json.loads(cache.read_text())['image_pixels'] == counts.image_pixels.tolist()
    # A file cut short while being written is recounted too, and replaced whole.
    cache.write_text(cache.read_text()[:20])
    np.testing.assert_allclose(cached_median_weights(dataset, cache_dir), weights)
    assert json.loads(cache.read_text())['image_pixels'] == counts.image_pixels.tolist()
    assert [p.name for p in cache_dir.iterdir()] == [cache.name]

    def no_scan(_):
        raise AssertionError('the labels were scanned again')

    monkeypatch.setattr(class_weights, 'class_counts', no_scan)
    np.testing.assert_array_equal(cached_median_weights(dataset, cache_dir), weights)


# EMA.

def _tiny_net() -> nn.Module:
    """Return a seeded Linear-BatchNorm-Linear network."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_ema_matches_hand_computed_average():
    """make_ema averages weights and BatchNorm buffers: e1 = w1, e_t = d e_(t-1) + (1-d) w_t."""
    decay = 0.75
    model = _tiny_net()
    ema = make_ema(argparse.Namespace(ema=decay), model)
    assert make_ema(argparse.Namespace(ema=0.0), model) is None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    hand = None
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.randn(8, 3, generator=generator)
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
        ema.update_parameters(model)
        now = {k: v.detach().clone() for k, v in model.state_dict().items()
               if v.is_floating_point()}
        hand = now if hand is None else {k: decay * hand[k] + (1 - decay) * now[k] for k in now}
    averaged = ema.module.state_dict()
    assert int(ema.n_averaged) == 4
    for key, value in hand.items():
        torch.testing.assert_close(averaged[key], value, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(averaged['0.weight'], model.state_dict()['0.weight'])
    # BatchNorm buffers are averaged too, not copied.
    assert not torch.allclose(averaged['1.running_mean'], model.state_dict()['1.running_mean'])


def test_recompute_batchnorm_keeps_the_statistics_of_the_batches():
    """Each BatchNorm layer ends with the average of its batch statistics, dropout off."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Dropout2d(0.5), nn.BatchNorm2d(4)).eval()
    bn = network[2]
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(9.0)
    generator = torch.Generator().manual_seed(2)
    batches = [(torch.randint(0, 256, (n, 3, 6, 8), dtype=torch.uint8, generator=generator),
                torch.zeros(n, 6, 8, dtype=torch.long)) for n in (2, 2, 1)]
    mean = torch.tensor([100.0, 110.0, 120.0]).view(1, 3, 1, 1)
    inv_std = torch.tensor([1 / 60.0, 1 / 55.0, 1 / 50.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        outputs = [network[0]((images.float() - mean) * inv_std) for images, _ in batches]
    expected_mean = torch.stack([y.mean((0, 2, 3)) for y in outputs]).mean(0)
    expected_var = torch.stack([y.var((0, 2, 3), unbiased=True) for y in outputs]).mean(0)
    for _ in range(2):  # the result depends on the weights and the frames alone
        recompute_batchnorm(network, batches, torch.device('cpu'), torch.contiguous_format,
                            mean, inv_std)
        torch.testing.assert_close(bn.running_mean, expected_mean)
        torch.testing.assert_close(bn.running_var, expected_var)
    assert not any(m.training for m in network.modules()) and bn.momentum == 0.1
    assert int(bn.num_batches_tracked) == 3


def test_batchnorm_loader_only_for_a_recomputed_average():
    """A pass in order over the training frames with --ema; none otherwise or off rank 0."""
    from torch.utils.data import SequentialSampler

    env = DistributedEnv(0, 1, 0, torch.device('cpu'))
    dataset = SimpleNamespace(__len__=lambda: 4)
    args = parse_train_flags('--ema', '0.9', '--batch-size', '3')
    loader = make_batchnorm_loader(args, dataset, env)
    assert loader is not None and loader.dataset is dataset
    assert isinstance(loader.sampler, SequentialSampler) and loader.batch_size == 3
    assert make_batchnorm_loader(parse_train_flags(), dataset, env) is None
    assert make_batchnorm_loader(parse_train_flags('--ema', '0.9', '--ema-bn', 'average'),
                                 dataset, env) is None
    assert make_batchnorm_loader(parse_train_flags('--ema', '0.9'), dataset,
                                 DistributedEnv(1, 2, 1, torch.device('cpu'))) is None


# OHEM.

def _ohem_batch():
    """Return 2x4x3x5 logits and labels with 5 void pixels (25 labelled)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, generator=generator)
    target = torch.randint(0, 4, (2, 3, 5), generator=generator)
    target[0, 0, :] = 11  # 5 void pixels: 25 labelled
    return logits, target


def test_ohem_keep_count():
    """floor(fraction x labelled pixels), at least one."""
    assert ohem_keep_count(25, 0.25) == 6
    assert ohem_keep_count(100, 0.25) == 25
    assert ohem_keep_count(25, 1.0) == 25
    assert ohem_keep_count(3, 0.1) == 1
    with pytest.raises(ValueError, match='keep fraction'):
        OhemCrossEntropyLoss(keep=0.0)


def test_ohem_averages_the_hardest_pixels():
    """The loss is the weighted mean of the top-k pixel losses; only they get gradients."""
    logits, target = _ohem_batch()
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    pixel = nn.functional.cross_entropy(logits, target, weight=weight, ignore_index=11,
                                        reduction='none')
    labelled = target != 11
    assert int(labelled.sum()) == 25
    values = pixel[labelled]
    top = values.argsort(descending=True)[:6]
    expected = values[top].sum() / weight[target[labelled][top]].sum()
    logits.requires_grad_(True)
    loss = OhemCrossEntropyLoss(weight, 11, keep=0.25)(logits, target)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    touched = logits.grad.abs().sum(dim=1) > 0
    assert int(touched.sum()) == 6 and not touched[~labelled].any()
    # Unweighted: the plain mean of the hardest; at least one pixel however small the fraction.
    plain = nn.functional.cross_entropy(logits.detach(), target, ignore_index=11,
                                        reduction='none')[labelled]
    torch.testing.assert_close(OhemCrossEntropyLoss(None, 11, 0.25)(logits.detach(), target),
                               plain.sort(descending=True).values[:6].mean())
    torch.testing.assert_close(OhemCrossEntropyLoss(weight, 11, 0.001)(logits.detach(), target),
                               values.max() / weight[target[labelled][values.argmax()]])


def test_ohem_fraction_one_is_cross_entropy():
    """Keeping every pixel gives nn.CrossEntropyLoss's value, weighted or not."""
    logits, target = _ohem_batch()
    for weight in (None, torch.tensor([1.0, 2.0, 0.5, 3.0])):
        torch.testing.assert_close(
            OhemCrossEntropyLoss(weight, 11, keep=1.0)(logits, target),
            nn.CrossEntropyLoss(weight=weight, ignore_index=11)(logits, target))
    all_void = torch.full_like(target, 11)
    logits.requires_grad_(True)
    loss = OhemCrossEntropyLoss(None, 11, 0.5)(logits, all_void)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(logits.grad == 0)


# Held-out sequences and per-sequence scores.

@pytest.fixture(scope='module')
def tree(tmp_path_factory) -> Path:
    """Build a tiny CamVid tree of two sequences: 10 train and 4 val frames, alternating."""
    return make_camvid_tree(tmp_path_factory.mktemp('data') / 'camvid', {'train': 10, 'val': 4},
                            sequences=SEQUENCES)


def test_hold_out_removes_exactly_the_prefix(tree: Path):
    """The held-out set is the prefix's frames; training keeps the rest and its transform."""
    dataset = make_dataset('camvid', tree, 'train', transform=lambda i, label: (i, label))
    rest, held = hold_out(dataset, ['0006R0'])
    assert list(held) == ['0006R0']
    assert [p[0].name for p in held['0006R0'].pairs] == [
        f'0006R0_{i:06d}.png' for i in (1, 3, 5, 7, 9)]
    assert [p[0].name for p in rest.pairs] == [f'0001TP_{i:06d}.png' for i in (0, 2, 4, 6, 8)]
    assert rest.transform is dataset.transform and held['0006R0'].transform is None
    assert held['0006R0'].table is CAMVID_11
    assert sorted(rest.pairs + held['0006R0'].pairs) == sorted(dataset.pairs)
    # A longer prefix takes fewer frames.
    assert len(hold_out(dataset, ['0006R0_000001'])[1]['0006R0_000001']) == 1
    with pytest.raises(DatasetError, match=r"'0016E5' matches no frame .*0001TP, 0006R0"):
        hold_out(dataset, ['0016E5'])
    with pytest.raises(DatasetError, match='match all 10 training frames'):
        hold_out(dataset, ['0006R0', '0001TP'])
    with pytest.raises(DatasetError, match='match all'):
        hold_out(dataset, ['000'])


def test_holdout_bad_prefix_is_one_line_error(tree: Path, tmp_path: Path, capsys):
    """enet-train train with a prefix matching no training frame stops with status 2."""
    assert main(['train', '--data', str(tree), '--out', str(tmp_path / 'run'), '--device', 'cpu',
                 '--holdout-sequence', 'Seq05VD']) == 2
    error = capsys.readouterr().err
    assert error.startswith('enet-train: error: ') and "'Seq05VD' matches no frame" in error


def test_sequence_name():
    """The sequence is the file name up to the first '_' (CamVid drive, Cityscapes city)."""
    assert sequence_name(Path('/d/val/0016E5_07959.png')) == '0016E5'
    assert sequence_name(Path('aachen_000000_000019_leftImg8bit.png')) == 'aachen'
    assert sequence_name(Path('noprefix.png')) == 'noprefix.png'


class _ScriptedSegmenter:
    """Return the given label maps in turn, as ``Segmenter.segment(image).labels``."""

    def __init__(self, outputs: List[np.ndarray]):
        self.outputs = list(outputs)

    def segment(self, image: np.ndarray) -> SimpleNamespace:
        """Return the next scripted label map, whatever the image."""
        return SimpleNamespace(labels=self.outputs.pop(0))


def test_per_sequence_miou(tree: Path):
    """One sequence predicted perfectly, the other as all Sky: mIoU 1 and a hand value."""
    dataset = make_dataset('camvid', tree, 'val')
    assert [sequence_name(p[0]) for p in dataset.pairs] == ['0001TP', '0001TP', '0006R0',
                                                            '0006R0']  # sorted by name
    labels = [dataset.load(i)[1] for i in range(4)]
    predictions = labels[:2] + [np.zeros_like(label) for label in labels[2:]]
    whole, sequences = evaluate_sequences(_ScriptedSegmenter(predictions), dataset)
    assert list(sequences) == list(SEQUENCES)
    assert sequences['0001TP'].mean_iou == 1.0
    # All Sky on 0006R0: Sky IoU = its pixels / all labelled pixels, Building and Road 0.
    sky = sum(int((label == 0).sum()) for label in labels[2:])
    labelled = sum(int((label != 11).sum()) for label in labels[2:])
    assert sequences['0006R0'].mean_iou == pytest.approx((sky / labelled + 0 + 0) / 3)
    # The whole split is the sum of its sequences, and what evaluate_segmenter reports.
    total = evaluate_segmenter(_ScriptedSegmenter(predictions), dataset)
    assert whole.mean_iou == total.mean_iou
    assert whole.pixels == sequences['0001TP'].pixels + sequences['0006R0'].pixels
    # One sequence: one entry, equal to the whole.
    single = make_dataset('camvid', tree, 'val')
    single.pairs = single.pairs[2:]
    whole, sequences = evaluate_sequences(_ScriptedSegmenter(predictions[2:]), single)
    assert list(sequences) == ['0006R0'] and sequences['0006R0'].mean_iou == whole.mean_iou


def test_camvid_holdout_and_sequences(camvid_root: Path):
    """Real CamVid: holding out 0001TP leaves 305 frames to train; val is all 0016E5."""
    train = make_dataset('camvid', camvid_root, 'train')
    rest, held = hold_out(train, ['0001TP'])
    assert len(held['0001TP']) == 62 and len(rest) == len(train) - 62
    assert {sequence_name(p[0]) for p in rest.pairs} == {'0006R0', '0016E5'}
    assert all(p[0].name.startswith('0001TP') for p in held['0001TP'].pairs)
    val = make_dataset('camvid', camvid_root, 'val')
    assert {sequence_name(p[0]) for p in val.pairs} == {'0016E5'}


# End to end: every recipe flag on, resumed and not.

RECIPE = ('--color-jitter', '0.3', '0.3', '0.3', '--rotate', '10', '--class-weighting',
          'median', '--ema', '0.9', '--loss', 'ohem', '--ohem-keep', '0.5',
          '--holdout-sequence', '0006R0')


def _train_argv(data: Path, out: Path, *extra: str) -> List[str]:
    """Arguments of a fast seeded run (64x48, batch 2) with every recipe flag on."""
    return ['train', '--data', str(data), '--out', str(out), '--input-size', '64', '48',
            '--batch-size', '2', '--workers', '0', '--lr', '5e-3', '--seed', '5',
            '--log-interval', '1', '--device', 'cpu', *RECIPE, *extra]


def _load(out: Path) -> dict:
    """Return a run's checkpoint."""
    return torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def recipe_full(tree: Path, tmp_path_factory) -> Path:
    """Train two epochs with every recipe flag on, without interruption."""
    out = tmp_path_factory.mktemp('recipe_full')
    assert main(_train_argv(tree, out, '--epochs', '2')) == 0
    return out


@pytest.fixture(scope='module')
def recipe_resumed(tree: Path, tmp_path_factory) -> Path:
    """Train one epoch with every recipe flag on, then resume to two."""
    out = tmp_path_factory.mktemp('recipe_resumed')
    assert main(_train_argv(tree, out, '--epochs', '1')) == 0
    shutil.copyfile(out / 'checkpoint.pth', out / 'epoch1.pth')
    assert main(_train_argv(tree, out, '--epochs', '2', '--resume',
                            str(out / 'epoch1.pth'))) == 0
    return out


@pytest.mark.slow
def test_recipe_ema_batchnorm_statistics_are_recomputed(tree: Path, recipe_full: Path):
    """The validated average holds its own statistics: a new pass from its weights agrees."""
    saved = checkpoint_enet_weights(_load(recipe_full))
    args = parse_train_flags(*RECIPE, '--input-size', '64', '48', '--batch-size', '2',
                             '--workers', '0', '--seed', '5', data=str(tree))
    train_set, _ = make_datasets(args, (64, 48), (64, 48))
    train_set, _ = hold_out(train_set, args.holdout_sequence)
    loader = make_batchnorm_loader(args, train_set, DistributedEnv(0, 1, 0, torch.device('cpu')))
    network = ENet(train_set.table.num_classes)
    network.load_state_dict(saved)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.fill_(3.0)
            module.running_var.fill_(7.0)
    network = network.to(memory_format=torch.channels_last)
    mean, inv_std = normalization_constants(
        ModelMetadata.from_class_table(train_set.table, (64, 48)), torch.device('cpu'))
    seed_batchnorm_pass(args, loader)
    recompute_batchnorm(network, loader, torch.device('cpu'), torch.channels_last, mean,
                        inv_std)
    recomputed = network.state_dict()
    keys = [k for k in saved if k.endswith(('running_mean', 'running_var'))]
    assert len(keys) > 50
    for key in keys:
        torch.testing.assert_close(saved[key], recomputed[key], rtol=1e-4, atol=1e-5)
    # Not the trained model's statistics either.
    assert not torch.allclose(saved['initial.bn.running_var'],
                              _load(recipe_full)['model']['enet.initial.bn.running_var'])


@pytest.mark.slow
def test_recipe_resume_replays_the_uninterrupted_run(recipe_full: Path, recipe_resumed: Path):
    """Jitter, rotation, OHEM, median weights and the EMA state all resume exactly."""
    full, resumed = _load(recipe_full), _load(recipe_resumed)
    assert [r['loss'] for r in resumed['history']] == [r['loss'] for r in full['history']]
    for key in ('val_miou', 'val_sequence_miou', 'holdout_miou', 'holdout_class_iou'):
        assert resumed['history'][1][key] == full['history'][1][key], key
    assert set(full['ema']) == set(resumed['ema'])
    for key, value in full['ema'].items():
        assert torch.equal(resumed['ema'][key], value), key
    assert int(full['ema']['n_averaged']) == 2 * 2  # 5 training frames, batch 2: 2 steps
    log = (recipe_resumed / 'train.log').read_text()
    assert 'resumed from' in log and 'note: resumed with' not in log
    assert full['args']['ema'] == 0.9 and full['args']['holdout_sequence'] == ['0006R0']
    assert full['args']['color_jitter'] == [0.3, 0.3, 0.3] and full['args']['loss'] == 'ohem'


@pytest.mark.slow
def test_recipe_run_records_and_uses_the_average(recipe_full: Path, tree: Path, tmp_path: Path):
    """Validation, best.safetensors and export use the EMA weights; holdout is scored."""
    state = _load(recipe_full)
    log = (recipe_full / 'train.log').read_text()
    assert log.startswith('held out of training: 0006R0 (5 frames); 5 frames train')
    assert 'Pole 0.00' in log  # median weights: classes absent from training weigh 0
    last = state['history'][-1]
    assert set(last['val_sequence_miou']) == set(SEQUENCES)
    assert set(last['holdout_miou']) == {'holdout:0006R0'}
    assert set(last['holdout_class_iou']['holdout:0006R0']) == set(CAMVID_11.names)
    logged = [json.loads(line) for line in log.splitlines() if line.startswith('{')]
    assert logged[-1]['holdout_miou'] == last['holdout_miou']
    assert 'holdout_class_iou' not in logged[-1]  # per-class detail: history only
    ema_weights = checkpoint_enet_weights(state)
    model_weights = {k[len('enet.'):]: v for k, v in state['model'].items()
                     if k.startswith('enet.')}
    assert set(ema_weights) == set(model_weights)
    assert not all(torch.equal(ema_weights[k], v) for k, v in model_weights.items())
    metadata = ModelMetadata.from_class_table(CAMVID_11, (64, 48))
    val = make_dataset('camvid', tree, 'val')
    scores = evaluate(ema_weights, metadata, val, torch.device('cpu'))
    assert scores.mean_iou == last['val_miou']
    best = load_model_file(recipe_full / 'best.safetensors')
    best_epoch = best.metadata.training['epoch']
    assert best.metadata.val_miou == pytest.approx(max(r['val_miou'] for r in state['history']),
                                                   abs=1e-6)
    assert best.metadata.training['holdout_miou'] == \
        state['history'][best_epoch - 1]['holdout_miou']
    if best_epoch == 2:
        assert all(torch.equal(best.state_dict[k], v) for k, v in ema_weights.items())
    out = tmp_path / 'exported.safetensors'
    assert main(['export', str(recipe_full / 'checkpoint.pth'), '--out', str(out)]) == 0
    exported = load_model_file(out)
    assert all(torch.equal(exported.state_dict[k], v) for k, v in ema_weights.items())
