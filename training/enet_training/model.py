"""The network as training sees it: ENet plus the encoder head of two-stage training."""

from enet_ros.model import ENet
import torch
from torch import nn


class EncoderClassifier(nn.Module):
    """ENet's encoder with a 1x1 classifier, for the first stage of two-stage training."""

    def __init__(self, enet: ENet):
        super().__init__()
        self.enet = enet
        self.classifier = nn.Conv2d(128, enet.num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Nx3xHxW to NxCx(H/8)x(W/8) logits (H, W multiples of 8)."""
        return self.classifier(self.enet.encode(x)[0])


class TrainingModel(nn.Module):
    """ENet plus the encoder head; ``forward(x, encoder_only)`` picks the stage."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.enet = ENet(num_classes)
        self.encoder_head = EncoderClassifier(self.enet)

    def forward(self, x: torch.Tensor, encoder_only: bool = False) -> torch.Tensor:
        """Logits at 1/8 resolution (encoder stage) or full resolution."""
        return self.encoder_head(x) if encoder_only else self.enet(x)
