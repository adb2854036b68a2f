"""Perceptual path length (Karras et al. 2019, sec. 4.2; StyleGAN2 variant), for latent vectors
and for the latent matrices of the overparameterized generator.

For each sample: two latents z0, z1 and t ~ U[0, 1) ('full') or t = 0 ('end'). In 'z' space the
images are G(slerp(z0, z1, t)) and G(slerp(z0, z1, t + eps)); in 'w' space
synthesis(lerp(w0, w1, t)) and synthesis(lerp(w0, w1, t + eps)) with w = mapping(z). The
sample's value is distance(img_t, img_t+eps) / eps^2 (distance = LPIPS by default), and PPL is
the mean of the values between the 1st and 99th percentiles.

Latent matrices (z `[R, z_dim]`, ws `[L, R, w_dim]`): lerp is elementwise, i.e. the whole W (or
every per-layer W of W+) moves on the straight segment between the two endpoints; slerp works
on the last axis, i.e. each of the R rows follows its own great circle. The mapping
normalises each row, so this is the row-wise counterpart of StyleGAN2's slerp of unit vectors.
"""

import copy

import numpy as np
import torch

from . import detectors
from .feature_stats import label_sampler, rank_generator

#----------------------------------------------------------------------------

def slerp(a, b, t):
    """Spherical interpolation along the last axis of unit-normalised a and b `[N, ..., D]`;
    t broadcastable to `[N, ..., 1]`. The result has unit norm along the last axis."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    cos = (a * b).sum(dim=-1, keepdim=True)
    angle = t * torch.acos(cos.clamp(-1, 1))
    ortho = b - cos * a
    ortho = ortho / ortho.norm(dim=-1, keepdim=True)
    out = a * torch.cos(angle) + ortho * torch.sin(angle)
    return out / out.norm(dim=-1, keepdim=True)


def face_crop(img):
    """NVIDIA's PPL crop: with c = H // 8, rows [3c, 7c) and columns [2c, 6c) of `[N, C, H, W]`
    (the face region of FFHQ-aligned images); a square image is required."""
    if img.shape[2] != img.shape[3]:
        raise ValueError(f'the PPL crop needs square images, got {img.shape[3]}x{img.shape[2]}')
    c = img.shape[2] // 8
    return img[:, :, c * 3:c * 7, c * 2:c * 6]


def trimmed_mean(values, lo_pct=1, hi_pct=99):
    """Mean of the values v with percentile(lo, 'lower') <= v <= percentile(hi, 'higher')."""
    values = np.asarray(values, dtype=np.float64)
    lo = np.percentile(values, lo_pct, method='lower')
    hi = np.percentile(values, hi_pct, method='higher')
    return float(values[(values >= lo) & (values <= hi)].mean())

#----------------------------------------------------------------------------

def _unsqueeze_like(t, x):
    return t.reshape([-1] + [1] * (x.ndim - 1))


@torch.no_grad()
def sample_path_lengths(G, distance_fn, num_samples, epsilon=1e-4, space='w', sampling='end', crop=False, batch_size=2,
                        device=None, generator=None, sample_c=None, G_kwargs=None, num_gpus=1, bar=None):
    """Per-sample path lengths `[num_samples]` (float64 numpy; every rank gets all of them).

    G: generator with the public API (`sample_z`, `mapping`, `synthesis`, `c_dim`,
    `img_resolution`, `img_channels`); noise buffers named '*noise_const' are re-drawn for each
    batch and the synthesis runs with noise_mode='const', so a pair shares its noise.
    distance_fn(img0, img1) -> `[N]`: images `[N, 3, h, w]` float in [0, 255] after crop and
    downsampling to at most 256 px. generator: torch.Generator for t, z and noise (G's noise
    buffers are overwritten: pass a copy, as `compute_ppl` does).
    sample_c(n) -> c `[n, c_dim]`. G_kwargs: truncation_psi/_cutoff (mapping), others (synthesis).
    """
    if space not in ('z', 'w') or sampling not in ('full', 'end'):
        raise ValueError(f'space must be z or w and sampling full or end, got {space!r}, {sampling!r}')
    device = torch.device('cpu') if device is None else torch.device(device)
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    G_kwargs = dict(G_kwargs or {})
    mapping_kwargs = {k: G_kwargs.pop(k) for k in ('truncation_psi', 'truncation_cutoff') if k in G_kwargs}
    synthesis_kwargs = dict(G_kwargs, noise_mode='const')
    if isinstance(G, torch.nn.Module):
        synthesis_kwargs.setdefault('force_fp32', True)
    if sample_c is None:
        def sample_c(n):
            return torch.zeros([n, G.c_dim], device=device)
    noise_bufs = [b for name, b in G.named_buffers() if name.endswith('noise_const')] if hasattr(G, 'named_buffers') else []

    dist = []
    num_done = 0
    while num_done < num_samples:
        n = batch_size
        t = torch.rand([n], generator=generator).to(device) * (1.0 if sampling == 'full' else 0.0)
        z0, z1 = G.sample_z(2 * n, generator, device).chunk(2)
        c = sample_c(n)
        if space == 'w':
            w0, w1 = G.mapping(torch.cat([z0, z1]), torch.cat([c, c]), **mapping_kwargs).chunk(2)
            tt = _unsqueeze_like(t, w0).to(w0.dtype)
            wt0, wt1 = w0.lerp(w1, tt), w0.lerp(w1, tt + epsilon)
        else:
            tt = _unsqueeze_like(t, z0).to(z0.dtype)
            zt0, zt1 = slerp(z0, z1, tt), slerp(z0, z1, tt + epsilon)
            wt0, wt1 = G.mapping(torch.cat([zt0, zt1]), torch.cat([c, c]), **mapping_kwargs).chunk(2)
        for buf in noise_bufs:
            buf.copy_(torch.randn(buf.shape, generator=generator).to(buf))
        img = G.synthesis(torch.cat([wt0, wt1]), **synthesis_kwargs)          # [2n, C, H, W], G's dtype (fp32 for ours)

        if crop:
            img = face_crop(img)
        factor = G.img_resolution // 256
        if factor > 1:
            img = img.reshape([-1, img.shape[1], img.shape[2] // factor, factor, img.shape[3] // factor, factor]).mean([3, 5])
        img = (img + 1) * (255 / 2)
        if img.shape[1] == 1:
            img = img.repeat([1, 3, 1, 1])
        img0, img1 = img.chunk(2)
        d = (distance_fn(img0, img1).to(torch.float64) / epsilon ** 2).reshape(n)
        if num_gpus > 1:
            parts = [torch.empty_like(d) for _ in range(num_gpus)]
            torch.distributed.all_gather(parts, d.contiguous())
            d = torch.stack(parts, dim=1).flatten()
        dist.append(d.cpu().to(torch.float64))
        num_done += d.numel()
        if bar is not None:
            bar.update(min(d.numel(), num_samples - (num_done - d.numel())))
    return torch.cat(dist)[:num_samples].numpy()


def l2_distance(img0, img1):
    """Sum of squared pixel differences `[N]`, a stand-in for LPIPS (tests, analytic checks)."""
    return (img0 - img1).square().flatten(1).sum(dim=1)

#----------------------------------------------------------------------------

def compute_ppl(opts, num_samples, epsilon, space, sampling, crop, batch_size=2, distance_fn=None):
    """PPL of opts.G: NVIDIA's VGG16 LPIPS (through `opts.detector_path`) unless `distance_fn`
    (or opts.distance_fn) is given. opts.num_gen overrides num_samples. NaN on ranks > 0."""
    num_samples = opts.num_gen if opts.num_gen is not None else num_samples
    distance_fn = distance_fn or opts.get('distance_fn')
    if distance_fn is None:
        distance_fn = detectors.lpips_distance_fn(opts.detector(detectors.VGG16_URL), device=opts.device,
                                                  num_gpus=opts.num_gpus, rank=opts.rank, verbose=opts.progress)
    G = copy.deepcopy(opts.G).eval().requires_grad_(False).to(opts.device)
    batch_size = int(opts.get('ppl_batch_size') or batch_size)
    with opts.bar(num_samples, f'ppl {space}/{sampling}') as bar:
        dist = sample_path_lengths(G, distance_fn, num_samples, epsilon=epsilon, space=space, sampling=sampling, crop=crop,
                                   batch_size=batch_size, device=opts.device, generator=rank_generator(opts, offset=1),
                                   sample_c=label_sampler(opts, G, offset=1), G_kwargs=opts.G_kwargs,
                                   num_gpus=opts.num_gpus, bar=bar)
    if opts.rank != 0:
        return float('nan')
    return trimmed_mean(dist)

#----------------------------------------------------------------------------
