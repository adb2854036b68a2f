"""A whole `invert.py` run per `--compile` mode, compilation included: wall and CPU time end to end.

    python -m benchmarks.bench_invert_end_to_end --images 16 --steps 300 --res 64 --cmax 256 --modes off,auto

Writes a seeded random overparameterized generator (R = --rows, channel_base 16384) as a pickle and `--images`
random targets into `--work`, then runs `python invert.py --compile MODE --lpips vgg-random` (LPIPS at the cost of
the real VGG16, no download; `--batch auto` = 8 on the CPU) once per mode, one after the other, each in a fresh
process with an empty Inductor cache (`--cold`, the default: what a first run pays) or with the shared one
(`--warm`). Prints one JSON line per run (wall and CPU seconds, children included; the compile decision from
summary.json) and the ratios to the first mode.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import click


def _prepare(work, images, res, cmax, rows, seed):
    import numpy as np
    import PIL.Image
    import torch

    from torch_utils import checkpoint
    from training import networks
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3, latent_rows=rows,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=16384, channel_max=cmax, num_fp16_res=0, conv_clamp=256,
                                                 use_noise=False)).eval()
    G.mapping.w_avg.copy_(torch.randn(G.w_dim) * 0.3)
    pkl = os.path.join(work, f'G-{res}px.pkl')
    checkpoint.save_network_pkl(pkl, dict(G_ema=G))
    target = os.path.join(work, 'targets')
    os.makedirs(target, exist_ok=True)
    rng = np.random.RandomState(seed)
    for i in range(images):
        pixels = rng.randint(0, 256, (res, res, 3), dtype=np.uint8)
        PIL.Image.fromarray(pixels).save(os.path.join(target, f'{i:03d}.png'))
    return pkl, target


@click.command()
@click.option('--images', type=int, default=16, show_default=True)
@click.option('--steps', type=int, default=300, show_default=True)
@click.option('--res', type=int, default=64, show_default=True)
@click.option('--cmax', type=int, default=256, show_default=True)
@click.option('--rows', type=int, default=512, show_default=True)
@click.option('--threads', type=int, default=1, show_default=True)
@click.option('--modes', default='off,auto', show_default=True, help='--compile values, in the order run')
@click.option('--warm', is_flag=True, help='Use the shared Inductor cache instead of an empty one per run')
@click.option('--work', default=None, help='Folder for the network, targets and outputs [default: a temp folder]')
@click.option('--seed', type=int, default=0, show_default=True)
def main(images, steps, res, cmax, rows, threads, modes, warm, work, seed):
    work = work or tempfile.mkdtemp(prefix='bench-invert-')
    os.makedirs(work, exist_ok=True)
    pkl, target = _prepare(work, images, res, cmax, rows, seed)
    results = []
    for mode in modes.split(','):
        outdir = os.path.join(work, f'out-{mode}')
        shutil.rmtree(outdir, ignore_errors=True)
        env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads)}
        if not warm:
            env['TORCHINDUCTOR_CACHE_DIR'] = tempfile.mkdtemp(prefix='inductor-cold-', dir=work)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, 'invert.py', '--network', pkl, '--target', target, '--outdir', outdir,
                               '--steps', str(steps), '--lpips', 'vgg-random', '--device', 'cpu', '--compile', mode],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            raise click.ClickException(f'invert.py --compile {mode} failed')
        summary = json.load(open(os.path.join(outdir, 'summary.json')))
        decisions = [line.strip() for line in open(os.path.join(outdir, 'log.txt')) if '--compile' in line]
        rec = dict(mode=mode, wall_s=round(wall, 1), cpu_s=round(after.ru_utime + after.ru_stime - before.ru_utime
                                                                   - before.ru_stime, 1),
                   lpips_mean=summary.get('lpips_mean'), compile=summary.get('compile'), log=decisions,
                   load=os.getloadavg())
        results.append(rec)
        print(json.dumps(rec), flush=True)
    base = results[0]
    for rec in results[1:]:
        print(f'{rec["mode"]} / {base["mode"]}: wall {rec["wall_s"] / base["wall_s"]:.3f}, '
              f'CPU {rec["cpu_s"] / base["cpu_s"]:.3f}')


if __name__ == '__main__':
    main()  # click supplies the arguments
