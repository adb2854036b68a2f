"""Train StyleGAN2 or the overparameterized generator of "Overparameterization Improves StyleGAN Inversion"."""

import zipfile

import click

from configs import presets
from torch_utils import compiled
from training import launch
from training.augment import AUGPIPE_SPECS
from training.resume import ResumeError
from training.row_start import ROW_STARTS

#----------------------------------------------------------------------------

def parse_metrics(ctx, param, value):
    if value is None:
        return None
    return [] if value.strip().lower() == 'none' else [m.strip() for m in value.split(',') if m.strip()]


@click.command(context_settings=dict(max_content_width=120, terminal_width=120))
# Required.
@click.option('--outdir',       help='Where to make the run directory', metavar='DIR', required=True)
@click.option('--data',         help='Training data (zip or folder from dataset_tool.py)', metavar='PATH',
              required=True)
@click.option('--cfg',          help='Preset; the options below override it', default='auto', show_default=True,
              type=click.Choice(list(presets.PRESETS)))
@click.option('--gpus',         help='Processes (torchrun/SLURM: from the environment)', type=click.IntRange(min=1),
              metavar='INT')
# Model and loss.
@click.option('--rows',         help='Latent rows R, 0 = StyleGAN2', type=click.IntRange(min=0), metavar='INT')
@click.option('--dim',          help='z and w dimensionality', type=click.IntRange(min=1), metavar='INT')
@click.option('--map',          help='Mapping network layers', type=click.IntRange(min=1), metavar='INT')
@click.option('--cbase',        help='Capacity: channel_base', type=click.IntRange(min=1), metavar='INT')
@click.option('--cmax',         help='Capacity: channel_max', type=click.IntRange(min=1), metavar='INT')
@click.option('--noise',        help='Per-pixel noise inputs (the paper: 0)', type=bool, metavar='BOOL')
@click.option('--gamma',        help='R1 regularization weight', type=click.FloatRange(min=0), metavar='FLOAT')
@click.option('--lr',           help='Adam learning rate of G and D', type=click.FloatRange(min=0, min_open=True),
              metavar='LR')
@click.option('--ema',          help='EMA half-life of G_ema in kimg', type=click.FloatRange(min=0), metavar='KIMG')
@click.option('--mbstd',        help='Minibatch-std group size', type=click.IntRange(min=1), metavar='INT')
@click.option('--style-mixing', help='Style mixing probability', type=click.FloatRange(min=0, max=1), metavar='P')
@click.option('--pl-weight',    help='Path length regularization weight', type=click.FloatRange(min=0), metavar='FLOAT')
@click.option('--pl-rows',      help='Path length over latent rows: sum (fork default, ppl_power 0.5) or mean (0)',
              type=click.Choice(['sum', 'mean']))
# Schedule.
@click.option('--batch',        help='Total batch size', type=click.IntRange(min=1), metavar='INT')
@click.option('--batch-gpu',    help='Images per GPU per accumulation round', type=click.IntRange(min=1), metavar='INT')
@click.option('--kimg',         help='Training length (thousands of images)',
              type=click.FloatRange(min=0, min_open=True), metavar='KIMG')
@click.option('--tick',         help='Progress line every KIMG', type=click.FloatRange(min=0, min_open=True),
              metavar='KIMG')
@click.option('--snap',         help='Snapshot (pkl, state, images, metrics) every INT ticks',
              type=click.IntRange(min=1), metavar='INT')
@click.option('--seed',         help='Random seed', type=click.IntRange(min=0), metavar='INT')
@click.option('--resume',       help="Resume from a .pkl (ours or NVIDIA's; a StyleGAN2 with --rows R: fine-tune it "
                                     "into R rows), a training-state .pt or 'auto'", metavar='PATH')
@click.option('--resume-kimg',  help='Start kimg for a pickle without state', type=click.FloatRange(min=0),
              metavar='KIMG')
@click.option('--row-start',    help='Fine-tuning a StyleGAN2 into rows: paper sampling, or rows spread from identical',
              type=click.Choice(list(ROW_STARTS)))
@click.option('--row-spread-kimg', help='--row-start=spread: kimg to reach the paper\'s row correlation',
              type=click.FloatRange(min=0, min_open=True), metavar='KIMG')
# Data and augmentation.
@click.option('--mirror',       help='Add x-flipped copies of the data (NVIDIA default: off)', type=bool,
              metavar='BOOL')
@click.option('--cond',         help='Condition on dataset labels', type=bool, metavar='BOOL')
@click.option('--subset',       help='Train on only N images', type=click.IntRange(min=1), metavar='INT')
@click.option('--aug',          help='Augmentation: ada (NVIDIA default) or noaug', type=click.Choice(['noaug', 'ada']))
@click.option('--augpipe',      help="ADA pipe ('bgc' = NVIDIA default)", type=click.Choice(sorted(AUGPIPE_SPECS)))
@click.option('--target',       help='ADA target of mean sign(D(real))', type=click.FloatRange(min=0, max=1),
              metavar='FLOAT')
# Performance and outputs.
@click.option('--precision',    help='fp32 (paper), tf32, or mixed (FP16, fastest)',
              type=click.Choice(list(presets.PRECISIONS)))
@click.option('--metrics',      help="Metrics at snapshots, comma-separated, or 'none'", callback=parse_metrics,
              metavar='LIST')
@click.option('--workers',      help='DataLoader worker processes', type=click.IntRange(min=0), metavar='INT')
@click.option('--grid',         help='Image grids of INT x INT samples', type=click.IntRange(min=1), metavar='INT')
@click.option('--device',       help='[default: cuda if available]', type=click.Choice(['cpu', 'cuda']))
@click.option('--compile',      help=compiled.CLI_HELP + ' [default: auto]', type=click.Choice(compiled.MODES))
@click.option('--desc',         help='Extra text for the run directory name', metavar='STR')
@click.option('-n', '--dry-run', help='Print the resolved options and exit', is_flag=True)
def main(outdir, desc, dry_run, device, **opts):
    """Train a StyleGAN2 generator, or its overparameterized twin (latent matrices of R rows).

    Every option except --outdir/--data/--cfg defaults to the preset's value (see configs/presets.py).

    \b
    # Paper, Table 1 (FFHQ 256, 4 GPUs): the baseline and the overparameterized generator.
    python train.py --outdir=runs --data=ffhq256.zip --cfg=paper256-baseline --gpus=4
    python train.py --outdir=runs --data=ffhq256.zip --cfg=paper256-overparam --gpus=4
    torchrun --nproc_per_node=4 train.py --outdir=runs --data=ffhq256.zip --cfg=paper256-overparam

    \b
    # CPU smoke run on the bundled shapes, then continue it where it stopped.
    python dataset_tool.py --source=tiny:1000 --dest=data/tiny32.zip
    python train.py --outdir=runs --data=data/tiny32.zip --cfg=tiny-overparam
    python train.py --outdir=runs --data=data/tiny32.zip --cfg=tiny-overparam --resume=auto

    \b
    # Fine-tune a pretrained StyleGAN2 (its architecture, weights and w_avg) into R = 64 latent rows
    # (docs/finetune.md); continue it after a kill with the same command and --resume=auto.
    python train.py --outdir=runs --data=data/tiny32.zip --cfg=tiny-overparam --resume=BASELINE.pkl --kimg=10
    """
    if launch.env_world_size() is not None:
        opts['gpus'] = launch.env_world_size()
    try:
        o = presets.resolve_options(**opts)
        c = presets.build_training_kwargs(o)
    except (ValueError, OSError, zipfile.BadZipFile) as err:   # --data, --resume and option values
        raise click.ClickException(str(err))
    desc = presets.run_description(o) + (f'-{desc}' if desc else '')

    if dry_run:
        click.echo(launch.dry_run_report(o, c, outdir, desc, 'Training options'))
        return
    try:   # Bad inputs are refused before the run directory exists, so none is left behind.
        launch.check_outdir(outdir)
        launch.launch_training(c, outdir, desc, gpus=o.gpus, device_type=device,
                               options=dict(cfg=o.cfg, num_gpus=o.gpus, desc=desc))
    except (ResumeError, launch.OutdirError) as err:
        raise click.ClickException(str(err))

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()
