"""One inversion step (truncation, synthesis + LPIPS forward and backward, Adam), eager vs compiled, side by side.

    python -m benchmarks.bench_inversion_step --res 64 --cmax 256 --batch 4 --threads 1
    python -m benchmarks.bench_inversion_step --res 256 --cmax 512 --batch 1 --threads 2 --rounds 3
    python -m benchmarks.bench_inversion_step --device cuda --res 256 --cmax 512 --batch 1 --precision tf32

Each configuration runs in a worker process of its own (Inductor's CPU kernels are built for the thread count
of the process that compiles them): it builds the overparameterized generator (R = --rows, space W) and the
LPIPS loss (`vgg-random`: the lpips package's VGG16 with a seeded random trunk, the cost of the real VGG16 LPIPS
without a download), then two `inversion.optimize.Inverter`s on the same targets, one eager (`--compile off`),
one compiled (`--compile on`, `inversion.compiled_step`). The first compiled step compiles; its time minus an
eager step's is the compile time. Then `--rounds` rounds each time one eager and one compiled step, in
alternating order (AB, BA, ...), so that the load of a shared machine hits both alike; the ratio is taken per
round (compiled / eager of the same round) and the summary gives its median and range.

Clock: on the CPU the worker's own CPU time (`time.process_time`, plus that of its finished child processes:
with `TORCHINDUCTOR_COMPILE_THREADS=1` the compilation runs in the worker and the C++ compiler in its children, so
it counts too), and the wall clock beside it; on CUDA the wall clock after a
synchronize. `--cold` gives the worker an empty Inductor cache (the first compilation a user pays); without it
the cache of earlier runs is used (`torch_utils.compiled.cache_dir()`), as a second run would.

Also reported: the break-even (compile time / time saved per step, in steps), the arithmetic of one step
(`benchmarks.flop_count`, GFLOP from shapes) over its time against the matmul peak of the same process
(a 2048 x 2048 float32 product), and with `--profile` the compiled step's ten most expensive operations
(`torch.profiler`; Inductor's fused kernels by name). `--json FILE` writes every record.
"""

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import click

#----------------------------------------------------------------------------
# Worker: one configuration, one process.

def _clock(cuda, device):
    import torch

    def now():
        if cuda:
            torch.cuda.synchronize(device)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)          # the C++ compiler's processes
        return time.process_time() + children.ru_utime + children.ru_stime, time.perf_counter()
    return now


def matmul_peak_gflops(device, dtype_name='fp32', size=2048, reps=None):
    """GFLOP/s of one `size x size` matrix product in this process (best of a few; CPU time on the CPU)."""
    import torch
    dtype = dict(fp32=torch.float32, tf32=torch.float32, bf16=torch.bfloat16)[dtype_name]
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    cuda = device.type == 'cuda'
    now = _clock(cuda, device)
    reps = reps or (20 if cuda else 3)
    best = None
    for _ in range(3):
        (c0, w0) = now()
        for _ in range(reps):
            a @ b
        (c1, w1) = now()
        seconds = (w1 - w0) if cuda else (c1 - c0) / max(1, torch.get_num_threads())
        best = seconds if best is None else min(best, seconds)
    return 2 * size ** 3 * reps / best / 1e9


def run_worker(res, cmax, batch, rows, rounds, device_name, precision, seed, profile, count_flops, lpips='vgg-random'):
    import torch

    from benchmarks.flop_count import FlopCounter
    from inversion import losses
    from inversion.compiled_step import InversionCompiler
    from inversion.optimize import Inverter
    from training import networks
    from training.latent_spaces import LatentSpace

    device = torch.device(device_name)
    cuda = device.type == 'cuda'
    now = _clock(cuda, device)
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3, latent_rows=rows,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=16384, channel_max=cmax, num_fp16_res=0, conv_clamp=256,
                                                 use_noise=False)).eval().requires_grad_(False).to(device)
    loss = losses.build_loss(lpips, device=device, seed=seed, precision=precision)
    space = LatentSpace.for_generator(G, 'W' if rows else 'w+')
    gen = torch.Generator().manual_seed(seed + 1)
    targets = (torch.rand([batch, 3, res, res], generator=gen) * 2 - 1).to(device)
    steps = 2 * rounds + 4
    eager = Inverter(G, loss, targets, space, steps=steps, precision=precision)
    compiler = InversionCompiler('on')
    fast = Inverter(G, loss, targets, space, steps=steps, precision=precision, compiler=compiler)
    runs = dict(eager=eager.run(), compiled=fast.run())

    def timed(name):
        c0, w0 = now()
        next(runs[name])
        c1, w1 = now()
        return dict(cpu=c1 - c0, wall=w1 - w0)

    first_eager = timed('eager')                       # warm-up (allocator, oneDNN primitives)
    first_compiled = timed('compiled')                 # compiles
    second_eager = timed('eager')
    compile_s = {k: first_compiled[k] - second_eager[k] for k in ('cpu', 'wall')}
    samples = []
    for r in range(rounds):
        order = ('eager', 'compiled') if r % 2 == 0 else ('compiled', 'eager')
        rec = {name: timed(name) for name in order}
        samples.append(rec)
    out = dict(res=res, cmax=cmax, batch=batch, rows=rows, threads=torch.get_num_threads(), device=device_name,
               precision=precision, lpips=lpips, rounds=rounds, first_eager=first_eager, compile_s=compile_s,
               compile=compiler.summary(), samples=samples, torch=torch.__version__,
               inductor_cache=os.environ.get('TORCHINDUCTOR_CACHE_DIR'))
    if count_flops:
        flops = FlopCounter()
        probe = Inverter(G, loss, targets, space, steps=1, precision=precision)
        with flops:
            next(probe.run())
        out['gflop_per_step'] = flops.total / 1e9
        out['gflop_classes'] = {k: v / 1e9 for k, v in flops.flops.items()}
        out['matmul_peak_gflops'] = matmul_peak_gflops(device, precision)
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch_profile(activities=activities) as prof:
            next(runs['compiled'])
            if cuda:
                torch.cuda.synchronize(device)
        key = 'self_cuda_time_total' if cuda else 'self_cpu_time_total'
        events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:10]
        total = sum(getattr(e, key) for e in prof.key_averages())
        out['profile_top'] = [dict(name=e.key[:90], ms=getattr(e, key) / 1e3, share=getattr(e, key) / max(total, 1),
                                   calls=e.count) for e in events]
    return out

#----------------------------------------------------------------------------
# Driver.

def _stats(values, digits=3):
    return dict(median=round(statistics.median(values), digits), min=round(min(values), digits),
                max=round(max(values), digits))


def summarize(rec, clock):
    """Per-step medians, the per-round ratio (median, range), compile time and break-even, GFLOP/s."""
    eager = [s['eager'][clock] for s in rec['samples']]
    comp = [s['compiled'][clock] for s in rec['samples']]
    ratio = [c / e for c, e in zip(comp, eager)]
    e_ms, c_ms = statistics.median(eager) * 1e3, statistics.median(comp) * 1e3
    compile_s = rec['compile_s'][clock]
    saved = (e_ms - c_ms) / 1e3
    out = dict(eager_ms=round(e_ms, 1), compiled_ms=round(c_ms, 1), ratio=_stats(ratio),
               compile_s=round(compile_s, 1), break_even_steps=round(compile_s / saved) if saved > 0 else None)
    if rec.get('gflop_per_step'):
        threads = rec['threads'] if clock == 'cpu' else 1       # CPU time of T threads ~ T x the wall time
        gf = rec['gflop_per_step']
        out.update(gflop_per_step=round(gf, 2),
                   eager_gflops=round(gf / (e_ms / 1e3 / threads), 1),
                   compiled_gflops=round(gf / (c_ms / 1e3 / threads), 1),
                   peak_gflops=round(rec['matmul_peak_gflops'], 1))
        out['compiled_share_of_peak'] = round(out['compiled_gflops'] / out['peak_gflops'], 3)
    return out


@click.command()
@click.option('--res', type=int, multiple=True, help='Resolution(s) [default: 64]')
@click.option('--cmax', type=int, multiple=True, help='channel_max per --res (default 256 at 64 px, 512 otherwise)')
@click.option('--batch', type=int, multiple=True, help='Batch size(s) [default: 1 and 4]')
@click.option('--threads', type=int, multiple=True, help='Threads per worker [default: 1 and 2]')
@click.option('--rows', type=int, default=512, show_default=True, help='Latent rows R (space W)')
@click.option('--rounds', type=int, default=5, show_default=True, help='Timed rounds (one eager + one compiled step)')
@click.option('--device', default='cpu', show_default=True)
@click.option('--precision', type=click.Choice(['fp32', 'tf32', 'bf16']), default='fp32', show_default=True)
@click.option('--cold', is_flag=True, help='Empty Inductor cache per worker (the first compilation a user pays)')
@click.option('--profile', is_flag=True, help='Top operations of one compiled step (torch.profiler)')
@click.option('--flops', 'count_flops', is_flag=True, help='GFLOP per step and the matmul peak of the worker')
@click.option('--seed', type=int, default=0, show_default=True)
@click.option('--json', 'json_path', type=click.Path(dir_okay=False), default=None, help='Write all records here')
@click.option('--worker', default=None, hidden=True)
def main(res, cmax, batch, threads, rows, rounds, device, precision, cold, profile, count_flops, seed, json_path,
         worker):
    if worker is not None:
        import torch
        cfg = json.loads(worker)
        torch.set_num_threads(cfg['threads'])
        print(json.dumps(run_worker(cfg['res'], cfg['cmax'], cfg['batch'], rows, rounds, device, precision, seed,
                                    profile, count_flops)))
        return
    res = list(res) or [64]
    cmax = list(cmax) or [256 if r <= 64 else 512 for r in res]
    if len(cmax) != len(res):
        raise click.BadParameter('give one --cmax per --res (or none)', param_hint='--cmax')
    batch, threads = list(batch) or [1, 4], list(threads) or [1, 2]
    clock = 'wall' if device.startswith('cuda') else 'cpu'
    records, table = [], []
    for r, cm in zip(res, cmax):
        for b in batch:
            for t in threads:
                env = {**os.environ, 'OMP_NUM_THREADS': str(t), 'MKL_NUM_THREADS': str(t),
                       'TORCHINDUCTOR_COMPILE_THREADS': '1'}
                tmp = tempfile.mkdtemp(prefix='inductor-cold-') if cold else None
                if tmp:
                    env['TORCHINDUCTOR_CACHE_DIR'] = tmp
                cfg = json.dumps(dict(res=r, cmax=cm, batch=b, threads=t))
                args = [sys.executable, '-m', 'benchmarks.bench_inversion_step', '--worker', cfg, '--rows', str(rows),
                        '--rounds', str(rounds), '--device', device, '--precision', precision, '--seed', str(seed)]
                args += (['--profile'] if profile else []) + (['--flops'] if count_flops else [])
                proc = subprocess.run(args, env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.stderr.write(proc.stderr[-3000:])
                    raise click.ClickException(f'worker {cfg} failed with exit code {proc.returncode}')
                rec = json.loads(proc.stdout.strip().splitlines()[-1])
                rec['cold'] = cold
                rec['summary'] = {c: summarize(rec, c) for c in ('cpu', 'wall')}
                records.append(rec)
                print(json.dumps(dict(config=json.loads(cfg), summary=rec['summary'], compile=rec['compile'],
                                      profile_top=rec.get('profile_top'))), flush=True)
                table.append((r, cm, b, t, rec['summary'][clock]))
    print(f'\n{"res":>4s} {"cmax":>5s} {"batch":>5s} {"thr":>3s} {"eager ms":>9s} {"compiled ms":>11s} '
          f'{"compiled/eager (range)":>24s} {"compile s":>9s} {"break-even":>10s} {"GFLOP/s eager/comp/peak":>24s}')
    for r, cm, b, t, s in table:
        rng = f'{s["ratio"]["median"]:.3f} ({s["ratio"]["min"]:.3f}-{s["ratio"]["max"]:.3f})'
        gf = (f'{s["eager_gflops"]:.0f}/{s["compiled_gflops"]:.0f}/{s["peak_gflops"]:.0f}'
              if 'eager_gflops' in s else '-')
        print(f'{r:4d} {cm:5d} {b:5d} {t:3d} {s["eager_ms"]:9.0f} {s["compiled_ms"]:11.0f} {rng:>24s} '
              f'{s["compile_s"]:9.0f} {str(s["break_even_steps"]):>10s} {gf:>24s}')
    command = ' '.join(['python -m benchmarks.bench_inversion_step', *sys.argv[1:]])
    result = dict(bench='inversion_step', command=command,
                  clock=clock, date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), machine=platform.platform(),
                  load=os.getloadavg(), records=records)
    if json_path:
        from torch_utils.files import save_json
        save_json(json_path, result, indent=1)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()  # click supplies the arguments
