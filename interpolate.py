"""Interpolate between inverted (or sampled) latents; optionally compute the table-3 metrics of
"Overparameterization Improves StyleGAN Inversion" (path length over 5 segments, FID of midpoints).

Outputs in --outdir: `interpolation.json` (settings, pairs, per-pair path lengths, summary),
`pair-<i>-<j>.png` (frames side by side), `overview.png` (one row per pair, at most 64 rows),
`pair-<i>-<j>.gif` with --gif, `midpoint-<i>-<j>.png` with --midpoints-only.
"""

import os
from pathlib import Path

import click
import numpy as np
import PIL.Image
import torch

from dnnlib.util import parse_range
from inversion.runner import InversionError, load_generator
from inversion.spaces import LatentSpace
from metrics import detectors
from metrics import interpolation as interp
from torch_utils.image_io import make_grid, save_json, save_png, to_uint8

OVERVIEW_MAX_ROWS = 64

#----------------------------------------------------------------------------
# Latents.

def load_inversion_ws(G, run_dir, device='cpu'):
    """(names, ws `[N, num_ws, *G.w_shape]`, space name, checkpoint sha256) from `<run_dir>/latents.npz`.

    ws is an expand view of the stored latents on `device` (no copy per layer/row: W+ of 100
    images at R = 512 would otherwise take gigabytes); indexing a subset materialises only it.
    """
    path = Path(run_dir) / 'latents.npz'
    if not path.is_file():
        raise click.ClickException(f'{path} not found: --inversion-run must be a finished invert.py output folder')
    with np.load(path) as data:
        names = [str(n) for n in data['names']]
        latents = torch.from_numpy(np.asarray(data['latents'], dtype=np.float32)).to(device)
        space_name = str(data['space'])
        sha = str(data['checkpoint_sha256']) if 'checkpoint_sha256' in data else None
    if not names:
        raise click.ClickException(f'{path} holds no latents')
    try:
        space = LatentSpace.for_generator(G, space_name)
        ws = space.to_ws(latents)
    except (ValueError, AssertionError) as err:
        raise click.ClickException(f'{path} does not fit this --network: {err}') from err
    return names, ws, space_name, sha


def parse_seeds(spec):
    """'0-9' or '1,5,7' or '0-3,8' -> list of ints."""
    try:
        return parse_range(spec)
    except ValueError:
        raise click.BadParameter(f'bad seed range {spec!r} (e.g. 0-9 or 1,5,7)', param_hint='--seeds') from None


@torch.no_grad()
def sample_ws(G, seeds, truncation_psi=1.0, device='cpu'):
    """(names, ws `[N, num_ws, *w_shape]`): z from `G.sample_z` with `torch.Generator().manual_seed(seed)`, mapped."""
    ws = []
    for seed in seeds:
        z = G.sample_z(1, torch.Generator().manual_seed(int(seed)), device)
        c = torch.zeros([1, G.c_dim], device=device)
        ws.append(G.mapping(z, c, truncation_psi=truncation_psi))
    return [f'seed{s:04d}' for s in seeds], torch.cat(ws)

#----------------------------------------------------------------------------
# Images.

def save_gif(path, frames, duration_ms=80):
    """uint8 `[T, H, W, C]` -> animated GIF that plays forward then back, looping forever."""
    seq = list(frames) + list(frames[-2:0:-1])
    images = [PIL.Image.fromarray(f[:, :, 0] if f.shape[2] == 1 else f) for f in seq]
    tmp = f'{path}.tmp'
    images[0].save(tmp, format='GIF', save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    os.replace(tmp, path)


def write_pair_images(G, ws, pairs, outdir, steps, midpoints_only, grid, gif, batch_size):
    """Frames (or midpoints) of each pair as PNG/GIF; returns the overview rows (uint8 `[H, W', C]`)."""
    rows = []
    for i, j in pairs:
        if midpoints_only:
            img = to_uint8(interp.midpoints(G, ws[i:i + 1], ws[j:j + 1], batch_size))[0]
            save_png(outdir / f'midpoint-{i}-{j}.png', img)
            row = img[None]
        else:
            frames = to_uint8(interp.interpolation_frames(G, ws[i], ws[j], steps, batch_size))   # [T, H, W, C]
            row = frames
            if grid:
                save_png(outdir / f'pair-{i}-{j}.png', make_grid(frames, cols=len(frames)))
            if gif:
                save_gif(outdir / f'pair-{i}-{j}.gif', frames)
        if len(rows) < OVERVIEW_MAX_ROWS:
            rows.append(make_grid(row, cols=len(row)))
    return rows

#----------------------------------------------------------------------------
# Metrics.

def real_feature_stats(data, resolution, detector_spec, device, max_real, batch_size, progress, cache=True):
    """Inception (mean, cov) of the images in `data` (zip or folder), cached like calc_metrics."""
    from metrics.feature_stats import MetricOptions, compute_feature_stats_for_dataset
    dataset_kwargs = dict(class_name='training.dataset.ImageFolderDataset', path=data, max_size=None, xflip=False,
                          use_labels=False, resolution=resolution)
    opts = MetricOptions(dataset_kwargs=dataset_kwargs, device=device, batch_size=batch_size, progress=progress,
                         num_workers=0, cache=cache)
    stats = compute_feature_stats_for_dataset(opts, detector_spec, dict(return_features=True), max_items=max_real,
                                              capture_mean_cov=True)
    return stats.get_mean_cov()


def inception_feature_fn(spec, device):
    """fn(uint8 images `[n, 3, H, W]`) -> Inception pool features `[n, 2048]` (or the spec's width)."""
    detector = detectors.get_detector(spec, device=device)

    def feature_fn(images):
        return detector(images.to(device), return_features=True)
    return feature_fn


def compute_metrics(G, ws, pairs, *, lpips=None, detector_path=None, data=None, max_real=None, device='cpu',
                    batch_size=8, progress=False, cache=True):
    """Table-3 metrics (see metrics.interpolation). lpips: VGG16 spec (default: NVIDIA's vgg16.pt resolved
    through detector_path); FID of midpoints only when `data` is given."""
    lpips_spec = lpips or detectors.resolve_detector(detectors.VGG16_URL, detector_path)
    distance_fn = detectors.lpips_distance_fn(lpips_spec, device=device)
    feature_fn = real = inception_spec = None
    if data is not None:
        inception_spec = detectors.resolve_detector(detectors.INCEPTION_URL, detector_path)
        feature_fn = inception_feature_fn(inception_spec, device)
        real = real_feature_stats(data, G.img_resolution, inception_spec, device, max_real, 64, progress, cache)
    from tqdm import tqdm
    with tqdm(total=len(pairs), desc='pairs', disable=not progress, leave=False) as bar:
        result = interp.interpolation_metrics(G, ws, pairs, distance_fn, feature_fn=feature_fn, real_features=real,
                                              batch_size=batch_size, progress=bar.update)
    result.update(lpips=str(lpips_spec), inception=None if inception_spec is None else str(inception_spec))
    return result


def run_interpolation(network, outdir, *, inversion_run=None, seeds=None, pairs='all', steps=8, midpoints_only=False,
                      grid=True, gif=False, metrics=False, lpips=None, detector_path=None, data=None, max_real=None,
                      truncation_psi=1.0, batch_size=8, device='cpu', trust_pickle=False, progress=False, cache=True):
    """Everything `interpolate.py` does; returns the dict written to interpolation.json.
    Raises click.ClickException (one line) for bad inputs."""
    if (inversion_run is None) == (seeds is None):
        raise click.UsageError('pass exactly one of --inversion-run DIR or --seeds RANGE')
    if inversion_run is not None and not Path(inversion_run).is_dir():
        raise click.ClickException(f'--inversion-run {inversion_run}: no such folder')
    if steps < 2:
        raise click.BadParameter('needs at least 2 frames', param_hint='--steps')
    device = torch.device(device)
    try:
        G, sha = load_generator(network, trust_pickle=trust_pickle, device=device)
    except InversionError as err:
        raise click.ClickException(str(err)) from err
    if inversion_run is not None:
        names, ws, space, run_sha = load_inversion_ws(G, inversion_run, device)
        if run_sha and run_sha != sha:
            click.echo(f'Warning: {inversion_run} was inverted with another checkpoint (sha256 {run_sha[:12]}...)', err=True)
    else:
        names, ws = sample_ws(G, parse_seeds(seeds), truncation_psi, device)
        space = 'W' if G.latent_rows is not None else 'w'
    try:
        pair_list = interp.parse_pairs(pairs, n=len(names))
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint='--pairs') from None
    if not pair_list:
        raise click.BadParameter('no pairs (need at least 2 latents)', param_hint='--pairs')

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = write_pair_images(G, ws, pair_list, outdir, steps, midpoints_only, grid, gif, batch_size)
    if grid and rows:
        width = max(r.shape[1] for r in rows)
        padded = [np.pad(r, [(0, 0), (0, width - r.shape[1]), (0, 0)]) for r in rows]
        save_png(outdir / 'overview.png', np.concatenate(padded, axis=0))

    out = dict(network=str(network), network_sha256=sha, inversion_run=None if inversion_run is None else str(inversion_run),
               seeds=seeds, space=space, names=names, pairs=[list(p) for p in pair_list], steps=int(steps),
               midpoints_only=bool(midpoints_only))
    if metrics:
        try:
            result = compute_metrics(G, ws, pair_list, lpips=lpips, detector_path=detector_path, data=data,
                                     max_real=max_real, device=device, batch_size=batch_size, progress=progress,
                                     cache=cache)
        except detectors.DetectorUnavailableError as err:
            raise click.ClickException(str(err)) from None
        lengths = result.pop('path_lengths')
        out['per_pair'] = [dict(i=i, j=j, a=names[i], b=names[j], path_length=float(v))
                           for (i, j), v in zip(pair_list, lengths)]
        out['summary'] = result
    save_json(outdir / 'interpolation.json', out)
    return out

#----------------------------------------------------------------------------

@click.command()
@click.option('--network', 'network', required=True, help='Generator checkpoint (pickle path or URL)')
@click.option('--inversion-run', type=str, help='invert.py output folder (reads latents.npz)')
@click.option('--seeds', type=str, help='Sample latents instead: seeds like 0-9 or 1,5,7')
@click.option('--pairs', default='all', show_default=True, help="'all' or index pairs like 0-1,2-5")
@click.option('--steps', type=int, default=8, show_default=True, help='Frames per path (images and GIFs)')
@click.option('--midpoints-only', is_flag=True, help='Write only the t = 1/2 image of each pair')
@click.option('--outdir', required=True, type=str, help='Output folder')
@click.option('--grid/--no-grid', default=True, show_default=True, help='PNG per pair (frames side by side) + overview.png')
@click.option('--gif', is_flag=True, help='Also write an animated GIF per pair')
@click.option('--metrics', is_flag=True, help='Table-3 metrics: path length over 5 segments, FID of midpoints (with --data)')
@click.option('--lpips', type=str, help="VGG16 LPIPS detector spec for path lengths (default NVIDIA's vgg16.pt)")
@click.option('--detector-path', type=str, help="Local Inception/VGG16 TorchScript file or folder, 'inception=P,vgg16=P', or random:DIM:SEED")
@click.option('--data', type=str, help='Real images (zip or folder) for FID of midpoints')
@click.option('--max-real', type=int, help='Use at most this many real images for FID')
@click.option('--cache/--no-cache', default=True, show_default=True, help='Reuse cached real-image features')
@click.option('--trunc', 'truncation_psi', type=float, default=1.0, show_default=True, help='Truncation psi (--seeds only)')
@click.option('--batch', 'batch_size', type=click.IntRange(min=1), default=8, show_default=True, help='Images per generator call')
@click.option('--device', default='cuda' if torch.cuda.is_available() else 'cpu', show_default=True)
@click.option('--trust-pickle', is_flag=True, help='Allow arbitrary code in the checkpoint pickle (trusted files only)')
@click.option('--progress/--no-progress', default=True, show_default=True)
def main(**kwargs):
    """Interpolate linearly between latents (in the space they were inverted in) and measure it.

    \b
    python interpolate.py --network=G.pkl --inversion-run=runs/W --pairs=all --metrics \\
        --detector-path=~/detectors --data=celebahq256.zip --outdir=out/interp-W --no-grid
    """
    outdir = kwargs.pop('outdir')
    out = run_interpolation(kwargs.pop('network'), outdir, **kwargs)
    if 'summary' in out:
        s = out['summary']
        line = f"pairs {s['num_pairs']}  path length mean {s['ppl_mean']:.4f}  median {s['ppl_median']:.4f}"
        if 'fid_midpoints' in s:
            line += f"  FID(midpoints) {s['fid_midpoints']:.2f}"
        click.echo(line)
    click.echo(f"Wrote {os.path.join(outdir, 'interpolation.json')} ({len(out['pairs'])} pairs)")


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
