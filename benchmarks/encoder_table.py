"""The table and the curve of docs/encoder.md from finished invert.py runs: optimisation from the mean latent vs from
an encoder's prediction (`--init encoder:PKL`), and the encoder alone (`--steps 0`), on the same images.

    python benchmarks/encoder_table.py --out docs/images/encoder-lpips-curves.png --json encoder-table.json \
        --case "overparam W=MEAN_RUN,ENC_RUN,ENC0_RUN,ENCODER_PKL" --case "baseline w+=..."

Per case: LPIPS (the runs' own loss network, from results.jsonl), PSNR, SSIM (metrics.reconstruction.ssim on the
saved uint8 reconstructions vs the targets), images per second (encoder + synthesis, timed here on the targets;
the optimisation's from its summary.json), the LPIPS-vs-step curves (lpips_curves.npz: index k = before step k,
the last = after the final step), the steps the encoder start needs to reach the mean start's final mean LPIPS,
and both final LPIPS. Writes the JSON and one labelled PNG with every case's two curves (log scale).
"""

import json
import math
import os
import sys
import time

import click
import numpy as np
import PIL.Image
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from figures.curves import labelled_lines  # noqa: E402
from metrics.reconstruction import ssim  # noqa: E402
from torch_utils import checkpoint  # noqa: E402
from torch_utils.files import atomic_write, save_json  # noqa: E402
from training.encoder import load_encoder_pkl  # noqa: E402

#----------------------------------------------------------------------------

def read_run(run_dir):
    """Per-image LPIPS/PSNR, mean SSIM, the mean LPIPS curve and the summary of one invert.py output folder."""
    records = [json.loads(line) for line in open(os.path.join(run_dir, 'results.jsonl')) if line.strip()]
    records.sort(key=lambda r: r['name'])
    summary = json.load(open(os.path.join(run_dir, 'summary.json')))
    ssims = []
    for r in records:
        recon = np.array(PIL.Image.open(os.path.join(run_dir, f'{r["name"]}-recon.png')).convert('RGB'))
        target = np.array(PIL.Image.open(r['source']).convert('RGB'))
        to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].double()  # noqa: E731
        ssims.append(float(ssim(to_t(recon), to_t(target))[0]))
    curves = np.load(os.path.join(run_dir, 'lpips_curves.npz'))
    order = np.argsort(curves['names'])
    curve = curves['curves'][order].astype(np.float64)                       # [N, steps + 1]
    init = summary['args'].get('init') or summary.get('init') or 'mean'
    truncation = summary['args'].get('truncation')
    if truncation is None:   # invert.py's default: 0.9 from the mean, off from an encoder
        truncation = 0.9 if init == 'mean' else 1.0
    return dict(lpips=float(np.mean([r['lpips'] for r in records])), psnr=float(np.mean([r['psnr'] for r in records])),
                ssim=float(np.mean(ssims)), images=len(records), steps=int(summary['steps']),
                images_per_second=summary.get('images_per_second'), curve=curve.mean(axis=0), per_image=curve,
                truncation=truncation, init=init)


@torch.no_grad()
def encoder_speed(encoder_pkl, sources, repeats=5):
    """Images per second of E alone and of E + G.synthesis on the targets (one batch, CPU, best of `repeats`)."""
    data = load_encoder_pkl(encoder_pkl)
    E = data['E'].eval()
    G = checkpoint.load_network(data.get('generator_pkl') or data['network_pkl']).eval()   # older runs: network_pkl
    imgs = np.stack([np.asarray(PIL.Image.open(s).convert('RGB')) for s in sources])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    best_e = best_eg = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        params = E(x)
        t1 = time.perf_counter()
        G.synthesis(E.to_ws(params), noise_mode='const')
        t2 = time.perf_counter()
        best_e, best_eg = min(best_e, t1 - t0), min(best_eg, t2 - t0)
    return len(x) / best_e, len(x) / best_eg


def steps_to_reach(curve, level):
    """First index k with curve[k] <= level (the LPIPS before step k, k = steps: after the last), or None."""
    hits = np.nonzero(curve <= level)[0]
    return int(hits[0]) if len(hits) else None

def compact_curves(path):
    """Rewrite the JSON with one line per curve (values rounded to 6 decimals); the table stays indented."""
    d = json.load(open(path))
    items = []
    for label, group in d['mean_lpips_curves'].items():
        inner = ',\n'.join(f'      {json.dumps(name)}: {json.dumps(None if v is None else [round(x, 6) for x in v])}'
                            for name, v in group.items())
        items.append(f'    {json.dumps(label)}: {{\n{inner}\n    }}')
    text = '{\n  "table": ' + json.dumps(d['table'], indent=2).replace('\n', '\n  ') + ',\n  "mean_lpips_curves": {\n'
    text += ',\n'.join(items) + '\n  }\n}\n'

    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
    atomic_write(path, write)

#----------------------------------------------------------------------------

@click.command()
@click.option('--case', 'cases', multiple=True, required=True, metavar='LABEL=MEAN,ENC,ENC0,PKL[,MEAN1]',
              help='invert.py runs from the mean / from the encoder / encoder only, the encoder pickle, and optionally '
                   'a run from the mean without truncation (--truncation 1)')
@click.option('--out', 'png', required=True, help='PNG of the curves')
@click.option('--json', 'json_path', required=True, help='Where the table goes (JSON)')
@click.option('--title', default='LPIPS during inversion of 32 held-out images: mean start vs encoder start')
def main(cases, png, json_path, title):
    table, lines, curves = [], [], {}
    for case in cases:
        label, _, rest = case.partition('=')
        mean_dir, enc_dir, enc0_dir, pkl, *extra = rest.split(',')
        mean, enc, enc0 = read_run(mean_dir), read_run(enc_dir), read_run(enc0_dir)
        plain = read_run(extra[0]) if extra else None
        e_speed, eg_speed = encoder_speed(pkl, [json.loads(line)['source'] for line in
                                                open(os.path.join(enc0_dir, 'results.jsonl')) if line.strip()])
        target = mean['curve'][-1]
        per_image = [steps_to_reach(c, t) for c, t in zip(enc['per_image'], mean['per_image'][:, -1])]
        row = dict(case=label, images=mean['images'], steps=mean['steps'],
                   encoder_only=dict(lpips=enc0['lpips'], psnr=enc0['psnr'], ssim=enc0['ssim'],
                                     images_per_second_encoder=e_speed, images_per_second_with_synthesis=eg_speed),
                   mean_start=dict(lpips=mean['lpips'], psnr=mean['psnr'], ssim=mean['ssim'],
                                   images_per_second=mean['images_per_second'], truncation=mean['truncation']),
                   encoder_start=dict(lpips=enc['lpips'], psnr=enc['psnr'], ssim=enc['ssim'],
                                      images_per_second=enc['images_per_second'], truncation=enc['truncation'],
                                      lpips_at_step0=float(enc['curve'][0])),
                   steps_to_reach_mean_final=steps_to_reach(enc['curve'], target),
                   per_image_steps_median=(None if None in per_image else float(np.median(per_image))),
                   per_image_not_reached=sum(p is None for p in per_image),
                   mean_start_lpips_at_step0=float(mean['curve'][0]))
        table.append(row)
        curves[label] = dict(mean_start=mean['curve'].tolist(), encoder_start=enc['curve'].tolist(),
                             mean_start_no_truncation=None if plain is None else plain['curve'].tolist())
        lines.append((f'{label}: mean start (psi {mean["truncation"]:g}, 1st half)', mean['curve'], True))
        if plain is not None:
            row['mean_start_no_truncation'] = dict(lpips=plain['lpips'], psnr=plain['psnr'], ssim=plain['ssim'],
                                                   steps_to_reach_mean_final=steps_to_reach(plain['curve'], target))
            row['steps_to_reach_mean_no_truncation_final'] = steps_to_reach(enc['curve'], plain['curve'][-1])
            lines.append((f'{label}: mean start, no truncation', plain['curve'], True))
        lines.append((f'{label}: encoder start', enc['curve'], False))
        print(json.dumps(row, indent=2))
    save_json(json_path, dict(table=table, mean_lpips_curves=curves))
    compact_curves(json_path)
    labelled_lines(png, lines, title, 'optimisation step', 'mean LPIPS (log scale)', log_y=True)


if __name__ == '__main__':
    main()
