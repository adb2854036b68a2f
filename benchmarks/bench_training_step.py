"""One full StyleGAN2 training iteration, overparameterized (latent matrices, eq. 2) vs baseline,
measured side by side in alternating separate processes.

    python -m benchmarks.bench_training_step --res 64 --cmax 256 --batch 4 --threads 1
    python -m benchmarks.bench_training_step --res 256 --cmax 512 --batch 16 --device cuda --rounds 5

An iteration is what the training loop does per minibatch with lazy regularization:
`Gmain + Greg / G_reg + Dmain + Dreg / D_reg + EMA` (G_reg = 4, D_reg = 16; the reg phases run with
gain = interval, as `training.phases.run_phase` does). Each phase is timed on its own, every timed
iteration runs all four, and the per-phase figure is the median over the timed iterations.

Every round starts one worker process per model (`--worker baseline|overparam`), in alternating
order (AB, BA, AB, ...), so that slow drift of a shared machine hits both alike; the ratios are
taken per round (overparam / baseline of the same round) and the table shows their median and
range. `--parallel` starts the two workers of a round together instead (use it with CPU time).

Time: on the CPU the default clock is the worker's own CPU time (`time.process_time`, one thread),
which a machine shared with other jobs inflates far less than the wall clock does; `--clock wall`
measures wall time (the default with CUDA, after a synchronize).

Peak memory:
  CPU   peak resident set size (Linux `VmHWM`, reset through /proc/self/clear_refs before the
        timed iterations) minus the RSS after the imports (before any network exists), i.e. what
        the networks, the optimizer states and the activations hold. Workers run with
        `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=0:glibc.malloc.arena_max=1`
        so that glibc returns freed blocks to the system at once (large blocks are their own mmap)
        and the RSS follows what is allocated rather than what the allocator caches.
  CUDA  `torch.cuda.max_memory_allocated` over the timed iterations.
FLOPs (`--flops`): after the timed iterations each worker runs one more iteration under
`benchmarks.flop_count.FlopCounter` and reports every phase's convolution and matrix-product FLOPs by
class; the summary sets the FLOP ratio beside the time ratio. The count depends on shapes only (the
same on every machine and in every round): it is the arithmetic floor of a ratio, which no
implementation of the same exact gradients goes below with kernels of equal efficiency.

Compiled vs eager (`--compile`): the two workers of a round are the same overparameterized model, eager and with
Gmain/Dmain's G and D compiled (`training.compiled_phases`, `--compile on`; Greg/Dreg stay eager), and the table
gives compiled / eager per phase and for Gmain + Dmain; the compiled worker's first (untimed) iteration includes
the compilation (Inductor's on-disk cache makes later workers faster: the first round's is the cold figure).

    python -m benchmarks.bench_training_step --compile --res 64 --cmax 256 --batch 4 --threads 1 --flops

Prints one JSON line per worker and a summary; `--json FILE` writes everything to FILE.
"""

import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import click

PHASES = ('Gmain', 'Greg', 'Dmain', 'Dreg')
MODELS = ('baseline', 'overparam')
ALLOCATOR_ENV = {'GLIBC_TUNABLES': 'glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=0:'
                                   'glibc.malloc.arena_max=1'}

#----------------------------------------------------------------------------
# Worker: one model, one process.

def _proc_status_mb(key):
    with open('/proc/self/status', encoding='ascii') as fh:
        for line in fh:
            if line.startswith(key + ':'):
                return int(line.split()[1]) / 1024
    return None


def _reset_peak_rss():
    """Reset Linux's peak-RSS counter (VmHWM) of this process; False where that is not possible."""
    try:
        with open('/proc/self/clear_refs', 'w', encoding='ascii') as fh:
            fh.write('5')
        return True
    except OSError:
        return False


def run_worker(model, res, cmax, cbase, batch, rows, dim, iters, warmup, device_name, seed, clock, count_flops=False,
               compile_mode='off'):
    import torch  # Imported here: the driver needs no torch.

    from training import networks, phases as phase_lib
    from training.compiled_phases import PhaseCompiler
    from training.loss import StyleGAN2Loss
    rss_torch = _proc_status_mb('VmRSS')                      # Libraries only: subtracted from the peak.

    device = torch.device(device_name)
    cuda = device.type == 'cuda'
    if cuda:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False   # strict FP32
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    now = time.process_time if clock == 'cpu' else time.perf_counter

    torch.manual_seed(seed)
    G = networks.Generator(z_dim=dim, c_dim=0, w_dim=dim, img_resolution=res, img_channels=3,
                           latent_rows=(rows if model == 'overparam' else None),
                           mapping_kwargs=dict(num_layers=2, lr_multiplier=0.01),
                           synthesis_kwargs=dict(channel_base=cbase, channel_max=cmax, num_fp16_res=0,
                                                 conv_clamp=256, use_noise=False)).train().to(device)
    D = networks.Discriminator(c_dim=0, img_resolution=res, img_channels=3, channel_base=cbase, channel_max=cmax,
                               num_fp16_res=0, conv_clamp=256,
                               epilogue_kwargs=dict(mbstd_group_size=4)).train().to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    G.requires_grad_(False)
    D.requires_grad_(False)
    loss = StyleGAN2Loss(device, G, D, r1_gamma=0.2048, style_mixing_prob=0.9, pl_weight=2, pl_batch_shrink=2)
    compiler = PhaseCompiler(compile_mode)
    compiler.attach(loss, device, planned_steps=10**9)        # 'on': G and D of Gmain/Dmain compiled
    opt = dict(class_name='torch.optim.Adam', lr=0.0025, betas=[0, 0.99], eps=1e-8)
    phases = {p.name: p for p in phase_lib.setup_phases(G, D, opt, opt, G_reg_interval=4, D_reg_interval=16)}
    reg_interval = {'Greg': phases['Greg'].interval, 'Dreg': phases['Dreg'].interval}

    gen = torch.Generator().manual_seed(seed + 1)
    real = (torch.rand([batch, 3, res, res], generator=gen) * 2 - 1).to(device)

    def one_iteration(it, counters=None):
        times = {}
        z = G.sample_z(batch, generator=torch.Generator().manual_seed(seed + 100 + it)).to(device)
        for name in PHASES:
            sync()
            start = now()
            with (counters[name] if counters else contextlib.nullcontext()):
                phase_lib.run_phase(phases[name], loss, [real], [None], [z], [None], cur_nimg=it * batch)
            sync()
            times[name] = now() - start
        start = now()
        phase_lib.update_ema(G_ema, G, phase_lib.ema_beta(it * batch, batch, 10, 0.05))
        sync()
        times['EMA'] = now() - start
        return times

    warmup_s = []
    for it in range(warmup):
        start = time.perf_counter(), time.process_time()
        one_iteration(it)
        warmup_s.append(dict(wall=time.perf_counter() - start[0], cpu=time.process_time() - start[1]))
    rss_before = _proc_status_mb('VmRSS')
    peak_reset = _reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    samples = [one_iteration(warmup + it) for it in range(iters)]

    ms = {name: statistics.median(s[name] for s in samples) * 1e3 for name in (*PHASES, 'EMA')}
    ms['Gmain+Dmain'] = statistics.median(s['Gmain'] + s['Dmain'] for s in samples) * 1e3
    ms['iteration'] = (ms['Gmain'] + ms['Greg'] / reg_interval['Greg'] + ms['Dmain'] + ms['Dreg'] / reg_interval['Dreg']
                       + ms['EMA'])
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        hardware = torch.cuda.get_device_name(device)
    else:
        peak_mb = _proc_status_mb('VmHWM') - rss_torch if peak_reset else None
        hardware = f'{platform.machine()} x{torch.get_num_threads()} threads'
    flops = None
    if count_flops:                                         # After the peak was read: not in the timed figures.
        from benchmarks.flop_count import FlopCounter
        loss.compiled = None                                # counted eagerly: a compiled graph is one opaque call
        counters = {name: FlopCounter() for name in PHASES}
        one_iteration(warmup + iters, counters)
        flops = {name: dict(sorted(c.flops.items())) for name, c in counters.items()}
        flops['total'] = {name: counters[name].total for name in PHASES}
        flops['total']['iteration'] = (flops['total']['Gmain'] + flops['total']['Greg'] / reg_interval['Greg']
                                       + flops['total']['Dmain'] + flops['total']['Dreg'] / reg_interval['Dreg'])
    return dict(model=model, ms={k: round(v, 1) for k, v in ms.items()},
                peak_mb=None if peak_mb is None else round(peak_mb, 1),
                rss_after_import_mb=round(rss_torch, 1), rss_before_timed_mb=round(rss_before, 1), hardware=hardware,
                torch=torch.__version__, iters=iters, warmup=warmup, clock=clock, flops=flops,
                compile=compiler.summary(), warmup_s=warmup_s)

#----------------------------------------------------------------------------
# Driver: alternate the workers, take per-round ratios.

KEYS = ('iteration', *PHASES, 'EMA', 'peak_mb')
LABELS = {'iteration': 'training iteration (Gmain + Greg/4 + Dmain + Dreg/16 + EMA), ms',
          **{p: f'{p}, ms' for p in (*PHASES, 'EMA')}, 'peak_mb': 'peak memory, MB'}


def _stats(values, digits):
    return dict(median=round(statistics.median(values), digits), min=round(min(values), digits),
                max=round(max(values), digits))


def _summary(rounds, labels=MODELS):
    """{key: {labels[0]: stats, labels[1]: stats, 'ratio': stats of the per-round ratios labels[1] / labels[0]}}."""
    def value(rec, key):
        return rec['peak_mb'] if key == 'peak_mb' else rec['ms'][key]
    out = {}
    for key in KEYS + (('Gmain+Dmain',) if 'Gmain+Dmain' in rounds[0][labels[0]]['ms'] else ()):
        entry = {}
        for model in labels:
            values = [value(r[model], key) for r in rounds]
            if None not in values:
                entry[model] = _stats(values, 1)
        pairs = [(value(r[labels[1]], key), value(r[labels[0]], key)) for r in rounds]
        if all(o is not None and b for o, b in pairs):
            entry['ratio'] = _stats([o / b for o, b in pairs], 3)
        out[key] = entry
    return out


def _flop_summary(rounds):
    """{'iteration' | phase: {'baseline': GFLOP, 'overparam': GFLOP, 'ratio': r}} and, per phase, the classes;
    None without counts. The counts are shapes only, so the first round stands for all."""
    first = rounds[0]
    if any(first[model].get('flops') is None for model in MODELS):
        return None
    out = {}
    for key in ('iteration', *PHASES):
        base, over = (first[model]['flops']['total'][key] for model in MODELS)
        entry = dict(baseline=round(base / 1e9, 3), overparam=round(over / 1e9, 3),
                     ratio=round(over / base, 3) if base else None)
        if key in PHASES:
            entry['classes'] = {model: {k: round(v / 1e9, 3) for k, v in first[model]['flops'][key].items()}
                                for model in MODELS}
        out[key] = entry
    return out


def _print_flop_table(flops, summary):
    print(f'\n{"GFLOP (convolutions and matrix products, from shapes)":70s} {"baseline":>12s} {"overparam":>12s} '
          f'{"FLOP ratio":>12s} {"time ratio":>12s}')
    for key in ('iteration', *PHASES):
        e = flops[key]
        time_ratio = summary[key].get('ratio', {}).get('median')
        print(f'{key:70s} {e["baseline"]:12.2f} {e["overparam"]:12.2f} {e["ratio"] or 0:12.3f} '
              f'{"-" if time_ratio is None else f"{time_ratio:.3f}":>12s}')
    for key in PHASES:
        classes = flops[key]['classes']
        names = sorted(set(classes['baseline']) | set(classes['overparam']))
        print(f'  {key}: ' + ', '.join(f'{n} {classes["baseline"].get(n, 0):.2f} '
                                       f'-> {classes["overparam"].get(n, 0):.2f}' for n in names))


def _print_table(summary, labels=MODELS):
    def cell(entry, fmt):
        return '-' if entry is None else f'{entry["median"]:{fmt}} [{entry["min"]:{fmt}}-{entry["max"]:{fmt}}]'
    a, b = labels
    print(f'{"":70s} {a:>24s} {b:>24s} {b + "/" + a:>24s}')
    for key in summary:
        e = summary[key]
        print(f'{LABELS.get(key, key + ", ms"):70s} {cell(e.get(a), ".0f"):>24s} {cell(e.get(b), ".0f"):>24s} '
              f'{cell(e.get("ratio"), ".3f"):>24s}')


COMPILE_LABELS = ('eager', 'compiled')


def _print_compile_table(records):
    """Compile time (first iteration minus a timed one, CPU and wall) and GFLOP/s of Gmain + Dmain."""
    for rec in records:
        c = rec['compiled']
        first = c['warmup_s'][0] if c.get('warmup_s') else None
        if first is None:
            continue
        it_s = c['ms']['iteration'] / 1e3
        print(f'compiled worker: graphs {c["compile"]["graphs"]}, first iteration {first["cpu"]:.0f} s CPU '
              f'({first["wall"]:.0f} s wall), compile ~ {first["cpu"] - it_s:.0f} s CPU')
        e = rec['eager']
        if e.get('flops'):
            gm = (e['flops']['total']['Gmain'] + e['flops']['total']['Dmain']) / 1e9
            for label in COMPILE_LABELS:
                ms = rec[label]['ms']['Gmain'] + rec[label]['ms']['Dmain']
                print(f'  {label}: Gmain + Dmain {gm:.1f} GFLOP in {ms:.0f} ms = {gm / (ms / 1e3):.1f} GFLOP/s')


@click.command()
@click.option('--res', type=int, default=64, show_default=True, help='Resolution')
@click.option('--cmax', type=int, default=256, show_default=True, help='channel_max')
@click.option('--cbase', type=int, default=16384, show_default=True, help='channel_base')
@click.option('--batch', type=int, default=4, show_default=True, help='Minibatch (Greg runs on batch / 2)')
@click.option('--rows', type=int, default=512, show_default=True, help='Latent rows R of the overparameterized G')
@click.option('--dim', type=int, default=512, show_default=True, help='z and w dimensionality')
@click.option('--threads', type=int, default=1, show_default=True, help='torch / OpenMP threads per worker')
@click.option('--rounds', type=int, default=3, show_default=True, help='Rounds (one worker per model each)')
@click.option('--iters', type=int, default=2, show_default=True, help='Timed iterations per worker')
@click.option('--warmup', type=int, default=1, show_default=True, help='Untimed iterations per worker')
@click.option('--device', default='cpu', show_default=True, help='cpu or cuda')
@click.option('--seed', type=int, default=0, show_default=True)
@click.option('--clock', type=click.Choice(['cpu', 'wall']), default=None,
              help='cpu = process CPU time (default on the CPU: robust on a shared machine), wall = wall clock (CUDA)')
@click.option('--parallel', is_flag=True, help='Run the two workers of a round at the same time (with --clock cpu)')
@click.option('--flops', 'count_flops', is_flag=True,
              help='Also count each phase\'s convolution and matrix-product FLOPs (one extra, untimed iteration)')
@click.option('--compile', 'compare_compile', is_flag=True,
              help='Compare the eager and the compiled (torch.compile of Gmain/Dmain) overparameterized model instead')
@click.option('--json', 'json_path', type=click.Path(dir_okay=False), default=None, help='Write all records here')
@click.option('--worker', type=click.Choice(MODELS), default=None, hidden=True)
@click.option('--worker-compile', type=click.Choice(['off', 'on']), default='off', hidden=True)
def main(res, cmax, cbase, batch, rows, dim, threads, rounds, iters, warmup, device, seed, clock, parallel, count_flops,
         compare_compile, json_path, worker, worker_compile):
    clock = clock or ('cpu' if device == 'cpu' else 'wall')
    if worker is not None:
        import torch
        torch.set_num_threads(threads)
        print(json.dumps(run_worker(worker, res, cmax, cbase, batch, rows, dim, iters, warmup, device, seed, clock,
                                    count_flops, worker_compile)))
        return
    if batch < 2 or rounds < 1 or iters < 1:
        raise click.BadParameter('need --batch >= 2, --rounds >= 1 and --iters >= 1')

    env = {**os.environ, **ALLOCATOR_ENV, 'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads)}
    args = ['--res', res, '--cmax', cmax, '--cbase', cbase, '--batch', batch, '--rows', rows, '--dim', dim,
            '--threads', threads, '--iters', iters, '--warmup', warmup, '--device', device, '--clock', clock,
            '--seed', seed] + (['--flops'] if count_flops else [])
    labels = COMPILE_LABELS if compare_compile else MODELS
    worker_args = {'eager': ['--worker', 'overparam', '--worker-compile', 'off'],
                   'compiled': ['--worker', 'overparam', '--worker-compile', 'on'],
                   **{m: ['--worker', m] for m in MODELS}}
    if compare_compile:
        env['TORCHINDUCTOR_COMPILE_THREADS'] = '1'       # compilation in the worker (and its C++ compiler children)
    records = []
    for rnd in range(rounds):
        order = labels if rnd % 2 == 0 else labels[::-1]
        record = {}
        batches = [order] if parallel else [[model] for model in order]
        for models in batches:
            procs = {model: subprocess.Popen([sys.executable, '-m', 'benchmarks.bench_training_step',
                                              *worker_args[model], *map(str, args)], env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True) for model in models}
            for model, proc in procs.items():
                out, err = proc.communicate()
                if proc.returncode != 0:
                    sys.stderr.write(err)
                    raise click.ClickException(f'worker {model} (round {rnd + 1}) failed with exit code '
                                               f'{proc.returncode}')
                record[model] = json.loads(out.strip().splitlines()[-1])
                print(json.dumps(dict(round=rnd + 1, **record[model])), flush=True)
        records.append(record)

    summary = _summary(records, labels)
    _print_table(summary, labels)
    flops = None if compare_compile else _flop_summary(records)
    if flops:
        _print_flop_table(flops, summary)
    if compare_compile:
        _print_compile_table(records)
    result = dict(bench='training_step', command=' '.join(['python -m benchmarks.bench_training_step', *sys.argv[1:]]),
                  clock=clock, parallel=parallel, res=res, cmax=cmax, cbase=cbase, batch=batch, rows=rows, dim=dim,
                  threads=threads, rounds=rounds,
                  device=device, allocator=ALLOCATOR_ENV if device == 'cpu' else None,
                  date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), machine=platform.platform(),
                  summary=summary, gflops=flops, records=records)
    print(json.dumps(dict(bench='training_step', summary=summary, gflops=flops)))
    if json_path:
        from torch_utils.files import save_json
        save_json(json_path, result, indent=1)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()  # click supplies the arguments
