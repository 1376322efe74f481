"""The ART attack wrappers: FGSM and CW-L2 keep the model's mode and the image range."""

import pytest
import torch

from helpers.methods import adversarial as A
from helpers.models import LeNet


def test_attacks_restore_mode_and_stay_in_range(pure_background_digits):
    data = pure_background_digits(16)
    torch.manual_seed(0)
    m = LeNet().train()
    x_adv = A.fgsm(m, data.x, data.y, 0.3, keep_misclassified=False)
    assert m.training
    assert x_adv.min() >= -1 - 1e-6 and x_adv.max() <= 1 + 1e-6
    assert (x_adv - data.x).abs().max() <= 0.6 + 1e-5  # ε 0.3 in [0,1] units = 0.6 in [-1,1]
    assert torch.equal(A.fgsm(m, data.x, data.y, 0.0), data.x)
    cw = A.cw_l2(m, data.x[:4], data.y[:4], max_iter=2, binary_search_steps=1)
    assert m.training and cw.shape == data.x[:4].shape
    with pytest.raises(ValueError, match="eps"):
        A.fgsm(m, data.x, data.y, 2.0)
