import itertools

import pytest
import torch

from helpers.methods import hsic


def _xy(m=64, seed=0, dependent=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, 3, generator=g)
    y = x + 0.1 * torch.randn(m, 3, generator=g) if dependent else torch.randn(m, 3, generator=g)
    return x, y


def test_unbiased_near_zero_for_independent_large_for_dependent():
    xi, yi = _xy(dependent=False)
    xd, yd = _xy(dependent=True)
    assert abs(float(hsic.hsic_unbiased(xi, yi))) < 1e-3
    assert float(hsic.hsic_unbiased(xd, yd)) > 0.02


def test_biased_has_positive_bias_that_shrinks_with_m():
    small = float(hsic.hsic_biased(*_xy(m=64, dependent=False)))
    large = float(hsic.hsic_biased(*_xy(m=256, dependent=False)))
    dependent = float(hsic.hsic_biased(*_xy(m=64, dependent=True)))
    assert 0 < large < small / 2  # HSIC_0 bias is O(1/m)
    assert dependent > 4 * small


def test_unbiased_matches_brute_force_u_statistic():
    x, y = _xy(m=6, seed=3)
    K, L = hsic.rbf_kernel(x, 1.0).double(), hsic.rbf_kernel(y, 1.0).double()
    m = 6
    total = 0.0
    for i, j, q, r in itertools.permutations(range(m), 4):
        total += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2 * K[i, j] * L[i, q]
    expected = total / (m * (m - 1) * (m - 2) * (m - 3))
    assert float(hsic.hsic_unbiased(x, y)) == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize("est", [hsic.hsic_biased, hsic.hsic_unbiased])
def test_invariant_to_sample_order(est):
    x, y = _xy(m=20, seed=1)
    p = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    assert float(est(x[p], y[p])) == pytest.approx(float(est(x, y)), abs=1e-6)


def test_unbiased_refuses_m_below_4():
    x, y = _xy(m=3)
    with pytest.raises(ValueError, match="m=3"):
        hsic.hsic_unbiased(x, y)


def test_median_sigma_positive_and_scales():
    x, _ = _xy(m=30)
    assert hsic.median_sigma(2 * x) == pytest.approx(2 * hsic.median_sigma(x), rel=1e-4)


def test_biased_matches_trace_formula():
    x, y = _xy(m=7, seed=2)
    K, L = hsic.rbf_kernel(x, 1.0).double(), hsic.rbf_kernel(y, 1.0).double()
    h = torch.eye(7, dtype=torch.float64) - 1 / 7
    expected = torch.trace(K @ h @ L @ h) / 36
    assert float(hsic.hsic_biased(x, y)) == pytest.approx(float(expected), abs=1e-6)


def test_rbf_kernel_refuses_bad_sigma():
    with pytest.raises(ValueError, match="sigma"):
        hsic.rbf_kernel(torch.randn(4, 2), 0.0)
