"""Lovasz-softmax (``--loss lovasz``, ``--loss ce+lovasz``) against the definition it computes."""

import argparse
import json
from pathlib import Path
from typing import List, Set

from enet_ros.labels import CAMVID_11
from enet_training.cli import main
from enet_training.losses import (CrossEntropyLovaszLoss, lovasz_jaccard_gradient,
                                  LovaszSoftmaxLoss)
from enet_training.run_setup import make_criterion
import pytest
from tiny_datasets import make_camvid_tree
import torch
from torch import nn
from train_flags import parse_train_flags

VOID = 11


def _batch(classes: int = 4):
    """Return 2xCx3x5 logits and 2x3x5 labels (classes 0-2 only) with 5 void pixels."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, classes, 3, 5, generator=generator)
    target = torch.randint(0, 3, (2, 3, 5), generator=generator)
    target[1, 2, :] = VOID
    return logits, target


def _jaccard_loss(foreground: List[bool], mistakes: Set[int]) -> float:
    """Return 1 - |intersection| / |union| of a class when ``mistakes`` are the wrong pixels."""
    truth = {i for i, f in enumerate(foreground) if f}
    predicted = (truth - mistakes) | {i for i in mistakes if i not in truth}
    union = truth | predicted
    return 1.0 - len(truth & predicted) / len(union) if union else 0.0


def _lovasz_by_definition(logits: torch.Tensor, target: torch.Tensor) -> float:
    """
    Lovasz-softmax written from the paper's definition, with sets and loops.

    Per class present: sort the labelled pixels by decreasing error; the loss is
    the sum over ``i`` of error ``i`` times the growth of the Jaccard loss when
    pixel ``i`` joins the set of mistakes; mean over the present classes.
    """
    probabilities = logits.softmax(dim=1).permute(1, 0, 2, 3).reshape(logits.shape[1], -1)
    labels = target.reshape(-1).tolist()
    labelled = [i for i, label in enumerate(labels) if label != VOID]
    losses = []
    for c in range(logits.shape[1]):
        foreground = [labels[i] == c for i in labelled]
        if not any(foreground):
            continue
        errors = [abs(float(f) - float(probabilities[c, i]))
                  for f, i in zip(foreground, labelled)]
        order = sorted(range(len(errors)), key=lambda k: -errors[k])
        total, previous, mistakes = 0.0, 0.0, set()
        for k in order:
            mistakes.add(k)
            now = _jaccard_loss(foreground, mistakes)
            total += errors[k] * (now - previous)
            previous = now
        losses.append(total)
    return sum(losses) / len(losses)


def test_lovasz_matches_its_definition():
    """The vectorised loss equals the loops over sets, with void left out."""
    logits, target = _batch()
    expected = _lovasz_by_definition(logits, target)
    assert float(LovaszSoftmaxLoss(VOID)(logits, target)) == pytest.approx(expected, abs=1e-6)


def test_lovasz_is_one_minus_iou_on_hard_predictions():
    """With one-hot probabilities the loss is the mean over present classes of 1 - IoU."""
    _, target = _batch()
    predicted = target.clone()
    predicted[target == VOID] = 3  # whatever is predicted on void does not count
    predicted[0, 0, :2] = 1  # a few mistakes, one of them into class 3 (absent from labels)
    predicted[0, 1, 0] = 3
    logits = nn.functional.one_hot(predicted, 4).permute(0, 3, 1, 2).float() * 100.0
    labelled = target != VOID
    ious = []
    for c in range(3):
        truth, guess = (target == c) & labelled, (predicted == c) & labelled
        ious.append(float((truth & guess).sum()) / float((truth | guess).sum()))
    expected = sum(1.0 - iou for iou in ious) / 3  # class 3 is absent: not averaged
    assert float(LovaszSoftmaxLoss(VOID)(logits, target)) == pytest.approx(expected, abs=1e-6)
    perfect = nn.functional.one_hot(target.clamp(max=3), 4).permute(0, 3, 1, 2).float() * 100.0
    assert float(LovaszSoftmaxLoss(VOID)(perfect, target)) == pytest.approx(0.0, abs=1e-6)


def test_lovasz_gradient_entries():
    """Row sums are the Jaccard loss with every pixel wrong: 1, with or without foreground."""
    rows = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    gradient = lovasz_jaccard_gradient(rows)
    torch.testing.assert_close(gradient.sum(dim=1), torch.ones(3))
    # Row 0: the Jaccard loss of the worst 1, 2, 3, 4 pixels wrong is 1/2, 2/3, 1, 1.
    torch.testing.assert_close(gradient[0], torch.tensor([0.5, 2 / 3 - 0.5, 1 / 3, 0.0]))
    # Row 1, no foreground: the first false positive already makes the IoU 0.
    torch.testing.assert_close(gradient[1], torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_lovasz_void_and_gradients():
    """Void pixels get no gradient; an all-void batch has loss 0 and zero gradients."""
    logits, target = _batch()
    logits.requires_grad_(True)
    LovaszSoftmaxLoss(VOID)(logits, target).backward()
    touched = logits.grad.abs().sum(dim=1) > 0
    assert not touched[target == VOID].any() and touched[target != VOID].all()
    for loss in (LovaszSoftmaxLoss(VOID), CrossEntropyLovaszLoss(None, VOID)):
        logits.grad = None
        value = loss(logits, torch.full_like(target, VOID))
        value.backward()
        assert float(value.detach()) == 0.0 and torch.all(logits.grad == 0)


def test_cross_entropy_plus_lovasz_is_the_sum():
    """ce+lovasz is the class-weighted cross entropy plus the unweighted Lovasz-softmax."""
    logits, target = _batch()
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    expected = (nn.CrossEntropyLoss(weight=weight, ignore_index=VOID)(logits, target)
                + LovaszSoftmaxLoss(VOID)(logits, target))
    torch.testing.assert_close(CrossEntropyLovaszLoss(weight, VOID)(logits, target), expected)


def test_make_criterion_lovasz_needs_no_class_weights():
    """--loss lovasz builds the loss on the table's void id and logs that no weights apply."""
    logged = []
    train_set = argparse.Namespace(table=CAMVID_11)  # no frames: weights are never counted
    loss = make_criterion(parse_train_flags('--loss', 'lovasz'), train_set, torch.device('cpu'),
                          logged.append)
    assert isinstance(loss, LovaszSoftmaxLoss) and loss.ignore_index == CAMVID_11.void_id
    assert logged == ['class weights: none (Lovasz-softmax weighs every class in the batch '
                      'alike)']
    with pytest.raises(SystemExit):
        parse_train_flags('--loss', 'iou')


@pytest.mark.slow
@pytest.mark.parametrize('loss', ['lovasz', 'ce+lovasz'])
def test_training_runs_with_lovasz(loss: str, tmp_path: Path):
    """A one-epoch run trains with the loss, records it, and its loss is finite."""
    data = make_camvid_tree(tmp_path / 'camvid', {'train': 4, 'val': 2})
    out = tmp_path / 'run'
    assert main(['train', '--data', str(data), '--out', str(out), '--input-size', '64', '48',
                 '--batch-size', '2', '--workers', '0', '--epochs', '1', '--seed', '5',
                 '--device', 'cpu', '--loss', loss]) == 0
    state = torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)
    assert state['args']['loss'] == loss
    assert 0.0 < state['history'][-1]['loss'] < 10.0
    log = (out / 'train.log').read_text()
    assert ('class weights: none' in log) == (loss == 'lovasz')
    logged = [json.loads(line) for line in log.splitlines() if line.startswith('{')]
    assert logged[-1]['loss'] == state['history'][-1]['loss']
