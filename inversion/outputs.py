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
import torch
from tqdm import tqdm

from figures import sheets
from torch_utils.files import append_jsonl, append_line, atomic_write, save_json
from torch_utils.image_io import save_png
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
