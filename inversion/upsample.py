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

import dataclasses
import math
import os
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from figures import sheets
from metrics.lpips import DEFAULT_LPIPS, lpips_network_name
from metrics.reconstruction import pixel_metrics
from torch_utils import distributed
from torch_utils.image_io import save_png, to_uint8
from training.latent_spaces import AUTO

from . import run_files
from .compiled_step import InversionCompiler
from .job_runner import (
    InversionError,
    check_compile_mode,
    check_job_outdir,
    default_summary,
    list_job_targets,
    load_generator,
    run_job,
)
from .losses import build_loss
from .optimize import Inverter
from .targets import decode_target, to_tensor

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

    def prepare_compile(self, image_shape, device):
        """See `InversionLoss.prepare_compile`: the LPIPS network sees the enlarged low-res images."""
        if self.perceptual is not None:
            n, c, h, w = image_shape
            k = max(1, math.ceil(MIN_LPIPS_SIZE / (h // self.factor)))
            self.perceptual.prepare_compile((n, c, k * (h // self.factor), k * (w // self.factor)), device)

    def forward(self, img, target_state):
        low = self.down(img)
        mse = ((low - target_state['image']) / 2).square().mean(dim=(1, 2, 3))
        if self.kind == 'mse':
            return dict(loss=mse, lpips=mse, mse=mse)
        feats = self.perceptual.features(enlarge_for_lpips(low))
        lpips = self.perceptual.perceptual.distance(feats, target_state['features'])
        loss = lpips if self.kind == 'lpips-lowres' else lpips + self.mse_weight * mse
        return dict(loss=loss, lpips=lpips, mse=mse)


def build_lowres_loss(kind='lpips-lowres', factor=16, mode='nearest', lpips=DEFAULT_LPIPS, device=None, seed=0):
    """`LowResLoss` with an LPIPS model from the `--lpips` spec when `kind` needs one."""
    perceptual = None if kind == 'mse' else build_loss(lpips, device=device, resolution=None, seed=seed)
    loss = LowResLoss(kind, factor, mode, perceptual)
    return loss.to(device) if device is not None else loss

#----------------------------------------------------------------------------

def upsample_invert(G, lowres, space, *, factor=16, steps=100, truncation=0.9, loss='lpips-lowres', mode='nearest',
                    lpips=DEFAULT_LPIPS, lr=0.05, loss_module=None, callback=None, compiler=None):
    """Super-resolve a batch of low-res images by latent optimisation (PULSE-style).

    Args:
        G:           generator (images `[N, C, res, res]`), `res` divisible by `factor`.
        lowres:      `[N, C, res/factor, res/factor]` in [-1, 1], on the device to run on.
        space:       `training.latent_spaces.LatentSpace` for G.
        truncation:  psi applied before EVERY step (`truncation_until=1.0`); 1 = off.
        loss, mode, lpips: see `LowResLoss` / `build_lowres_loss` (ignored when `loss_module` is given).
        callback:    called with (inverter, step_info) after every step (e.g. progress, instrumentation).
        compiler:    None (eager) or an `inversion.compiled_step.InversionCompiler`.
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
                        truncation_until=1.0, compiler=compiler)
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
    out = pixel_metrics(images, truth, drange=(-1, 1), with_ssim=False, dtype=torch.float32)
    if lpips_loss is not None:
        out['lpips'] = lpips_loss(images.clamp(-1, 1), lpips_loss.prepare_target(truth))['lpips']
    return out

#----------------------------------------------------------------------------

class UpsampleJob:
    """The upsampling job for `job_runner.run_job`: optimise so that `downsample(G(w))` matches the low-res target.

    Inputs are high-res images (`from_highres`: downsampled here, and kept as ground truth for PSNR/LPIPS)
    or low-res images (res/factor px). Per image it writes `<name>.npy`, `<name>_upsampled.png` (G(w)) and
    `<name>_compare.png` (lowres | downsample(G(w)) | G(w) | ground truth, each shown at res x res).
    """

    kind = 'upsample'

    def __init__(self, cfg, G, space, settings, loss_module, hr_loss, args):
        """cfg: the `UpsampleConfig` (device resolved); settings: the run.json settings; args: the recorded options."""
        self.cfg, self.G, self.space, self.settings, self.args = cfg, G, space, settings, args
        self.device = torch.device(cfg.device)
        self.loss_module, self.hr_loss, self.from_highres = loss_module, hr_loss, cfg.target is not None
        self.compiler = InversionCompiler(cfg.compile)                      # --compile: one per job, shared by batches
        self.factor = cfg.factor
        self.decode_resolution = G.img_resolution if self.from_highres else G.img_resolution // self.factor
        self.curve_key = 'lowres_mse' if cfg.loss == 'mse' else 'lowres_lpips'
        self.curve_title = f'{self.curve_key} during upsampling ({space.name}, {self.factor}x)'

    def decode(self, source):
        return decode_target(source, self.decode_resolution, crop='center', channels=self.G.img_channels)

    def make_inverter(self, images):
        c = self.cfg
        x = to_tensor(images).to(self.device)
        low = downsample(x, self.factor, c.mode) if self.from_highres else x
        return Inverter(self.G, self.loss_module, low, self.space, steps=c.steps, lr=c.lr, truncation_psi=c.truncation,
                        truncation_until=1.0, compiler=self.compiler)

    def on_step(self, outdir, names, images, info):
        pass

    @torch.no_grad()
    def finish(self, outdir, names, images, inverter):
        high = inverter.synthesize()
        out = self.loss_module(high, inverter.target_state)
        low = inverter.target_state['image']
        truth = to_tensor(images).to(self.device) if self.from_highres else None
        hr = highres_metrics(high, truth, self.hr_loss) if truth is not None else None
        k = self.G.img_resolution // low.shape[-1]
        enlarge = lambda x: x.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)  # noqa: E731
        tiles = [to_uint8(enlarge(low)), to_uint8(enlarge(self.loss_module.down(high))), to_uint8(high)]
        if truth is not None:
            tiles.append(to_uint8(truth))
        latents = inverter.params.detach().cpu().numpy()
        metrics = []
        for i, name in enumerate(names):
            run_files.save_npy(outdir / f'{name}.npy', latents[i].astype(np.float32))
            save_png(outdir / f'{name}_upsampled.png', tiles[2][i])
            save_png(outdir / f'{name}_compare.png', sheets.side_by_side([t[i] for t in tiles]))
            rec = dict(lowres_mse=float(out['mse'][i]))
            if self.loss_module.kind != 'mse':
                rec['lowres_lpips'] = float(out['lpips'][i])
            if hr is not None:
                rec.update({key: float(v[i]) for key, v in hr.items()})
            metrics.append(rec)
        return metrics

    def summarize(self, results, skipped):
        s = self.settings
        return default_summary(results, skipped, self, self.args, num_images=len(results),
                               input='target' if self.from_highres else 'lowres',
                               lpips_network=lpips_network_name(s['lpips']), compile=self.compiler.summary(),
                               **{k: s[k] for k in ('network_sha256', 'factor', 'mode', 'loss', 'lpips', 'lr',
                                                    'truncation', 'truncation_until')})


@dataclasses.dataclass(frozen=True)
class UpsampleConfig:
    """The options of an upsampling run: upsample.py's flags (its --help says more), and the Python API's."""
    network:      Optional[str] = None          # Checkpoint path or URL (its G_ema).
    target:       Optional[str] = None          # High-res images (folder, file or zip), downsampled by factor.
    lowres:       Optional[str] = None          # Or: already low-res images, res / factor px (one of the two).
    factor:       int = 16                      # Downsampling factor.
    mode:         str = 'nearest'               # Downsampling operator: nearest | area (MODES).
    space:        str = AUTO                    # w | w+ | W | W+ | auto (W for overparameterized G, else w+).
    steps:        int = 100                     # Adam steps.
    lr:           float = 0.05                  # Adam learning rate.
    truncation:   float = 0.9                   # psi toward the mean latent before every step; 1 = off.
    loss:         str = 'lpips-lowres'          # Low-res loss: lpips-lowres | mse | both (LOSSES).
    lpips:        str = DEFAULT_LPIPS           # LPIPS spec (metrics.lpips).
    batch:        int = 8                       # Images optimised together.
    save_every:   int = 100                     # Steps between resumable states; 0 = never.
    seed:         int = 0                       # Seed (of the vgg-random trunk).
    device:       Optional[str] = None          # None = cuda when available.
    compile:      str = 'auto'                  # auto | on | off: the step through torch.compile (compiled_step).
    trust_pickle: bool = dataclasses.field(default=False, metadata=dict(recorded=False))  # Unrestricted unpickling.
    progress:     bool = dataclasses.field(default=True, metadata=dict(recorded=False))   # tqdm bars, console lines.

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_json(self, outdir=None):
        """The options a run records (run.json's and summary.json's 'args'), and `outdir`."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get('recorded', True)}
        return out if outdir is None else dict(out, outdir=str(outdir))


def run_upsample(cfg, outdir):
    """The job behind upsample.py: super-resolve every image of `cfg.target` (high-res, downsampled here by
    `cfg.factor`) or of `cfg.lowres` (already low-res) into `outdir`, with invert.py's runner (`job_runner`:
    skipped.json, log.txt, progress bars, resume, latents.npz, results.jsonl with lowres_mse, lowres_lpips and,
    with a target, psnr / mse / lpips against the ground truth; files per image in `UpsampleJob`). Returns the
    summary dict. Raises InversionError for bad inputs.
    """
    if (cfg.target is None) == (cfg.lowres is None):
        raise InversionError('give exactly one of --target (high-res images) or --lowres (low-res images)')
    for name, value, low in (('--factor', cfg.factor, 1), ('--steps', cfg.steps, 1), ('--batch', cfg.batch, 1)):
        if int(value) < low:
            raise InversionError(f'{name} {value}: must be a positive integer')
    if not 0 <= float(cfg.truncation) <= 1 or not float(cfg.lr) > 0:
        raise InversionError(f'--truncation must be in [0, 1] and --lr positive, got {cfg.truncation} and {cfg.lr}')
    if cfg.mode not in MODES or cfg.loss not in LOSSES:
        raise InversionError(f'--mode must be one of {MODES} and --loss one of {LOSSES}')
    check_compile_mode(cfg.compile)
    args = cfg.to_json(outdir=outdir)                                      # The device as given.
    device = distributed.resolve_device(cfg.device)
    cfg = cfg.replace(device=str(device))
    input_path = cfg.target if cfg.target is not None else cfg.lowres
    sources, ignored = list_job_targets(input_path)
    check_job_outdir(outdir)
    G, sha256 = load_generator(cfg.network, cfg.trust_pickle, device)
    lspace = G.latent_space(cfg.space)
    res, factor = G.img_resolution, int(cfg.factor)
    if res % factor or res // factor < 1:
        raise InversionError(f'--factor {factor}: the generator\'s resolution {res} is not divisible by it')
    settings = dict(network_sha256=sha256, input='target' if cfg.target is not None else 'lowres',
                    target=os.path.abspath(os.path.expanduser(str(input_path))), space=lspace.name,
                    factor=factor, mode=cfg.mode, loss=cfg.loss, lpips=str(cfg.lpips), steps=int(cfg.steps),
                    lr=float(cfg.lr), truncation=float(cfg.truncation), truncation_until=1.0, seed=int(cfg.seed))
    try:
        loss_module = build_lowres_loss(cfg.loss, factor, cfg.mode, cfg.lpips, device=device, seed=cfg.seed)
        hr_loss = None if cfg.loss == 'mse' or cfg.target is None else build_loss(cfg.lpips, device=device,
                                                                                  resolution=256, seed=cfg.seed)
    except (OSError, ValueError, RuntimeError) as err:
        raise InversionError(f'Cannot set up --lpips {cfg.lpips}: {err}') from err
    job = UpsampleJob(cfg, G, lspace, settings, loss_module, hr_loss, args)
    header = (f'Upsampling {factor}x ({cfg.mode}, loss {cfg.loss}) with {cfg.network} ({res} px); space {lspace.name} '
              f'{list(lspace.param_shape)}; device {device}')
    return run_job(job, sources, ignored, outdir, batch=int(cfg.batch), device=device, save_every=cfg.save_every,
                   progress=cfg.progress, header=header, run_info=dict(network=str(cfg.network), args=args))
