"""The interpolation job behind interpolate.py: latents from an inversion run (or from seeds), straight paths
between pairs of them in the space they live in, images of the paths, and the table-3 metrics of
"Overparameterization Improves StyleGAN Inversion" (sec. 4.3; the mathematics is `metrics.interpolation`).
The files it writes: docs/files.md."""

import dataclasses
import os
from pathlib import Path
from typing import Optional

import numpy as np
import PIL.Image
import torch
from tqdm import tqdm

from figures import sheets
from inversion import run_files
from inversion.job_runner import InversionError
from metrics import detectors, interpolation as interp, lpips as lpips_lib
from metrics.feature_stats import MetricOptions, compute_feature_stats_for_dataset
from torch_utils import checkpoint, distributed
from torch_utils.files import check_outdir, make_outdir, save_json
from torch_utils.image_io import save_png, to_uint8
from training.sampling import class_label, latent_from_seed

OVERVIEW_MAX_ROWS = 64
MIN_FRAME_PX = 128                   # Frames of the PNG strips are upscaled (nearest) to at least this.

#----------------------------------------------------------------------------
# Where the latents come from: an inversion run (`run_files.read_run_ws`), or seeds.

def seed_ws(G, seeds, truncation_psi=1.0, truncation_cutoff=None, class_idx=None, device='cpu'):
    """(names 'seedNNNN', ws `[N, num_ws, *w_shape]`) of the latents generate.py draws for these
    seeds (`training.sampling.latent_from_seed`, NVIDIA's convention), mapped with the same
    truncation and class label, so the path endpoints are generate.py's images."""
    z = torch.cat([latent_from_seed(G, int(s), device=device) for s in seeds])
    c = class_label(G, class_idx, len(seeds), device=device)
    ws = G.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
    return [f'seed{int(s):04d}' for s in seeds], ws

#----------------------------------------------------------------------------
# Images.

def save_gif(path, frames, duration_ms=80):
    """uint8 frames `[T, H, W, C]` -> an endlessly looping GIF that plays forward, then back."""
    order = list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))
    pictures = [PIL.Image.fromarray(frames[k][:, :, 0] if frames.shape[3] == 1 else frames[k]) for k in order]
    partial = f'{path}.tmp'
    pictures[0].save(partial, format='GIF', save_all=True, append_images=pictures[1:], duration=duration_ms, loop=0)
    os.replace(partial, path)


def pair_strip(frames, title):
    """uint8 frames `[T, H, W, C]` of one path -> one titled strip: every frame upscaled (nearest) to
    >= `MIN_FRAME_PX`, its t = k / (T - 1) above it."""
    big = np.stack([sheets.upscale(f, MIN_FRAME_PX) for f in frames])
    ts = [f't = {k / (len(frames) - 1):.3g}' for k in range(len(frames))] if len(frames) > 1 else None
    return sheets.labelled_grid(big[None], col_labels=ts, title=title)


def write_pair_images(G, ws, pairs, outdir, steps=8, midpoints_only=False, grid=True, gif=False, batch_size=8,
                      names=None):
    """Write the images of every pair: titled, upscaled `pair-<i>-<j>.png` strips (grid) or
    `midpoint-<i>-<j>.png`, and GIFs (gif, at the generator's resolution). names: of the latents."""
    outdir = Path(outdir)
    for i, j in pairs:
        a, b = (str(k) if names is None else names[k] for k in (i, j))
        if midpoints_only:
            frames = to_uint8(interp.midpoints(G, ws[i:i + 1], ws[j:j + 1], batch_size))      # [1, H, W, C]
            save_png(outdir / f'midpoint-{i}-{j}.png', pair_strip(frames, ['midpoint (t = 0.5) of', a, b]))
        else:
            frames = to_uint8(interp.interpolation_frames(G, ws[i], ws[j], steps, batch_size))  # [T, H, W, C]
            if grid:
                save_png(outdir / f'pair-{i}-{j}.png', pair_strip(frames, f'{a} -> {b} (pair {i}-{j})'))
            if gif:
                save_gif(outdir / f'pair-{i}-{j}.gif', frames)


def overview_rows(outdir, pairs, midpoints_only=False):
    """The overview's rows, read back from the pair (or midpoint) PNGs of the first pairs: in a
    sharded run other ranks wrote some of them."""
    stem = 'midpoint' if midpoints_only else 'pair'
    rows = []
    for i, j in pairs[:OVERVIEW_MAX_ROWS]:
        with PIL.Image.open(Path(outdir) / f'{stem}-{i}-{j}.png') as img:
            row = np.asarray(img)
        rows.append(row[:, :, None] if row.ndim == 2 else row)
    return rows


#----------------------------------------------------------------------------
# Metrics.

def real_feature_stats(data, resolution, detector_spec, device, max_real=None, batch_size=64, progress=False,
                       cache=True):
    """Inception (mean `[D]`, cov `[D, D]`) of the images in `data` (zip or folder),
    cached as calc_metrics caches them."""
    opts = MetricOptions(dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=data, max_size=None,
                                             xflip=False, use_labels=False, resolution=resolution),
                         device=device, batch_size=batch_size, progress=progress, num_workers=0, cache=cache)
    return compute_feature_stats_for_dataset(opts, detector_spec, dict(return_features=True), max_items=max_real,
                                             capture_mean_cov=True).get_mean_cov()


def compute_metrics(G, ws, pairs, *, lpips=None, detector_path=None, data=None, max_real=None, device='cpu',
                    batch_size=8, progress=False, cache=True):
    """Table-3 metrics (`metrics.interpolation.interpolation_metrics`) plus what they were measured with.

    lpips: an LPIPS spec (`metrics.lpips`, as invert.py's --lpips), or None: NVIDIA's vgg16.pt resolved through
    `detector_path` as the metrics resolve it. FID of the midpoints only when `data` (real images) is given.
    """
    if lpips is None:
        lpips = lpips_lib.spec_from_detector(detectors.resolve_detector(detectors.VGG16_URL, detector_path))
    distance_fn = lpips_lib.lpips_distance_fn(lpips, device=device)
    feature_fn = real = inception_spec = None
    if data is not None:
        inception_spec = detectors.resolve_detector(detectors.INCEPTION_URL, detector_path)
        inception = detectors.get_detector(inception_spec, device=device)

        def feature_fn(images):
            return inception(images.to(device), return_features=True)
        real = real_feature_stats(data, G.img_resolution, inception_spec, device, max_real, 64, progress, cache)
    with tqdm(total=len(pairs), desc='pairs', disable=not progress, leave=False) as bar:
        result = interp.interpolation_metrics(G, ws, pairs, distance_fn, feature_fn=feature_fn, real_features=real,
                                              batch_size=batch_size, progress=bar.update)
    result.update(lpips=str(lpips), lpips_network=distance_fn.lpips_network,
                  inception=None if inception_spec is None else str(inception_spec))
    return result

#----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class InterpolationConfig:
    """The options of interpolate.py (its --help says more)."""
    network:        Optional[str] = None        # Generator checkpoint, path or URL.
    inversion_run:  Optional[str] = None        # invert.py output folder (its latents.npz) ...
    seeds:          Optional[tuple] = None      # ... or seeds to sample latents from, as generate.py does.
    pairs:          str = 'all'                 # 'all' or index pairs like '0-1,2-5'.
    steps:          int = 8                     # Frames per path (images and GIFs).
    midpoints_only: bool = False                # Only the t = 1/2 image of each pair.
    grid:           bool = True                 # A PNG per pair (frames side by side) and overview.png.
    gif:            bool = False                # Also an animated GIF per pair.
    metrics:        bool = False                # Table-3 metrics: path length, FID of midpoints (with data).
    lpips:          Optional[str] = None        # LPIPS spec of the path lengths; None = NVIDIA's vgg16.pt through
                                                # detector_path, as the metrics resolve it.
    detector_path:  Optional[str] = None        # Where NVIDIA's Inception / VGG16 files are (metrics.detectors).
    data:           Optional[str] = None        # Real images (zip or folder) for the FID of midpoints.
    max_real:       Optional[int] = None        # At most this many real images for FID.
    truncation_psi: float = 1.0                 # Truncation of seed latents.
    class_idx:      Optional[int] = None        # Class label of seed latents (conditional networks).
    batch_size:     int = 8                     # Images per generator call.
    device:         Optional[str] = None        # None = cuda when available.
    trust_pickle:   bool = False                # Unrestricted unpickling of the checkpoint (trusted files).
    progress:       bool = False                # tqdm bars.
    cache:          bool = True                 # Reuse cached real-image features.

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_json(self):
        return dataclasses.asdict(self)


def run_interpolation(cfg, outdir, log=None):
    """Everything interpolate.py does; writes its files (docs/files.md) into `outdir` and returns the dict
    written to interpolation.json. Latents: `cfg.inversion_run` (a folder) or `cfg.seeds` (a list of ints),
    exactly one. Bad inputs raise InversionError (one line) before anything is written; `log(message)` gets
    warnings."""
    c = cfg
    network, inversion_run, seeds, steps = c.network, c.inversion_run, c.seeds, c.steps
    check_outdir(outdir)                            # Before loading anything: a bad --outdir costs nothing.
    if (inversion_run is None) == (seeds is None):
        raise InversionError('pass exactly one of --inversion-run DIR or --seeds RANGE')
    if inversion_run is not None and not Path(inversion_run).is_dir():
        raise InversionError(f'--inversion-run {inversion_run}: no such folder')
    if steps < 2:
        raise InversionError(f'--steps {steps}: a path needs at least 2 frames')
    device = distributed.resolve_device(c.device)
    G, _local, sha = checkpoint.load_frozen_network(network, trust=c.trust_pickle, device=device, option='--network')
    if inversion_run is not None:
        names, ws, space, run_sha = run_files.read_run_ws(G, inversion_run, device)
        if run_sha and run_sha != sha and log is not None:
            log(f'Warning: {inversion_run} was inverted with another checkpoint (sha256 {run_sha[:12]}...)')
    else:
        try:
            names, ws = seed_ws(G, seeds, c.truncation_psi, class_idx=c.class_idx, device=device)
        except ValueError as err:
            raise InversionError(str(err)) from None
        space = 'W' if G.latent_rows is not None else 'w'
    try:
        pair_list = interp.parse_pairs(c.pairs, n=len(names))
    except ValueError as err:
        raise InversionError(f'--pairs: {err}') from None
    if not pair_list:
        raise InversionError('--pairs: no pairs (need at least 2 latents)')

    outdir = Path(make_outdir(outdir))
    # Sharded (torchrun): each rank draws every K-th pair; rank 0 assembles the overview and the JSON.
    write_pair_images(G, ws, distributed.split_by_rank(pair_list), outdir, steps, c.midpoints_only, c.grid, c.gif,
                      c.batch_size, names=names)
    distributed.barrier()
    if c.grid and distributed.get_rank() == 0:
        save_png(outdir / 'overview.png', sheets.stack_rows(overview_rows(outdir, pair_list, c.midpoints_only)))
    record = dict(network=str(network), network_sha256=sha,
                  inversion_run=None if inversion_run is None else str(inversion_run),
                  seeds=None if seeds is None else [int(s) for s in seeds], space=space, names=names,
                  pairs=[list(p) for p in pair_list], steps=int(steps), midpoints_only=bool(c.midpoints_only),
                  truncation_psi=None if seeds is None else float(c.truncation_psi))
    if c.metrics:
        try:
            summary = compute_metrics(G, ws, pair_list, lpips=c.lpips, detector_path=c.detector_path, data=c.data,
                                      max_real=c.max_real, device=device, batch_size=c.batch_size,
                                      progress=c.progress, cache=c.cache)
        except detectors.DetectorUnavailableError as err:
            raise InversionError(str(err)) from None
        lengths = summary.pop('path_lengths')
        record['per_pair'] = [dict(i=i, j=j, a=names[i], b=names[j], path_length=float(v))
                              for (i, j), v in zip(pair_list, lengths)]
        record['summary'] = summary
    if distributed.get_rank() == 0:
        save_json(outdir / 'interpolation.json', record)
    distributed.barrier()
    return record

#----------------------------------------------------------------------------
