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

import numpy as np
import torch

from .feature_stats import frozen_copy, label_sampler, rank_generator

#----------------------------------------------------------------------------

def _unit(v):
    """v scaled to unit Euclidean norm along its last axis."""
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def slerp(a, b, t):
    """Spherical interpolation along the last axis of unit-normalised a and b `[N, ..., D]`;
    t broadcastable to `[N, ..., 1]`. The result has unit norm along the last axis.

    With u = a/|a|, cos(theta) = u . b/|b| and v the unit part of b/|b| orthogonal to u, the
    point at fraction t of the great-circle arc is u cos(t theta) + v sin(t theta).
    """
    u, target = _unit(a), _unit(b)
    cos_theta = (u * target).sum(dim=-1, keepdim=True)
    arc = t * torch.acos(cos_theta.clamp(-1, 1))
    v = _unit(target - cos_theta * u)
    return _unit(u * torch.cos(arc) + v * torch.sin(arc))


def face_crop(img):
    """NVIDIA's PPL crop: with c = H // 8, rows [3c, 7c) and columns [2c, 6c) of `[N, C, H, W]`
    (the face region of FFHQ-aligned images); a square image is required."""
    if img.shape[2] != img.shape[3]:
        raise ValueError(f'the PPL crop needs square images, got {img.shape[3]}x{img.shape[2]}')
    c = img.shape[2] // 8
    return img[:, :, c * 3:c * 7, c * 2:c * 6]


def to_lpips_range(img, img_resolution=None):
    """Generator images `[N, C, H, W]` in [-1, 1] -> LPIPS input `[N, 3, h, w]` in [0, 255].

    Images from a generator of more than 256 px (`img_resolution`, default H) are shrunk by the
    integer factor f = img_resolution // 256 with a box filter (mean of f x f blocks), as
    NVIDIA's PPL does before its VGG16; grey images are repeated to 3 channels.
    """
    f = (img.shape[2] if img_resolution is None else img_resolution) // 256
    if f > 1:
        n, ch, h, w = img.shape
        img = img.reshape(n, ch, h // f, f, w // f, f).mean(dim=(3, 5))
    img = img.add(1).mul(255 / 2)
    return img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img


def trimmed_mean(values, lo_pct=1, hi_pct=99):
    """Mean of the values v with percentile(lo, 'lower') <= v <= percentile(hi, 'higher')."""
    values = np.asarray(values, dtype=np.float64)
    lo = np.percentile(values, lo_pct, method='lower')
    hi = np.percentile(values, hi_pct, method='higher')
    return float(values[(values >= lo) & (values <= hi)].mean())

#----------------------------------------------------------------------------

def _per_sample(t, like):
    """t `[N]` reshaped to broadcast against `like` `[N, ...]`, in its dtype."""
    return t.reshape([len(t)] + [1] * (like.ndim - 1)).to(like.dtype)


def _endpoint_pair(G, z0, z1, c, t, epsilon, space, mapping_kwargs):
    """Synthesis inputs at t and t + epsilon: `[2n, num_ws, *w_shape]` (both halves stacked)."""
    if space == 'z':
        tz = _per_sample(t, z0)
        z = torch.cat([slerp(z0, z1, tz), slerp(z0, z1, tz + epsilon)])
        return G.mapping(z, torch.cat([c, c]), **mapping_kwargs)
    w0, w1 = G.mapping(torch.cat([z0, z1]), torch.cat([c, c]), **mapping_kwargs).chunk(2)
    tw = _per_sample(t, w0)
    return torch.cat([w0.lerp(w1, tw), w0.lerp(w1, tw + epsilon)])


def _gather(values, num_gpus):
    """`[n]` of every rank, interleaved (rank 0 sample 0, rank 1 sample 0, ...)."""
    if num_gpus <= 1:
        return values
    parts = [torch.empty_like(values) for _ in range(num_gpus)]
    torch.distributed.all_gather(parts, values.contiguous())
    return torch.stack(parts, dim=1).flatten()


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

    Per batch of n, random numbers are drawn in this order: t `[n]`, z `[2n, *z_shape]`, then
    each noise buffer.
    """
    if space not in ('z', 'w') or sampling not in ('full', 'end'):
        raise ValueError(f'space must be z or w and sampling full or end, got {space!r}, {sampling!r}')
    device = torch.device('cpu') if device is None else torch.device(device)
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    mapping_kwargs = {k: v for k, v in (G_kwargs or {}).items() if k in ('truncation_psi', 'truncation_cutoff')}
    synthesis_kwargs = {k: v for k, v in (G_kwargs or {}).items() if k not in mapping_kwargs}
    synthesis_kwargs['noise_mode'] = 'const'
    if isinstance(G, torch.nn.Module):
        synthesis_kwargs.setdefault('force_fp32', True)
    if sample_c is None:
        def sample_c(n):
            return torch.zeros([n, G.c_dim], device=device)
    noise = ([buf for name, buf in G.named_buffers() if name.endswith('noise_const')]
             if hasattr(G, 'named_buffers') else [])
    t_scale = 1.0 if sampling == 'full' else 0.0

    lengths, done = [], 0
    while done < num_samples:
        n = batch_size
        t = torch.rand([n], generator=generator).to(device) * t_scale
        z0, z1 = G.sample_z(2 * n, generator, device).chunk(2)
        ws = _endpoint_pair(G, z0, z1, sample_c(n), t, epsilon, space, mapping_kwargs)
        for buf in noise:
            buf.copy_(torch.randn(buf.shape, generator=generator, dtype=buf.dtype).to(buf))
        img = G.synthesis(ws, **synthesis_kwargs)                           # [2n, C, H, W]
        img = to_lpips_range(face_crop(img) if crop else img, G.img_resolution)
        near, far = img.chunk(2)
        d = _gather((distance_fn(near, far).to(torch.float64) / epsilon ** 2).reshape(n), num_gpus)
        lengths.append(d.cpu().to(torch.float64))
        if bar is not None:
            bar.update(min(d.numel(), num_samples - done))
        done += d.numel()
    return torch.cat(lengths)[:num_samples].numpy()


def l2_distance(img0, img1):
    """Sum of squared pixel differences `[N]`, a stand-in for LPIPS (tests, analytic checks)."""
    return (img0 - img1).square().flatten(1).sum(dim=1)

#----------------------------------------------------------------------------

def compute_ppl(opts, *, num_samples, epsilon, space, sampling, crop, batch_size=2, distance_fn=None):
    """PPL of opts.G: NVIDIA's VGG16 LPIPS (through `opts.detector_path`) unless `distance_fn`
    (or opts.distance_fn) is given. opts.num_gen overrides num_samples. NaN on ranks > 0."""
    num_samples = opts.num_gen if opts.num_gen is not None else num_samples
    distance_fn = distance_fn or opts.lpips_distance()
    G = frozen_copy(opts.G, opts.device)
    batch_size = int(opts.get('ppl_batch_size') or batch_size)
    with opts.bar(num_samples, f'ppl {space}/{sampling}') as bar:
        dist = sample_path_lengths(G, distance_fn, num_samples, epsilon=epsilon, space=space, sampling=sampling,
                                   crop=crop, batch_size=batch_size, device=opts.device,
                                   generator=rank_generator(opts, offset=1), sample_c=label_sampler(opts, G, offset=1),
                                   G_kwargs=opts.G_kwargs, num_gpus=opts.num_gpus, bar=bar)
    if opts.rank != 0:
        return float('nan')
    return trimmed_mean(dist)

#----------------------------------------------------------------------------
