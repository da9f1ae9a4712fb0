"""Metrics: confusion matrix conventions and scores on hand-built cases."""

import math

from enet_ros.metrics import ConfusionMatrix, scores_from_matrix
import numpy as np
import pytest
import torch


def _matrix(prediction, target, num_classes=3, void_id=3) -> ConfusionMatrix:
    matrix = ConfusionMatrix(num_classes, void_id)
    matrix.update(np.array(prediction), np.array(target))
    return matrix


def test_counts_rows_truth_columns_prediction():
    """matrix[t, p] counts pixels of ground truth t predicted as p."""
    matrix = _matrix([0, 1, 1, 2, 2, 0], [0, 1, 2, 2, 0, 0])
    expected = [[2, 0, 1],
                [0, 1, 0],
                [0, 1, 1]]
    np.testing.assert_array_equal(matrix.matrix, expected)


def test_void_ignored():
    """Ground-truth void pixels (and ids past C) are not counted, whatever the prediction."""
    matrix = _matrix([0, 1, 2, 1, 0], [0, 3, 3, 255, 1], num_classes=3, void_id=3)
    np.testing.assert_array_equal(matrix.matrix, [[1, 0, 0], [1, 0, 0], [0, 0, 0]])
    assert matrix.scores().pixels == 2


def test_void_inside_class_range_ignored():
    """A void id inside [0, C) is ignored in the ground truth, and is no class predicted."""
    matrix = _matrix([0, 1, 1, 2, 0], [0, 0, 1, 1, 2], num_classes=3, void_id=0)
    np.testing.assert_array_equal(matrix.matrix, [[0, 0, 0], [0, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(matrix.unpredicted, [0, 0, 1])
    tensor = ConfusionMatrix(3, 0)
    tensor.update(torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2]))
    np.testing.assert_array_equal(tensor.matrix, matrix.matrix)
    np.testing.assert_array_equal(tensor.unpredicted, matrix.unpredicted)


@pytest.mark.parametrize('as_tensor', [False, True])
def test_pixels_predicted_as_no_class_are_misses(as_tensor):
    """A labelled pixel predicted void (min_confidence) or out of range misses its class."""
    # truth:      0 0 1 1 2 2 3(void)
    # prediction: 0 3 1 9 2 2 3
    prediction, target = [0, 3, 1, 9, 2, 2, 3], [0, 0, 1, 1, 2, 2, 3]
    matrix = ConfusionMatrix(3, 3)
    convert = torch.tensor if as_tensor else np.array
    matrix.update(convert(prediction), convert(target))
    np.testing.assert_array_equal(matrix.matrix, np.diag([1, 1, 2]))
    np.testing.assert_array_equal(matrix.unpredicted, [1, 1, 0])
    scores = matrix.scores()
    np.testing.assert_allclose(scores.iou, [1 / 2, 1 / 2, 1])
    np.testing.assert_allclose(scores.class_accuracy, [1 / 2, 1 / 2, 1])
    assert scores.global_accuracy == pytest.approx(4 / 6)
    assert (scores.pixels, scores.unpredicted) == (6, 2)
    assert scores.as_dict()['unpredicted_pixels'] == 2
    kept = matrix.scores(kept_only=True)
    np.testing.assert_allclose(kept.iou, [1, 1, 1])
    assert (kept.pixels, kept.unpredicted) == (4, 0)


def test_perfect_prediction():
    """Prediction equal to the ground truth scores 1.0 everywhere."""
    target = np.array([[0, 1, 2], [2, 1, 0]])
    scores = _matrix(target, target).scores()
    np.testing.assert_array_equal(scores.iou, [1.0, 1.0, 1.0])
    assert scores.mean_iou == 1.0
    assert scores.global_accuracy == 1.0
    assert scores.mean_class_accuracy == 1.0


def test_hand_computed_scores():
    """IoU, class accuracy, global accuracy and their means, by hand."""
    # truth:      0 0 0 0 1 1 2 2
    # prediction: 0 0 0 1 1 2 2 2
    scores = _matrix([0, 0, 0, 1, 1, 2, 2, 2], [0, 0, 0, 0, 1, 1, 2, 2]).scores()
    # class 0: TP 3, GT 4, predicted 3 -> IoU 3/4, acc 3/4
    # class 1: TP 1, GT 2, predicted 2 -> IoU 1/3, acc 1/2
    # class 2: TP 2, GT 2, predicted 3 -> IoU 2/3, acc 1
    np.testing.assert_allclose(scores.iou, [3 / 4, 1 / 3, 2 / 3])
    np.testing.assert_allclose(scores.class_accuracy, [3 / 4, 1 / 2, 1.0])
    assert scores.mean_iou == pytest.approx((3 / 4 + 1 / 3 + 2 / 3) / 3)
    assert scores.mean_class_accuracy == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    assert scores.global_accuracy == pytest.approx(6 / 8)
    assert scores.pixels == 8


def test_absent_class_is_nan_and_excluded():
    """A class neither in the ground truth nor predicted has no IoU and no weight in the mean."""
    scores = _matrix([0, 0, 1, 1], [0, 0, 1, 0]).scores()
    assert math.isnan(scores.iou[2]) and math.isnan(scores.class_accuracy[2])
    np.testing.assert_allclose(scores.iou[:2], [2 / 3, 1 / 2])
    assert scores.mean_iou == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert scores.mean_class_accuracy == pytest.approx((2 / 3 + 1) / 2)


def test_predicted_but_absent_class_scores_zero():
    """A class predicted but absent from the ground truth has IoU 0 and counts in the mean."""
    scores = _matrix([0, 0, 2, 1], [0, 0, 0, 1]).scores()
    assert scores.iou[2] == 0.0
    assert math.isnan(scores.class_accuracy[2])  # no ground-truth pixel to be accurate on
    assert scores.mean_iou == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_empty_matrix():
    """No pixels at all: every score is NaN, and as_dict turns NaN into None."""
    scores = ConfusionMatrix(2).scores()
    assert math.isnan(scores.mean_iou) and math.isnan(scores.global_accuracy)
    report = scores.as_dict(['a', 'b'])
    assert report['mean_iou'] is None and report['per_class_iou'] == {'a': None, 'b': None}
    assert report['pixels'] == 0


def test_as_dict():
    """as_dict names the classes and keeps the fractions."""
    report = _matrix([0, 0, 2, 1], [0, 0, 0, 1]).scores().as_dict(['x', 'y', 'z'])
    assert report['per_class_iou'] == {'x': pytest.approx(2 / 3), 'y': 1.0, 'z': 0.0}
    assert report['per_class_accuracy']['z'] is None
    assert report['global_accuracy'] == pytest.approx(3 / 4)


def test_torch_and_numpy_give_the_same_matrix():
    """Tensors, arrays and mixtures of the two accumulate identical matrices."""
    rng = np.random.default_rng(0)
    prediction = rng.integers(0, 5, (2, 17, 23)).astype(np.uint8)
    target = rng.integers(0, 6, (2, 17, 23)).astype(np.uint8)  # 5 is void
    reference = ConfusionMatrix(5, 5)
    reference.update(prediction, target)
    assert reference.matrix.sum() == np.count_nonzero(target != 5)
    for pred, true in ((torch.from_numpy(prediction), torch.from_numpy(target)),
                       (torch.from_numpy(prediction).long(), target),
                       (prediction, torch.from_numpy(target).long())):
        other = ConfusionMatrix(5, 5)
        other.update(pred, true)
        np.testing.assert_array_equal(other.matrix, reference.matrix)


def test_updates_accumulate():
    """Two updates equal one update of both."""
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(np.array([0, 1]), np.array([0, 2]))
    a.update(np.array([2]), np.array([2]))
    b.update(np.array([0, 1, 2]), np.array([0, 2, 2]))
    np.testing.assert_array_equal(a.matrix, b.matrix)


def test_shape_mismatch_and_bad_size():
    """Mismatched shapes and zero classes are errors."""
    with pytest.raises(ValueError, match='shape'):
        ConfusionMatrix(3).update(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError):
        ConfusionMatrix(0)


def test_scores_from_matrix():
    """scores_from_matrix works on a matrix given directly."""
    scores = scores_from_matrix(np.array([[5, 5], [0, 10]]))
    np.testing.assert_allclose(scores.iou, [5 / 10, 10 / 15])
    assert scores.global_accuracy == pytest.approx(15 / 20)
