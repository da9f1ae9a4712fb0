"""
Training losses beside ``nn.CrossEntropyLoss``: OHEM cross entropy and Lovasz-softmax.

Lovasz-softmax is written here rather than taken from a library: the one that has it
(segmentation_models_pytorch) would bring timm and huggingface_hub into training for
about twenty lines.
"""

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


def lovasz_jaccard_gradient(sorted_foreground: torch.Tensor) -> torch.Tensor:
    """
    Return the Lovasz extension's gradient of the Jaccard loss, per class.

    ``sorted_foreground``: CxP float, 1 where the pixel is of the row's class,
    each row ordered by decreasing error. Entry ``i`` of a row is how much the
    Jaccard loss ``1 - |intersection| / |union|`` of that class grows when the
    ``i``-th worst pixel joins the ``i - 1`` worse ones as a mistake
    (Berman et al. 2018, "The Lovasz-Softmax loss", Algorithm 1). CxP float.
    """
    total = sorted_foreground.sum(dim=1, keepdim=True)
    intersection = total - sorted_foreground.cumsum(dim=1)
    # >= 1 from the first pixel on: it is either foreground (then total >= 1) or adds 1.
    union = total + (1.0 - sorted_foreground).cumsum(dim=1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


class LovaszSoftmaxLoss(nn.Module):
    """
    Lovasz-softmax: a convex surrogate of ``1 - IoU``, averaged over classes.

    Per class ``c`` present among the batch's labelled pixels (void left out),
    the errors ``|[y = c] - softmax(x)_c|`` sorted in decreasing order, dotted
    with :func:`lovasz_jaccard_gradient` of the sorted labels; the loss is the
    mean over those classes (each weighs the same, so no class weights). The
    batch is one set of pixels, as the IoU is scored over a split. A batch
    without labelled pixels has loss 0.
    """

    def __init__(self, ignore_index: int = -100):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the loss of NxCxHxW float logits against NxHxW int64 labels (a scalar)."""
        classes = logits.shape[1]
        probabilities = logits.float().softmax(dim=1).permute(1, 0, 2, 3).reshape(classes, -1)
        target = target.reshape(-1)
        labelled = target != self.ignore_index
        probabilities, target = probabilities[:, labelled], target[labelled]
        if target.numel() == 0:
            return logits.sum() * 0.0
        foreground = (target.unsqueeze(0) == torch.arange(classes, device=target.device)
                      .unsqueeze(1)).float()
        errors, order = (foreground - probabilities).abs().sort(dim=1, descending=True)
        gradient = lovasz_jaccard_gradient(foreground.gather(1, order))
        per_class = (errors * gradient).sum(dim=1)
        present = foreground.sum(dim=1) > 0
        return per_class[present].mean()


class CrossEntropyLovaszLoss(nn.Module):
    """The sum of class-weighted cross entropy (void ignored) and :class:`LovaszSoftmaxLoss`."""

    def __init__(self, weight: Optional[torch.Tensor] = None, ignore_index: int = -100):
        super().__init__()
        self.cross_entropy = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
        self.lovasz = LovaszSoftmaxLoss(ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the loss of NxCxHxW float logits against NxHxW int64 labels (a scalar)."""
        if not bool((target != self.lovasz.ignore_index).any()):
            return logits.sum() * 0.0
        return self.cross_entropy(logits, target) + self.lovasz(logits, target)
