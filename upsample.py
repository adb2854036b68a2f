"""PULSE-style upsampling with a StyleGAN generator (Poirier-Ginter et al., sec. 5.1): a thin CLI
over `inversion.upsample.run_upsample`, with invert.py's runner (resume, skipped.json, log.txt,
latents.npz). See docs/downstream.md."""

import click

from dnnlib.cli import cli_errors
from training.latent_spaces import SPACES
from inversion.upsample import LOSSES, MODES, run_upsample

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
@click.option('--lpips', default='vgg16-nvlabs', show_default=True, help='LPIPS model: vgg16-nvlabs[:PATH], vgg, vgg-random.')
@click.option('--batch', type=int, default=8, show_default=True, help='Images optimised together.')
@click.option('--save-every', type=click.IntRange(min=0), default=100, show_default=True,
              help='Save resumable state every N steps; 0 = never')
@click.option('--seed', type=int, default=0, show_default=True, help='Random seed (of vgg-random).')
@click.option('--device', default=None, help='Device (default: cuda if available).')
@click.option('--trust-pickle', is_flag=True, help='Allow arbitrary code in the checkpoint (trusted files only).')
@click.option('--outdir', required=True, help='Output folder (same folder again = resume).')
@cli_errors
def main(network, target, lowres, factor, mode, space, steps, lr, truncation, loss, lpips, batch, save_every, seed,
         device, trust_pickle, outdir):
    """Upsample low-resolution images by optimising a latent so that the downsampled generation matches."""
    if (target is None) == (lowres is None):
        raise click.UsageError('give exactly one of --target or --lowres')
    args = dict(network=network, target=target, lowres=lowres, factor=factor, mode=mode, space=space, steps=steps,
                lr=lr, truncation=truncation, loss=loss, lpips=lpips, batch=batch, save_every=save_every, seed=seed,
                device=device, outdir=outdir)
    summary = run_upsample(network, outdir, target=target, lowres=lowres, factor=factor, space=space, steps=steps,
                           truncation=truncation, loss=loss, mode=mode, lpips=lpips, lr=lr, batch=batch,
                           device=device, trust_pickle=trust_pickle, save_every=save_every, seed=seed, args=args)
    click.echo(f'{summary["images"]} images upsampled, {summary["skipped"]} skipped -> {outdir}: ' +
               ', '.join(f'{k} {v:.4f}' for k, v in summary['means'].items()))


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
