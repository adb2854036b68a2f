"""Generate images from a checkpoint (ours or a stylegan2-ada-pytorch pickle)."""

import time
from pathlib import Path

import click
import torch

from torch_utils import checkpoint
from torch_utils.image_io import make_grid, save_json, save_png, to_uint8
from dnnlib.util import check_outdir, cli_errors, make_outdir, parse_range
from training.sampling import generate_images


def _seeds(text):
    try:
        seeds = parse_range(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint='--seeds') from err
    if not seeds:
        raise click.BadParameter('give at least one seed, e.g. 0-7', param_hint='--seeds')
    return seeds


@click.command()
@click.option('--network', 'network_pkl', help='Checkpoint path or URL', required=True)
@click.option('--seeds', callback=lambda ctx, param, value: _seeds(value), default='0-7', show_default=True, help="Seeds, e.g. '0-3,7'")
@click.option('--trunc', 'truncation_psi', type=float, default=1.0, show_default=True, help='Truncation psi')
@click.option('--trunc-cutoff', 'truncation_cutoff', type=click.IntRange(min=0), default=None, help='Truncate only the first N layers')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const', show_default=True)
@click.option('--class', 'class_idx', type=click.IntRange(min=0), default=None, help='Class label (conditional nets)')
@click.option('--outdir', required=True, help='Where to write the images')
@click.option('--batch', 'batch_size', type=click.IntRange(min=1), default=16, show_default=True)
@click.option('--device', default='cuda' if torch.cuda.is_available() else 'cpu', show_default=True)
@click.option('--trust-pickle', is_flag=True, help='Unpickle without restrictions (only for files you trust)')
@cli_errors
def main(network_pkl, seeds, truncation_psi, truncation_cutoff, noise_mode, class_idx, outdir, batch_size, device, trust_pickle):
    """Write seed%04d.png per seed, grid.png and generate.json.

    \b
    python generate.py --network=run/network-snapshot-000100.pkl --seeds=0-15 --trunc=0.7 --outdir=out
    """
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise click.BadParameter(str(err), param_hint='--device') from err
    check_outdir(outdir)
    G = checkpoint.load_network(network_pkl, key='G_ema', trust=trust_pickle, device=device)
    start = time.time()
    images = generate_images(G, seeds, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                             noise_mode=noise_mode, class_idx=class_idx, batch_size=batch_size, device=device)
    images = to_uint8(images)
    outdir = Path(make_outdir(outdir))
    files = []
    for seed, image in zip(seeds, images):
        save_png(outdir / f'seed{seed:04d}.png', image)
        files.append(f'seed{seed:04d}.png')
    save_png(outdir / 'grid.png', make_grid(images))
    save_json(outdir / 'generate.json', dict(network=str(network_pkl), seeds=seeds, truncation_psi=truncation_psi,
                                             truncation_cutoff=truncation_cutoff, noise_mode=noise_mode, class_idx=class_idx,
                                             z_shape=list(G.z_shape), images=files, grid='grid.png',
                                             seconds=round(time.time() - start, 3)))
    click.echo(f'Wrote {len(files)} images and grid.png to {outdir}')


if __name__ == '__main__':
    main()
