"""The README's main job on the bundled tiny default, on a CPU in a few minutes.

1. Writes the bundled procedural dataset (coloured shapes, 32 px) and held-out images.
2. Trains the `tiny-overparam` preset (latent matrices of R = 64 rows) for --kimg.
3. Inverts the held-out images into w (one vector) and W (one matrix) with the paper's
   method (Adam + LPIPS, truncation for the first half of the steps), prints the mean
   LPIPS, MSE, PSNR and SSIM of both and writes `comparison.png` (targets | w | W, upscaled,
   each reconstruction labelled with its LPIPS and PSNR).

Everything lands in --outdir (default out/quickstart); quickstart.json sums it up.
LPIPS is StyleGAN2's (NVIDIA's vgg16.pt, `vgg16-nvlabs`) when it is cached or can be
downloaded, and the loss is the paper's (LPIPS alone). Offline without it the quickstart picks
the seeded random stand-in `vgg-random` and says so: a random VGG is nearly blind to colour, so
the loss then gets a pixel term, LPIPS + 0.1 x MSE (`configs.offline_inversion`, the loss of
`benchmarks.tiny_paper_tables` too). Those LPIPS values are not comparable to published ones
(MSE/PSNR/SSIM are).
"""

import time
from pathlib import Path

import click
import torch

from configs import offline_inversion, presets
from dnnlib.cli import cli_errors
from dnnlib.util import url_cache_path
from figures.sheets import comparison_sheet
from inversion.inversion_job import InversionConfig, run_inversion
from inversion.losses import build_loss
from inversion.run_files import read_pairs
from metrics.lpips import DEFAULT_LPIPS, VGG16_URL, LpipsUnavailableError
from metrics.reconstruction import pixel_metrics, reconstruction_metrics
from torch_utils.files import make_outdir, save_json
from torch_utils.image_io import save_png
from training import launch
from training.tiny_data import write_tiny_dataset, write_tiny_images


def pick_lpips():
    """'vgg16-nvlabs' (the default LPIPS) when NVIDIA's vgg16.pt loads (cached or downloadable);
    offline without it, the random stand-in 'vgg-random', chosen explicitly, with a notice."""
    try:
        build_loss(DEFAULT_LPIPS)
        return DEFAULT_LPIPS, None
    except LpipsUnavailableError:
        return 'vgg-random', (f"NVIDIA's vgg16.pt is not available offline (cache: {url_cache_path(VGG16_URL)}), "
                              f"so LPIPS uses the random stand-in vgg-random: its values are not comparable to "
                              f"published ones (MSE/PSNR/SSIM are)")


def loss_settings(lpips):
    """InversionConfig's loss fields for the LPIPS `pick_lpips` chose: the paper's loss (LPIPS only)
    with NVIDIA's VGG16, LPIPS + a pixel term (`configs.offline_inversion`) with the random stand-in."""
    if lpips == offline_inversion.LPIPS:
        return offline_inversion.loss_kwargs()
    return dict(lpips=lpips, mse_weight=0.0, l1_weight=0.0)


def describe_loss(kw):
    if kw['lpips'] == offline_inversion.LPIPS:
        return offline_inversion.describe()
    return f"LPIPS ({kw['lpips']}: NVIDIA's VGG16 of StyleGAN2's projector, the paper's loss)"


def write_comparison(path, runs, num_shown=8):
    """comparison.png: targets | one column per space, each reconstruction captioned with its LPIPS and PSNR.
    runs: {space: dict(target uint8 `[N, H, W, C]`, recon, lpips [N], psnr [N])}."""
    first = next(iter(runs.values()))
    k = min(num_shown, len(first['target']))
    columns = [list(first['target'][:k])] + [list(r['recon'][:k]) for r in runs.values()]
    captions = [[None] * k] + [[f'LPIPS {r["lpips"][i]:.4f}\nPSNR {r["psnr"][i]:.2f} dB' for i in range(k)]
                               for r in runs.values()]
    means = '\n'.join(f'{space}: mean LPIPS {sum(r["lpips"]) / len(r["lpips"]):.4f}, '
                      f'PSNR {sum(r["psnr"]) / len(r["psnr"]):.2f} dB'
                      for space, r in runs.items())
    save_png(path, comparison_sheet(columns, ['target'] + [f'inverted into {s}' for s in runs], captions,
                                    title=f'{len(first["target"])} held-out images (first {k} shown)\n{means}'))


def train_tiny(outdir, kimg, cfg, seed):
    o = presets.resolve_options(cfg=cfg, data=str(outdir / 'tiny32.zip'), kimg=kimg, tick=max(kimg / 4, 0.004),
                                snap=1000, seed=seed, workers=0, metrics=[])
    c = presets.build_training_kwargs(o)
    run_dir = launch.launch_training(c, str(outdir / 'training'), presets.run_description(o), gpus=1, device_type='cpu')
    snapshots = sorted(Path(run_dir).glob('network-snapshot-*.pkl'))
    return Path(run_dir), snapshots[-1]


@click.command()
@click.option('--outdir', default='out/quickstart', show_default=True)
@click.option('--kimg', type=click.FloatRange(min=0, min_open=True), default=3, show_default=True,
              help='Training length')
@click.option('--cfg', type=click.Choice(['tiny-overparam', 'tiny']), default='tiny-overparam', show_default=True)
@click.option('--images', 'num_images', type=click.IntRange(min=1), default=8, show_default=True,
              help='Held-out targets')
@click.option('--steps', type=click.IntRange(min=1), default=300, show_default=True, help='Inversion steps')
@click.option('--seed', type=int, default=0, show_default=True)
@cli_errors
def main(outdir, kimg, cfg, num_images, steps, seed):
    outdir = Path(make_outdir(outdir))
    start = time.time()
    write_tiny_dataset(outdir / 'tiny32.zip', num_images=1000, resolution=32, seed=seed)
    write_tiny_images(outdir / 'heldout', num_images=num_images, resolution=32)
    click.echo(f'[1/3] data: 1000 training images, {num_images} held-out targets in {outdir}')

    click.echo(f'[2/3] training {cfg} for {kimg} kimg on the CPU ...')
    run_dir, pkl = train_tiny(outdir, kimg, cfg, seed)
    click.echo(f'      snapshot: {pkl}')

    lpips, notice = pick_lpips()
    if notice:
        click.echo(f'      note: {notice}')
    loss = loss_settings(lpips)
    spaces = ('w', 'W') if cfg == 'tiny-overparam' else ('w', 'w+')
    summary = dict(training_run=str(run_dir), snapshot=str(pkl), lpips=lpips, lpips_notice=notice,
                   loss=dict(loss, description=describe_loss(loss)), inversions={})
    click.echo(f'[3/3] inverting the held-out images into {" and ".join(spaces)} ({steps} steps), '
               f'loss {describe_loss(loss)} ...')
    shown = {}
    for space in spaces:
        inv_dir = outdir / f'invert-{space.replace("+", "plus")}'
        cfg = InversionConfig(network=str(pkl), target=str(outdir / 'heldout'), space=space, steps=steps,
                              batch=num_images, seed=seed, progress=False, **loss)
        inv = run_inversion(cfg, cfg.target, str(inv_dir))
        run = read_pairs(inv_dir)
        recon = reconstruction_metrics(run['recon'], run['target'])        # MSE, PSNR, SSIM on uint8 images
        summary['inversions'][space] = dict(outdir=str(inv_dir), lpips=inv['lpips_mean'], **recon)
        per_image = run['recorded_lpips'] if run['recorded_lpips'] is not None else [float('nan')] * len(run['names'])
        psnr = pixel_metrics(*(torch.from_numpy(a).permute(0, 3, 1, 2) for a in (run['recon'], run['target'])))['psnr']
        shown[space] = dict(target=run['target'], recon=run['recon'], lpips=list(per_image), psnr=psnr.tolist())
    write_comparison(outdir / 'comparison.png', shown)
    summary['comparison_png'] = str(outdir / 'comparison.png')
    summary['seconds'] = round(time.time() - start, 1)
    save_json(outdir / 'quickstart.json', summary)

    click.echo(f'\n{"space":6s} {"LPIPS":>8s} {"MSE":>9s} {"PSNR":>7s} {"SSIM":>6s}   ({num_images} images)')
    for space, r in summary['inversions'].items():
        click.echo(f'{space:6s} {r["lpips"]:8.4f} {r["mse"]:9.5f} {r["psnr"]:7.2f} {r["ssim"]:6.3f}')
    click.echo(f'LPIPS network: {lpips}' + (' (seeded random VGG16 trunk: not comparable to published LPIPS)'
                                             if lpips == offline_inversion.LPIPS else " (NVIDIA's vgg16.pt)"))
    click.echo(f'Side by side (targets | {" | ".join(spaces)}): {outdir / "comparison.png"}')
    click.echo(f'\nDone in {summary["seconds"]:.0f} s: {outdir / "quickstart.json"}')


if __name__ == '__main__':
    main()
