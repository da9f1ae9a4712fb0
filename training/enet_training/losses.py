"""Training losses: class-weighted cross entropy and its online hard example mining form."""

from typing import Optional

import torch
from torch import nn
import torch.nn.functional as F


def ohem_keep_count(labelled: int, keep: float) -> int:
    """Return how many of ``labelled`` pixels OHEM averages: ``floor(keep * labelled)``, >= 1."""
    return max(1, int(keep * labelled))


class OhemCrossEntropyLoss(nn.Module):
    """
    Cross entropy averaged over only the hardest pixels of the batch (OHEM).

    Per pixel, the class-weighted cross entropy ``w_y * -log softmax(x)_y``;
    pixels labelled ``ignore_index`` (void) are left out. Of the ``n``
    labelled pixels of the batch, the :func:`ohem_keep_count` ``(n, keep)``
    with the largest loss are kept and averaged as ``nn.CrossEntropyLoss``
    averages: the sum of their losses over the sum of their class weights
    (a plain mean without weights). ``keep`` 1 is thus plain cross entropy.
    A batch without labelled pixels has loss 0.
    """

    def __init__(self, weight: Optional[torch.Tensor] = None, ignore_index: int = -100,
                 keep: float = 0.25):
        super().__init__()
        if not 0 < keep <= 1:
            raise ValueError(f'OHEM keep fraction {keep}: must be in (0, 1]')
        self.register_buffer('weight', weight)
        self.ignore_index = ignore_index
        self.keep = keep

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the loss of NxCxHxW float logits against NxHxW int64 labels (a scalar)."""
        losses = F.cross_entropy(logits, target, weight=self.weight,
                                 ignore_index=self.ignore_index, reduction='none')
        labelled = target != self.ignore_index
        losses, classes = losses[labelled], target[labelled]
        if losses.numel() == 0:
            return logits.sum() * 0.0
        hardest, index = losses.topk(ohem_keep_count(losses.numel(), self.keep), sorted=False)
        if self.weight is None:
            return hardest.mean()
        return hardest.sum() / self.weight[classes[index]].sum()
