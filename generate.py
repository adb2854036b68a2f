"""Generate images from a checkpoint (ours, NVIDIA's PyTorch or TensorFlow pickles, rosinality's .pt)."""

import time
from pathlib import Path

import click
import torch

from dnnlib.cli import cli_errors, parse_range
from inversion import optimize, run_files
from torch_utils import checkpoint
from torch_utils.files import check_outdir, make_outdir, save_json
from torch_utils.image_io import make_grid, save_png, to_uint8
from training.latent_spaces import SPACES
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
@click.pass_context
@click.option('--network', 'network_pkl', help='Checkpoint path or URL', required=True)
@click.option('--seeds', callback=lambda ctx, param, value: _seeds(value), default='0-7', show_default=True,
              help="Seeds, e.g. '0-3,7'")
@click.option('--trunc', 'truncation_psi', type=float, default=1.0, show_default=True, help='Truncation psi')
@click.option('--trunc-cutoff', 'truncation_cutoff', type=click.IntRange(min=0), default=None,
              help='Truncate only the first N layers')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const', show_default=True)
@click.option('--class', 'class_idx', type=click.IntRange(min=0), default=None, help='Class label (conditional nets)')
@click.option('--outdir', required=True, help='Where to write the images')
@click.option('--batch', 'batch_size', type=click.IntRange(min=1), default=16, show_default=True)
@click.option('--device', default='cuda' if torch.cuda.is_available() else 'cpu', show_default=True)
@click.option('--trust-pickle', is_flag=True, help='Unpickle without restrictions (only for files you trust)')
@click.option('--latents', 'latents_path', metavar='NPZ|NPY', default=None,
              help="Render saved latents instead of seeds: an invert.py run's latents.npz or one <name>.npy")
@click.option('--space', type=click.Choice(SPACES), default=None,
              help='Latent space of a --latents .npy (default: inferred from its shape)')
@click.option('--allow-other-network', is_flag=True,
              help='Render --latents fitted to another network file (its checkpoint_sha256 differs)')
@cli_errors
def main(ctx, network_pkl, seeds, truncation_psi, truncation_cutoff, noise_mode, class_idx, outdir, batch_size, device,
         trust_pickle, latents_path, space, allow_other_network):
    """Write seed%04d.png per seed (or <name>.png per saved latent), grid.png and generate.json.

    \b
    python generate.py --network=run/network-snapshot-000100.pkl --seeds=0-15 --trunc=0.7 --outdir=out
    python generate.py --network=net.pkl --latents=out/W/latents.npz --outdir=renders
    """
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise click.BadParameter(str(err), param_hint='--device') from err
    check_outdir(outdir)
    if latents_path is not None:
        options = dict(seeds='--seeds', truncation_psi='--trunc', truncation_cutoff='--trunc-cutoff',
                       class_idx='--class', noise_mode='--noise-mode')
        given = [flag for key, flag in options.items()
                 if ctx.get_parameter_source(key) != click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f'--latents renders saved latents as inverted (const noise, no truncation): '
                                   f'leave out {", ".join(given)}')
    G, _local, sha256 = checkpoint.load_frozen_network(network_pkl, trust=trust_pickle, device=device,
                                                       option='--network')
    if latents_path is not None:
        render_saved(G, sha256, network_pkl, latents_path, space, outdir, batch_size, device, allow_other_network)
        return
    start = time.time()
    images = generate_images(G, seeds, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                             noise_mode=noise_mode, class_idx=class_idx, batch_size=batch_size, device=device)
    images = to_uint8(images)
    outdir, files = _save_images(outdir, [f'seed{seed:04d}' for seed in seeds], images)
    save_json(outdir / 'generate.json', dict(network=str(network_pkl), seeds=seeds, truncation_psi=truncation_psi,
                                             truncation_cutoff=truncation_cutoff, noise_mode=noise_mode,
                                             class_idx=class_idx, z_shape=list(G.z_shape), images=files,
                                             grid='grid.png', seconds=round(time.time() - start, 3)))
    click.echo(f'Wrote {len(files)} images and grid.png to {outdir}')


def _save_images(outdir, names, images):
    """<name>.png for each uint8 `[H, W, C]` image and grid.png of all -> (outdir as a Path, the file names)."""
    outdir = Path(make_outdir(outdir))
    files = [f'{name}.png' for name in names]
    for file, image in zip(files, images):
        save_png(outdir / file, image)
    save_png(outdir / 'grid.png', make_grid(images))
    return outdir, files


def render_saved(G, sha256, network_pkl, latents_path, space, outdir, batch_size, device, allow_other_network):
    """--latents: <name>.png per latent (the run's <name>-recon.png), grid.png, generate.json."""
    names, latent_space, latents, recorded = run_files.read_latents(latents_path, G, space)
    if recorded is not None and recorded != sha256 and not allow_other_network:
        raise click.ClickException(f'--latents {latents_path} was fitted to a network with sha256 {recorded[:12]}..., '
                                   f'--network {network_pkl} is {sha256[:12]}...; pass that network, or '
                                   f'--allow-other-network')
    start = time.time()
    images = optimize.render(G, latent_space, latents, batch_size=batch_size, device=device)
    outdir, files = _save_images(outdir, names, images)
    save_json(outdir / 'generate.json', dict(network=str(network_pkl), network_sha256=sha256, latents=str(latents_path),
                                             latents_sha256=recorded, space=latent_space.name, names=names,
                                             noise_mode='const', images=files, grid='grid.png',
                                             seconds=round(time.time() - start, 3)))
    click.echo(f'Rendered {len(files)} {latent_space.name} latents and grid.png to {outdir}')


if __name__ == '__main__':
    main()
