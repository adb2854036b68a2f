"""The README's main job on the bundled tiny default, CPU-friendly.

Builds a tiny StyleGAN2 generator and its overparameterized twin (R latent rows),
saves both as checkpoints, and writes a grid of images from each with generate.py's
code path. Outputs go to --outdir (default out/quickstart); a summary is printed and
written to quickstart.json.
"""

import time
from pathlib import Path

import click
import torch

from torch_utils import checkpoint
from torch_utils.image_io import make_grid, save_json, save_png, to_uint8
from training import networks
from training.sampling import generate_images


def tiny_generator(latent_rows, resolution=32, dim=64):
    """The bundled tiny config: 32 px, 64-d latents, 2 mapping layers, no noise inputs."""
    return networks.Generator(z_dim=dim, c_dim=0, w_dim=dim, img_resolution=resolution, img_channels=3,
                              latent_rows=latent_rows, mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=resolution * dim // 2, channel_max=dim,
                                                    conv_clamp=256, use_noise=False))


@click.command()
@click.option('--outdir', type=click.Path(file_okay=False), default='out/quickstart', show_default=True)
@click.option('--seed', type=int, default=0, show_default=True)
def main(outdir, seed):
    outdir = Path(outdir)
    summary = {}
    for name, rows in (('baseline', None), ('overparam', 64)):
        torch.manual_seed(seed)
        G = tiny_generator(rows).eval().requires_grad_(False)
        pkl = outdir / f'{name}.pkl'
        checkpoint.save_network_pkl(pkl, dict(G_ema=G))
        G = checkpoint.load_network(str(pkl))                      # through the safe loader
        start = time.time()
        images = to_uint8(generate_images(G, list(range(16))))
        save_png(outdir / f'{name}-grid.png', make_grid(images))
        summary[name] = dict(checkpoint=str(pkl), z_shape=list(G.z_shape), grid=f'{name}-grid.png',
                             seconds=round(time.time() - start, 3))
        click.echo(f'{name:10s} z {tuple(G.z_shape)!s:10s} -> {outdir / (name + "-grid.png")} '
                   f'({summary[name]["seconds"]:.2f} s for 16 images)')
    save_json(outdir / 'quickstart.json', summary)


if __name__ == '__main__':
    main()
