"""Files written by an inversion run, all atomically (temporary file + rename).

Per image `<name>`: `<name>.npy` (latent `[*space.param_shape]`, float32), `<name>-recon.png`,
`<name>-pair.png` (titled, upscaled panels: target | reconstruction with its LPIPS [| mask]), optional
`frames/<name>/step%05d.png`.
Per run: `results.jsonl` (one line per finished image: the line is the completion marker),
`overview.png` (targets over reconstructions with LPIPS, the first `OVERVIEW_MAX` by name),
`latents.npz`, `lpips_curves.npz`, `lpips_curve.png`, `summary.json`, `skipped.json`,
`run.json` (settings), `log.txt`, and `state/<group>.pt` (resumable state of an unfinished
batch, removed when the batch is done).

Resume format (`state/<group>.pt`, read with `torch.load(weights_only=True)`): a dict with
`version`, `names` (the batch's images, in order), `settings` (result-affecting settings),
`step`, `params` `[N, *param_shape]`, `optimizer` (Adam state_dict, CPU tensors), `history`
`[step, N]` (LPIPS per step) and `seconds` (optimisation time so far).
"""

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

from dnnlib.util import append_line, atomic_write
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


#----------------------------------------------------------------------------
# Per-image outputs.

def pair_image(target, recon):
    """uint8 `[H, W, C]` target and reconstruction -> `[H, 2W, C]` side by side."""
    return np.concatenate([target, recon], axis=1)


MASK_TINT = (255, 0, 160)      # colour laid over the ignored pixels in pictures


def mask_overlay(image, mask, strength=0.7):
    """uint8 image `[H, W, C]` and mask `[H, W]` (255 = keep) -> RGB `[H, W, 3]` with the ignored part tinted."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    ignored = (1 - mask.astype(np.float32) / 255)[:, :, None] * strength
    out = rgb.astype(np.float32) * (1 - ignored) + np.array(MASK_TINT, np.float32) * ignored
    return np.rint(out).astype(np.uint8)


def write_image_outputs(outdir, name, latent, target, recon, mask=None, lpips=None):
    """`<name>.npy` (latent), `<name>-recon.png`, `<name>-pair.png` (titled panels: target, reconstruction
    with its LPIPS, and with a mask the target with the ignored pixels tinted). target/recon: uint8 `[H, W, C]`,
    mask: uint8 `[H, W]` (255 = keep) or None."""
    outdir = Path(outdir)
    save_npy(outdir / f'{name}.npy', np.asarray(latent, dtype=np.float32))
    save_png(outdir / f'{name}-recon.png', recon)
    panels = [(target, 'target'), (recon, 'reconstruction' if lpips is None else f'recon, LPIPS {lpips:.3f}')]
    if mask is not None:
        panels.append((mask_overlay(target, mask), f'mask ({100 * float(mask.mean()) / 255:.0f}% kept)'))
    save_png(outdir / f'{name}-pair.png', titled_panels(panels, title=name))


#----------------------------------------------------------------------------
# Labelled pictures: nearest-neighbour upscaled panels with captions in a readable font.

MIN_PANEL = 128                # px: panels are upscaled (nearest neighbour, integer factor) to at least this
OVERVIEW_MAX = 48              # images shown in overview.png (the first ones by name)


def font(size=14):
    """PIL's default font at `size` px (Pillow >= 10.1), else its small bitmap font."""
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:
        return PIL.ImageFont.load_default()


def upscale(image, min_side=MIN_PANEL):
    """uint8 `[H, W, C]` -> RGB `[kH, kW, 3]`, k the smallest integer with kH >= min_side (nearest neighbour)."""
    k = max(1, -(-int(min_side) // image.shape[0]))
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    return rgb.repeat(k, axis=0).repeat(k, axis=1)


def _text_width(draw, text, fnt):
    left, _, right, _ = draw.textbbox((0, 0), text, font=fnt)
    return right - left


def _fit(draw, text, fnt, width):
    """`text`, shortened with '...' to fit `width` px."""
    if _text_width(draw, text, fnt) <= width:
        return text
    while len(text) > 1 and _text_width(draw, text + '...', fnt) > width:
        text = text[:-1]
    return text + '...'


def titled_panels(panels, title=None, min_side=MIN_PANEL, font_size=14):
    """[(uint8 `[H, W, C]`, caption)] -> RGB uint8 picture: the panels side by side, each upscaled to
    >= `min_side` px and captioned underneath, with `title` above them."""
    tiles = [upscale(img, min_side) for img, _ in panels]
    fnt, pad = font(font_size), 4
    line = font_size + 6
    width = sum(t.shape[1] for t in tiles) + pad * (len(tiles) + 1)
    height = max(t.shape[0] for t in tiles) + line * (2 if title else 1) + pad * 2
    sheet = PIL.Image.new('RGB', (width, height), 'white')
    draw = PIL.ImageDraw.Draw(sheet)
    y0 = pad + (line if title else 0)
    if title:
        draw.text((pad, pad), _fit(draw, title, fnt, width - 2 * pad), fill='black', font=fnt)
    x = pad
    for tile, (_, caption) in zip(tiles, panels):
        sheet.paste(PIL.Image.fromarray(tile), (x, y0))
        draw.text((x, y0 + tile.shape[0] + 2), _fit(draw, caption, fnt, tile.shape[1]), fill='black', font=fnt)
        x += tile.shape[1] + pad
    return np.asarray(sheet)


def overview_image(entries, title, cols=8, min_side=MIN_PANEL, font_size=14):
    """entries [(name, target `[H, W, C]`, recon, lpips or None, mask `[H, W]` or None)] -> RGB uint8 picture:
    per image a column of target (ignored pixels tinted) over reconstruction, captioned with name and LPIPS."""
    fnt, pad, line = font(font_size), 6, font_size + 4
    tiles = [(n, upscale(mask_overlay(t, m) if m is not None else t, min_side), upscale(r, min_side), lp)
             for n, t, r, lp, m in entries]
    th, tw = tiles[0][1].shape[:2]
    cols = max(1, min(cols, len(tiles)))
    rows = -(-len(tiles) // cols)
    cell_w, cell_h = tw + pad, 2 * th + 2 * line + pad
    width, height = cols * cell_w + pad, rows * cell_h + line + 2 * pad
    sheet = PIL.Image.new('RGB', (width, height), 'white')
    draw = PIL.ImageDraw.Draw(sheet)
    draw.text((pad, pad), _fit(draw, title, fnt, width - 2 * pad), fill='black', font=fnt)
    for i, (name, target, recon, lp) in enumerate(tiles):
        r, c = divmod(i, cols)
        x, y = pad + c * cell_w, 2 * pad + line + r * cell_h
        sheet.paste(PIL.Image.fromarray(target), (x, y))
        sheet.paste(PIL.Image.fromarray(recon), (x, y + th))
        draw.text((x, y + 2 * th + 1), _fit(draw, name, fnt, tw), fill='black', font=fnt)
        draw.text((x, y + 2 * th + 1 + line), 'LPIPS n/a' if lp is None else f'LPIPS {lp:.4f}', fill='black',
                  font=fnt)
    return np.asarray(sheet)


def write_overview(path, entries, title):
    """`overview.png` from `overview_image(entries, title)` (nothing when there are no entries)."""
    if entries:
        save_png(path, overview_image(entries, title))


def write_frame(outdir, name, step, target, recon):
    """`frames/<name>/step%05d.png` (target | reconstruction, at their own size) for a progress video."""
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
        ax.axvline(truncation_end, color='gray', linestyle=':', label=f'truncation off from step {truncation_end}')
        ax.annotate(f'truncation off (step {truncation_end})', (truncation_end, 1), xycoords=('data', 'axes fraction'),
                    xytext=(4, -14), textcoords='offset points', color='dimgray')
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
    left, right, top, bottom = 64, 20, 40, 48
    img = PIL.Image.new('RGB', size, 'white')
    draw = PIL.ImageDraw.Draw(img)
    fnt = font(13)
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
        draw.text((4, y - 7), f'{value:.3f}', fill='black', font=fnt)
    for k in range(5):
        step = round(n_steps * k / 4)
        x, y0 = xy(step, 0)
        draw.line([(x, y0), (x, y0 + 4)], fill='black')
        draw.text((x - 10, y0 + 8), str(step), fill='black', font=fnt)
    draw.line([xy(0, 0), (left, top)], fill='black')
    if truncation_end:
        x, _ = xy(truncation_end, 0)
        for y in range(top, h - bottom, 6):
            draw.line([(x, y), (x, y + 2)], fill='gray')
        draw.text((x + 4, top + 2), f'truncation off (step {truncation_end})', fill=(90, 90, 90), font=fnt)
    for row in arr:
        polyline(row, fill=(150, 175, 225), width=1)
    polyline(mean, fill=(200, 30, 30), width=3)
    draw.text((left, 6), f'{title} (thin: {arr.shape[0]} images, thick red: mean)', fill='black', font=fnt)
    draw.text((w // 2 - 10, h - 20), 'step', fill='black', font=fnt)
    draw.text((4, top - 26), 'LPIPS', fill='black', font=fnt)
    return img

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
