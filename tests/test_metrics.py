import numpy as np
import pytest

from helpers import metrics as M

# 2 targets x 2 bias values; class 0 aligned with bias 0, class 1 with bias 1.
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
B = np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 0])
P = np.array([0, 0, 1, 1, 1, 1, 0, 1, 0, 0])


def test_group_table_by_hand():
    t = M.group_accuracy(Y, B, P, 2, 2)
    # (0,0): 2/3, (0,1): 0/1, (1,1): 2/3, (1,0): 1/3
    assert np.allclose(t, [[2 / 3, 0.0], [1 / 3, 2 / 3]])
    assert M.worst_group_accuracy(t) == 0.0
    assert M.mean_of_groups_accuracy(t) == pytest.approx((2 / 3 + 0 + 1 / 3 + 2 / 3) / 4)
    assert M.accuracy(Y, P) == pytest.approx(5 / 10)


def test_empty_groups_are_nan_and_ignored():
    t = M.group_accuracy([0, 0, 1], [0, 0, 1], [0, 1, 1], 2, 2)
    assert np.isnan(t[0, 1]) and np.isnan(t[1, 0])
    assert M.mean_of_groups_accuracy(t) == pytest.approx(0.75)
    assert M.worst_group_accuracy(t) == pytest.approx(0.5)


def test_weighted_uses_training_proportions():
    t = np.array([[1.0, 0.0], [0.5, 1.0]])
    w = np.array([[3, 1], [0, 4]])
    assert M.weighted_accuracy(t, w) == pytest.approx((3 * 1 + 1 * 0 + 0 + 4 * 1) / 8)
    with pytest.raises(ValueError, match="no test samples"):
        M.weighted_accuracy(np.array([[1.0, np.nan], [1.0, 1.0]]), w)


def test_aligned_and_conflicting():
    assert M.aligned_accuracy(Y, B, P) == pytest.approx(4 / 6)
    assert M.conflicting_accuracy(Y, B, P) == pytest.approx(1 / 4)
    # With an explicit mapping target -> aligned bias value
    assert M.aligned_accuracy(Y, 1 - B, P, bias_of_target=[1, 0]) == pytest.approx(4 / 6)


def test_confusion_matrix():
    cm = M.confusion_matrix([0, 0, 1, 2], [0, 1, 1, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    norm = M.confusion_matrix([0, 0, 1], [0, 1, 1], 3, normalize=True)
    assert np.allclose(norm[0], [0.5, 0.5, 0]) and np.isnan(norm[2]).all()


def test_summary_keys():
    s = M.summary(Y, B, P, 2, 2, train_counts=np.array([[10, 1], [1, 10]]))
    assert set(s) == {
        "plain",
        "worst_group",
        "mean_of_groups",
        "aligned",
        "conflicting",
        "weighted",
    }
