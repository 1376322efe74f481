"""HSIC estimators with an RBF kernel (Gretton et al. 2005; Song et al. 2012), as used by ReBias."""

import torch

from helpers.device import full_precision

MIN_BATCH = 4  # the unbiased estimator divides by m(m-3) and (m-2)


def rbf_kernel(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """k(a, b) = exp(-||a - b||^2 / (2 sigma^2)) on flattened rows."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    # float32 even inside fit's bf16 autocast: a bf16 x @ x.T errs by ~0.1 per kernel entry
    with full_precision(x.device):
        x = x.flatten(1).float()
        sq = (x * x).sum(1)
        d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(
            0
        )  # clamp: rounding can go slightly negative
        return torch.exp(-d2 / (2 * sigma**2))


def median_sigma(x: torch.Tensor) -> float:
    """Median heuristic: sqrt of the median within-batch pairwise squared distance
    (off-diagonal)."""
    with full_precision(x.device):
        x = x.flatten(1).float()
        d2 = torch.cdist(x, x).pow(2)
    off = d2[~torch.eye(len(x), dtype=torch.bool, device=x.device)]
    return float(off.median().sqrt().clamp_min(1e-6))


def _check_pair(x, y, minimum):
    if len(x) != len(y):
        raise ValueError(f"x and y need the same number of samples, got {len(x)} and {len(y)}")
    if len(x) < minimum:
        raise ValueError(f"batch size m={len(x)} is too small for HSIC: need m >= {minimum}")


def hsic_biased(x, y, sigma_x=1.0, sigma_y=1.0) -> torch.Tensor:
    """HSIC_0 = tr(K H L H) / (m - 1)^2."""
    _check_pair(x, y, 2)
    m = len(x)
    with full_precision(x.device):
        K, L = rbf_kernel(x, sigma_x), rbf_kernel(y, sigma_y)
        Kc = K - K.mean(0, keepdim=True) - K.mean(1, keepdim=True) + K.mean()  # H K H
        return (Kc * L).sum() / (m - 1) ** 2


def hsic_unbiased(x, y, sigma_x=1.0, sigma_y=1.0) -> torch.Tensor:
    """HSIC_1 (Song et al. 2012) on kernels with zeroed diagonals; needs m >= 4."""
    _check_pair(x, y, MIN_BATCH)
    m = len(x)
    eye = torch.eye(m, dtype=torch.bool, device=x.device)
    with full_precision(x.device):
        K = rbf_kernel(x, sigma_x).masked_fill(eye, 0)
        L = rbf_kernel(y, sigma_y).masked_fill(eye, 0)
        term1 = (K * L).sum()  # tr(K L) for symmetric L
        term2 = K.sum() * L.sum() / ((m - 1) * (m - 2))
        term3 = 2 / (m - 2) * (K.sum(0) * L.sum(1)).sum()  # 1' K L 1
        return (term1 + term2 - term3) / (m * (m - 3))
