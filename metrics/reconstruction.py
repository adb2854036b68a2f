"""Reconstruction metrics of an inversion run (paper, table 2): LPIPS, MSE, PSNR, SSIM per
image, and the FID between the set of reconstructions and the set of targets.

The metrics take the pairs of a run (`inversion.run_files.read_pairs`: reconstructions and targets, uint8
`[N, H, W, C]`, with the names left out and the LPIPS the run recorded); calc_metrics.py --inversion-run reads
them and hands them to the `recon` metrics as `inversion_pairs`.
"""


import numpy as np
import torch

from torch_utils import distributed

from . import detectors
from .frechet import frechet_distance
from .lpips import normalised_weights

#----------------------------------------------------------------------------
# Per-image metrics on uint8 images.

def gaussian_window(size=11, sigma=1.5):
    """Normalised 2D Gaussian `[size, size]`, float64."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    return np.outer(g, g)


def ssim(img0, img1, data_range=255.0, window_size=11, sigma=1.5, k1=0.01, k2=0.03):
    """Structural similarity (Wang et al. 2004) `[N]`: Gaussian-weighted local statistics
    (population variances), 'valid' windows only, averaged over positions and channels.

    img0, img1: `[N, C, H, W]` tensors in [0, data_range]; H, W >= window_size.
    """
    x, y = img0.to(torch.float64), img1.to(torch.float64)
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f'ssim needs two [N, C, H, W] tensors of one shape, got {list(x.shape)} and {list(y.shape)}')
    if min(x.shape[2:]) < window_size:
        raise ValueError(f'ssim needs images of at least {window_size}x{window_size} px')
    C = x.shape[1]
    w = torch.from_numpy(gaussian_window(window_size, sigma)).to(x.device)[None, None].repeat(C, 1, 1, 1)

    def filt(v):
        return torch.nn.functional.conv2d(v, w, groups=C)
    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x ** 2
    var_y = filt(y * y) - mu_y ** 2
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return smap.mean(dim=(1, 2, 3))


@torch.no_grad()
def pixel_metrics(img, target, drange=(0, 255), mask=None, with_ssim=True, dtype=torch.float64):
    """Images `[N, C, H, W]` with values in `drange` -> dict(mse `[N]`, psnr `[N]` in dB, ssim `[N]`): MSE and PSNR
    on [0, 1] intensities with `img` clamped to `drange`, SSIM on [0, 255]; computed in `dtype`.

    The reconstruction metrics pass uint8-valued images (the default); an inversion passes its float32 images
    in [-1, 1] (`drange=(-1, 1), with_ssim=False, dtype=torch.float32`), where a mask (None, or `[N, 1, H, W]`
    in [0, 1]) weights the pixels of the means (SSIM ignores it).
    """
    lo, hi = drange
    x, y = img.to(dtype).clamp(lo, hi), target.to(dtype)
    sq = ((x - y) / (hi - lo)).square()
    if mask is not None:
        sq = sq * normalised_weights(mask.to(device=sq.device, dtype=dtype))
    mse = sq.mean(dim=(1, 2, 3))
    out = dict(mse=mse, psnr=-10 * torch.log10(mse.clamp_min(1e-12)))
    if with_ssim:
        scale = 255 / (hi - lo)
        out['ssim'] = ssim((x - lo) * scale, (y - lo) * scale)
    return out


def to_lpips_resolution(img, max_res=256):
    """`[N, C, H, W]` float -> area-downsampled to max_res if larger (NVIDIA's projector does so for LPIPS)."""
    if img.shape[2] > max_res:
        img = torch.nn.functional.interpolate(img, size=(max_res, max_res), mode='area')
    return img

#----------------------------------------------------------------------------

@torch.no_grad()
def reconstruction_metrics(recon, target, distance_fn=None, feature_fn=None, batch_size=16, device=None):
    """Aggregates over a set of pairs: dict(num_images, mse, psnr, ssim [, lpips] [, fid]) (means).

    recon, target: uint8 `[N, H, W, C]`. distance_fn(img0, img1) -> LPIPS `[n]` on float
    `[n, 3, h, w]` in [0, 255] (None: no LPIPS). feature_fn(uint8 `[n, 3, H, W]`) -> `[n, D]`
    (None: no FID; needs N >= 2).
    """
    device = torch.device('cpu') if device is None else torch.device(device)
    per = dict(mse=[], psnr=[], ssim=[], lpips=[])
    feats_r, feats_t = [], []

    def one_batch(k):                                                     # -> {key: CPU tensor} of batch k
        sl = slice(k * batch_size, (k + 1) * batch_size)
        r, t = (torch.from_numpy(a[sl]).permute(0, 3, 1, 2).contiguous().to(device) for a in (recon, target))
        out = {key: value.cpu() for key, value in pixel_metrics(r, t).items()}
        r3 = r.repeat([1, 3, 1, 1]) if r.shape[1] == 1 else r
        t3 = t.repeat([1, 3, 1, 1]) if t.shape[1] == 1 else t
        if distance_fn is not None:
            out['lpips'] = distance_fn(to_lpips_resolution(t3.to(torch.float32)),
                                       to_lpips_resolution(r3.to(torch.float32))).to(torch.float64).cpu()
        if feature_fn is not None:
            out['feats_r'] = feature_fn(r3).to(torch.float64).cpu()
            out['feats_t'] = feature_fn(t3).to(torch.float64).cpu()
        return out

    # Sharded (torchrun): batch k on rank k mod K, gathered in batch order (same aggregates as 1 process).
    for part in distributed.map_in_order(one_batch, (recon.shape[0] + batch_size - 1) // batch_size):
        for key in per:
            if key in part:
                per[key].append(part[key])
        if feature_fn is not None:
            feats_r.append(part['feats_r'])
            feats_t.append(part['feats_t'])
    out = dict(num_images=int(recon.shape[0]))
    for key, values in per.items():
        if values:
            v = torch.cat(values).numpy()
            out[key] = float(v.mean())
            if key == 'lpips':
                out['lpips_median'] = float(np.median(v))
    if feature_fn is not None:
        if recon.shape[0] < 2:
            raise ValueError('FID of reconstructions needs at least 2 images')
        fr, ft = torch.cat(feats_r).numpy(), torch.cat(feats_t).numpy()
        out['fid'] = frechet_distance(fr.mean(0), np.cov(fr, rowvar=False, bias=True),
                                      ft.mean(0), np.cov(ft, rowvar=False, bias=True))
    return out


def compute_recon(opts, with_detectors=True):
    """The `recon` metric for `opts.inversion_pairs` (`inversion.run_files.read_pairs` of a run, read by every
    rank: each measures a share): LPIPS (NVIDIA's VGG16 `vgg16-nvlabs`, or opts.distance_fn), MSE, PSNR, SSIM,
    and FID of reconstructions vs targets (Inception). Without detectors: the pixel metrics only. Results are
    prefixed 'recon_'; rank > 0 returns {}."""
    run = opts.get('inversion_pairs')
    if run is None:
        raise ValueError('the recon metrics need the pairs of an inversion run (calc_metrics.py --inversion-run)')
    distance_fn = feature_fn = None
    if with_detectors:
        distance_fn = opts.lpips_distance()
        inception = detectors.get_detector(opts.detector(detectors.INCEPTION_URL), device=opts.device,
                                           verbose=opts.progress)

        def feature_fn(images):
            return inception(images, return_features=True)
    stats = reconstruction_metrics(run['recon'], run['target'], distance_fn=distance_fn, feature_fn=feature_fn,
                                   batch_size=max(1, min(opts.batch_size, 16)), device=opts.device)
    if opts.rank != 0:
        return {}
    results = {f'recon_{k}': v for k, v in stats.items()}
    results['recon_missing'] = len(run['missing'])
    if run['recorded_lpips'] is not None:
        results['recon_recorded_lpips'] = float(np.nanmean(run['recorded_lpips']))
    return results

#----------------------------------------------------------------------------
