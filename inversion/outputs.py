"""Files written by an inversion run, all atomically (temporary file + rename).

Per image `<name>`: `<name>.npy` (latent `[*space.param_shape]`, float32), `<name>-recon.png`,
`<name>-pair.png` (target | reconstruction), optional `frames/<name>/step%05d.png`.
Per run: `results.jsonl` (one line per finished image: the line is the completion marker),
`latents.npz`, `lpips_curves.npz`, `lpips_curve.png`, `summary.json`, `skipped.json`,
`run.json` (settings), `log.txt`, and `state/<group>.pt` (resumable state of an unfinished
batch, removed when the batch is done).

Resume format (`state/<group>.pt`, read with `torch.load(weights_only=True)`): a dict with
`version`, `names` (the batch's images, in order), `settings` (result-affecting settings),
`step`, `params` `[N, *param_shape]`, `optimizer` (Adam state_dict, CPU tensors), `history`
`[step, N]` (LPIPS per step) and `seconds` (optimisation time so far).
"""

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch
from tqdm import tqdm

from dnnlib.util import atomic_write
from torch_utils.image_io import append_jsonl, save_json, save_png
from torch_utils.ops import self_check

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


def file_sha256(path, chunk=1 << 20):
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()

#----------------------------------------------------------------------------
# Per-image outputs.

def pair_image(target, recon):
    """uint8 `[H, W, C]` target and reconstruction -> `[H, 2W, C]` side by side."""
    return np.concatenate([target, recon], axis=1)


def write_image_outputs(outdir, name, latent, target, recon):
    """`<name>.npy` (latent), `<name>-recon.png`, `<name>-pair.png`. target/recon: uint8 `[H, W, C]`."""
    outdir = Path(outdir)
    save_npy(outdir / f'{name}.npy', np.asarray(latent, dtype=np.float32))
    save_png(outdir / f'{name}-recon.png', recon)
    save_png(outdir / f'{name}-pair.png', pair_image(target, recon))


def write_frame(outdir, name, step, target, recon):
    """`frames/<name>/step%05d.png` (target | reconstruction) for a progress video."""
    save_png(Path(outdir) / 'frames' / name / f'step{step:05d}.png', pair_image(target, recon))

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
        text = ''.join(json.dumps(r) + '\n' for r in records.values())
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return records


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
# LPIPS-vs-step plot: matplotlib when installed, else drawn with PIL.

def plot_curves(path, curves, truncation_end=None, title='LPIPS during inversion'):
    """Write a PNG with every image's curve (thin) and their mean (thick).

    curves: {name: array [T]} (NaN = missing); truncation_end: step where truncation stops (dotted line).
    """
    if not curves:
        return
    arr = _pad(list(curves.values()))                                       # [N, T], NaN-padded
    with np.errstate(all='ignore'):
        mean = np.nanmean(arr, axis=0)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        atomic_write(path, lambda tmp: _plot_pil(arr, mean, truncation_end, title).save(tmp, format='PNG'), suffix='.png')
        return
    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    steps = np.arange(arr.shape[1])
    for row in arr:
        ax.plot(steps, row, color='tab:blue', alpha=0.25, linewidth=0.6)
    ax.plot(steps, mean, color='tab:red', linewidth=2.5, label=f'mean of {arr.shape[0]}')
    if truncation_end:
        ax.axvline(truncation_end, color='gray', linestyle=':', label='truncation off')
    ax.set_xlabel('step')
    ax.set_ylabel('LPIPS')
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.legend()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png'), suffix='.png')


def _pad(rows):
    length = max(len(r) for r in rows)
    out = np.full([len(rows), length], np.nan)
    for i, r in enumerate(rows):
        out[i, :len(r)] = np.asarray(r, dtype=np.float64)
    return out


def _plot_pil(arr, mean, truncation_end, title, size=(800, 500)):
    """Minimal line plot with PIL: axes, 5 labelled y ticks, x ticks at quarters."""
    w, h = size
    left, right, top, bottom = 64, 20, 34, 44
    img = PIL.Image.new('RGB', size, 'white')
    draw = PIL.ImageDraw.Draw(img)
    font = PIL.ImageFont.load_default()
    n_steps = max(arr.shape[1] - 1, 1)
    finite = arr[np.isfinite(arr)]
    y_max = float(finite.max()) * 1.05 if finite.size and finite.max() > 0 else 1.0

    def xy(step, value):
        x = left + (w - left - right) * step / n_steps
        y = h - bottom - (h - top - bottom) * value / y_max
        return (x, y)

    def polyline(values, fill, width):
        segment = []
        for s, v in enumerate(values):
            if np.isfinite(v):
                segment.append(xy(s, float(v)))
            elif segment:
                if len(segment) > 1:
                    draw.line(segment, fill=fill, width=width)
                segment = []
        if len(segment) > 1:
            draw.line(segment, fill=fill, width=width, joint='curve')

    for k in range(6):
        value = y_max * k / 5
        _, y = xy(0, value)
        draw.line([(left - 4, y), (w - right, y)], fill=(230, 230, 230) if k else 'black')
        draw.text((4, y - 6), f'{value:.3f}', fill='black', font=font)
    for k in range(5):
        step = round(n_steps * k / 4)
        x, y0 = xy(step, 0)
        draw.line([(x, y0), (x, y0 + 4)], fill='black')
        draw.text((x - 10, y0 + 8), str(step), fill='black', font=font)
    draw.line([xy(0, 0), (left, top)], fill='black')
    if truncation_end:
        x, _ = xy(truncation_end, 0)
        for y in range(top, h - bottom, 6):
            draw.line([(x, y), (x, y + 2)], fill='gray')
    for row in arr:
        polyline(row, fill=(150, 175, 225), width=1)
    polyline(mean, fill=(200, 30, 30), width=3)
    draw.text((left, 10), f'{title} (thin: {arr.shape[0]} images, thick: mean)', fill='black', font=font)
    draw.text((w // 2 - 10, h - 16), 'step', fill='black', font=font)
    return img

#----------------------------------------------------------------------------

class RunLog:
    """Messages to the console (through tqdm, so bars are not broken) and to `<outdir>/log.txt`."""

    def __init__(self, path, echo=True):
        self.path = Path(path)
        self.echo = echo
        self_check.log_to(self.path)   # CUDA kernel self-check verdicts

    def __call__(self, msg, echo=True):
        line = f'{time.strftime("%Y-%m-%d %H:%M:%S")} {msg}'
        with open(self.path, 'a') as f:
            f.write(line + '\n')
        if self.echo and echo:
            tqdm.write(msg)

#----------------------------------------------------------------------------
