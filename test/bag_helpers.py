"""Test helpers for the bag tools: tiny generated datasets and a Segmenter test double."""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import cv2
from enet_ros.labels import CAMVID_11
from enet_ros.model_file import ModelMetadata
import numpy as np
import pytest

WIDTH, HEIGHT = 64, 48
VOID = CAMVID_11.void_id
START_S = 1000.0
RATE_HZ = 10.0


@pytest.fixture(scope='module')
def quick_cpu():
    """
    Run torch on one thread, without torch.compile, on the torch backend while a module runs.

    The machine is shared (two-thread inference stalls behind other work);
    compiling the network for each tool invocation, or building it for
    OpenVINO (auto's choice without AVX-512: about 5 s a Segmenter), would
    dominate the tests; the tools' logic does not depend on any of them (the
    backends are compared in test_cpu_backends.py).
    """
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        torch.set_num_threads(1)
        patch.setenv('ENET_ROS_COMPILE', '0')
        patch.setenv('ENET_ROS_BACKEND', 'torch')
        yield
        torch.set_num_threads(threads)


def subprocess_env(env: Dict[str, str]) -> Dict[str, str]:
    """Return ``env`` for a tool subprocess: one torch thread, no torch.compile."""
    return dict(env, OMP_NUM_THREADS='1', ENET_ROS_COMPILE='0')


def expected_stamps(count: int, start_s: float = START_S, rate_hz: float = RATE_HZ) -> List[int]:
    """Return the stamps dataset_to_bag gives ``count`` frames."""
    start = int(round(start_s * 1e9))
    return [start + int(round(i * 1e9 / rate_hz)) for i in range(count)]


def make_labels(seed: int) -> np.ndarray:
    """Make HxW uint8 CamVid labels: random class blocks (Road always present), some void."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, CAMVID_11.num_classes, size=(HEIGHT // 8, WIDTH // 8))
    labels = np.kron(blocks, np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
    labels[HEIGHT // 2:, :WIDTH // 4] = CAMVID_11.names.index('Road')
    labels[:3, :] = VOID
    return labels


def make_image(labels: np.ndarray, seed: int) -> np.ndarray:
    """HxWx3 uint8 RGB: the class colours of ``labels`` plus noise."""
    rng = np.random.default_rng(seed + 1000)
    palette = np.zeros((256, 3), dtype=np.int64)
    palette[:CAMVID_11.num_classes] = CAMVID_11.colors
    noisy = palette[labels] + rng.integers(-30, 31, size=labels.shape + (3,))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def write_png(path: Path, array: np.ndarray) -> None:
    """Write an HxW or HxWx3 RGB uint8 array as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = array[:, :, ::-1] if array.ndim == 3 else array
    assert cv2.imwrite(str(path), np.ascontiguousarray(data))


def make_camvid(root: Path, count: int = 4, split: str = 'val',
                labels_fn: Callable[[int], np.ndarray] = make_labels,
                with_labels: Optional[List[bool]] = None) -> Dict[str, Tuple[np.ndarray,
                                                                             np.ndarray]]:
    """Write a CamVid-layout split of ``count`` frames; return name -> (RGB image, labels)."""
    frames = {}
    for index in range(count):
        name = f'0016E5_{index:05d}'
        labels = labels_fn(index)
        image = make_image(labels, index)
        write_png(root / split / f'{name}.png', image)
        if with_labels is None or with_labels[index]:
            write_png(root / f'{split}annot' / f'{name}.png', labels)
        frames[name] = (image, labels)
    return frames


def camvid_metadata() -> ModelMetadata:
    """Return CamVid metadata for test doubles (64x48 network input)."""
    return ModelMetadata.from_class_table(CAMVID_11, (WIDTH, HEIGHT))


@dataclass(frozen=True)
class FakeSegmentation:
    """Result of the test double: HxW uint8 labels."""

    labels: np.ndarray


class EchoSegmenterDouble:
    """
    TEST DOUBLE of the Segmenter interface (``metadata``, ``segment``); runs no network.

    It looks the (RGB) image up in a table of known images and returns that
    image's ground truth passed through ``confuse`` (identity: a perfect model).
    """

    def __init__(self, frames: Dict[str, Tuple[np.ndarray, np.ndarray]],
                 confuse: Callable[[np.ndarray], np.ndarray] = lambda labels: labels):
        self.metadata = camvid_metadata()
        self.table = {image.tobytes(): labels for image, labels in frames.values()}
        self.confuse = confuse
        self.calls = 0

    def segment(self, image: np.ndarray, bgr: bool = False) -> FakeSegmentation:
        """Return the confused ground truth of a known HxWx3 uint8 image."""
        self.calls += 1
        rgb = np.ascontiguousarray(image[:, :, ::-1] if bgr else image)
        truth = self.table[rgb.tobytes()]
        return FakeSegmentation(self.confuse(truth).astype(np.uint8))
