"""Test helper: write model files from randomly initialised ENets."""

from pathlib import Path
from typing import Tuple

from enet_ros.labels import CAMVID_11, ClassTable
from enet_ros.model import ENet
from enet_ros.model_file import ModelMetadata, save_model_file
import numpy as np
import torch


def random_enet(num_classes: int = CAMVID_11.num_classes, seed: int = 0) -> ENet:
    """
    Build a seeded random ENet in eval mode with its BatchNorm statistics perturbed.

    Perturbing the running statistics makes the random network's outputs vary
    across the image, so label maps are not constant.
    """
    torch.manual_seed(seed)
    model = ENet(num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def overflowing_fp16_enet(num_classes: int = CAMVID_11.num_classes, seed: int = 0) -> ENet:
    """
    Make a :func:`random_enet` whose folded ``regular1_1.branch.2`` convolution overflows fp16.

    In ``regular1_1``'s branch the first BatchNorm's output is scaled by 1e-3
    (so the middle convolution's input is small) and the middle BatchNorm's
    running_var by 1e-6 (tiny), its gamma and beta by 1e4; the last
    BatchNorm's statistics undo the 1e4 (PReLU is positively homogeneous).
    The network computes nearly the same function with activations in fp16's
    range, but folding the middle BatchNorm gives weights up to ~2.6e5 >
    65504: a plain fp16 cast of the folded network has infinite weights.
    """
    model = random_enet(num_classes, seed)
    small, large = 1e-3, 1e4
    branch = model.regular1_1.branch
    first, middle, last = branch[1], branch[4], branch[7]
    with torch.no_grad():
        first.weight.mul_(small)
        first.bias.mul_(small)
        middle.running_mean.mul_(small)
        middle.running_var.mul_(small * small)
        middle.weight.mul_(large)
        middle.bias.mul_(large)
        last.running_mean.mul_(large)
        last.running_var.mul_(large * large)
    return model


def write_random_model(path: Path, table: ClassTable = CAMVID_11,
                       input_size: Tuple[int, int] = (480, 360), seed: int = 0) -> Path:
    """Save :func:`random_enet` for ``table`` as a model file with a ``input_size`` input."""
    model = random_enet(table.num_classes, seed)
    metadata = ModelMetadata.from_class_table(table, input_size)
    return save_model_file(path, model, metadata)


def label_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of equal pixels of two HxW uint8 label maps of one shape."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return float((a == b).mean())
