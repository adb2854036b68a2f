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


def kernel_distance(real_features, gen_features, num_subsets=100, max_subset_size=1000, seed=0):
    """Unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over subsets.

    real_features `[Nr, D]`, gen_features `[Ng, D]`. Each subset draws m = min(Nr, Ng,
    max_subset_size) rows without replacement from each set: first the generated rows, then
    the real rows, with `np.random.RandomState(seed).choice` (NVIDIA's uses the global numpy RNG).
    """
    real_features = np.asarray(real_features, dtype=np.float64)
    gen_features = np.asarray(gen_features, dtype=np.float64)
    n = real_features.shape[1]
    m = min(real_features.shape[0], gen_features.shape[0], max_subset_size)
    if m < 2:
        raise ValueError('KID needs at least 2 real and 2 generated feature rows')
    rnd = np.random.RandomState(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = gen_features[rnd.choice(gen_features.shape[0], m, replace=False)]
        y = real_features[rnd.choice(real_features.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        total += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(total / num_subsets / m)

#----------------------------------------------------------------------------
# Metric bodies (called through metric_main's registry).

def _counts(opts, max_real, num_gen):
    """Apply the options' overrides: opts.max_real caps the real images, opts.num_gen sets the generated ones."""
    if opts.max_real is not None:
        max_real = opts.max_real if max_real is None else min(max_real, opts.max_real)
    if opts.num_gen is not None:
        num_gen = opts.num_gen
    return max_real, num_gen


def compute_fid(opts, max_real, num_gen):
    """FID between `max_real` real images (None = all) and `num_gen` generated ones; NaN on ranks > 0."""
    max_real, num_gen = _counts(opts, max_real, num_gen)
    spec = opts.detector(detectors.INCEPTION_URL)
    kwargs = dict(return_features=True)
    mu_real, sigma_real = compute_feature_stats_for_dataset(opts, spec, kwargs, max_items=max_real,
                                                           capture_mean_cov=True).get_mean_cov()
    mu_gen, sigma_gen = compute_feature_stats_for_generator(opts, spec, kwargs, max_items=num_gen,
                                                           capture_mean_cov=True).get_mean_cov()
    if opts.rank != 0:
        return float('nan')
    return frechet_distance(mu_gen, sigma_gen, mu_real, sigma_real)


def compute_kid(opts, max_real, num_gen, num_subsets=100, max_subset_size=1000):
    """KID between real and generated features; NaN on ranks > 0."""
    max_real, num_gen = _counts(opts, max_real, num_gen)
    spec = opts.detector(detectors.INCEPTION_URL)
    kwargs = dict(return_features=True)
    real = compute_feature_stats_for_dataset(opts, spec, kwargs, max_items=max_real, capture_all=True).get_all()
    gen = compute_feature_stats_for_generator(opts, spec, kwargs, max_items=num_gen, capture_all=True).get_all()
    if opts.rank != 0:
        return float('nan')
    return kernel_distance(real, gen, num_subsets=opts.get('num_subsets') or num_subsets,
                           max_subset_size=max_subset_size, seed=opts.seed)

#----------------------------------------------------------------------------
