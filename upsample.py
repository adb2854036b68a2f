"""PULSE-style upsampling with a StyleGAN generator (Poirier-Ginter et al., sec. 5.1): a thin CLI over
`inversion.upsample.run_upsample` (options: `UpsampleConfig`), with invert.py's runner (resume, skipped.json,
log.txt, latents.npz). See docs/downstream.md."""

import click

from dnnlib.cli import cli_errors
from inversion.upsample import LOSSES, MODES, UpsampleConfig, run_upsample
from torch_utils import compiled
from training.latent_spaces import SPACES

#----------------------------------------------------------------------------

@click.command()
@click.option('--network', required=True, help='Checkpoint path or URL (uses G_ema).')
@click.option('--target', default=None, help='High-res images (folder, file or zip); downsampled by --factor.')
@click.option('--lowres', default=None, help='Already low-res images (folder, file or zip), res/factor px.')
@click.option('--factor', type=click.IntRange(min=1), default=16, show_default=True, help='Downsampling factor.')
@click.option('--mode', type=click.Choice(MODES), default='nearest', show_default=True, help='Downsampling operator.')
@click.option('--space', type=click.Choice(SPACES + ('auto',)), default='auto', show_default=True,
              help='Latent space (auto: W for overparameterized networks, w+ otherwise).')
@click.option('--steps', type=click.IntRange(min=1), default=100, show_default=True, help='Adam steps.')
@click.option('--lr', type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True,
              help='Adam learning rate.')
@click.option('--truncation', type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help='Truncation psi, applied before every step; 1 = off.')
@click.option('--loss', type=click.Choice(LOSSES), default='lpips-lowres', show_default=True, help='Low-res loss.')
@click.option('--lpips', default='vgg16-nvlabs', show_default=True,
              help='LPIPS model: vgg16-nvlabs[:PATH], vgg, vgg-random.')
@click.option('--batch', type=int, default=8, show_default=True, help='Images optimised together.')
@click.option('--save-every', type=click.IntRange(min=0), default=100, show_default=True,
              help='Save resumable state every N steps; 0 = never')
@click.option('--seed', type=int, default=0, show_default=True, help='Random seed (of vgg-random).')
@click.option('--device', default=None, help='Device (default: cuda if available).')
@click.option('--trust-pickle', is_flag=True, help='Allow arbitrary code in the checkpoint (trusted files only).')
@click.option('--compile', type=click.Choice(compiled.MODES), default='auto', show_default=True,
              help=compiled.CLI_HELP + '.')
@click.option('--outdir', required=True, help='Output folder (same folder again = resume).')
@cli_errors
def main(outdir, **options):
    """Upsample low-resolution images by optimising a latent so that the downsampled generation matches."""
    if (options['target'] is None) == (options['lowres'] is None):
        raise click.UsageError('give exactly one of --target or --lowres')
    summary = run_upsample(UpsampleConfig(**options), outdir)
    click.echo(f'{summary["images"]} images upsampled, {summary["skipped"]} skipped -> {outdir}: ' +
               ', '.join(f'{k} {v:.4f}' for k, v in summary['means'].items()))


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
