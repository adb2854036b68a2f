"""Reconstruction metrics of an inversion run (paper, table 2): LPIPS, MSE, PSNR, SSIM per
image, and the FID between the set of reconstructions and the set of targets.

Expected run folder (written by invert.py; only the reconstructions are required):
    <name>-recon.png        the reconstruction of image <name> (uint8 RGB or L), required;
    results.jsonl           one JSON object per finished image: 'name', optionally 'source';
                            gives the image list (else: every *-recon.png);
    targets/<name>.<ext>    the target as inverted (optional; preferred when present);
    <name>-pair.png         target | reconstruction side by side (used when targets/ lacks it);
    run.json / summary.json 'settings.target' / 'args.target': where the targets came from.
Target lookup per image: targets/ file, else the left half of the pair image, else the
record's 'source' (a path, or 'archive.zip:member') or a file under the recorded target whose
name gives <name>, re-read, centre-cropped to a square and resized (LANCZOS) to the
reconstruction's size. The first two are exactly what the inversion compared against; the
last is an approximation of its preprocessing.
"""

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from torch_utils import distributed
from torch_utils.image_io import IMAGE_EXTENSIONS

from . import detectors
from .lpips import normalised_weights
from .frechet import frechet_distance


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
# Reading a run folder.

def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _read_records(run_dir):
    """[(name, record)] from results.jsonl (torn or foreign lines skipped), in file order, deduplicated."""
    path = Path(run_dir) / 'results.jsonl'
    records = {}
    if path.is_file():
        for line in path.read_text(errors='replace').splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get('name'), str):
                records[rec['name']] = rec
    return list(records.items())


def _load_rgb(fp, channels):
    with PIL.Image.open(fp) as img:
        img = PIL.ImageOps.exif_transpose(img)
        if img.mode in ('RGBA', 'LA', 'P'):
            img = img.convert('RGBA')
            background = PIL.Image.new('RGBA', img.size, (255, 255, 255, 255))
            img = PIL.Image.alpha_composite(background, img)
        return img.convert('L' if channels == 1 else 'RGB')


def _as_hwc(img):
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _safe_name(rel_path):
    stem = os.path.splitext(rel_path)[0].replace('\\', '/').strip('/')
    return re.sub(r'[^A-Za-z0-9._-]+', '_', stem.replace('/', '_')).strip('._') or 'image'


def _recorded_target(run_dir):
    run = _read_json(Path(run_dir) / 'run.json') or {}
    summary = _read_json(Path(run_dir) / 'summary.json') or {}
    for value in ((run.get('settings') or {}).get('target'), (run.get('args') or {}).get('target'),
                  (summary.get('args') or {}).get('target')):
        if isinstance(value, str) and value:
            return value
    return None


def _find_in_target(target, name):
    """(path, member) of the file under `target` (folder, zip or single file) whose name maps to `name`."""
    target = os.path.expanduser(target)
    if os.path.isfile(target) and zipfile.is_zipfile(target):
        with zipfile.ZipFile(target) as zf:
            for member in zf.namelist():
                if os.path.splitext(member)[1].lower() in IMAGE_EXTENSIONS and _safe_name(member) == name:
                    return target, member
    elif os.path.isfile(target):
        return (target, None) if _safe_name(os.path.basename(target)) == name else None
    elif os.path.isdir(target):
        for root, _dirs, files in os.walk(target):
            for f in files:
                rel = os.path.relpath(os.path.join(root, f), target)
                ext = os.path.splitext(f)[1].lower()
                if ext in IMAGE_EXTENSIONS and name in (_safe_name(rel), f'{_safe_name(rel)}_{ext[1:]}'):
                    return os.path.join(root, f), None
    return None


def _read_source(source, target, name):
    """(path, member) for a record's 'source' ('path' or 'archive.zip:member'), or a search under target."""
    candidates = []
    if isinstance(source, str) and source:
        candidates.append((source, None))
        head, sep, member = source.rpartition(':')
        if sep and head.lower().endswith('.zip'):
            candidates.insert(0, (head, member))
    for path, member in candidates:
        if target and not os.path.isabs(path) and os.path.isdir(target):
            path = os.path.join(target, path)
        if os.path.isfile(path) and (member is None or zipfile.is_zipfile(path)):
            return path, member
    return _find_in_target(target, name) if target else None


def _center_square(img):
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def load_target(run_dir, name, record, recon_shape, target_root=None):
    """uint8 `[H, W, C]` target for `name`, or None when none can be found (lookup: module docstring)."""
    run_dir = Path(run_dir)
    h, w, c = recon_shape
    for ext in IMAGE_EXTENSIONS:
        path = run_dir / 'targets' / f'{name}{ext}'
        if path.is_file():
            img = _load_rgb(path, c)
            if img.size != (w, h):
                img = _center_square(img).resize((w, h), PIL.Image.LANCZOS)
            return _as_hwc(img)
    pair = run_dir / f'{name}-pair.png'
    if pair.is_file():
        img = _as_hwc(_load_rgb(pair, c))
        if img.shape[0] == h and img.shape[1] == 2 * w:
            return img[:, :w]
    found = _read_source((record or {}).get('source'), target_root, name)
    if found is None:
        return None
    path, member = found
    if member is None:
        img = _load_rgb(path, c)
    else:
        with zipfile.ZipFile(path) as zf, zf.open(member) as fp:
            img = _load_rgb(fp, c)
    return _as_hwc(_center_square(img).resize((w, h), PIL.Image.LANCZOS))


def read_inversion_run(run_dir):
    """Pairs of an inversion run -> dict(names [N], recon uint8 `[N, H, W, C]`, target uint8
    `[N, H, W, C]`, missing [names without a target or reconstruction], recorded_lpips [N] or None)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f'inversion run folder {run_dir} does not exist')
    records = _read_records(run_dir)
    if not records:
        records = [(p.name[:-len('-recon.png')], {}) for p in sorted(run_dir.glob('*-recon.png'))]
    if not records:
        raise ValueError(f'{run_dir} has no results.jsonl and no *-recon.png: not an inversion run folder')
    target_root = _recorded_target(run_dir)
    names, recons, targets, missing, lpips = [], [], [], [], []
    for name, rec in records:
        path = run_dir / f'{name}-recon.png'
        if not path.is_file():
            missing.append(name)
            continue
        with PIL.Image.open(path) as img:
            channels = 1 if img.mode in ('L', 'I;16', 'I') else 3
        recon = _as_hwc(_load_rgb(path, channels))
        target = load_target(run_dir, name, rec, recon.shape, target_root)
        if target is None:
            missing.append(name)
            continue
        names.append(name)
        recons.append(recon)
        targets.append(target)
        lpips.append(rec.get('lpips') if isinstance(rec.get('lpips'), (int, float)) else np.nan)
    if not names:
        raise ValueError(f'{run_dir}: no reconstruction has a readable target ({len(missing)} missing); '
                         f'keep targets/ or the *-pair.png files, or the recorded target path')
    shapes = {r.shape for r in recons} | {t.shape for t in targets}
    if len(shapes) != 1:
        raise ValueError(f'{run_dir}: images have different shapes {sorted(shapes)}')
    lpips = np.array(lpips, dtype=np.float64)
    return dict(names=names, recon=np.stack(recons), target=np.stack(targets), missing=missing,
                recorded_lpips=None if np.isnan(lpips).all() else lpips)

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
    """The `recon` metric for `opts.inversion_run`: LPIPS (NVIDIA's VGG16 `vgg16-nvlabs`, or opts.distance_fn),
    MSE, PSNR, SSIM, and FID of reconstructions vs targets (Inception). Without detectors: the
    pixel metrics only. Results are prefixed 'recon_'; rank > 0 returns {}."""
    if not opts.inversion_run:
        raise ValueError('the recon metrics need an inversion run folder (calc_metrics.py --inversion-run)')
    run = read_inversion_run(opts.inversion_run)                          # Every rank: it measures a share.
    distance_fn = feature_fn = None
    if with_detectors:
        distance_fn = opts.lpips_distance()
        inception = detectors.get_detector(opts.detector(detectors.INCEPTION_URL), device=opts.device, verbose=opts.progress)

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
