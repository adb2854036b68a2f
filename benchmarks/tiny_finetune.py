"""Issue 25 at tiny scale: fine-tune a pretrained StyleGAN2 into R latent rows, and compare it with the
overparameterized generator trained from scratch, on held-out images.

    OMP_NUM_THREADS=1 python -m benchmarks.tiny_finetune --outdir /work/ft-run
    OMP_NUM_THREADS=1 python -m benchmarks.tiny_finetune --outdir DIR --networks BASE.pkl OVER.pkl --update-doc docs/finetune.md
    python -m benchmarks.tiny_finetune --outdir DIR --smoke           # seconds: a few images, steps and images trained

1. data and generators as `benchmarks.tiny_paper_tables` makes them: the bundled shapes (1000 images, 32 px),
   held-out targets of their own seed, and `tiny` (the pretrained StyleGAN2) and `tiny-overparam` (R rows from
   scratch) trained alike for --kimg (or given with --networks).
2. fine-tuning: `train.py --cfg tiny-overparam --resume BASE.pkl` (a fine-tuning start, training.finetune), one
   run per row start (training.row_start: 'paper', 'spread' over --spread-kimg), continued with
   `--resume=auto` (exact) to each of --lengths, so every length is a snapshot of one run.
3. FID of every generator (--fid-gen samples against the training images, the seeded random-feature detector
   `random:64:0` through the real FID code, as docs/reproducing.md), and inversion of the held-out images: the
   baseline into w and w+, the from-scratch model and every fine-tuned snapshot into W (invert.py's optimiser,
   --steps steps, loss LPIPS(vgg-random) + 0.1 MSE as the tables); LPIPS, PSNR, SSIM of the reconstructions.
4. the issue's Goal on these numbers (`tiny_finetune_report.goal`): a fine-tuned model reaching >= 90 % of the
   from-scratch model's W-inversion PSNR gain over the baseline's w+ within a third of its kimg, with an FID
   <= 1.2x the from-scratch model's.

Writes, in --outdir: `finetune.json` (every number, setting and time), `finetune.md` (the block docs/finetune.md
includes; --update-doc replaces it between its markers), the figures, and the run folders (a rerun reuses
finished ones; --only runs a part, e.g. in a parallel process).
"""  # noqa: E501 (example commands stay one line each, to copy and paste)

import json
import os
import re
import time
from pathlib import Path

import click
import numpy as np
import torch

from benchmarks import tiny_finetune_report as report, tiny_paper_tables as tables
from configs import presets
from dnnlib.cli import cli_errors
from inversion.inversion_job import InversionConfig, run_inversion
from inversion.run_files import read_pairs
from metrics import metric_main
from metrics.reconstruction import pixel_metrics, reconstruction_metrics
from torch_utils import checkpoint
from torch_utils.files import atomic_write, make_outdir, save_json
from training import launch, snapshot
from training.row_start import ROW_STARTS
from training.tiny_data import TRAIN_SEED, write_tiny_dataset, write_tiny_images
from training.training_loop import TrainingRun

#----------------------------------------------------------------------------

FULL = dict(images=16, steps=200, kimg=30.0, lengths=(0.0, 2.0, 5.0, 10.0), spread_kimg=2.0, fid_gen=1000,
            train_images=1000)
SMOKE = dict(images=3, steps=4, kimg=0.016, lengths=(0.0, 0.016, 0.032), spread_kimg=0.016, fid_gen=32, train_images=64)
BASELINE_RUNS = (('baseline', 'w'), ('baseline', 'w+'), ('overparam', 'W'))   # tables' run folders


def finetune_tag(name, kimg):
    """'finetune-paper-5'; length 0 (the start, the same network for every row start) is 'finetune-start-0'."""
    return 'finetune-start-0' if kimg == 0 else f'finetune-{name}-{kimg:g}'


def inversion_folder(tag):
    return f'invert-{tag}-W'

#----------------------------------------------------------------------------
# Fine-tuning runs.

def finetune_run(outdir, zip_path, base_pkl, name, s, seed, smoke, log):
    """{kimg: snapshot pkl} of one fine-tuning run of `tiny-overparam` from `base_pkl` with row start `name`: its
    first segment starts from the pickle, the next ones continue it with --resume=auto (bitwise like one run)."""
    folder = outdir / 'finetune'
    marker = folder / f'{name}.json'
    key = dict(base=str(base_pkl), seed=seed, spread_kimg=s['spread_kimg'], name=name)
    done = json.loads(marker.read_text()) if marker.is_file() else {}
    snaps = done.get('snapshots', {}) if done.get('key') == key else {}
    for kimg in sorted(s['lengths']):
        if str(kimg) in snaps and Path(snaps[str(kimg)]).is_file():
            log(f'fine-tuning {name}: reusing {snaps[str(kimg)]}')
            continue
        if kimg == 0:
            snaps[str(kimg)] = start_snapshot(folder / 'start', zip_path, base_pkl, seed)
            save_json(marker, dict(key=key, snapshots=snaps))
            continue
        started = any(float(k) > 0 for k in snaps)           # a training segment ran: continue that run
        extra = dict(tick=max(kimg / 2, 0.008), snap=1000, workers=0) if smoke else dict(tick=1, snap=1000)
        spread = dict(row_spread_kimg=s['spread_kimg']) if name == 'spread' else {}
        o = presets.resolve_options(cfg='tiny-overparam', data=str(zip_path), kimg=kimg, seed=seed,
                                    resume='auto' if started else str(base_pkl), row_start=name, **spread, **extra)
        c = presets.build_training_kwargs(o)
        desc = f'{presets.run_description(o)}-finetune-{name}'
        log(f'fine-tuning {name} to {kimg:g} kimg ({"continued" if started else "from " + str(base_pkl)}) ...')
        run_dir = launch.launch_training(c, str(folder), desc, gpus=1, device_type='cpu',
                                         options=dict(cfg=o.cfg, num_gpus=1, desc=desc))
        snaps[str(kimg)] = str(sorted(Path(run_dir).glob('network-snapshot-*.pkl'))[-1])
        save_json(marker, dict(key=key, snapshots=snaps, run_dir=str(run_dir)))
    return {float(k): v for k, v in snaps.items()}


_TICK = re.compile(r'tick\s+\d+\s+kimg\s+([\d.]+)\s+time\s+((?:\d+d\s*)?(?:\d+h\s*)?(?:\d+m\s*)?(?:\d+s)?)')
_SNAPSHOT = re.compile(r'network-snapshot-(\d{6,})(?:\.(\d{3}))?\.pkl$')


def snapshot_progress(pkl):
    """(kimg, CPU seconds of training up to it) of a snapshot of a run continued in segments: its kimg from its
    name, the seconds summed over the processes (each restarts the log's clock at 'Training for') from log.txt."""
    m = _SNAPSHOT.search(Path(pkl).name)
    kimg = int(m.group(1)) + int(m.group(2) or 0) / 1000
    segments, last = [], None
    log = Path(pkl).parent / 'log.txt'
    for line in (log.read_text(errors='replace') if log.is_file() else '').splitlines():
        if line.startswith('Training for'):
            if last is not None:
                segments.append(last)
            last = None
        tick = _TICK.match(line)
        if tick and float(tick.group(1)) <= kimg + 1e-9:
            last = sum(int(v) * {'d': 86400, 'h': 3600, 'm': 60, 's': 1}[u]
                       for v, u in re.findall(r'(\d+)([dhms])', tick.group(2)))
    return kimg, sum(segments) + (last or 0)


def start_snapshot(folder, zip_path, base_pkl, seed):
    """The fine-tuning start before its first step (the pretrained StyleGAN2 read with R rows), as a snapshot."""
    pkl = Path(folder) / snapshot.snapshot_name(0)
    if not pkl.is_file():
        o = presets.resolve_options(cfg='tiny-overparam', data=str(zip_path), seed=seed, resume=str(base_pkl),
                                    workers=0)
        run = TrainingRun.from_kwargs(run_dir=str(folder), verbose=False, **presets.build_training_kwargs(o))
        try:
            snapshot.save_network_snapshot(str(pkl), run.networks, run.cfg.training_set_kwargs, cur_nimg=0,
                                           latent_rows=run.G.latent_rows)
        finally:
            run.close()
    return str(pkl)


def finished_snapshots(outdir, name):
    """{kimg: pkl} a fine-tuning run with row start `name` has written so far (no training)."""
    marker = outdir / 'finetune' / f'{name}.json'
    snaps = json.loads(marker.read_text()).get('snapshots', {}) if marker.is_file() else {}
    return {float(k): v for k, v in snaps.items() if Path(v).is_file()}

#----------------------------------------------------------------------------
# Measurements.

def fid_of(pkl, zip_path, s, device):
    G = checkpoint.load_frozen_network(pkl, device=device)[0]
    res = metric_main.calc_metric('fid50k_full', G=G, detector_path=tables.FEATURE_DETECTOR, num_gen=s['fid_gen'],
                                  dataset_kwargs=tables.dataset_kwargs(zip_path, G.img_resolution), device=device,
                                  num_workers=0, cache=False, seed=0)
    return float(res.results['fid50k_full'])


def inversion_metrics(folder, distance, features):
    """(metrics dict, per-image dict) of one inversion run folder."""
    run = read_pairs(folder)
    m = reconstruction_metrics(run['recon'], run['target'], distance_fn=distance, feature_fn=features)
    r, t = (torch.from_numpy(a).permute(0, 3, 1, 2) for a in (run['recon'], run['target']))
    px = pixel_metrics(r, t)
    lp = distance(r.to(torch.float32), t.to(torch.float32)).cpu().numpy()
    m.update(lpips_median=float(np.median(lp)), psnr_median=float(np.median(px['psnr'].numpy())))
    return m, dict(names=run['names'], recon=run['recon'], target=run['target'], lpips=lp.tolist(),
                   psnr=px['psnr'].numpy().tolist())

#----------------------------------------------------------------------------

@click.command()
@click.option('--outdir', required=True, help='Where everything goes (a rerun reuses finished runs there)')
@click.option('--networks', nargs=2, default=None, metavar='BASE.pkl OVER.pkl',
              help='Skip training: a `tiny` (the pretrained StyleGAN2) and a `tiny-overparam` snapshot trained alike')
@click.option('--smoke', is_flag=True, help='Seconds, not hours: 3 images, 4 steps, a step or two of training (CI)')
@click.option('--images', type=click.IntRange(min=2), default=None, help='Held-out targets [default: 16; smoke 3]')
@click.option('--steps', type=click.IntRange(min=1), default=None, help='Inversion steps [default: 200; smoke 4]')
@click.option('--kimg', type=click.FloatRange(min=0, min_open=True), default=None,
              help='Training length of both generators when trained here [default: 30]')
@click.option('--lengths', default=None, metavar='KIMG,...',
              help='Fine-tuning lengths; 0 = the start, before any step [default: 0,2,5,10]')
@click.option('--row-starts', default=','.join(ROW_STARTS), show_default=True, metavar='NAMES',
              help='Row starts to fine-tune with (training.row_start)')
@click.option('--spread-kimg', type=click.FloatRange(min=0, min_open=True), default=None,
              help="'spread': kimg to the paper's row correlation [default: 2]")
@click.option('--seed', type=int, default=TRAIN_SEED, show_default=True, help='Training and inversion seed')
@click.option('--only', default=None, metavar='TAGS',
              help='Only these parts, no report (e.g. finetune-paper, or an inversion tag such as baseline-wplus, '
                   'overparam-W, finetune-spread-5): for parallel processes next to the full command')
@click.option('--report-only', is_flag=True, help='Rewrite finetune.md (and --update-doc) from DIR/finetune.json')
@click.option('--update-doc', type=click.Path(dir_okay=False), default=None,
              help='Also replace the generated block of this Markdown file (docs/finetune.md)')
@cli_errors
def main(outdir, networks, smoke, images, steps, kimg, lengths, row_starts, spread_kimg, seed, only, report_only,
         update_doc):
    """Fine-tune a tiny StyleGAN2 into the overparameterized latent and compare it with training from scratch."""
    if report_only:
        write_report(Path(outdir), json.loads((Path(outdir) / 'finetune.json').read_text()), update_doc, click.echo)
        return
    s = dict(SMOKE if smoke else FULL)
    s.update({k: v for k, v in dict(images=images, steps=steps, kimg=kimg, spread_kimg=spread_kimg).items()
              if v is not None})
    if lengths is not None:
        try:
            s['lengths'] = tuple(sorted({float(x) for x in lengths.split(',') if x.strip()}))
        except ValueError:
            raise click.ClickException(f'--lengths {lengths}: give kimg values separated by commas, e.g. 2,5,10')
        if not s['lengths'] or min(s['lengths']) < 0:
            raise click.ClickException(f'--lengths {lengths}: give kimg values >= 0, e.g. 0,2,5,10')
    names = [n.strip() for n in row_starts.split(',') if n.strip()]
    if not names or set(names) - set(ROW_STARTS):
        raise click.ClickException(f'--row-starts {row_starts}: use a comma-separated list of {", ".join(ROW_STARTS)}')
    if networks:
        for path in networks:
            if not os.path.isfile(path):
                raise click.ClickException(f'--networks {path}: no such file (give two network-snapshot-*.pkl files)')
    parts = None if only is None else {t.strip() for t in only.split(',') if t.strip()}
    outdir = Path(make_outdir(outdir))
    device = torch.device('cpu')                    # a CPU benchmark (tiny nets, shared cores)
    started, times = time.time(), {}

    def log(msg):
        click.echo(msg)
        with open(outdir / 'log.txt', 'a') as f:
            f.write(f'{time.strftime("%Y-%m-%d %H:%M:%S")} {msg}\n')

    def timed(name, fn):
        t0 = time.time()
        out = fn()
        times[name] = round(time.time() - t0, 1)
        log(f'  {name}: {times[name]:.0f} s')
        return out

    def wanted(tag):
        return parts is None or tag in parts

    zip_path, heldout = outdir / 'tiny32.zip', outdir / 'heldout'
    if not zip_path.is_file():
        write_tiny_dataset(zip_path, num_images=s['train_images'], resolution=32, seed=seed)
    if len(list(heldout.glob('*.png'))) != s['images']:
        write_tiny_images(heldout, num_images=s['images'], resolution=32)
    if networks:
        nets = dict(baseline=os.path.abspath(networks[0]), overparam=os.path.abspath(networks[1]))
        log(f'generators: given, {nets["baseline"]} and {nets["overparam"]}')
    else:
        nets = timed('training', lambda: tables.train_pair(outdir, zip_path, s['kimg'], seed, smoke, log))

    finetuned = {}
    for name in names:
        if wanted(f'finetune-{name}'):
            finetuned[name] = timed(f'fine-tuning {name}', lambda: finetune_run(
                outdir, zip_path, nets['baseline'], name, s, seed, smoke, log))
        else:
            finetuned[name] = finished_snapshots(outdir, name)

    def invert(tag, pkl, space, folder):
        log(f'inverting {s["images"]} images with {tag} into {space} ({s["steps"]} steps) ...')
        cfg = InversionConfig(network=pkl, target=str(heldout), space=space, steps=s['steps'], batch=s['images'],
                              lpips=tables.LPIPS, mse_weight=report.MSE_WEIGHT, l1_weight=report.L1_WEIGHT, seed=seed,
                              progress=not smoke, device=str(device))
        tables.invert_when_free(lambda: run_inversion(cfg, cfg.target, str(outdir / folder)), outdir / folder, log)

    for model, space in BASELINE_RUNS:
        tag = tables.run_tag(model, space)
        if wanted(tag):
            timed(f'invert {tag}', lambda: invert(tag, nets[model], space, tables.run_folder(model, space)))
    for name, snaps in finetuned.items():
        for kimg_, pkl in snaps.items():
            tag = finetune_tag(name, kimg_)
            if wanted(tag):
                timed(f'invert {tag}', lambda: invert(tag, pkl, 'W', inversion_folder(tag)))
    if parts is not None:
        log(f'--only {",".join(sorted(parts))}: done')
        return

    distance, features = tables.lpips_distance_fn(seed, device), tables.feature_fn(device)
    models = dict(nets)
    for name, snaps in finetuned.items():
        models.update({finetune_tag(name, k): pkl for k, pkl in snaps.items()})
    fid = timed('FID', lambda: {tag: fid_of(pkl, zip_path, s, device) for tag, pkl in models.items()})
    inversions, per_image = {}, {}
    for model, space in BASELINE_RUNS:
        label = tables.run_label(model, space)
        inversions[label], per_image[label] = inversion_metrics(outdir / tables.run_folder(model, space), distance,
                                                                features)
    finetunes = []
    for name, snaps in finetuned.items():
        for kimg_, pkl in sorted(snaps.items()):
            tag = finetune_tag(name, kimg_)
            m, per_image[tag] = inversion_metrics(outdir / inversion_folder(tag), distance, features)
            at_kimg, seconds = snapshot_progress(pkl)
            finetunes.append(dict(row_start=name, kimg=at_kimg, target_kimg=kimg_, fid=fid[tag], snapshot=pkl,
                                  seconds=seconds, W=m))
    training = {model: tables.read_training_log(pkl) for model, pkl in nets.items()}
    settings = dict(s, lengths=list(s['lengths']), row_starts=names, smoke=bool(smoke), seed=seed,
                    lpips=tables.LPIPS, feature_detector=tables.FEATURE_DETECTOR, networks_given=bool(networks),
                    mse_weight=report.MSE_WEIGHT, l1_weight=report.L1_WEIGHT, date=time.strftime('%Y-%m-%d'),
                    torch_threads=torch.get_num_threads(), omp_num_threads=os.environ.get('OMP_NUM_THREADS'),
                    cpu_count=os.cpu_count(), rows=presets.PRESETS['tiny-overparam']['rows'])
    times['total'] = round(time.time() - started, 1)
    result = dict(settings=settings, networks=nets, training=training, fid=dict(baseline=fid['baseline'],
                  overparam=fid['overparam']), inversions=inversions, finetunes=finetunes, seconds=times)
    report.write_figures(outdir, result, per_image)
    write_report(outdir, result, update_doc, log)
    log(f'Done in {times["total"]:.0f} s: {outdir / "finetune.json"}, {outdir / "finetune.md"}')


def write_report(outdir, result, update_doc, log):
    """finetune.json (with the Goal's evaluation and each inversion's own time), finetune.md, the doc block."""
    result['inversion_seconds'] = report.inversion_seconds(outdir, result)
    result['goal'] = report.goal(result)
    save_json(outdir / 'finetune.json', result)
    block = report.markdown(result)
    atomic_write(outdir / 'finetune.md', lambda tmp: Path(tmp).write_text(block))
    if update_doc:
        report.replace_doc_block(update_doc, block, outdir)
        log(f'updated the generated block of {update_doc}')


if __name__ == '__main__':
    main()
