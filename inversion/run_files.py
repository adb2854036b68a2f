"""The files of an inversion run, written (atomically) and read back: one module for both. What each file holds:
docs/files.md."""

import json
import os
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from tqdm import tqdm

from figures import sheets
from torch_utils.files import append_jsonl, append_line, atomic_write, save_json
from torch_utils.image_io import IMAGE_EXTENSIONS, save_png
from torch_utils.ops import self_check
from training.latent_spaces import SPACES, LatentSpace

#----------------------------------------------------------------------------
# Atomic writing.

def save_npy(path, array):
    """Write one array as .npy atomically."""
    def write(tmp):
        with open(tmp, 'wb') as f:
            np.save(f, np.asarray(array))
    atomic_write(path, write)


def save_npz(path, **arrays):
    """Write arrays as an uncompressed .npz atomically (loadable without allow_pickle)."""
    def write(tmp):
        with open(tmp, 'wb') as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write(path, write)


def save_state(path, state):
    """torch.save a resume-state dict atomically."""
    def write(tmp):
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    atomic_write(path, write)


def load_state(path):
    """Read a resume state written by `save_state` (tensors and plain data only)."""
    return torch.load(path, map_location='cpu', weights_only=True)


#----------------------------------------------------------------------------
# Per-image outputs.

def write_image_outputs(outdir, name, latent, target, recon, mask=None, lpips=None):
    """`<name>.npy` (latent), `<name>-recon.png`, `<name>-pair.png` (titled panels: target, reconstruction
    with its LPIPS, and with a mask the target with the ignored pixels tinted). target/recon: uint8 `[H, W, C]`,
    mask: uint8 `[H, W]` (255 = keep) or None."""
    outdir = Path(outdir)
    save_npy(outdir / f'{name}.npy', np.asarray(latent, dtype=np.float32))
    save_png(outdir / f'{name}-recon.png', recon)
    panels = [(target, 'target'), (recon, 'reconstruction' if lpips is None else f'recon, LPIPS {lpips:.3f}')]
    if mask is not None:
        panels.append((sheets.mask_overlay(target, mask), f'mask ({100 * float(mask.mean()) / 255:.0f}% kept)'))
    save_png(outdir / f'{name}-pair.png', sheets.titled_panels(panels, title=name))


#----------------------------------------------------------------------------
# Pictures of a run.

OVERVIEW_MAX = 48              # images shown in overview.png (the first ones by name)


def write_overview(path, entries, title):
    """`overview.png` from `overview_image(entries, title)` (nothing when there are no entries)."""
    if entries:
        save_png(path, sheets.target_recon_overview(entries, title))


def write_frame(outdir, name, step, target, recon):
    """`frames/<name>/step%05d.png` (target | reconstruction, at their own size) for a progress video."""
    save_png(Path(outdir) / 'frames' / name / f'step{step:05d}.png', sheets.side_by_side([target, recon]))

#----------------------------------------------------------------------------
# results.jsonl: one JSON object per finished image.

def read_results(path, repair=True):
    """{name: record} from results.jsonl; unparsable lines (a torn write) are dropped and, with
    `repair`, removed from the file so that later appends start on a clean line."""
    path = Path(path)
    if not path.is_file():
        return {}
    text = path.read_text()
    records, bad = {}, bool(text) and not text.endswith('\n')
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            records[rec['name']] = rec
        except (ValueError, KeyError, TypeError):
            bad = bad or bool(line.strip())
    if bad and repair:
        rewrite_results(path, records)
    return records


def rewrite_results(path, records):
    """Replace results.jsonl by `records` ({name: record}), atomically."""
    text = ''.join(json.dumps(r) + '\n' for r in records.values())
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def append_result(path, record):
    """Append one finished image to results.jsonl (a single write)."""
    append_jsonl(path, record)

#----------------------------------------------------------------------------
# Run-level files.

def write_latents_npz(outdir, names, space_name, checkpoint_sha256, **extra):
    """`latents.npz` from the finished images' `<name>.npy`: names `[N]`, latents `[N, *param_shape]`,
    space, checkpoint_sha256, plus `extra` scalars/arrays (num_ws, w_dim, latent_rows...)."""
    outdir = Path(outdir)
    names = sorted(names)
    latents = [np.load(outdir / f'{n}.npy') for n in names]
    stacked = np.stack(latents) if latents else np.zeros([0], dtype=np.float32)
    save_npz(outdir / 'latents.npz', names=np.array(names, dtype=str), latents=stacked,
             space=np.array(space_name), checkpoint_sha256=np.array(checkpoint_sha256), **extra)


def read_curves(path):
    """{name: float32 array [steps + 1]} from lpips_curves.npz (empty if missing)."""
    path = Path(path)
    if not path.is_file():
        return {}
    with np.load(path) as data:
        return {str(n): c for n, c in zip(data['names'], data['curves'])}


def write_curves(path, curves):
    """lpips_curves.npz: names `[N]`, curves `[N, T]` (LPIPS before each step, then the final value)."""
    names = sorted(curves)
    length = max((len(curves[n]) for n in names), default=0)
    arr = np.full([len(names), length], np.nan, dtype=np.float32)
    for i, n in enumerate(names):
        arr[i, :len(curves[n])] = curves[n]
    save_npz(path, names=np.array(names, dtype=str), curves=arr)


def summarize(results, space_name, steps, args, extra=None):
    """summary.json content from {name: record}."""
    recs = list(results.values())

    def mean(key):
        vals = [r[key] for r in recs if r.get(key) is not None and np.isfinite(r[key])]
        return float(np.mean(vals)) if vals else None

    opt_seconds = sum(r['seconds'] for r in recs)
    summary = dict(images=len(recs), space=space_name, steps=steps,
                   lpips_mean=mean('lpips'), mse_mean=mean('mse'), psnr_mean=mean('psnr'),
                   lpips_median=float(np.median([r['lpips'] for r in recs])) if recs else None,
                   optimization_seconds=round(opt_seconds, 3),
                   images_per_second=(len(recs) / opt_seconds) if opt_seconds > 0 else None,
                   args=args)
    summary.update(extra or {})
    return summary


def write_summary(outdir, summary):
    save_json(Path(outdir) / 'summary.json', summary)

#----------------------------------------------------------------------------
# Reading saved latents: latents.npz (written by `write_latents_npz`) or one <name>.npy.

def infer_space(G, shape):
    """The space of G whose per-image shape is `shape`; ValueError when none or several fit."""
    fits = []
    for name in SPACES:
        try:
            space = LatentSpace.for_generator(G, name)
        except ValueError:
            continue
        if tuple(space.param_shape) == tuple(shape):
            fits.append(name)
    if len(fits) != 1:
        what = 'no latent space' if not fits else f'several spaces ({", ".join(fits)})'
        raise ValueError(f'a latent of shape {list(shape)} fits {what} of this generator (num_ws {G.num_ws}, '
                         f'w_dim {G.w_dim}, latent_rows {G.latent_rows}); pass --space')
    return fits[0]


def read_latents(path, G, space=None):
    """`latents.npz` or one `<name>.npy` -> (names, LatentSpace, float32 tensor `[N, *param_shape]`, sha256 or None).

    Raises ValueError (one line naming the file) for a missing, damaged or ill-shaped file.
    """
    path = Path(path)
    try:
        if path.suffix == '.npy':
            array = np.load(path, allow_pickle=False)[None]
            names, recorded, sha256 = [path.stem], None, None
        else:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in ('names', 'latents', 'space') if k not in data.files]
                if missing:
                    raise ValueError(f'{path} has no {", ".join(missing)}: pass the latents.npz of an invert.py run '
                                     f'or one <name>.npy')
                names, array, recorded = [str(n) for n in data['names']], data['latents'], str(data['space'])
                sha256 = str(data['checkpoint_sha256']) if 'checkpoint_sha256' in data.files else None
    except FileNotFoundError as err:
        raise ValueError(f'{path} does not exist: pass the latents.npz of an invert.py run or one <name>.npy') from err
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f'{path} cannot be read ({" ".join(str(err).split())[:120]})') from err
    if array.dtype.kind != 'f':
        raise ValueError(f'{path} holds {array.dtype} values, not float latents')
    if space is not None and recorded is not None and space != recorded:
        raise ValueError(f'{path} holds {recorded} latents; leave out --space {space} or pass other latents')
    name = space or recorded or infer_space(G, array.shape[1:])
    try:
        latent_space = LatentSpace.for_generator(G, name)
    except ValueError as err:
        raise ValueError(f'{path}: {err}') from err
    if tuple(array.shape[1:]) != tuple(latent_space.param_shape):
        raise ValueError(f'{path}: {name} latents of this generator are {list(latent_space.param_shape)} each, '
                         f'the file holds {list(array.shape[1:])}: another network?')
    return names, latent_space, torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), sha256


def read_run_ws(G, run_dir, device='cpu'):
    """(names, ws `[N, num_ws, *G.w_shape]` on `device`, space name, checkpoint sha256 or None) of the latents in
    `<run_dir>/latents.npz`, as synthesis inputs: an expanded view of the stored latents (W+ of 100 images at
    R = 512 would take gigabytes as a copy per layer); indexing a subset materialises only that subset."""
    path = Path(run_dir) / 'latents.npz'
    if not path.is_file():
        raise ValueError(f'{path} not found: --inversion-run must be a finished invert.py output folder')
    names, space, latents, sha256 = read_latents(path, G)
    if not names:
        raise ValueError(f'{path} holds no latents')
    return names, space.to_ws(latents.to(device)), space.name, sha256

#----------------------------------------------------------------------------
# Reading a finished run: its reconstructions and targets.

def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


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


def read_pairs(run_dir):
    """Pairs of an inversion run -> dict(names [N], recon uint8 `[N, H, W, C]`, target uint8
    `[N, H, W, C]`, missing [names without a target or reconstruction], recorded_lpips [N] or None)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f'inversion run folder {run_dir} does not exist')
    records = list(read_results(run_dir / 'results.jsonl', repair=False).items())
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

class RunLog:
    """Messages to the console (through tqdm, so bars are not broken) and to `<outdir>/log.txt`."""

    def __init__(self, path, echo=True):
        self.path = Path(path)
        self.echo = echo
        self_check.log_to(self.path)   # CUDA kernel self-check verdicts

    def __call__(self, msg, echo=True):
        append_line(self.path, f'{time.strftime("%Y-%m-%d %H:%M:%S")} {msg}')
        if self.echo and echo:
            tqdm.write(msg)

#----------------------------------------------------------------------------
