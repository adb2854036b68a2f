"""The paper's tables 1-3 and figures 5-6 at tiny scale: a StyleGAN2 baseline and its overparameterized
twin, trained alike on the bundled procedural shapes, compared on held-out images.

    OMP_NUM_THREADS=1 python -m benchmarks.tiny_paper_tables --outdir /work/tables-run
    OMP_NUM_THREADS=1 python -m benchmarks.tiny_paper_tables --outdir DIR --networks BASE.pkl OVER.pkl
    python -m benchmarks.tiny_paper_tables --outdir DIR --smoke          # seconds: a few images and steps

1. data: the training zip (`write_tiny_dataset`, 1000 images, seed 0) and --images held-out targets
   (`write_tiny_images`, its held-out seed: never seen in training).
2. training: `tiny` and `tiny-overparam` with the same seed, recipe and length (train.py's preset
   values; only --cfg differs). `--networks BASE OVER` skips it and uses generators trained so
   elsewhere; their run folders' log.txt give the kimg and CPU time reported.
3. table 1: FID of 1000 generated images against the 1000 training images, with the seeded
   random-feature detector `random:64:0` through the real FID code (not Inception: not comparable
   with published FIDs), and PPL (`ppl2_wend`: w, or W for the overparameterized model, endpoints,
   epsilon 1e-4) with the LPIPS of the random VGG16 trunk `vgg-random`.
4. table 2: the held-out images inverted into baseline w and w+ and overparameterized W and W+
   (invert.py's optimiser and truncation schedule, --steps steps, the loss LPIPS(vgg-random) +
   --mse-weight * MSE + --l1-weight * L1); LPIPS (vgg-random), PSNR, SSIM, MSE of the uint8
   reconstructions and FID (random features) of the reconstructions against the targets.
5. table 3: every pair of inversions interpolated linearly in its space: FID (random features) of
   the midpoints against the training images, and the path length (vgg-random LPIPS summed over 5
   segments), as `metrics.interpolation`.
6. figure 6 (`fig6-lpips-vs-step.png`): median and quartiles of LPIPS against the step per space;
   figure 5 (`fig5-reconstructions.png`): targets | baseline w+ | overparam W | overparam W+.

Writes, in --outdir: `tables.json` (every number and setting), `tables.md` (the Markdown block that
docs/reproducing.md includes; `--update-doc docs/reproducing.md` replaces it between its markers), the
PNGs, and the training and inversion run folders (a rerun reuses finished ones).
"""

import fcntl
import json
import os
import re
import time
from pathlib import Path

import click
import numpy as np
import torch

from benchmarks import tiny_tables_report as report
from configs import presets
from dnnlib.cli import cli_errors
from inversion.edit.interpolate import real_feature_stats
from inversion.inversion_job import InversionConfig, run_inversion
from inversion.run_files import read_curves, read_pairs, read_run_ws
from metrics import detectors, interpolation as interp, lpips, metric_main
from metrics.reconstruction import pixel_metrics, reconstruction_metrics
from torch_utils import checkpoint
from torch_utils.files import OutdirError, atomic_write, make_outdir, save_json
from training import launch
from training.tiny_data import TRAIN_SEED, write_tiny_dataset, write_tiny_images

#----------------------------------------------------------------------------

CFGS = dict(baseline='tiny', overparam='tiny-overparam')
RUNS = (('baseline', 'w'), ('baseline', 'w+'), ('overparam', 'W'), ('overparam', 'W+'))
FEATURE_DETECTOR = 'random:64:0'       # seeded random conv net: stands in for Inception in every FID here
LPIPS = 'vgg-random'                   # lpips package, VGG16 trunk with seeded random weights
FULL = dict(images=32, steps=1000, kimg=30.0, fid_gen=1000, ppl_samples=1000, train_images=1000)
SMOKE = dict(images=4, steps=6, kimg=0.016, fid_gen=32, ppl_samples=8, train_images=64)


def run_label(model, space):
    return f'{model} {space}'


def run_folder(model, space):
    return f'invert-{model}-{space.replace("+", "plus")}'


def run_tag(model, space):
    """'baseline-w', 'baseline-wplus', 'overparam-W', 'overparam-Wplus' (for --invert-only)."""
    return run_folder(model, space)[len('invert-'):]

#----------------------------------------------------------------------------
# LPIPS and features as the metrics' callables.

def lpips_distance_fn(seed=0, device='cpu'):
    """`fn(img0, img1) -> [N]`: LPIPS of the random VGG16 trunk `vgg-random` (seed `seed`, the inversion's
    loss network) on images `[N, 3, H, W]` float in [0, 255], the metrics' convention."""
    return lpips.lpips_distance_fn(LPIPS, device=device, seed=seed)


def feature_fn(device='cpu'):
    """uint8 `[n, 3, H, W]` -> `[n, 64]` features of the random-feature detector (FID stand-in)."""
    detector = detectors.get_detector(FEATURE_DETECTOR, device=device)

    @torch.no_grad()
    def features(images):
        return detector(images.to(device), return_features=True)
    return features


def dataset_kwargs(zip_path, resolution):
    return dict(class_name='training.dataset.ImageFolderDataset', path=str(zip_path), use_labels=False,
                max_size=None, xflip=False, resolution=int(resolution))

#----------------------------------------------------------------------------
# Training (or the generators given), and what their logs say.

def read_training_log(pkl):
    """{run_dir, kimg, seconds, cfg, seed, total_kimg} of the training run holding snapshot `pkl`, read from its
    log.txt (last progress line) and training_options.json; missing pieces are None."""
    run_dir = Path(pkl).resolve().parent
    info = dict(run_dir=str(run_dir), snapshot=str(Path(pkl).resolve()), kimg=None, seconds=None, cfg=None, seed=None,
                total_kimg=None)
    try:
        lines = (run_dir / 'log.txt').read_text(errors='replace').splitlines()
    except OSError:
        lines = []
    for line in lines:
        m = re.match(r'tick\s+\d+\s+kimg\s+([\d.]+)\s+time\s+((?:\d+d\s*)?(?:\d+h\s*)?(?:\d+m\s*)?(?:\d+s)?)', line)
        if m:
            info['kimg'] = float(m.group(1))
            info['seconds'] = sum(int(v) * {'d': 86400, 'h': 3600, 'm': 60, 's': 1}[u]
                                  for v, u in re.findall(r'(\d+)([dhms])', m.group(2)))
    try:
        opts = json.loads((run_dir / 'training_options.json').read_text())
        info.update(cfg=opts.get('cfg'), seed=opts.get('random_seed'), total_kimg=opts.get('total_kimg'))
    except (OSError, ValueError):
        pass
    return info


def train_pair(outdir, zip_path, kimg, seed, smoke, log):
    """Train `tiny` and `tiny-overparam` alike (or reuse finished runs in outdir/training); -> {model: pkl}."""
    nets = {}
    for model, cfg in CFGS.items():
        marker = outdir / 'training' / f'{model}.json'
        if marker.is_file():
            done = json.loads(marker.read_text())
            if done.get('kimg') == kimg and done.get('seed') == seed and Path(done['snapshot']).is_file():
                log(f'training: reusing {done["snapshot"]}')
                nets[model] = done['snapshot']
                continue
        extra = dict(tick=max(kimg / 4, 0.004), snap=1000, workers=0) if smoke else {}
        o = presets.resolve_options(cfg=cfg, data=str(zip_path), kimg=kimg, seed=seed, **extra)
        c = presets.build_training_kwargs(o)
        desc = presets.run_description(o)
        log(f'training {cfg} for {kimg} kimg (seed {seed}) ...')
        run_dir = launch.launch_training(c, str(outdir / 'training'), desc, gpus=1, device_type='cpu',
                                         options=dict(cfg=cfg, num_gpus=1, desc=desc))
        pkl = str(sorted(Path(run_dir).glob('network-snapshot-*.pkl'))[-1])
        save_json(marker, dict(snapshot=pkl, kimg=kimg, seed=seed, cfg=cfg))
        nets[model] = pkl
    return nets

def folder_busy(folder):
    """True while another process holds `folder`'s outdir lock (`files.outdir_lock`), checked without
    loading anything."""
    path = Path(folder) / '.lock'
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)                                                        # releases the probe's lock


def invert_when_free(run, folder, log, poll_s=20):
    """`run()` (one run_inversion into `folder`); while another process holds that folder (`--invert-only` in
    parallel), wait for it first: the run then resumes its finished images."""
    while True:
        if folder_busy(folder):
            log(f'  {folder} is in use by another process: waiting for it')
            while folder_busy(folder):
                time.sleep(poll_s)
        try:
            return run()
        except OutdirError as err:                                          # taken between the probe and the run
            if 'in use by another' not in str(err):
                raise
            time.sleep(poll_s)


def wait_for(pkl, minutes, log, poll_s=20):
    """Return when `pkl` exists (a training run elsewhere may still be writing it); ClickException after
    `minutes`. The snapshot is written atomically (temp file + rename), so it is complete once it exists."""
    deadline = time.time() + 60 * minutes
    if not os.path.isfile(pkl):
        log(f'waiting up to {minutes:g} min for {pkl} ...')
    while not os.path.isfile(pkl):
        if time.time() > deadline:
            raise click.ClickException(f'--networks {pkl}: still missing after --wait {minutes:g} minutes')
        time.sleep(poll_s)

#----------------------------------------------------------------------------
# The tables.

def table1(nets, zip_path, s, device, distance):
    """{model: dict(fid, ppl)}: FID (random features) of s['fid_gen'] images vs all training images, PPL in w / W."""
    rows = {}
    for model, pkl in nets.items():
        G = checkpoint.load_frozen_network(pkl, device=device)[0]
        common = dict(G=G, dataset_kwargs=dataset_kwargs(zip_path, G.img_resolution), device=device, num_workers=0,
                      cache=False, seed=0)
        fid = metric_main.calc_metric('fid50k_full', detector_path=FEATURE_DETECTOR, num_gen=s['fid_gen'], **common)
        ppl = metric_main.calc_metric('ppl2_wend', num_gen=s['ppl_samples'], distance_fn=distance, ppl_batch_size=16,
                                      **common)
        rows[model] = dict(fid=fid.results['fid50k_full'], ppl=ppl.results['ppl2_wend'],
                           ppl_space='W' if G.latent_rows is not None else 'w', fid_images=s['fid_gen'],
                           ppl_samples=s['ppl_samples'])
    return rows


def table2(outdir, distance, features):
    """{label: metrics} of each inversion run, plus per-image values for the figure."""
    rows, per_image = {}, {}
    for model, space in RUNS:
        run = read_pairs(outdir / run_folder(model, space))
        m = reconstruction_metrics(run['recon'], run['target'], distance_fn=distance, feature_fn=features)
        r, t = (torch.from_numpy(a).permute(0, 3, 1, 2) for a in (run['recon'], run['target']))
        px = pixel_metrics(r, t)
        lp = distance(r.to(torch.float32), t.to(torch.float32)).cpu().numpy()
        m.update(lpips_median=float(np.median(lp)), psnr_median=float(np.median(px['psnr'].numpy())))
        rows[run_label(model, space)] = m
        per_image[run_label(model, space)] = dict(names=run['names'], recon=run['recon'], target=run['target'],
                                                  lpips=lp.tolist(), psnr=px['psnr'].numpy().tolist())
    return rows, per_image


def table3(outdir, nets, zip_path, device, distance, features):
    """{label: dict(fid_midpoints, ppl_mean, ppl_median, num_pairs)} over all pairs of each run's inversions."""
    rows = {}
    real = None
    for model, space in RUNS:
        G = checkpoint.load_frozen_network(nets[model], device=device)[0]
        if real is None:
            real = real_feature_stats(str(zip_path), G.img_resolution, FEATURE_DETECTOR, device, cache=False)
        _names, ws, _space, _run_sha = read_run_ws(G, outdir / run_folder(model, space), device)
        pairs = interp.all_pairs(ws.shape[0])
        res = interp.interpolation_metrics(G, ws, pairs, distance, feature_fn=features, real_features=real)
        res.pop('path_lengths')
        rows[run_label(model, space)] = res
    return rows


def curves_of(outdir):
    """{label: curves `[N, T]`} from each run's lpips_curves.npz."""
    out = {}
    for model, space in RUNS:
        curves = read_curves(outdir / run_folder(model, space) / 'lpips_curves.npz')
        out[run_label(model, space)] = np.stack([curves[n] for n in sorted(curves)]) if curves else np.zeros([0, 1])
    return out

#----------------------------------------------------------------------------

@click.command()
@click.option('--outdir', required=True, help='Where everything goes (a rerun reuses finished runs there)')
@click.option('--networks', nargs=2, default=None, metavar='BASE.pkl OVER.pkl',
              help='Skip training: a `tiny` and a `tiny-overparam` snapshot trained by the same recipe')
@click.option('--smoke', is_flag=True, help='Seconds, not hours: 4 images, 6 steps, 0.016 kimg (for CI)')
@click.option('--images', type=click.IntRange(min=2), default=None, help='Held-out targets [default: 32; smoke 4]')
@click.option('--steps', type=click.IntRange(min=1), default=None, help='Inversion steps [default: 1000; smoke 6]')
@click.option('--kimg', type=click.FloatRange(min=0, min_open=True), default=None, help='Training length [default: 30]')
@click.option('--mse-weight', type=click.FloatRange(min=0), default=report.MSE_WEIGHT, show_default=True,
              help='Pixel MSE term of the inversion loss')
@click.option('--l1-weight', type=click.FloatRange(min=0), default=report.L1_WEIGHT, show_default=True,
              help='Pixel L1 term of the inversion loss')
@click.option('--batch', type=click.IntRange(min=1), default=32, show_default=True, help='Images per inversion batch')
@click.option('--seed', type=int, default=TRAIN_SEED, show_default=True, help='Training and inversion seed')
@click.option('--wait', 'wait_minutes', type=click.FloatRange(min=0), default=0, show_default=True,
              help='With --networks: invert with the one that exists while waiting up to this long for the other')
@click.option('--invert-only', 'invert_only', default=None, metavar='TAGS',
              help='Only these inversions (comma-separated: baseline-w, baseline-wplus, overparam-W, overparam-Wplus), '
                   'no tables: run them in parallel processes next to the full command, which waits for them')
@click.option('--report-only', is_flag=True,
              help='Rewrite tables.md (and --update-doc) from DIR/tables.json without computing anything')
@click.option('--update-doc', type=click.Path(dir_okay=False), default=None,
              help='Also replace the generated block of this Markdown file (docs/reproducing.md)')
@cli_errors
def main(outdir, networks, smoke, images, steps, kimg, mse_weight, l1_weight, batch, seed, wait_minutes, invert_only,
         report_only, update_doc):
    """Tables 1-3 and figures 5-6 of the paper for a tiny baseline and its overparameterized twin."""
    if report_only:
        write_report(Path(outdir), json.loads((Path(outdir) / 'tables.json').read_text()), update_doc, click.echo)
        return
    tags = [run_tag(m, sp) for m, sp in RUNS]
    only = None if invert_only is None else [t.strip() for t in invert_only.split(',') if t.strip()]
    if only is not None and (not only or set(only) - set(tags)):
        raise click.ClickException(f'--invert-only {invert_only}: use a comma-separated list of {", ".join(tags)}')
    if only is not None and not networks:
        raise click.ClickException('--invert-only needs --networks BASE.pkl OVER.pkl (it does not train)')
    s = dict(SMOKE if smoke else FULL)
    s.update({k: v for k, v in dict(images=images, steps=steps, kimg=kimg).items() if v is not None})
    if networks:
        for path in networks:
            if not os.path.isfile(path) and not (wait_minutes and os.path.isdir(os.path.dirname(path) or '.')):
                raise click.ClickException(f'--networks {path}: no such file (give two network-snapshot-*.pkl files)')
    outdir = Path(make_outdir(outdir))
    device = torch.device('cpu')                    # the tables are a CPU benchmark (tiny nets, shared cores)
    started = time.time()
    times = {}

    def log(msg):
        click.echo(msg)
        with open(outdir / 'log.txt', 'a') as f:
            f.write(f'{time.strftime("%Y-%m-%d %H:%M:%S")} {msg}\n')

    def stage(name, t0):
        times[name] = round(time.time() - t0, 1)
        log(f'  {name}: {times[name]:.0f} s')

    t0 = time.time()
    zip_path = outdir / 'tiny32.zip'
    if not zip_path.is_file():
        write_tiny_dataset(zip_path, num_images=s['train_images'], resolution=32, seed=seed)
    heldout = outdir / 'heldout'
    if len(list(heldout.glob('*.png'))) != s['images']:         # never rewritten under a parallel --invert-only
        write_tiny_images(heldout, num_images=s['images'], resolution=32)
    if networks:
        nets = dict(baseline=os.path.abspath(networks[0]), overparam=os.path.abspath(networks[1]))
        log(f'training: skipped, using {nets["baseline"]} and {nets["overparam"]}')
    else:
        nets = train_pair(outdir, zip_path, s['kimg'], seed, smoke, log)
    stage('training', t0)

    order = sorted(RUNS, key=lambda run: run[0] != 'overparam')               # overparam first (see --wait)
    for model, space in order:
        if only is not None and run_tag(model, space) not in only:
            continue
        t0 = time.time()
        wait_for(nets[model], wait_minutes, log)
        log(f'inverting {s["images"]} images into {run_label(model, space)} ({s["steps"]} steps) ...')
        cfg = InversionConfig(network=nets[model], target=str(heldout), space=space, steps=s['steps'],
                              batch=min(batch, s['images']), lpips=LPIPS, mse_weight=mse_weight, l1_weight=l1_weight,
                              seed=seed, progress=not smoke, device=device)
        invert_when_free(lambda: run_inversion(cfg, cfg.target, str(outdir / run_folder(model, space))),
                         outdir / run_folder(model, space), log)
        stage(f'invert {run_label(model, space)}', t0)
    if only is not None:
        log(f'--invert-only {",".join(only)}: done')
        return

    training = {model: read_training_log(pkl) for model, pkl in nets.items()}
    distance, features = lpips_distance_fn(seed, device), feature_fn(device)
    t0 = time.time()
    t1 = table1(nets, zip_path, s, device, distance)
    stage('table 1', t0)
    t0 = time.time()
    t2, per_image = table2(outdir, distance, features)
    stage('table 2', t0)
    t0 = time.time()
    t3 = table3(outdir, nets, zip_path, device, distance, features)
    stage('table 3', t0)

    curves = curves_of(outdir)
    report.write_figures(outdir, curves, per_image, truncation_end=s['steps'] // 2)
    settings = dict(s, smoke=bool(smoke), mse_weight=mse_weight, l1_weight=l1_weight, batch=batch, seed=seed,
                    lpips=LPIPS, feature_detector=FEATURE_DETECTOR, networks_given=bool(networks),
                    date=time.strftime('%Y-%m-%d'), torch_threads=torch.get_num_threads(),
                    omp_num_threads=os.environ.get('OMP_NUM_THREADS'), cpu_count=os.cpu_count())
    times['total'] = round(time.time() - started, 1)
    result = dict(settings=settings, training=training, networks=nets, table1=t1, table2=t2, table3=t3, seconds=times)
    write_report(outdir, result, update_doc, log)
    log(f'Done in {times["total"]:.0f} s: {outdir / "tables.json"}, {outdir / "tables.md"}, '
        f'{outdir / report.FIG6}, {outdir / report.FIG5}')


def inversion_seconds(outdir):
    """{label: optimisation seconds} from each inversion run's summary.json (the run's own time, also when
    a parallel --invert-only process did it)."""
    out = {}
    for model, space in RUNS:
        try:
            summary = json.loads((Path(outdir) / run_folder(model, space) / 'summary.json').read_text())
            out[run_label(model, space)] = summary.get('optimization_seconds')
        except (OSError, ValueError):
            out[run_label(model, space)] = None
    return out


def write_report(outdir, result, update_doc, log):
    """tables.json (with the orderings and the inversions' own times), tables.md, and the doc block."""
    result['inversion_seconds'] = inversion_seconds(outdir)
    result['orderings'] = report.orderings(result['table2'], result['table3'], result['table1'])
    save_json(outdir / 'tables.json', result)
    block = report.markdown(result)
    atomic_write(outdir / 'tables.md', lambda tmp: Path(tmp).write_text(block))
    if update_doc:
        report.replace_block(update_doc, block, outdir)
        log(f'updated the generated block of {update_doc}')

if __name__ == '__main__':
    main()
