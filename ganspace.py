"""GANSpace principal directions for StyleGAN2 and the overparameterized generator (Poirier-Ginter
et al., sec. 5.2): a thin CLI over `inversion.edit.ganspace`. See docs/downstream.md.

    python ganspace.py fit  --network net.pkl --num-samples 100000 --components 20 --outdir pca
    python ganspace.py edit --network net.pkl --components pca/components.npz --seeds 0-3 \
        --component 3,5 --strength=-2,-1,0,1,2 --layers 0-5 --outdir edits
    python generate.py --network net.pkl --latents edits/edits.npz --outdir edits/rendered
"""

import click

from dnnlib.cli import cli_errors, parse_range
from inversion.edit.ganspace import run_edit, run_fit
from inversion.inversion_job import InversionError


@click.group()
def cli():
    """Fit PCA directions of the intermediate latent space, or edit images along them."""


@cli.command()
@click.option('--network', required=True, help='Checkpoint path or URL (uses G_ema).')
@click.option('--num-samples', type=click.IntRange(min=2), default=100000, show_default=True,
              help='Sampled latents (for overparameterized nets: matrices, each giving R rows).')
@click.option('--components', type=click.IntRange(min=1), default=20, show_default=True,
              help='Principal components kept.')
@click.option('--seed', type=int, default=0, show_default=True, help='Sampling seed.')
@click.option('--batch', type=click.IntRange(min=1), default=None, help='Latents mapped at once (default: 65536 rows).')
@click.option('--device', default=None, help='Device (default: cuda if available).')
@click.option('--trust-pickle', is_flag=True, help='Allow arbitrary code in the checkpoint (trusted files only).')
@click.option('--outdir', required=True, help='Output folder.')
@cli_errors(InversionError)
def fit(network, num_samples, components, seed, batch, device, trust_pickle, outdir):
    """Write components.npz, explained_variance.json and explained_variance.png."""
    info = run_fit(network, outdir, num_samples=num_samples, num_components=components, seed=seed, batch=batch,
                   device=device, trust_pickle=trust_pickle)
    click.echo(f'PCA of {info["num_vectors"]} {info["vectors"]} vectors -> {outdir}; first {components} components '
               f'explain {info["cumulative_ratio"][-1]:.3f} of the variance')


@cli.command()
@click.option('--network', required=True, help='Checkpoint path or URL (uses G_ema).')
@click.option('--components', 'components_path', required=True, help='components.npz from `fit`.')
@click.option('--seeds', default=None, help="Seeds to generate and edit, e.g. '0-3'.")
@click.option('--latents', default=None, help='latents.npz of an inversion run (invert.py --outdir).')
@click.option('--component', 'component_specs', multiple=True, required=True, metavar='K[,K...]',
              help="Principal component index; several: '3,5', '2-4' or the option repeated (each edited separately).")
@click.option('--strength', default='-2,-1,0,1,2', show_default=True, help='Strengths in std units, comma-separated.')
@click.option('--layers', default='all', show_default=True, help="Edited layers: 'all', 'a-b' or 'a,b,c'.")
@click.option('--truncation', type=float, default=1.0, show_default=True, help='Truncation psi for --seeds.')
@click.option('--device', default=None, help='Device (default: cuda if available).')
@click.option('--trust-pickle', is_flag=True, help='Allow arbitrary code in the checkpoint (trusted files only).')
@click.option('--allow-other-network', is_flag=True, help='Use components fitted on another network file.')
@click.option('--outdir', required=True, help='Output folder.')
@cli_errors(InversionError)
def edit(network, components_path, seeds, latents, component_specs, strength, layers, truncation, device, trust_pickle,
         allow_other_network, outdir):
    """Write edits.png (a titled block per component: rows = images, columns = strengths), a titled
    images/<name>-c<K>-s<S>.png per image, component and strength, edits.npz (edited latents,
    latents.npz format) and edits.json."""
    if (seeds is None) == (latents is None):
        raise click.UsageError('give exactly one of --seeds or --latents')
    try:
        strengths = [float(s) for s in strength.split(',') if s.strip()]
    except ValueError as err:
        raise click.BadParameter(f'{strength!r}: expected numbers separated by commas',
                                 param_hint='--strength') from err
    if not strengths:
        raise click.BadParameter('give at least one strength, e.g. -2,0,2', param_hint='--strength')
    try:
        seed_list = None if seeds is None else parse_range(seeds)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint='--seeds') from err
    components = []
    for spec in component_specs:
        try:
            components += [c for c in parse_range(spec) if c not in components]
        except ValueError as err:
            raise click.BadParameter(f'{spec!r}: {err}', param_hint='--component') from err
    info = run_edit(network, outdir, components_path, component=components, strengths=strengths, layers=layers,
                    seeds=seed_list, latents=latents, truncation=truncation, device=device, trust_pickle=trust_pickle,
                    allow_other_network=allow_other_network)
    click.echo(f'{len(info["images"])} images x {len(components)} components x {len(strengths)} strengths -> '
               f'{outdir}/edits.png, edits.npz')


if __name__ == '__main__':
    cli()
