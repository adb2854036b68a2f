"""Train an image encoder into a frozen generator's latent space (W for the overparameterized generator of
"Overparameterization Improves StyleGAN Inversion", w+ for StyleGAN2): a thin CLI over training.encoder_loop."""


import click

from configs import encoder_presets
from dnnlib.cli import cli_errors
from metrics.lpips import parse_lpips_spec
from torch_utils import compiled
from training import launch
from training.encoder_loop import check_encoder_resume, encoder_loop
from training.resume import ResumeError

#----------------------------------------------------------------------------

@click.command(context_settings=dict(max_content_width=120, terminal_width=120))
@click.option('--outdir',        help='Where to make the run directory', metavar='DIR', required=True)
@click.option('--network',       help="Frozen generator pickle (ours or NVIDIA's), path or URL", metavar='PKL',
              required=True)
@click.option('--cfg',           help='Preset; the options below override it', default='tiny', show_default=True,
              type=click.Choice(list(encoder_presets.ENCODER_PRESETS)))
@click.option('--data',          help='Real images to reconstruct too (zip or folder from dataset_tool.py)',
              metavar='PATH')
@click.option('--space',         help='Target space; auto = W for overparameterized generators, else w+',
              type=click.Choice(list(encoder_presets.SPACES) + ['auto']))
@click.option('--gpus',          help='Processes (torchrun/SLURM: from the environment)', type=click.IntRange(min=1),
              metavar='INT')
# Objective.
@click.option('--latent-weight', help='Weight of the latent MSE on G samples', type=click.FloatRange(min=0),
              metavar='FLOAT')
@click.option('--mse-weight',    help='Weight of the pixel MSE ([0, 1] pixels; LPIPS has weight 1)',
              type=click.FloatRange(min=0), metavar='FLOAT')
@click.option('--lpips',         help='LPIPS network: vgg16-nvlabs[:PATH], vgg, vgg-random (offline tests only)',
              metavar='SPEC')
@click.option('--sample-psi',    help='Truncation of the G samples trained on', type=click.FloatRange(0, 1),
              metavar='PSI')
@click.option('--real-fraction', help='Share of real images in each batch (with --data)', type=click.FloatRange(0, 1),
              metavar='P')
@click.option('--design',        help='Encoder design arguments as a JSON object (see training/encoder.py)',
              metavar='JSON')
# Schedule.
@click.option('--batch',         help='Total batch size', type=click.IntRange(min=1), metavar='INT')
@click.option('--batch-gpu',     help='Images per GPU per accumulation round', type=click.IntRange(min=1),
              metavar='INT')
@click.option('--lr',            help='Adam learning rate', type=click.FloatRange(min=0, min_open=True), metavar='LR')
@click.option('--kimg',          help='Training length (thousands of images)',
              type=click.FloatRange(min=0, min_open=True), metavar='KIMG')
@click.option('--tick',          help='Progress line every KIMG', type=click.FloatRange(min=0, min_open=True),
              metavar='KIMG')
@click.option('--snap',          help='Snapshot (pkl, state, recon grid) every INT ticks', type=click.IntRange(min=1),
              metavar='INT')
@click.option('--seed',          help='Random seed', type=click.IntRange(min=0), metavar='INT')
@click.option('--resume',        help="Resume from an encoder .pkl (weights), a training-state .pt (exact) or 'auto'",
              metavar='PATH')
@click.option('--workers',       help='DataLoader worker processes', type=click.IntRange(min=0), metavar='INT')
@click.option('--trust-pickle',  help='Allow arbitrary code in the generator pickle (files you trust only)',
              is_flag=True, default=None)
@click.option('--device',        help='[default: cuda if available]', type=click.Choice(['cpu', 'cuda']))
@click.option('--compile',       help=compiled.CLI_HELP + ' [default: auto]', type=click.Choice(compiled.MODES))
@click.option('--desc',          help='Extra text for the run directory name', metavar='STR')
@click.option('-n', '--dry-run', help='Print the resolved options and exit', is_flag=True)
@cli_errors(ResumeError)
def main(outdir, desc, dry_run, device, **opts):
    """Train an encoder E: image -> latent of a frozen generator G, on G's own samples (latent + LPIPS + pixel
    loss through G) and optionally real images (LPIPS + pixel). Its predictions start invert.py --init encoder:PKL.

    Every option except --outdir/--network/--cfg defaults to the preset's value (configs/encoder_presets.py).

    \b
    # CPU: an encoder into W of the tiny overparameterized generator, then continue it where it stopped.
    python train_encoder.py --outdir=runs-enc --network=runs/00000-.../network-snapshot-000030.pkl --cfg=tiny
    python train_encoder.py --outdir=runs-enc --network=runs/00000-.../network-snapshot-000030.pkl --cfg=tiny --resume=auto

    \b
    # FFHQ 256 on 4 GPUs, with real images in half of each batch.
    python train_encoder.py --outdir=runs-enc --network=overparam256.pkl --cfg=paper256 --data=ffhq256.zip --gpus=4
    """  # noqa: E501 (the help shows these examples verbatim: one command a line)
    if launch.env_world_size() is not None:
        opts['gpus'] = launch.env_world_size()
    if opts['lpips'] is not None:
        try:
            parse_lpips_spec(opts['lpips'])
        except ValueError as err:
            raise ValueError(str(err)) from None
    o = encoder_presets.resolve_encoder_options(**opts)
    c = encoder_presets.build_encoder_kwargs(o)
    desc = encoder_presets.run_description(o) + (f'-{desc}' if desc else '')
    if dry_run:
        click.echo(launch.dry_run_report(o, c, outdir, desc, 'Encoder loop options'))
        return
    # Bad inputs are refused before the run directory exists, so none is left behind.
    launch.check_outdir(outdir)
    if c.resume_pkl not in (None, 'auto'):
        check_encoder_resume(c.resume_pkl)
    launch.launch_training(c, outdir, desc, gpus=o.gpus, device_type=device, loop=encoder_loop,
                           options=dict(cfg=o.cfg, num_gpus=o.gpus, desc=desc))

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()
