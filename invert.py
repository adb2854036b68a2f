"""Invert images into a generator's latent space (Poirier-Ginter et al., "Overparameterization
Improves StyleGAN Inversion", sec. 4.2): a thin CLI over `inversion.runner.run_inversion`."""

import json
from pathlib import Path

import click
import torch

from dnnlib.cli import cli_errors
from metrics.lpips import parse_lpips_spec
from inversion.runner import InversionError, parse_init, run_inversion
from training.latent_spaces import SPACES
from inversion.targets import CROP_MODES
from preprocess.align_folder import MULTIPLE_MODES, AlignFolderError, align_folder, paste_back_folder
from torch_utils import distributed

# How long a rank of a sharded run (torchrun / SLURM) waits at a barrier for the slowest rank.
SHARD_TIMEOUT_S = 7 * 24 * 3600

#----------------------------------------------------------------------------

class BatchType(click.ParamType):
    """'auto' or a positive integer."""
    name = 'N|auto'

    def convert(self, value, param, ctx):
        if isinstance(value, int) or str(value).lower() == 'auto':
            return value if isinstance(value, int) else 'auto'
        try:
            n = int(value)
        except ValueError:
            self.fail(f'{value!r} is neither a positive integer nor "auto"', param, ctx)
        if n < 1:
            self.fail(f'{n} is not a positive integer', param, ctx)
        return n


def _check_lpips(ctx, param, value):
    try:
        parse_lpips_spec(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err
    return value


def _check_init(ctx, param, value):
    try:
        parse_init(value)
    except InversionError as err:
        raise click.BadParameter(str(err).split(': ', 1)[-1]) from err
    return value


# Options restored from <DIR>/run.json by --resume DIR when not given on the command line.
_RESUMED = dict(network='network', target='target', space='space', steps='steps', lr='lr', truncation='truncation',
                truncation_until='truncation_until', crop='crop', lpips='lpips', mse_weight='mse_weight',
                l1_weight='l1_weight', precision='precision', seed='seed', mask='mask', init='init')

#----------------------------------------------------------------------------

@click.command(context_settings=dict(max_content_width=120))
@click.option('--network', metavar='PKL',                   help='Checkpoint path or URL (ours or stylegan2-ada-pytorch)')
@click.option('--target', metavar='DIR|FILE|ZIP',          help='Image folder (recursive), single image, or zip')
@click.option('--outdir', metavar='DIR',                   help='Where to write the results (same DIR again = resume)')
@click.option('--space', type=click.Choice(SPACES + ('auto',)), default='auto', show_default=True,
              help='Latent space; auto = W for overparameterized networks, w+ otherwise')
@click.option('--init', default='mean', show_default=True, callback=_check_init, metavar='mean|encoder:PKL',
              help='Start of each image: the mean latent (the paper), or the prediction of an encoder pickle from '
                   'train_encoder.py (--space auto then takes the encoder\'s space)')
@click.option('--steps', type=click.IntRange(min=0), default=1000, show_default=True,
              help='Adam steps per image; 0 = evaluate the start (with --init encoder: the encoder alone)')
@click.option('--lr', type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True, help='Adam learning rate')
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
@click.option('--device', default='cuda' if torch.cuda.is_available() else 'cpu', show_default=True)
@click.option('--precision', type=click.Choice(['fp32', 'tf32', 'bf16']), default='fp32', show_default=True,
              help='fp32 = strict; tf32 = TF32 matmuls; bf16 = TF32 generator + bfloat16-autocast VGG')
@click.option('--crop', type=click.Choice(CROP_MODES), default='center', show_default=True,
              help='Non-square images: center-crop to a square, squash the whole image (none), or pad it to a '
                   'square with the padding masked out of the loss (pad)')
@click.option('--mask', metavar='DIR', type=click.Path(file_okay=False),
              help='Masks named like the targets (any image format): white = keep, black = ignore, grey = weight. '
                   'The alpha channel of RGBA targets is a mask too')
@click.option('--lpips', default='vgg16-nvlabs', show_default=True, callback=_check_lpips, metavar='SPEC',
              help="vgg16-nvlabs[:PATH] (StyleGAN2's LPIPS: NVIDIA vgg16.pt, URL by default) | vgg (lpips package) | "
                   'vgg-random (random VGG trunk: offline smoke runs and tests only)')
@click.option('--trust-pickle', is_flag=True, help='Unpickle without restrictions (only for files you trust)')
@click.option('--mse-weight', type=click.FloatRange(min=0), default=0.0, show_default=True, help='Weight of a pixel MSE term')
@click.option('--l1-weight', type=click.FloatRange(min=0), default=0.0, show_default=True, help='Weight of a pixel L1 term')
@click.option('--save-video', is_flag=True, help='Write frames/<name>/stepNNNNN.png (target | current) during optimisation')
@click.option('--video-every', type=click.IntRange(min=1), default=10, show_default=True, help='Steps between video frames')
@click.option('--align', is_flag=True,
              help='First align the faces of --target as FFHQ was (align_faces.py) into OUTDIR/aligned, and invert those')
@click.option('--align-resolution', type=click.IntRange(min=8), default=1024, show_default=True,
              help='--align: side of the aligned crops (then resized to the generator, as FFHQ 1024 -> 256)')
@click.option('--align-multiple', type=click.Choice(MULTIPLE_MODES), default='largest', show_default=True,
              help='--align: photos with several faces: the largest, all, or skip them')
@click.option('--paste-back', is_flag=True,
              help='With --align: paste each reconstruction back into its photo (OUTDIR/pasted)')
@click.pass_context
@cli_errors
def main(ctx, network, target, outdir, space, init, steps, lr, batch, truncation, truncation_until, seed, save_every,
         resume_dir, device, precision, crop, mask, lpips, trust_pickle, mse_weight, l1_weight, save_video, video_every,
         align, align_resolution, align_multiple, paste_back):
    """Invert every image of --target into the latent space of --network.

    Defaults are the paper's: Adam lr 0.05, betas (0.9, 0.999), 1000 steps from the mean
    latent, LPIPS loss, truncation 0.9 toward the mean before each step of the first half. With
    --init encoder:PKL each image starts from the encoder's prediction instead, without truncation
    unless --truncation is given; --steps 0 then gives the encoder's reconstruction alone.
    Writes <name>.npy, <name>-recon.png, <name>-pair.png per image, and latents.npz,
    results.jsonl, summary.json, overview.png, lpips_curve.png, skipped.json, log.txt per run.
    With --mask, RGBA targets or --crop pad only the kept pixels count (in the loss and the metrics). A killed run continues
    when started again with the same --outdir (or with --resume DIR).

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
    params = dict(network=network, target=target, space=space, steps=steps, lr=lr, truncation=truncation,
                  truncation_until=truncation_until, crop=crop, lpips=lpips, mse_weight=mse_weight,
                  l1_weight=l1_weight, precision=precision, seed=seed, mask=mask, init=init)
    if resume_dir is not None:
        run_json = Path(resume_dir) / 'run.json'
        if not run_json.is_file():
            raise click.ClickException(f'--resume {resume_dir}: no run.json there, so no run to resume')
        if outdir is not None and Path(outdir).resolve() != Path(resume_dir).resolve():
            raise click.ClickException('--resume DIR continues the run in DIR: leave out --outdir or make it DIR')
        try:
            recorded = json.loads(run_json.read_text())
        except (OSError, ValueError) as err:
            raise click.ClickException(f'--resume {resume_dir}: run.json is damaged ({err}); start a new run') from err
        saved = dict(recorded.get('settings', {}), network=recorded.get('network'), init=recorded.get('init'))
        for key, field in _RESUMED.items():
            if ctx.get_parameter_source(key) == click.core.ParameterSource.DEFAULT and saved.get(field) is not None:
                params[key] = saved[field]
        outdir = resume_dir
    for key in ('network', 'target', 'outdir'):
        if (outdir if key == 'outdir' else params[key]) is None:
            raise click.UsageError(f'--{key} is required (unless --resume DIR is given)')
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise click.BadParameter(str(err), param_hint='--device') from err
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise click.BadParameter('CUDA is not available on this machine', param_hint='--device')
    if device.type == 'cuda' and device.index is None and distributed.get_world_size() > 1:
        device = torch.device('cuda', torch.cuda.current_device())          # This rank's GPU (LOCAL_RANK).

    if paste_back and not align:
        raise click.UsageError('--paste-back needs --align (it undoes the alignment)')
    inversion_target, align_skipped = params['target'], []
    if align:                                   # Rank 0 aligns; the other ranks of a sharded run read its result.
        if distributed.get_rank() == 0:
            inversion_target, align_skipped = _align_targets(params['target'], outdir, align_resolution,
                                                             align_multiple)
        distributed.barrier()
        if distributed.get_rank() != 0:
            inversion_target, align_skipped = _aligned_result(params['target'], outdir)
    args = dict(params, outdir=str(outdir), batch=batch, save_every=save_every, device=str(device),
                trust_pickle=trust_pickle, save_video=save_video, video_every=video_every, align=align,
                align_resolution=align_resolution, align_multiple=align_multiple, paste_back=paste_back)
    summary = run_inversion(params['network'], inversion_target, outdir, space=params['space'],
                            steps=params['steps'], lr=params['lr'], batch=batch, truncation=params['truncation'],
                            truncation_until=params['truncation_until'], init=params['init'], seed=params['seed'],
                            save_every=save_every, device=device, precision=params['precision'],
                            crop=params['crop'], lpips=params['lpips'], trust_pickle=trust_pickle,
                            mse_weight=params['mse_weight'], l1_weight=params['l1_weight'],
                            save_video=save_video, video_every=video_every, mask=params['mask'], skipped=align_skipped,
                            args=args)
    lpips_mean = 'n/a' if summary['lpips_mean'] is None else f'{summary["lpips_mean"]:.4f}'
    rank = distributed.get_rank()
    distributed.shutdown()
    if rank != 0:
        return
    click.echo(f'Inverted {summary["images"]} images into {summary["space"]}: mean LPIPS {lpips_mean}, '
               f'{summary["skipped"]} skipped -> {outdir}')
    if paste_back:
        pasted = paste_back_folder(Path(outdir) / 'aligned', outdir, Path(outdir) / 'pasted',
                                   pattern='{name}-recon.png', progress=False)
        click.echo(f'Pasted {pasted["pasted"]} reconstructions back into {pasted["photos"]} photos -> '
                   f'{Path(outdir) / "pasted"}')


def _align_targets(target, outdir, resolution, multiple):
    """Align the faces of `target` into OUTDIR/aligned (resumable) -> (that folder, [(photo, reason)] of the photos
    left out, for the run's skipped.json); one line when no face is found. The photos left out are named on the
    console and listed in OUTDIR/aligned/skipped.json too."""
    aligned_dir = Path(outdir) / 'aligned'
    try:
        summary = align_folder(target, aligned_dir, resolution, multiple=multiple,
                               overview=Path(outdir) / 'aligned-overview.png')
    except AlignFolderError as err:
        raise click.ClickException(str(err)) from None
    _, skipped = _aligned_result(target, outdir)
    for source, reason in skipped:
        click.echo(f'{source}: {reason} (not inverted)')
    if summary['crops'] + summary['resumed'] == 0:
        raise click.ClickException(f'--align: no face found in --target {target} (reasons in '
                                   f'{aligned_dir / "skipped.json"})')
    return str(aligned_dir), skipped


def _aligned_result(target, outdir):
    """(OUTDIR/aligned, [(photo, reason)] of the photos that alignment left out) from its skipped.json."""
    aligned_dir = Path(outdir) / 'aligned'
    skipped = [(str(Path(target) / r['source']) if Path(target).is_dir() else str(target), f'--align: {r["reason"]}')
               for r in json.loads((aligned_dir / 'skipped.json').read_text())]
    return str(aligned_dir), skipped

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
