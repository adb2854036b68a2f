"""Interpolate between inverted (or sampled) latents and measure the paths (table 3 of
"Overparameterization Improves StyleGAN Inversion"): a thin CLI over
`inversion.edit.interpolate.run_interpolation` (options: `InterpolationConfig`), which documents the files it
writes."""

import click

from dnnlib.cli import cli_errors, parse_range
from inversion.edit.interpolate import InterpolationConfig, run_interpolation
from inversion.job_runner import InversionError
from torch_utils import distributed

#----------------------------------------------------------------------------

@click.command(context_settings=dict(max_content_width=120))
@click.option('--network', 'network', required=True, help='Generator checkpoint (pickle path or URL)')
@click.option('--inversion-run', type=str, help='invert.py output folder (reads latents.npz)')
@click.option('--seeds', type=parse_range, help="Sample latents instead, as generate.py does: seeds like 0-9 or 1,5,7")
@click.option('--pairs', default='all', show_default=True, help="'all' or index pairs like 0-1,2-5")
@click.option('--steps', type=int, default=8, show_default=True, help='Frames per path (images and GIFs)')
@click.option('--midpoints-only', is_flag=True, help='Write only the t = 1/2 image of each pair')
@click.option('--outdir', required=True, type=str, help='Output folder')
@click.option('--grid/--no-grid', default=True, show_default=True,
              help='PNG per pair (frames side by side) + overview.png')
@click.option('--gif', is_flag=True, help='Also write an animated GIF per pair')
@click.option('--metrics', is_flag=True,
              help='Table-3 metrics: path length over 5 segments, FID of midpoints (with --data)')
@click.option('--lpips', type=str,
              help="LPIPS of the path lengths: vgg16-nvlabs[:PATH] or a detector spec "
                   "[default: vgg16-nvlabs, NVIDIA's vgg16.pt, through --detector-path]")
@click.option('--detector-path', type=str,
              help="Local Inception/VGG16 TorchScript file or folder, 'inception=P,vgg16=P', or random:DIM:SEED")
@click.option('--data', type=str, help='Real images (zip or folder) for FID of midpoints')
@click.option('--max-real', type=int, help='Use at most this many real images for FID')
@click.option('--cache/--no-cache', default=True, show_default=True, help='Reuse cached real-image features')
@click.option('--trunc', 'truncation_psi', type=float, default=1.0, show_default=True,
              help='Truncation psi (--seeds only)')
@click.option('--class', 'class_idx', type=click.IntRange(min=0), default=None,
              help='Class label (--seeds, conditional nets)')
@click.option('--batch', 'batch_size', type=click.IntRange(min=1), default=8, show_default=True,
              help='Images per generator call')
@click.option('--device', help='cuda, cuda:K or cpu  [default: cuda if available]')
@click.option('--trust-pickle', is_flag=True, help='Allow arbitrary code in the checkpoint pickle (trusted files only)')
@click.option('--progress/--no-progress', default=True, show_default=True)
@cli_errors
def main(network, outdir, **options):
    """Interpolate linearly between latents (in the space they were inverted in) and measure it.

    \b
    python interpolate.py --network=G.pkl --inversion-run=runs/W --pairs=all --metrics \\
        --detector-path=~/detectors --data=celebahq256.zip --outdir=out/interp-W --no-grid
    python interpolate.py --network=G.pkl --seeds=0-3 --pairs=0-1,2-3 --gif --outdir=out/interp-seeds
    """
    distributed.init()
    try:
        out = run_interpolation(InterpolationConfig(network=network, **options), outdir,
                                log=lambda msg: click.echo(msg, err=True))
    except InversionError as err:
        raise click.ClickException(str(err)) from None
    rank = distributed.get_rank()
    distributed.shutdown()
    if rank != 0:
        return
    s = out.get('summary')
    if s is not None:
        fid = f"  FID(midpoints) {s['fid_midpoints']:.2f}" if 'fid_midpoints' in s else ''
        click.echo(f"pairs {s['num_pairs']}  path length mean {s['ppl_mean']:.4f}  median {s['ppl_median']:.4f}{fid}"
                   f"  ({s['lpips_network']} LPIPS)")
    click.echo(f"Wrote {outdir}/interpolation.json ({len(out['pairs'])} pairs)")

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()
