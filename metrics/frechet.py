"""Frechet Inception Distance (Heusel et al. 2017) and Kernel Inception Distance (Binkowski et
al. 2018), computed as in stylegan2-ada-pytorch, on NVIDIA's Inception-v3 pool features."""

import numpy as np
import scipy.linalg

from . import detectors
from .feature_stats import compute_feature_stats_for_dataset, compute_feature_stats_for_generator

#----------------------------------------------------------------------------
# The distances, on features or their statistics.

def frechet_distance(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 @ sigma2)), real part.

    mu: `[D]`, sigma: `[D, D]`. `scipy.linalg.sqrtm` of the (non-symmetric) product, as NVIDIA's.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    m = np.square(mu1 - mu2).sum()
    s = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(np.real(m + np.trace(sigma1 + sigma2 - 2 * s)))


def _cubic_kernel(x, y):
    """k(x, y) = (x . y / D + 1)^3 for all row pairs: `[n, D]`, `[m, D]` -> `[n, m]`."""
    dim = x.shape[1]
    return (x @ y.T / dim + 1) ** 3


def _mmd2_unbiased(x, y):
    """Unbiased MMD^2 of two equal-size sets `[m, D]` times m (the caller divides by m once
    for all subsets): off-diagonal mean of k_xx + k_yy minus twice the mean of k_xy, times m."""
    m = x.shape[0]
    within = _cubic_kernel(x, x) + _cubic_kernel(y, y)
    off_diagonal = within.sum() - np.diag(within).sum()
    return off_diagonal / (m - 1) - _cubic_kernel(x, y).sum() * 2 / m


def kernel_distance(real_features, gen_features, num_subsets=100, max_subset_size=1000, seed=0):
    """Unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over subsets.

    real_features `[Nr, D]`, gen_features `[Ng, D]`. Each subset draws m = min(Nr, Ng,
    max_subset_size) rows without replacement from each set: first the generated rows, then
    the real rows, with `np.random.RandomState(seed).choice` (NVIDIA's uses the global numpy RNG).
    """
    real = np.asarray(real_features, dtype=np.float64)
    fake = np.asarray(gen_features, dtype=np.float64)
    m = min(len(real), len(fake), max_subset_size)
    if m < 2:
        raise ValueError('KID needs at least 2 real and 2 generated feature rows')
    rnd = np.random.RandomState(seed)
    acc = 0.0
    for _ in range(num_subsets):
        fake_idx = rnd.choice(len(fake), m, replace=False)
        real_idx = rnd.choice(len(real), m, replace=False)
        acc += _mmd2_unbiased(fake[fake_idx], real[real_idx])
    return float(acc / num_subsets / m)

#----------------------------------------------------------------------------
# Metric bodies (called through metric_main's registry).

def _inception(opts):
    """(detector spec, detector kwargs) of the Inception pool features."""
    return opts.detector(detectors.INCEPTION_URL), dict(return_features=True)


def compute_fid(opts, *, max_real, num_gen):
    """FID between `max_real` real images (None = all) and `num_gen` generated ones; NaN on ranks > 0."""
    max_real, num_gen = opts.counts(max_real, num_gen)
    spec, kwargs = _inception(opts)
    real = compute_feature_stats_for_dataset(opts, spec, kwargs, max_items=max_real, capture_mean_cov=True)
    fake = compute_feature_stats_for_generator(opts, spec, kwargs, max_items=num_gen, capture_mean_cov=True)
    if opts.rank != 0:
        return float('nan')
    return frechet_distance(*fake.get_mean_cov(), *real.get_mean_cov())


def compute_kid(opts, *, max_real, num_gen, num_subsets=100, max_subset_size=1000):
    """KID between real and generated features; NaN on ranks > 0. opts.num_subsets overrides num_subsets."""
    max_real, num_gen = opts.counts(max_real, num_gen)
    spec, kwargs = _inception(opts)
    real = compute_feature_stats_for_dataset(opts, spec, kwargs, max_items=max_real, capture_all=True)
    fake = compute_feature_stats_for_generator(opts, spec, kwargs, max_items=num_gen, capture_all=True)
    if opts.rank != 0:
        return float('nan')
    return kernel_distance(real.get_all(), fake.get_all(), num_subsets=opts.get('num_subsets') or num_subsets,
                           max_subset_size=max_subset_size, seed=opts.seed)

#----------------------------------------------------------------------------
