"""PULSE-style upsampling with a StyleGAN generator (Poirier-Ginter et al., sec. 5.1): a thin CLI
over `inversion.upsample.run_upsample`. See docs/downstream.md."""

import click

from inversion.runner import InversionError
from inversion.spaces import SPACES
from inversion.upsample import LOSSES, MODES, run_upsample

#----------------------------------------------------------------------------

@click.command()
@click.option('--network', required=True, help='Checkpoint path or URL (uses G_ema).')
@click.option('--target', default=None, help='High-res images (folder, file or zip); downsampled by --factor.')
@click.option('--lowres', default=None, help='Already low-res images (folder, file or zip), res/factor px.')
@click.option('--factor', type=int, default=16, show_default=True, help='Downsampling factor.')
@click.option('--mode', type=click.Choice(MODES), default='nearest', show_default=True, help='Downsampling operator.')
@click.option('--space', type=click.Choice(SPACES + ('auto',)), default='auto', show_default=True,
              help='Latent space (auto: W for overparameterized networks, w+ otherwise).')
@click.option('--steps', type=int, default=100, show_default=True, help='Adam steps.')
@click.option('--lr', type=float, default=0.05, show_default=True, help='Adam learning rate.')
@click.option('--truncation', type=float, default=0.9, show_default=True, help='Truncation psi, applied before every step.')
@click.option('--loss', type=click.Choice(LOSSES), default='lpips-lowres', show_default=True, help='Low-res loss.')
@click.option('--lpips', default='vgg16-nvlabs', show_default=True, help='LPIPS model: vgg16-nvlabs[:PATH], vgg, vgg-random.')
@click.option('--batch', type=int, default=8, show_default=True, help='Images optimised together.')
@click.option('--device', default=None, help='Device (default: cuda if available).')
@click.option('--trust-pickle', is_flag=True, help='Allow arbitrary code in the checkpoint (trusted files only).')
@click.option('--outdir', required=True, help='Output folder.')
def main(network, target, lowres, factor, mode, space, steps, lr, truncation, loss, lpips, batch, device, trust_pickle,
         outdir):
    """Upsample low-resolution images by optimising a latent so that the downsampled generation matches."""
    if (target is None) == (lowres is None):
        raise click.UsageError('give exactly one of --target or --lowres')
    try:
        summary = run_upsample(network, outdir, target=target, lowres=lowres, factor=factor, space=space, steps=steps,
                               truncation=truncation, loss=loss, mode=mode, lpips=lpips, lr=lr, batch=batch,
                               device=device, trust_pickle=trust_pickle, log=click.echo)
    except (InversionError, ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f'{summary["num_images"]} images -> {outdir}: ' +
               ', '.join(f'{k} {v:.4f}' for k, v in summary['means'].items()))


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
