"""
The device pipeline (``--pipeline device``) against the per-sample OpenCV one.

The same draws give the same pixels (labels exactly, images to OpenCV's
fixed-point rounding); the draws follow the same distributions; labels stay
aligned with the image, gain no ids, and padding is void; one seeded step
agrees with the DataLoader's; a run trains, stops on --time-limit and resumes.
"""

from pathlib import Path
import random
from typing import List, Tuple

from enet_training import transforms
from enet_training.cli import main
from enet_training.datasets import make_dataset, SegmentationDataset
from enet_training.device_pipeline import (apply_draws, AugmentConfig, device_batches,
                                           draw_params, Draws)
from enet_training.run_setup import scaled_lr
from enet_training.transforms import collate, TrainTransform
import numpy as np
import pytest
from tiny_datasets import make_camvid_tree
import torch
from torch.utils.data import DataLoader, RandomSampler
from train_flags import parse_train_flags

VOID = 11
SIZE = (96, 72)  # width, height of the synthetic frames
CROP = (64, 48)


class ScriptedRandom:
    """Stand-in for the ``random`` module in transforms: returns one sample's given draws."""

    def __init__(self, values: List[float]):
        self.values = list(values)

    def _next(self, *_):
        return self.values.pop(0)

    uniform = randint = random = _next


class RecordingRandom:
    """The ``random`` module, recording what TrainTransform draws from it."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.calls: List[Tuple[str, tuple, float]] = []

    def uniform(self, low, high):
        value = self.rng.uniform(low, high)
        self.calls.append(('uniform', (low, high), value))
        return value

    def randint(self, low, high):
        value = self.rng.randint(low, high)
        self.calls.append(('randint', (low, high), value))
        return value

    def random(self):
        value = self.rng.random()
        self.calls.append(('random', (), value))
        return value


def _frame(seed: int, size=SIZE, ids=(0, 3, 7)) -> Tuple[np.ndarray, np.ndarray]:
    """Return a smooth HxWx3 uint8 image and HxW labels of ``ids`` with a void patch."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 255 // width), (y * 255 // height),
                      rng.integers(0, 256, (height, width))], axis=-1).astype(np.uint8)
    label = np.asarray(ids, dtype=np.uint8)[rng.integers(0, len(ids), (height // 6, width // 6))]
    label = np.kron(label, np.ones((6, 6), dtype=np.uint8))
    label[:8, :8] = VOID
    return image, label


def _cv2_output(frame, config: AugmentConfig, draws: Draws, index: int):
    """Return TrainTransform's output for sample ``index`` of ``draws`` (``random`` scripted)."""
    values = [float(draws.scale[index]), int(draws.top[index]), int(draws.left[index]),
              0.0 if draws.flip[index] else 0.9]
    values += [float(f) for f, x in zip(draws.jitter[index], config.color_jitter) if x]
    transform = TrainTransform((config.crop_width, config.crop_height), config.void_id,
                               config.scale_range, config.flip, input_size=SIZE,
                               color_jitter=config.color_jitter)
    saved = transforms.random
    transforms.random = ScriptedRandom(values)
    try:
        return transform(*frame)
    finally:
        transforms.random = saved


def _device_output(frames, config: AugmentConfig, draws: Draws):
    images = torch.from_numpy(np.stack([f[0] for f in frames]))
    labels = torch.from_numpy(np.stack([f[1] for f in frames]))
    out_images, out_labels = apply_draws(images, labels, draws, config)
    return out_images.permute(0, 2, 3, 1).numpy(), out_labels.numpy()


@pytest.mark.parametrize('jitter', [(0.0, 0.0, 0.0), (0.3, 0.3, 0.3)])
def test_same_draws_give_opencvs_pixels(jitter):
    """Labels equal OpenCV's nearest exactly; images within OpenCV's fixed-point rounding."""
    config = AugmentConfig(*CROP, VOID, (0.5, 2.0), True, jitter)
    torch.manual_seed(1)
    frames = [_frame(seed) for seed in range(24)]
    draws = draw_params(len(frames), SIZE, config)
    assert (draws.width < CROP[0]).any() and draws.flip.any() and not draws.flip.all()
    images, labels = _device_output(frames, config, draws)
    differences = []
    for index, frame in enumerate(frames):
        image, label = _cv2_output(frame, config, draws, index)
        np.testing.assert_array_equal(labels[index], label)
        differences.append(images[index].astype(int) - image.astype(int))
    difference = np.abs(np.stack(differences))
    # OpenCV blends uint8 in 11-bit fixed point: a level off here and there (the jitter's
    # contrast and saturation can make that two), never more.
    assert difference.max() <= (2 if any(jitter) else 1) and difference.mean() < 0.2


def test_same_draws_on_camvid_frames(camvid_root: Path):
    """Four CamVid frames at 480x360: the same agreement with OpenCV as the synthetic ones."""
    dataset = make_dataset('camvid', camvid_root, 'train')
    frames = [dataset.load(i) for i in (0, 100, 200, 300)]
    config = AugmentConfig(480, 360, VOID, (0.75, 1.5), True, (0.0, 0.0, 0.0))
    torch.manual_seed(2)
    draws = draw_params(len(frames), (480, 360), config)
    images = torch.from_numpy(np.stack([f[0] for f in frames]))
    labels = torch.from_numpy(np.stack([f[1] for f in frames]))
    out_images, out_labels = apply_draws(images, labels, draws, config)
    transform = TrainTransform((480, 360), VOID, (0.75, 1.5), True, input_size=(480, 360))
    for index, frame in enumerate(frames):
        saved = transforms.random
        transforms.random = ScriptedRandom([float(draws.scale[index]), int(draws.top[index]),
                                            int(draws.left[index]),
                                            0.0 if draws.flip[index] else 0.9])
        try:
            image, label = transform(*frame)
        finally:
            transforms.random = saved
        np.testing.assert_array_equal(out_labels[index].numpy(), label)
        difference = np.abs(out_images[index].permute(1, 2, 0).numpy().astype(int) - image)
        assert difference.max() <= 1 and difference.mean() < 0.2


def _old_draws(count: int, config: AugmentConfig, seed: int = 5):
    """Return the draws TrainTransform makes for ``count`` frames, one tuple per frame."""
    recorder = RecordingRandom(seed)
    transform = TrainTransform(CROP, VOID, config.scale_range, config.flip, input_size=SIZE,
                               color_jitter=config.color_jitter)
    frame = _frame(0)
    saved = transforms.random
    transforms.random = recorder
    try:
        for _ in range(count):
            transform(*frame)
    finally:
        transforms.random = saved
    rows = []
    calls = iter(recorder.calls)
    for _ in range(count):
        scale = next(calls)[2]
        top_call, left_call = next(calls), next(calls)
        flip = next(calls)[2] < 0.5
        jitter = [next(calls)[2] if x else 1.0 for x in config.color_jitter]
        rows.append((scale, top_call[2], top_call[1][1], left_call[2], left_call[1][1], flip,
                     jitter))
    return rows


def _new_draws(count: int, config: AugmentConfig, seed: int = 5):
    torch.manual_seed(seed)
    draws = draw_params(count, SIZE, config)
    top_range = torch.clamp(draws.height, min=CROP[1]) - CROP[1]
    left_range = torch.clamp(draws.width, min=CROP[0]) - CROP[0]
    return [(float(draws.scale[i]), int(draws.top[i]), int(top_range[i]), int(draws.left[i]),
             int(left_range[i]), bool(draws.flip[i]), draws.jitter[i].tolist())
            for i in range(count)]


def test_draws_follow_the_per_sample_distributions():
    """Scale, crop corner, flip and jitter: same ranges and moments over 4000 draws each."""
    config = AugmentConfig(*CROP, VOID, (0.75, 1.5), True, (0.3, 0.2, 0.1))
    count = 4000
    for rows in (_old_draws(count, config), _new_draws(count, config)):
        scale = np.array([r[0] for r in rows])
        assert 0.75 <= scale.min() < 0.76 and 1.49 < scale.max() <= 1.5
        assert abs(scale.mean() - 1.125) < 0.01 and abs(scale.std() - 0.75 / 12 ** 0.5) < 0.01
        for value, bound in ((1, 2), (3, 4)):  # top and left, each in [0, its range]
            position = np.array([r[value] for r in rows])
            span = np.array([r[bound] for r in rows])
            assert (position >= 0).all() and (position <= span).all()
            assert (position == 0).sum() > 20 and (position == span).sum() > 20
            fraction = position[span > 0] / span[span > 0]
            assert abs(fraction.mean() - 0.5) < 0.02
        assert abs(np.mean([r[5] for r in rows]) - 0.5) < 0.03
        jitter = np.array([r[6] for r in rows])
        for channel, amount in enumerate(config.color_jitter):
            low, high = jitter[:, channel].min(), jitter[:, channel].max()
            assert 1 - amount <= low and high <= 1 + amount
            assert abs(jitter[:, channel].mean() - 1) < 0.01
            assert abs(jitter[:, channel].std() - amount / 3 ** 0.5) < 0.01
    # Off parts draw nothing and stay neutral.
    off = _new_draws(200, AugmentConfig(*CROP, VOID, (1.0, 1.0), False, (0.0, 0.0, 0.0)))
    assert all(r[0] == 1.0 and not r[5] and r[6] == [1.0, 1.0, 1.0] for r in off)


def _position_frame() -> Tuple[np.ndarray, np.ndarray]:
    """Return (image, label) whose 8x8 blocks encode their position: label = bx + 12 by."""
    width, height = SIZE
    y, x = np.mgrid[0:height, 0:width]
    bx, by = x // 8, y // 8
    label = (bx + 12 * by).astype(np.uint8)
    image = np.stack([20 * bx + 10, 25 * by + 20, np.full_like(bx, 7)], -1).astype(np.uint8)
    return image, label


def test_labels_stay_aligned_with_the_image():
    """After scale, crop and flip, each pixel's colour names the block its label names."""
    void = 200
    config = AugmentConfig(*CROP, void, (0.5, 2.0), True, (0.0, 0.0, 0.0))
    image, label = _position_frame()
    torch.manual_seed(3)
    batch = 64
    draws = draw_params(batch, SIZE, config)
    out_images, out_labels = apply_draws(torch.from_numpy(image)[None].repeat(batch, 1, 1, 1),
                                         torch.from_numpy(label)[None].repeat(batch, 1, 1),
                                         draws, config)
    red = out_images[:, 0].long()
    green = out_images[:, 1].long()
    exact = ((red - 10) % 20 == 0) & ((green - 20) % 25 == 0) & (out_labels != void)
    colour_block = (red - 10) // 20 + 12 * ((green - 20) // 25)
    agree = (colour_block == out_labels)[exact].float().mean()
    assert exact.float().mean() > 0.5 and agree > 0.98, float(agree)
    # Flipped samples read right to left: the label's block column falls along a row.
    for index in range(batch):
        row = out_labels[index, 0]
        row = row[row != void] % 12
        steps = np.sign(np.diff(row.numpy().astype(int)))
        assert (steps <= 0).all() if draws.flip[index] else (steps >= 0).all()


def test_labels_gain_no_ids_and_padding_is_void():
    """Nearest-neighbour labels hold only the frame's ids; padded pixels are void and black."""
    config = AugmentConfig(*CROP, VOID, (0.4, 0.6), True, (0.0, 0.0, 0.0))
    frames = [_frame(seed) for seed in range(8)]
    torch.manual_seed(4)
    draws = draw_params(len(frames), SIZE, config)
    images, labels = _device_output(frames, config, draws)
    assert set(np.unique(labels)) <= {0, 3, 7, VOID}
    for index in range(len(frames)):
        height, width = int(draws.height[index]), int(draws.width[index])
        assert height < CROP[1] and width < CROP[0]
        columns = np.arange(CROP[0])
        if draws.flip[index]:
            columns = columns[::-1]
        padded = (np.arange(CROP[1])[:, None] >= height) | (columns[None, :] >= width)
        assert (labels[index][padded] == VOID).all() and (images[index][padded] == 0).all()
        assert (labels[index][~padded] != VOID).mean() > 0.9


def _identity_dataset(root: Path) -> SegmentationDataset:
    dataset = make_dataset('camvid', root, 'train')
    dataset.transform = TrainTransform((64, 48), VOID, (1.0, 1.0), flip=False,
                                       input_size=(64, 48))
    return dataset


def test_one_seeded_step_matches_the_loader(tmp_path: Path):
    """Without random changes both pipelines give the same batch, loss and weights."""
    from enet_training.model import TrainingModel
    from enet_ros.segmenter import normalize
    dataset = _identity_dataset(make_camvid_tree(tmp_path / 'camvid', {'train': 8}))
    batches = []
    for device_pipeline in (False, True):
        generator = torch.Generator().manual_seed(7)
        sampler = RandomSampler(dataset, generator=generator)
        if device_pipeline:
            loader = device_batches(dataset, torch.device('cpu'), 4, sampler)
        else:
            loader = DataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=collate,
                                drop_last=True)
        assert len(loader) == 2
        batches.append(next(iter(loader)))
    (old_images, old_labels), (new_images, new_labels) = batches
    assert torch.equal(old_images, new_images) and torch.equal(old_labels, new_labels)
    results = []
    for images, labels in batches:
        images = images.contiguous(memory_format=torch.channels_last)  # as train_step lays it
        torch.manual_seed(0)
        model = TrainingModel(12)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        mean = torch.full((1, 3, 1, 1), 128.0)
        loss = torch.nn.functional.cross_entropy(model(normalize(images, mean, 1 / mean)),
                                                 labels, ignore_index=VOID)
        loss.backward()
        optimizer.step()
        results.append((loss.item(), model.enet.state_dict()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for name, value in results[0][1].items():
        torch.testing.assert_close(value, results[1][1][name])


def test_lr_scaling_rules():
    """--lr-scaling: none keeps --lr, linear and sqrt scale the global batch against the base."""
    assert scaled_lr(parse_train_flags('--batch-size', '20')) == 5e-4
    assert scaled_lr(parse_train_flags('--batch-size', '20', '--lr-scaling', 'linear')) == \
        pytest.approx(2e-3)
    assert scaled_lr(parse_train_flags('--batch-size', '10', '--lr-scaling', 'sqrt',
                                       '--lr-base-batch', '5'), world_size=2) == \
        pytest.approx(1e-3)


def test_device_pipeline_refuses_rotation():
    """--pipeline device with --rotate stops with one line naming --pipeline loader."""
    from enet_training.device_pipeline import uses_device_pipeline
    with pytest.raises(SystemExit, match='--pipeline loader'):
        uses_device_pipeline(parse_train_flags('--pipeline', 'device', '--rotate', '5'),
                             torch.device('cpu'))
    assert not uses_device_pipeline(parse_train_flags('--rotate', '5'), torch.device('cuda'))
    assert uses_device_pipeline(parse_train_flags(), torch.device('cuda'))
    assert not uses_device_pipeline(parse_train_flags(), torch.device('cpu'))


def test_device_run_stops_on_time_limit_and_resumes(tmp_path: Path, monkeypatch):
    """enet-train train --pipeline device: EMA pass included; --time-limit stops after an epoch."""
    monkeypatch.setenv('ENET_ROS_COMPILE', '0')
    root = make_camvid_tree(tmp_path / 'camvid', {'train': 8, 'val': 2})
    out = tmp_path / 'run'
    argv = ['train', '--data', str(root), '--out', str(out), '--input-size', '64', '48',
            '--batch-size', '4', '--workers', '0', '--seed', '3', '--device', 'cpu',
            '--pipeline', 'device', '--ema', '0.9', '--color-jitter', '0.2', '0.2', '0.2',
            '--epochs', '3', '--time-limit', '0.001', '--resume', 'auto']
    assert main(argv) == 0
    log = (out / 'train.log').read_text()
    assert 'input pipeline: device' in log and 'stopping after epoch 1 of 3' in log
    state = torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)
    assert len(state['history']) == 1
    assert main(argv[:-4] + ['--resume', 'auto']) == 0
    history = torch.load(out / 'checkpoint.pth', map_location='cpu',
                         weights_only=True)['history']
    assert [r['epoch'] for r in history] == [1, 2, 3]
    assert all(np.isfinite(r['loss']) for r in history) and 'val_miou' in history[-1]
