"""PULSE-style super-resolution with a (possibly overparameterized) StyleGAN generator
(Poirier-Ginter et al., "Overparameterization Improves StyleGAN Inversion", sec. 5.1).

A high-resolution image `x` is unknown; only its low-resolution version `y = D(x)` is given,
where `D` downsamples by an integer `factor` (the paper: 16x, nearest). We optimise a latent
so that `D(G(w))` matches `y`, and return `G(w)` as the upsampled image. This reuses the
inversion machinery (`optimize.Inverter`): only the loss changes (`LowResLoss` applies `D`
to the generated image before comparing), and truncation toward the mean latent is kept on
for ALL steps (`truncation_until=1.0`), as the paper does for this task.

Downsampling operators (`MODES`):
    nearest  keep the pixel at offset `factor // 2` inside every `factor x factor` block
             (the centre pixel for even factors). Adjoint: zero-fill, i.e. put each low-res
             pixel back at its offset and zeros elsewhere.
    area     block average (`avg_pool2d`). Adjoint: repeat each low-res pixel over its block
             and divide by `factor**2`.

Losses (`LOSSES`), computed on the low-resolution images:
    mse           pixel MSE in [0, 1] units.
    lpips-lowres  LPIPS between the low-res images, both enlarged by nearest repetition to at
                  least `MIN_LPIPS_SIZE` (32) pixels so that VGG16's deepest layers are not empty
                  (16x of a 256 px image is only 16 px).
    both          lpips-lowres + mse.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils.image_io import save_json, save_png, to_uint8

from .losses import build_loss, pixel_metrics
from .optimize import Inverter
from .runner import check_generator, load_generator, resolve_space
from .targets import load_target, scan_targets, to_tensor

#----------------------------------------------------------------------------

MODES = ('nearest', 'area')
LOSSES = ('lpips-lowres', 'mse', 'both')
MIN_LPIPS_SIZE = 32


def _check_factor(img, factor):
    factor = int(factor)
    if factor < 1:
        raise ValueError(f'factor must be a positive integer, got {factor}')
    h, w = img.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f'image size {h}x{w} is not divisible by factor {factor}')
    return factor


def downsample(img, factor=16, mode='nearest'):
    """`[N, C, H, W]` -> `[N, C, H/factor, W/factor]` with the operator `mode` (see module doc).

    'nearest' takes `img[..., o::factor, o::factor]` with `o = factor // 2`; 'area' averages blocks.
    """
    factor = _check_factor(img, factor)
    if mode == 'nearest':
        o = factor // 2
        return img[..., o::factor, o::factor]
    if mode == 'area':
        return F.avg_pool2d(img, factor) if factor > 1 else img
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')


def downsample_nearest(img, factor=16):
    """Nearest downsampling `[N, C, H, W]` -> `[N, C, H/factor, W/factor]` (pixel at offset factor//2)."""
    return downsample(img, factor, 'nearest')


def downsample_adjoint(y, factor=16, mode='nearest'):
    """Adjoint `D^T` of `downsample`: `[N, C, h, w]` -> `[N, C, h*factor, w*factor]`.

    nearest: zero-fill (each value at its block's offset `factor // 2`); area: repetition / factor**2.
    Satisfies `<D x, y> = <x, D^T y>` for all x, y.
    """
    factor = int(factor)
    if mode == 'nearest':
        o = factor // 2
        out = y.new_zeros(*y.shape[:-2], y.shape[-2] * factor, y.shape[-1] * factor)
        out[..., o::factor, o::factor] = y
        return out
    if mode == 'area':
        return y.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1) / (factor * factor)
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')


def adjoint_gap(shape, factor=16, mode='nearest', seed=0):
    """Check helper: |<D x, y> - <x, D^T y>| relative to |<D x, y>| for random x `[*shape]`, y (float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randn(downsample(x, factor, mode).shape, generator=g, dtype=torch.float64)
    lhs = (downsample(x, factor, mode) * y).sum()
    rhs = (x * downsample_adjoint(y, factor, mode)).sum()
    return float((lhs - rhs).abs() / lhs.abs().clamp_min(1e-12))


def enlarge_for_lpips(img, min_size=MIN_LPIPS_SIZE):
    """`[N, C, h, w]` -> nearest-repeated by the smallest integer k with `k*h >= min_size` (k >= 1)."""
    k = max(1, math.ceil(min_size / img.shape[-2]))
    return img if k == 1 else img.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)

#----------------------------------------------------------------------------

class LowResLoss(torch.nn.Module):
    """Loss for `optimize.Inverter` comparing `downsample(G(w))` with a low-res target.

    Interface as `losses.InversionLoss`: `prepare_target(lowres [N, C, h, w])` -> state dict;
    `forward(img [N, C, H, W], state)` -> dict(loss `[N]`, lpips `[N]`, mse `[N]`). The `lpips` entry
    (what the Inverter records per step) is the low-res LPIPS, or the low-res MSE when `kind='mse'`.

    Args:
        kind:       'lpips-lowres', 'mse' or 'both'.
        factor:     downsampling factor.
        mode:       'nearest' or 'area'.
        perceptual: an `InversionLoss` (built with resolution None) for the LPIPS kinds, else None.
        mse_weight: weight of the MSE term for 'both' (1).
    """

    def __init__(self, kind, factor, mode='nearest', perceptual=None, mse_weight=1.0):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f'loss must be one of {LOSSES}, got {kind!r}')
        if kind != 'mse' and perceptual is None:
            raise ValueError(f'loss {kind!r} needs a perceptual (LPIPS) model')
        self.kind, self.factor, self.mode = kind, int(factor), mode
        self.perceptual = perceptual
        self.mse_weight = float(mse_weight)

    def down(self, img):
        """High-res `[N, C, H, W]` -> low-res `[N, C, H/f, W/f]` (float32)."""
        return downsample(img.to(torch.float32), self.factor, self.mode)

    @torch.no_grad()
    def prepare_target(self, lowres):
        lowres = lowres.to(torch.float32)
        feats = self.perceptual.features(enlarge_for_lpips(lowres)) if self.perceptual is not None else None
        return dict(image=lowres, features=feats)

    def forward(self, img, target_state):
        low = self.down(img)
        mse = ((low - target_state['image']) / 2).square().mean(dim=(1, 2, 3))
        if self.kind == 'mse':
            return dict(loss=mse, lpips=mse, mse=mse)
        feats = self.perceptual.features(enlarge_for_lpips(low))
        lpips = self.perceptual.perceptual.distance(feats, target_state['features'])
        loss = lpips if self.kind == 'lpips-lowres' else lpips + self.mse_weight * mse
        return dict(loss=loss, lpips=lpips, mse=mse)


def build_lowres_loss(kind='lpips-lowres', factor=16, mode='nearest', lpips='vgg', device=None, seed=0):
    """`LowResLoss` with an LPIPS model from the `--lpips` spec when `kind` needs one."""
    perceptual = None if kind == 'mse' else build_loss(lpips, device=device, resolution=None, seed=seed)
    loss = LowResLoss(kind, factor, mode, perceptual)
    return loss.to(device) if device is not None else loss

#----------------------------------------------------------------------------

def upsample_invert(G, lowres, space, *, factor=16, steps=100, truncation=0.9, loss='lpips-lowres', mode='nearest',
                    lpips='vgg', lr=0.05, loss_module=None, callback=None):
    """Super-resolve a batch of low-res images by latent optimisation (PULSE-style).

    Args:
        G:           generator (images `[N, C, res, res]`), `res` divisible by `factor`.
        lowres:      `[N, C, res/factor, res/factor]` in [-1, 1], on the device to run on.
        space:       `spaces.LatentSpace` for G.
        truncation:  psi applied before EVERY step (`truncation_until=1.0`); 1 = off.
        loss, mode, lpips: see `LowResLoss` / `build_lowres_loss` (ignored when `loss_module` is given).
        callback:    called with (inverter, step_info) after every step (e.g. progress, instrumentation).
    Returns:
        dict(latents `[N, *space.param_shape]`, images `[N, C, res, res]` (the upsampled images),
        recon_lowres `[N, C, h, w]`, lowres_mse `[N]`, lowres_lpips `[N]` (None for 'mse'),
        history `[steps, N]` (per-step value of the loss's `lpips` entry), inverter).
    """
    res = G.img_resolution
    if res % factor:
        raise ValueError(f'generator resolution {res} is not divisible by factor {factor}')
    if tuple(lowres.shape[-2:]) != (res // factor, res // factor):
        raise ValueError(f'low-res targets must be {res // factor}x{res // factor} for factor {factor}, '
                         f'got {tuple(lowres.shape[-2:])}')
    if loss_module is None:
        loss_module = build_lowres_loss(loss, factor, mode, lpips, device=lowres.device)
    inverter = Inverter(G, loss_module, lowres, space, steps=steps, lr=lr, truncation_psi=truncation,
                        truncation_until=1.0)
    for info in inverter.run():
        if callback is not None:
            callback(inverter, info)
    with torch.no_grad():
        images = inverter.synthesize()
        out = loss_module(images, inverter.target_state)
    return dict(latents=inverter.params.detach(), images=images, recon_lowres=loss_module.down(images),
                lowres_mse=out['mse'], lowres_lpips=None if loss_module.kind == 'mse' else out['lpips'],
                history=inverter.history, inverter=inverter)


@torch.no_grad()
def highres_metrics(images, truth, lpips_loss=None):
    """Upsampled `[N, C, H, W]` vs ground truth -> dict(psnr `[N]`, mse `[N]`, lpips `[N]` if a loss is given)."""
    out = pixel_metrics(images, truth)
    if lpips_loss is not None:
        out['lpips'] = lpips_loss(images.clamp(-1, 1), lpips_loss.prepare_target(truth))['lpips']
    return out

#----------------------------------------------------------------------------

def _concat_row(tiles):
    """uint8 `[H, W, C]` tiles (same size) -> one `[H, sum W, C]` row."""
    return np.concatenate(tiles, axis=1)


def run_upsample(network, outdir, *, target=None, lowres=None, factor=16, space=None, steps=100, truncation=0.9,
                 loss='lpips-lowres', mode='nearest', lpips='vgg', lr=0.05, batch=8, device=None, trust_pickle=False,
                 log=print):
    """The job behind upsample.py: super-resolve every image of `target` (high-res, downsampled here
    by `factor`) or of `lowres` (already low-res) and write to `outdir`:

        <name>_upsampled.png   the upsampled image `G(w)` (res x res)
        <name>_compare.png     lowres | downsample(G(w)) | G(w) | ground truth (when `target`), each
                               shown at res x res (low-res images enlarged by nearest repetition)
        <name>.npy             the latent `[*space.param_shape]`
        results.jsonl          one line per image: lowres_mse, lowres_lpips, and with `target`
                               psnr / mse / lpips of G(w) against the ground truth
        summary.json           settings and means of the metrics
    Returns the summary dict.
    """
    if (target is None) == (lowres is None):
        raise ValueError('give exactly one of target (high-res images) or lowres (low-res images)')
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    G, sha256 = load_generator(network, trust_pickle=trust_pickle, device=device)
    check_generator(G)
    G = G.to(device)
    lspace = resolve_space(G, space)
    res, ch = G.img_resolution, G.img_channels
    if res % factor:
        raise ValueError(f'generator resolution {res} is not divisible by --factor {factor}')
    sources = scan_targets(target if target is not None else lowres)
    if not sources:
        raise ValueError(f'no images found in {target or lowres}')
    loss_module = build_lowres_loss(loss, factor, mode, lpips, device=device)
    hr_loss = None if loss == 'mse' else build_loss(lpips, device=device, resolution=256)
    results_path = outdir / 'results.jsonl'
    results_path.write_text('')
    records = []
    for start in range(0, len(sources), int(batch)):
        group = sources[start:start + int(batch)]
        if target is not None:
            truth = to_tensor(np.stack([load_target(s, res, channels=ch) for s in group])).to(device)
            low = downsample(truth, factor, mode)
        else:
            truth = None
            low = to_tensor(np.stack([load_target(s, res // factor, channels=ch) for s in group])).to(device)
        out = upsample_invert(G, low, lspace, factor=factor, steps=steps, truncation=truncation, lr=lr,
                              loss_module=loss_module)
        hr = highres_metrics(out['images'], truth, hr_loss) if truth is not None else None
        k = res // low.shape[-1]
        enlarge = lambda x: x.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)  # noqa: E731
        tiles = [to_uint8(enlarge(low)), to_uint8(enlarge(out['recon_lowres'])), to_uint8(out['images'])]
        if truth is not None:
            tiles.append(to_uint8(truth))
        for i, src in enumerate(group):
            save_png(outdir / f'{src.name}_upsampled.png', tiles[2][i])
            save_png(outdir / f'{src.name}_compare.png', _concat_row([t[i] for t in tiles]))
            np.save(outdir / f'{src.name}.npy', out['latents'][i].cpu().numpy())
            rec = dict(name=src.name, source=src.source, lowres_mse=float(out['lowres_mse'][i]))
            if out['lowres_lpips'] is not None:
                rec['lowres_lpips'] = float(out['lowres_lpips'][i])
            if hr is not None:
                rec.update({key: float(v[i]) for key, v in hr.items()})
            with open(results_path, 'a') as f:
                f.write(json.dumps(rec) + '\n')
            records.append(rec)
        log(f'{start + len(group)}/{len(sources)} images: low-res MSE '
            f'{float(out["lowres_mse"].mean()):.5f}')
    keys = sorted({k for r in records for k in r if k not in ('name', 'source')})
    summary = dict(network_sha256=sha256, space=lspace.name, factor=int(factor), mode=mode, loss=loss, lpips=lpips,
                   steps=int(steps), truncation=float(truncation), truncation_until=1.0, lr=float(lr),
                   num_images=len(records), input='target' if target is not None else 'lowres',
                   means={k: float(np.mean([r[k] for r in records if k in r])) for k in keys})
    save_json(outdir / 'summary.json', summary)
    return summary
