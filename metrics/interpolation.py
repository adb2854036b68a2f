"""Interpolation between inverted (or sampled) latents: the metrics of table 3 of Poirier-Ginter
et al., "Overparameterization Improves StyleGAN Inversion" (sec. 4.3).

Latents are interpolated *linearly in the space they were inverted in*: every entry of the
synthesis input `ws [num_ws, *w_shape]` moves on a straight line, so latent matrices (W, W+)
interpolate elementwise, and vectors (w, w+) as usual. Because the spaces' `to_ws` only repeats
entries, lerp of the repeated ws equals the repeat of the lerped latents.

Path length (paper, footnote 8: "divide each interpolation path into 5 segments and sum the
total (perceptual) variation, averaging over all images"), exactly as computed here:

    x_k = G.synthesis(lerp(ws0, ws1, k / S)),  k = 0..S  (S = num_segments = 5)
    length(ws0, ws1) = sum_{k=0}^{S-1} distance(x_k, x_{k+1})

with `distance` the LPIPS distance of NVIDIA's VGG16 (`metrics.lpips.lpips_distance_fn`) on
images mapped from [-1, 1] to [0, 255] and box-downsampled to at most 256 px (`ppl.to_lpips_range`,
as NVIDIA's PPL).
Unlike StyleGAN's PPL there is no division by epsilon^2: the value is the total variation of
the path. `ppl_mean` averages it over all pairs (the paper's number), `ppl_median` is given too.

FID of midpoints: Inception features of `G.synthesis(lerp(ws0, ws1, 0.5))` for every pair
against reference features of real images (the paper: the full CelebA-HQ dataset).
"""

import re

import numpy as np
import torch

from torch_utils import distributed

from .feature_stats import FeatureStats
from .frechet import frechet_distance
from .ppl import to_lpips_range

#----------------------------------------------------------------------------
# Pairs.

def all_pairs(n):
    """Every unordered pair of n items: [(i, j) for i < j], ordered by i then j (n*(n-1)/2 pairs)."""
    return [(i, j) for i in range(int(n)) for j in range(i + 1, int(n))]


def parse_pairs(spec, n=None):
    """'0-1,3-7' -> [(0, 1), (3, 7)]; 'all' -> all_pairs(n). Whitespace ignored, duplicates kept once
    (first occurrence). Raises ValueError for bad syntax, i == j, or an index >= n (when n is given)."""
    spec = str(spec).strip()
    if spec == 'all':
        if n is None:
            raise ValueError("'all' pairs needs the number of latents")
        return all_pairs(n)
    pairs, seen = [], set()
    for item in spec.split(','):
        item = item.strip()
        m = re.fullmatch(r'(\d+)\s*-\s*(\d+)', item)
        if not m:
            raise ValueError(f"bad pair {item!r}: expected 'I-J' items separated by commas, e.g. 0-1,3-7, or 'all'")
        i, j = int(m.group(1)), int(m.group(2))
        if i == j:
            raise ValueError(f'pair {item!r} interpolates an image with itself')
        if n is not None and max(i, j) >= n:
            raise ValueError(f'pair {item!r}: index {max(i, j)} out of range (there are {n} latents: 0..{n - 1})')
        if (i, j) not in seen:
            seen.add((i, j))
            pairs.append((i, j))
    return pairs

#----------------------------------------------------------------------------
# Interpolation and synthesis.

def lerp_ws(ws0, ws1, t):
    """Linear interpolation of synthesis inputs.

    ws0, ws1: `[*, num_ws, *w_shape]` (same shape); t: `[T]` (or a list of floats).
    Returns `[T, *ws0.shape]`; t = 0 gives ws0 and t = 1 gives ws1 exactly (torch.lerp).
    """
    t = torch.as_tensor(t, dtype=ws0.dtype, device=ws0.device).reshape(-1, *([1] * ws0.ndim))
    shape = (t.shape[0],) + tuple(ws0.shape)
    return torch.lerp(ws0.unsqueeze(0).expand(shape), ws1.unsqueeze(0).expand(shape), t)


def _synthesis_kwargs(G):
    """Deterministic synthesis for our networks (constant noise, FP32); nothing for plain objects."""
    return dict(noise_mode='const', force_fp32=True) if isinstance(G, torch.nn.Module) else {}


@torch.no_grad()
def synthesize(G, ws, batch_size=8):
    """ws `[N, num_ws, *w_shape]` -> images `[N, C, H, W]` in [-1, 1] (float32, or float64 if G makes
    float64), `batch_size` at a time."""
    kwargs = _synthesis_kwargs(G)
    out = [G.synthesis(ws[i:i + batch_size], **kwargs) for i in range(0, ws.shape[0], batch_size)]
    return torch.cat([x if x.dtype == torch.float64 else x.to(torch.float32) for x in out])


def to_uint8_nchw(img):
    """Images `[N, C, H, W]` in [-1, 1] -> uint8 `[N, 3, H, W]` (detector input for FID)."""
    img = ((img + 1) * (255 / 2)).round().clamp(0, 255).to(torch.uint8)
    return img.repeat([1, 3, 1, 1]) if img.shape[1] == 1 else img


@torch.no_grad()
def interpolation_path_length(G, ws0, ws1, distance_fn, num_segments=5, batch_size=8):
    """Total variation along the straight paths ws0 -> ws1 (see module docstring).

    ws0, ws1: `[N, num_ws, *w_shape]` (or one `[num_ws, *w_shape]`, treated as N = 1).
    distance_fn(img0, img1) -> `[N]`: images `[N, 3, h, w]` in [0, 255] (`to_lpips_range`).
    Returns float64 `[N]`: sum over the `num_segments` segments of distance(x_k, x_{k+1}).
    """
    if ws0.ndim == len(G.w_shape) + 1:
        ws0, ws1 = ws0.unsqueeze(0), ws1.unsqueeze(0)
    n = ws0.shape[0]
    t = torch.linspace(0, 1, num_segments + 1, dtype=torch.float64).tolist()
    total = torch.zeros([n], dtype=torch.float64)
    prev = to_lpips_range(synthesize(G, ws0, batch_size), G.img_resolution)
    for k in range(1, num_segments + 1):
        ws_k = ws1 if k == num_segments else lerp_ws(ws0, ws1, [t[k]])[0]
        cur = to_lpips_range(synthesize(G, ws_k, batch_size), G.img_resolution)
        total += distance_fn(prev, cur).to(torch.float64).reshape(n).cpu()
        prev = cur
    return total


@torch.no_grad()
def midpoints(G, ws0, ws1, batch_size=8):
    """Images at t = 1/2: ws0, ws1 `[N, num_ws, *w_shape]` -> `[N, C, H, W]` in [-1, 1]."""
    return synthesize(G, lerp_ws(ws0, ws1, [0.5])[0], batch_size)


@torch.no_grad()
def interpolation_frames(G, ws0, ws1, steps=8, batch_size=8):
    """`steps` evenly spaced frames t = 0..1 of one path: ws0, ws1 `[num_ws, *w_shape]` ->
    images `[steps, C, H, W]` in [-1, 1]."""
    t = torch.linspace(0, 1, int(steps), dtype=torch.float64).tolist()
    return synthesize(G, lerp_ws(ws0, ws1, t), batch_size)

#----------------------------------------------------------------------------
# Table 3.

def _mean_cov(features):
    """(mean, cov) of `features [N, D]`, or pass a (mean, cov) pair or FeatureStats through."""
    if isinstance(features, FeatureStats):
        return features.get_mean_cov()
    if isinstance(features, (tuple, list)) and len(features) == 2:
        return np.asarray(features[0], dtype=np.float64), np.asarray(features[1], dtype=np.float64)
    stats = FeatureStats(capture_mean_cov=True)
    stats.append(np.asarray(features))
    return stats.get_mean_cov()


@torch.no_grad()
def interpolation_metrics(G, ws, pairs, distance_fn, feature_fn=None, real_features=None, batch_size=8,
                          num_segments=5, progress=None):
    """Path lengths of every pair and, optionally, FID of the midpoints.

    G:              generator (public API: `synthesis(ws)`, `num_ws`, `w_shape`, `img_resolution`,
                    `img_channels`).
    ws:             `[N, num_ws, *w_shape]` synthesis inputs of the N latents (`LatentSpace.to_ws`).
    pairs:          list of (i, j) indices into ws.
    distance_fn:    see `interpolation_path_length`.
    feature_fn:     uint8 images `[n, 3, H, W]` -> features `[n, D]` (Inception), or None.
    real_features:  reference `[Nr, D]` features, a (mean `[D]`, cov `[D, D]`) pair, or FeatureStats.
    progress:       callable(n) called with the number of pairs finished per batch, or None.
    Returns dict(num_pairs, num_segments, path_lengths [num_pairs] list, ppl_mean, ppl_median,
    fid_midpoints (only with feature_fn and real_features)).
    """
    pairs = [(int(i), int(j)) for i, j in pairs]
    if not pairs:
        raise ValueError('no pairs to interpolate')
    lengths, mid_stats = [], None
    want_fid = feature_fn is not None and real_features is not None
    if want_fid:
        mid_stats = FeatureStats(capture_mean_cov=True)
    starts = list(range(0, len(pairs), batch_size))

    def one_chunk(k):                                                     # -> (lengths [n], features [n, D] or None)
        chunk = pairs[starts[k]:starts[k] + batch_size]
        idx0 = torch.tensor([p[0] for p in chunk], device=ws.device)
        idx1 = torch.tensor([p[1] for p in chunk], device=ws.device)
        ws0, ws1 = ws[idx0], ws[idx1]
        length = interpolation_path_length(G, ws0, ws1, distance_fn, num_segments, batch_size).cpu()
        feats = None
        if want_fid:
            feats = (torch.as_tensor(feature_fn(to_uint8_nchw(midpoints(G, ws0, ws1, batch_size))))
                     .to(torch.float32).cpu())
        if progress is not None:
            progress(len(chunk))
        return length, feats

    # Sharded (torchrun): chunk k on rank k mod K, gathered in chunk order, so the lengths and the
    # midpoint statistics (appended in the same order) equal a 1-process run's.
    for length, feats in distributed.map_in_order(one_chunk, len(starts)):
        lengths.append(length)
        if want_fid:
            mid_stats.append(feats.numpy())
    lengths = torch.cat(lengths).numpy()
    result = dict(num_pairs=len(pairs), num_segments=int(num_segments), path_lengths=lengths.tolist(),
                  ppl_mean=float(lengths.mean()), ppl_median=float(np.median(lengths)))
    if want_fid:
        mu_gen, sigma_gen = mid_stats.get_mean_cov()
        mu_real, sigma_real = _mean_cov(real_features)
        result['fid_midpoints'] = frechet_distance(mu_gen, sigma_gen, mu_real, sigma_real)
    return result

#----------------------------------------------------------------------------
