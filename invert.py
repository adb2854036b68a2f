"""Invert images into a generator's latent space (Poirier-Ginter et al., "Overparameterization Improves StyleGAN
Inversion", sec. 4.2): a thin CLI over `inversion.inversion_job.invert_folder`; the options are `InversionConfig`."""

from pathlib import Path

import click

from dnnlib.cli import BatchType, checked_by, cli_errors, given_options
from inversion.inversion_job import InversionConfig, InversionError, invert_folder, parse_init
from inversion.targets import CROP_MODES
from metrics.lpips import parse_lpips_spec
from preprocess.align_folder import MULTIPLE_MODES
from torch_utils import compiled, distributed
from training.latent_spaces import SPACES

SHARD_TIMEOUT_S = 7 * 24 * 3600      # How long a rank of a sharded run (torchrun / SLURM) waits for the slowest rank.

#----------------------------------------------------------------------------

@click.command(context_settings=dict(max_content_width=120))
@click.option('--network', metavar='PKL',
              help='Checkpoint path or URL (any format of README "Bringing your checkpoints")')
@click.option('--target', metavar='DIR|FILE|ZIP',          help='Image folder (recursive), single image, or zip')
@click.option('--outdir', metavar='DIR',                   help='Where to write the results (same DIR again = resume)')
@click.option('--space', type=click.Choice(SPACES + ('auto',)), default='auto', show_default=True,
              help='Latent space; auto = W for overparameterized networks, w+ otherwise')
@click.option('--init', default='mean', show_default=True, callback=checked_by(parse_init), metavar='mean|encoder:PKL',
              help='Start of each image: the mean latent (the paper), or the prediction of an encoder pickle from '
                   'train_encoder.py (--space auto then takes the encoder\'s space)')
@click.option('--steps', type=click.IntRange(min=0), default=1000, show_default=True,
              help='Adam steps per image; 0 = evaluate the start (with --init encoder: the encoder alone)')
@click.option('--lr', type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True,
              help='Adam learning rate')
@click.option('--batch', type=BatchType(), default='auto', show_default=True,
              help='Images optimised together; auto = fit free GPU memory (8 off CUDA)')
@click.option('--truncation', type=click.FloatRange(0, 1), default=None,
              help='Pull toward the mean latent before each step by this psi; 1 = off  [default: 0.9 from the mean, '
                   '1 with --init encoder:PKL]')
@click.option('--truncation-until', type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help='Fraction of the steps with truncation')
@click.option('--seed', type=int, default=0, show_default=True, help='Random seed')
@click.option('--save-every', type=click.IntRange(min=0), default=100, show_default=True,
              help='Save resumable state every N steps; 0 = never')
@click.option('--resume', 'resume_dir', metavar='DIR', type=click.Path(file_okay=False),
              help='Continue the run in DIR with its recorded settings')
@click.option('--device', help='cuda, cuda:K or cpu  [default: cuda if available]')
@click.option('--precision', type=click.Choice(['fp32', 'tf32', 'bf16']), default='fp32', show_default=True,
              help='fp32 = strict; tf32 = TF32 matmuls; bf16 = TF32 generator + bfloat16-autocast VGG')
@click.option('--crop', type=click.Choice(CROP_MODES), default='center', show_default=True,
              help='Non-square images: center-crop to a square, squash the whole image (none), or pad it to a '
                   'square with the padding masked out of the loss (pad)')
@click.option('--mask', metavar='DIR', type=click.Path(file_okay=False),
              help='Masks named like the targets (any image format): white = keep, black = ignore, grey = weight. '
                   'The alpha channel of RGBA targets is a mask too')
@click.option('--lpips', default='vgg16-nvlabs', show_default=True, callback=checked_by(parse_lpips_spec),
              metavar='SPEC',
              help="vgg16-nvlabs[:PATH] (StyleGAN2's LPIPS: NVIDIA vgg16.pt, URL by default) | vgg (lpips package) | "
                   'vgg-random (random VGG trunk: offline smoke runs and tests only)')
@click.option('--trust-pickle', is_flag=True, help='Unpickle without restrictions (only for files you trust)')
@click.option('--compile', type=click.Choice(compiled.MODES), default='auto', show_default=True, help=compiled.CLI_HELP)
@click.option('--mse-weight', type=click.FloatRange(min=0), default=0.0, show_default=True,
              help='Weight of a pixel MSE term')
@click.option('--l1-weight', type=click.FloatRange(min=0), default=0.0, show_default=True,
              help='Weight of a pixel L1 term')
@click.option('--save-video', is_flag=True,
              help='Write frames/<name>/stepNNNNN.png (target | current) during optimisation')
@click.option('--video-every', type=click.IntRange(min=1), default=10, show_default=True,
              help='Steps between video frames')
@click.option('--align', is_flag=True,
              help='First align the faces of --target as FFHQ was (align_faces.py) into OUTDIR/aligned, '
                   'and invert those')
@click.option('--align-resolution', type=click.IntRange(min=8), default=1024, show_default=True,
              help='--align: side of the aligned crops (then resized to the generator, as FFHQ 1024 -> 256)')
@click.option('--align-multiple', type=click.Choice(MULTIPLE_MODES), default='largest', show_default=True,
              help='--align: photos with several faces: the largest, all, or skip them')
@click.option('--paste-back', is_flag=True,
              help='With --align: paste each reconstruction back into its photo (OUTDIR/pasted)')
@click.pass_context
@cli_errors
def main(ctx, outdir, resume_dir, **options):
    """Invert every image of --target into the latent space of --network.

    Defaults are the paper's: Adam lr 0.05, betas (0.9, 0.999), 1000 steps from the mean
    latent, LPIPS loss, truncation 0.9 toward the mean before each step of the first half. With
    --init encoder:PKL each image starts from the encoder's prediction instead, without truncation
    unless --truncation is given; --steps 0 then gives the encoder's reconstruction alone.
    Writes <name>.npy, <name>-recon.png, <name>-pair.png per image, and latents.npz,
    results.jsonl, summary.json, overview.png, lpips_curve.png, skipped.json, log.txt per run.
    With --mask, RGBA targets or --crop pad only the kept pixels count (in the loss and the metrics).
    A killed run continues when started again with the same --outdir (or with --resume DIR).

    \b
    python invert.py --network=overparam-ffhq256.pkl --target=celebahq-test/ --space=W --outdir=out/W
    python invert.py --network=ffhq.pkl --target=face.jpg --space=w+ --batch=1 --outdir=out/one
    python invert.py --resume=out/W
    python invert.py --network=ffhq.pkl --target=photos/ --align --paste-back --outdir=out/photos
    python invert.py --network=ffhq.pkl --target=occluded/ --mask=occluded-masks/ --outdir=out/occluded
    python invert.py --network=overparam.pkl --init=encoder:enc.pkl --steps=100 --target=test/ --outdir=out/enc

    Sharded over K GPUs (each rank inverts every K-th batch; rank 0 merges the run files):
    torchrun --nproc_per_node=K invert.py --network=... --target=... --outdir=out/W
    """
    distributed.init(timeout_s=SHARD_TIMEOUT_S)
    try:
        cfg, outdir = InversionConfig.for_command(options, given_options(ctx, options), resume_dir, outdir)
    except InversionError as err:
        raise click.ClickException(str(err)) from None
    except ValueError as err:                               # Options that do not go together.
        raise click.UsageError(str(err)) from None
    summary, pasted = invert_folder(cfg, outdir, log=click.echo)
    if distributed.get_rank() == 0:
        lpips_mean = 'n/a' if summary['lpips_mean'] is None else f'{summary["lpips_mean"]:.4f}'
        click.echo(f'Inverted {summary["images"]} images into {summary["space"]}: mean LPIPS {lpips_mean}, '
                   f'{summary["skipped"]} skipped -> {outdir}')
        if pasted is not None:
            click.echo(f'Pasted {pasted["pasted"]} reconstructions back into {pasted["photos"]} photos -> '
                       f'{Path(outdir) / "pasted"}')
    distributed.shutdown()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
