"""Everything only a GPU can show, in one command: kernel tests, kernel and generator speed,
training and inversion throughput. Writes `DIR/gpu-acceptance.json` and `DIR/gpu-acceptance.md`
(a Markdown table for docs/benchmarks.md).

    python -m benchmarks.gpu_acceptance --out DIR              # one H100/H200: < 8 minutes, builds included
    python -m benchmarks.gpu_acceptance --out DIR --dry-run    # CPU, tiny sizes, about a minute

Parts, in order, each stopped at its time budget (what it did not reach is listed under `skipped`):

  tests           pytest on the CUDA-vs-reference test files; pass/fail/skip counts per file.
  self_check      the ops' first-use self-check on this GPU (every verdict should be a pass).
  modconv_layers  one modulated conv layer, forward+backward: fused kernel vs the reference path
                  (cuDNN grouped conv) vs the baseline's non-fused path, at the paper config's channel
                  counts, 4-256 px, fp32 strict / tf32 / fp16; the largest size where the kernel still
                  wins is the measured `max_fused_pixels`.
  generator       G forward+backward, overparameterized (R = 512) / baseline, paper 256 px preset:
                  time and peak memory ratios (goals 1.03 and 1.10; the paper measured 1.056, 1.26).
  training        a few hundred steps of both paper presets on synthetic data: s/kimg and peak GPU
                  memory, strict fp32 (as the paper) and mixed precision.
  inversion       256 px inversion, batch 1 vs the largest batch that fits: s/image for 1000 steps.
  compiled        torch.compile side by side with eager (benchmarks.bench_inversion_step / bench_training_step):
                  the inversion step compiled + CUDA graphs at batch 1 and 4 in fp32 / tf32 / bf16 (goal: <= 0.5x
                  eager at batch 1), compile time and break-even; Gmain + Dmain compiled vs eager (goal <= 0.85).
                  Its ratios and compile times are what `inversion.compiled_step.ESTIMATES['cuda']` and
                  `training.compiled_phases.ESTIMATES['cuda']` wait for (until then --compile auto stays eager on GPUs).

Uses the public entry points: configs.presets, training.training_loop, inversion.optimize.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from contextlib import contextmanager

import click
import torch

import dnnlib
from benchmarks.timing import time_fn
from configs import presets
from torch_utils.ops import modulated_conv2d_cuda as mcc, self_check, upfirdn2d
from torch_utils.ops.modulated_conv2d import modulated_conv2d

#----------------------------------------------------------------------------
# Sizes and time budgets (seconds) of a real run and of the CPU dry run.

TEST_FILES = ['tests/test_custom_ops.py', 'tests/test_ops.py', 'tests/test_modulated_conv2d_cuda.py',
              'tests/test_self_check.py']

REAL = dict(
    device='cuda', budgets=dict(tests=180, self_check=10, modconv_layers=60, generator=30, training=110, inversion=40,
                                compiled=150),
    test_files=TEST_FILES, test_filter='not emulated',     # the CPU emulator tests are CI's (no GPU needed)
    layer_res=[4, 8, 16, 32, 64, 128, 256], layer_batch=16, cbase=16384, cmax=512, rows=512,
    precisions=['fp32', 'tf32', 'fp16'], iters=5, warmup=2,
    presets=['paper256-baseline', 'paper256-overparam'], g_batch=16, g_precisions=['fp32', 'tf32'], data_images=32,
    train_precisions=['fp32', 'mixed'], train_steps=200, inv_steps=20, inv_batches=[1, 'auto'],
    overrides={},
    compiled=dict(res=256, cmax=512, rows=512, batches=[1, 4], precisions=['fp32', 'tf32', 'bf16'], rounds=10,
                  train=dict(res=256, cmax=512, cbase=16384, batch=8, rows=512, dim=512, iters=3, warmup=2)),
)
DRY = dict(
    device='cpu', budgets=dict(tests=60, self_check=15, modconv_layers=15, generator=15, training=40, inversion=20,
                               compiled=60),
    test_files=['tests/test_custom_ops.py'], test_filter='bad_impl_rejected or real_cuda_tensor',
    layer_res=[4, 8], layer_batch=2, cbase=32, cmax=8, rows=8,
    precisions=['fp32'], iters=1, warmup=0,
    presets=['tiny', 'tiny-overparam'], g_batch=2, g_precisions=['fp32'], data_images=8,
    train_precisions=['fp32'], train_steps=2, inv_steps=2, inv_batches=[1, 2],
    overrides=dict(batch=2, batch_gpu=2, mbstd=2, dim=16, cbase=64, cmax=16),   # on top of the tiny presets
    compiled=dict(res=16, cmax=16, rows=16, batches=[1], precisions=['fp32'], rounds=1,
                  train=dict(res=16, cmax=16, cbase=64, batch=2, rows=16, dim=16, iters=1, warmup=1)),
)
GOALS = dict(time_ratio=1.03, memory_ratio=1.10, paper_time_ratio=1.056, paper_memory_ratio=1.26,
             inversion_s_per_image=1.0, compiled_inversion_ratio_batch1=0.5, compiled_training_ratio=0.85)

#----------------------------------------------------------------------------

class Part:
    """Time budget and record of one part: `left()` seconds, `skip(what, why)`, `results`."""

    def __init__(self, name, budget):
        self.name, self.budget, self.start = name, budget, time.perf_counter()
        self.results, self.skipped, self.notes = {}, [], []

    def left(self):
        return self.budget - (time.perf_counter() - self.start)

    def skip(self, what, why):
        self.skipped.append(dict(what=what, why=why))

    def over(self, what):
        """True (and `what` recorded as skipped) once the budget is spent; never for the part's first item."""
        self.items = getattr(self, 'items', 0) + 1
        if self.items == 1 or self.left() > 0:
            return False
        self.skip(what, f'time budget of {self.budget} s spent')
        return True


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _peak_mb(device, fn):
    """Run `fn()`; -> MiB allocated at the peak above what was allocated before (None off CUDA)."""
    if device.type != 'cuda':
        fn()
        return None
    _sync(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


@contextmanager
def _precision(name):
    """fp32 = strict FP32 (no TF32 anywhere), tf32 = TF32 convolutions/matmuls, fp16 = strict + fp16 inputs."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = (name == 'tf32')
    try:
        yield torch.float16 if name == 'fp16' else torch.float32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b

#----------------------------------------------------------------------------
# Parts.

def part_tests(part, cfg, ctx):
    """pytest on each GPU test file in a subprocess (a timeout loses one file only); counts from JUnit XML."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
    if shutil.which('nvcc') and not ctx['dry_run']:
        env['OVERPARAM_REQUIRE_KERNEL_TESTS'] = '1'    # a kernel test that cannot build fails
    per_file, tails, codes = {}, [], {}
    for path in cfg['test_files']:
        name = os.path.splitext(os.path.basename(path))[0]
        if part.over(path):
            continue
        xml = os.path.join(ctx['work'], f'pytest-{name}.xml')
        cmd = [sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider', f'--junitxml={xml}', path]
        if cfg['test_filter']:
            cmd += ['-k', cfg['test_filter']]
        try:
            proc = subprocess.run(cmd, cwd=ctx['repo'], env=env, capture_output=True, text=True,
                                  timeout=max(part.left(), 30))
            tail, codes[name] = (proc.stdout + proc.stderr)[-3000:], proc.returncode
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors='replace') if isinstance(exc.stdout, bytes) else (exc.stdout or '')
            tail, codes[name] = out[-3000:], None
            part.skip(f'{path} (unfinished)', f'time budget of {part.budget} s spent')
        tails.append(f'== {path}\n{tail}')
        counts = per_file.setdefault(name, dict(passed=0, failed=0, skipped=0))
        if os.path.isfile(xml):
            for case in ET.parse(xml).getroot().iter('testcase'):
                kinds = {child.tag for child in case}
                counts['failed' if kinds & {'failure', 'error'} else 'skipped' if 'skipped' in kinds else 'passed'] += 1
    with open(os.path.join(ctx['work'], 'pytest-output.txt'), 'w') as f:
        f.write('\n'.join(tails))
    totals = {k: sum(c[k] for c in per_file.values()) for k in ('passed', 'failed', 'skipped')}
    part.results.update(filter=cfg['test_filter'], returncodes=codes, files=per_file, **totals,
                        output_tail='\n'.join(tails)[-1500:])
    bad = [n for n, rc in codes.items() if rc not in (0, 5, None)]
    if bad or totals['failed']:
        raise RuntimeError(f'pytest: {totals["failed"]} failed (files with errors: {", ".join(bad) or "-"})')


def _networks(ctx, preset, precision='fp32'):
    """(training_loop kwargs, G, D) of `preset` on the synthetic data, on the device (random init)."""
    kwargs = presets.setup_training_config(cfg=preset, data=ctx['data'], precision=precision, workers=0,
                                           **ctx['overrides'])
    common = dict(c_dim=0, img_resolution=ctx['res'], img_channels=3)
    torch.manual_seed(0)
    G = dnnlib.util.construct_class_by_name(**kwargs.G_kwargs, **common).to(ctx['device'])
    D = dnnlib.util.construct_class_by_name(**kwargs.D_kwargs, **common).to(ctx['device'])
    return kwargs, G, D


def part_self_check(part, cfg, ctx):
    """G forward/backward and D with an R1-style double backward, with the self-check on: its verdicts."""
    previous = self_check._enabled
    self_check.set_enabled(True)
    self_check.reset()
    try:
        _kwargs, G, D = _networks(ctx, cfg['presets'][1])
        img = G(G.sample_z(2, generator=torch.Generator().manual_seed(1)).to(ctx['device']), None)
        img.square().mean().backward()
        real = img.detach().requires_grad_(True)
        grad, = torch.autograd.grad(D(real, None).sum(), [real], create_graph=True)
        grad.square().sum().backward()
        _sync(ctx['device'])
    finally:
        self_check.set_enabled(previous)
    verdicts = [dict(op=v.op, dtype=v.dtype, config=v.config, ok=v.ok, error=v.error, ms=v.seconds * 1e3)
                for v in self_check.results()]
    part.results.update(verdicts=verdicts, checked=len(verdicts), failed=sum(not v['ok'] for v in verdicts))
    if not verdicts:
        part.notes.append('no CUDA op ran (no CUDA device): nothing to check')
    if part.results['failed']:
        raise RuntimeError(f'{part.results["failed"]} kernel configuration(s) failed the self-check')


def part_modconv_layers(part, cfg, ctx):
    """ms per forward+backward of one layer: fused kernel / reference grouped conv / baseline non-fused."""
    device = ctx['device']
    backend = None
    if device.type == 'cuda':
        ok, reason = mcc.is_available()
        backend = mcc._plugin.load() if ok else None
        if backend is None:
            part.skip('fused kernel', reason)
    else:
        part.skip('fused kernel', 'no CUDA device')
    rows, sync = [], (lambda: _sync(device))
    for precision in cfg['precisions']:
        for res in cfg['layer_res']:
            for up in (1, 2):
                what = f'{precision} {res} px up={up}'
                if part.over(what):
                    continue
                channels = min(cfg['cbase'] // res, cfg['cmax'])
                with _precision(precision) as dtype:
                    row = dict(precision=precision, res=res, up=up, channels=channels)
                    for variant in ('fused', 'reference', 'baseline_nonfused'):
                        if variant == 'fused' and backend is None:
                            row[f'{variant}_ms'] = None
                            continue
                        step = _layer_step(variant, cfg, channels, res, up, dtype, device, backend)
                        row[f'{variant}_ms'] = time_fn(step, cfg['iters'], cfg['warmup'], sync)
                    row['fused_over_reference'] = _ratio(row['fused_ms'], row['reference_ms'])
                    rows.append(row)
    part.results['layers'] = rows
    part.results['measured_max_fused_pixels'] = _max_fused_pixels(rows)
    part.results['current_max_fused_pixels'] = mcc.max_fused_pixels


def _layer_step(variant, cfg, channels, res, up, dtype, device, backend):
    gen = torch.Generator().manual_seed(0)
    rnd = lambda *shape: torch.randn(shape, generator=gen).to(device)
    batch = cfg['layer_batch']
    x = rnd(batch, channels, res // up, res // up).to(dtype).requires_grad_(True)
    weight = rnd(channels, channels, 3, 3).requires_grad_(True)
    per_row = variant != 'baseline_nonfused'
    styles = (rnd(batch, cfg['rows'], channels) if per_row else rnd(batch, channels)).add_(1).requires_grad_(True)
    kw = dict(padding=1, up=up, flip_weight=(up == 1),
              resample_filter=upfirdn2d.setup_filter([1, 3, 3, 1], device=device) if up > 1 else None)
    if variant == 'fused':
        forward = lambda: mcc.fused_modulated_conv2d(x, weight, styles, backend=backend, max_pixels=None, **kw)
    else:
        forward = lambda: modulated_conv2d(x, weight, styles, fused_modconv=per_row, impl='ref', **kw)
    grad = torch.randn(forward().shape, generator=gen).to(device=device, dtype=dtype)

    def step():
        x.grad = weight.grad = styles.grad = None
        forward().backward(grad)
    return step


def _max_fused_pixels(rows):
    """Per precision and up: the largest res (as pixels) up to which the kernel is never slower than the reference."""
    best = {}
    for (precision, up) in sorted({(r['precision'], r['up']) for r in rows}):
        ok_res = None
        for r in sorted((r for r in rows if (r['precision'], r['up']) == (precision, up)), key=lambda r: r['res']):
            if r['fused_over_reference'] is None or r['fused_over_reference'] > 1:
                break
            ok_res = r['res']
        best[f'{precision} up={up}'] = None if ok_res is None else ok_res * ok_res
    values = [v for v in best.values() if v is not None]
    return dict(per_case=best, suggested=min(values) if len(values) == len(best) and values else None)


def part_generator(part, cfg, ctx):
    """G(z).square().mean().backward(), train mode, batch `g_batch`: overparameterized / baseline, per precision."""
    device = ctx['device']
    baseline, overparam = cfg['presets']
    for precision in cfg['g_precisions']:
        out = {}
        for preset in cfg['presets']:
            if part.over(f'{preset} {precision}'):
                continue
            _kwargs, G, _D = _networks(ctx, preset)
            G.train().requires_grad_(True)
            z = G.sample_z(cfg['g_batch'], generator=torch.Generator().manual_seed(1)).to(device)

            def step(G=G, z=z):                      # bound now: `del G` below would leave a closure's G unbound
                G.zero_grad(set_to_none=True)
                G(z, None).square().mean().backward()
            with _precision(precision):
                step()
                peak = _peak_mb(device, step)
                ms = time_fn(step, cfg['iters'], cfg['warmup'], lambda: _sync(device))
            out[preset] = dict(ms=ms, peak_mb=peak, latent_shape=list(G.z_shape))
            del G, step                              # step holds G too: the next preset starts without it
        if baseline in out and overparam in out:
            out.update(time_ratio=_ratio(out[overparam]['ms'], out[baseline]['ms']),
                       memory_ratio=_ratio(out[overparam]['peak_mb'], out[baseline]['peak_mb']))
        part.results[precision] = out
    part.results.update(goals=dict(time=GOALS['time_ratio'], memory=GOALS['memory_ratio']),
                        paper=dict(time=GOALS['paper_time_ratio'], memory=GOALS['paper_memory_ratio']))


def part_training(part, cfg, ctx):
    """`train_steps` steps (fewer when the budget runs out) per preset and precision, via training_loop."""
    from training.training_loop import training_loop
    runs = [(p, q) for p in cfg['presets'] for q in cfg['train_precisions']]
    out = []
    for i, (preset, precision) in enumerate(runs):
        if part.over(f'{preset} {precision}'):
            continue
        kwargs = presets.setup_training_config(cfg=preset, data=ctx['data'], precision=precision, workers=0,
                                               metrics=[], **ctx['overrides'])
        steps = cfg['train_steps']
        kwargs.total_kimg = steps * kwargs.batch_size / 1000
        kwargs.kimg_per_tick = kwargs.total_kimg / 10     # fine-grained, for the time budget
        kwargs.image_snapshot_ticks = kwargs.network_snapshot_ticks = None
        kwargs.image_grid = [2, 2]
        run_dir = os.path.join(ctx['work'], f'train-{preset}-{precision}')
        shutil.rmtree(run_dir, ignore_errors=True)
        share = part.left() / (len(runs) - i)          # an equal share of what is left
        deadline = time.perf_counter() + share
        summary = training_loop(run_dir=run_dir, device=ctx['device'], verbose=False,
                                abort_fn=lambda: time.perf_counter() > deadline, **kwargs)
        ticks = [json.loads(line) for line in open(os.path.join(run_dir, 'stats.jsonl'))]
        steady = ticks[1:] or ticks                     # tick 0 is the first step (warm-up, cuDNN autotuning)
        spk = [t['Timing/sec_per_kimg']['mean'] for t in steady if t.get('Timing/sec_per_kimg', {}).get('mean')]
        mem = [t['Resources/peak_gpu_mem_gb']['mean'] for t in ticks
               if t.get('Resources/peak_gpu_mem_gb', {}).get('mean') is not None]
        out.append(dict(preset=preset, precision=precision, batch=kwargs.batch_size, kimg=summary.get('kimg'),
                        steps=summary.get('cur_nimg', 0) // kwargs.batch_size, aborted=summary.get('aborted'),
                        sec_per_kimg=sum(spk) / len(spk) if spk else None, peak_gpu_mem_gb=max(mem) if mem else None))
        if summary.get('aborted'):
            part.skip(f'{preset} {precision}: steps after {out[-1]["steps"]}', 'its share of the time budget spent')
    part.results['runs'] = out


def part_inversion(part, cfg, ctx):
    """Inverter steps on random targets with a random-trunk VGG LPIPS (same cost, no download)."""
    from inversion import losses, optimize
    device = ctx['device']
    _kwargs, G, _D = _networks(ctx, cfg['presets'][1])
    G.eval().requires_grad_(False)
    loss = losses.build_loss('vgg-random', device=device, resolution=ctx['res'])
    space = G.latent_space()
    out = []
    for batch in cfg['inv_batches']:
        if batch == 'auto':
            batch = optimize.auto_batch_size(G, loss, space, device)
        if part.over(f'batch {batch}'):
            continue
        gen = torch.Generator().manual_seed(2)
        targets = (torch.rand([batch, 3, ctx['res'], ctx['res']], generator=gen) * 2 - 1).to(device)
        inverter = optimize.Inverter(G, loss, targets, space, steps=cfg['inv_steps'] + 1, precision='fp32')
        runs = inverter.run()
        next(runs)                                       # warm-up step
        _sync(device)
        start = time.perf_counter()
        done = 0
        for _ in runs:
            done += 1
            if part.left() < 0:
                part.skip(f'batch {batch}: steps after {done}', f'time budget of {part.budget} s spent')
                break
        _sync(device)
        per_step = (time.perf_counter() - start) / max(done, 1)
        out.append(dict(batch=batch, steps_timed=done, s_per_step=per_step,
                        s_per_image_1000_steps=per_step * 1000 / batch))
    part.results['runs'] = out
    part.results['goal_s_per_image'] = GOALS['inversion_s_per_image']

def part_compiled(part, cfg, ctx):
    """Eager vs compiled, side by side in this process: the inversion step (CUDA graphs on a GPU) per precision and
    batch, then Gmain + Dmain of the overparameterized model (fp32)."""
    from benchmarks import bench_inversion_step, bench_training_step
    c, device = cfg['compiled'], ctx['device']
    clock = 'wall' if device.type == 'cuda' else 'cpu'
    rows = []
    for precision in c['precisions']:
        for batch in c['batches']:
            if part.over(f'inversion {precision} batch {batch}'):
                continue
            rec = bench_inversion_step.run_worker(c['res'], c['cmax'], batch, c['rows'], c['rounds'], str(device),
                                                  precision, seed=0, profile=False, count_flops=True)
            s = bench_inversion_step.summarize(rec, clock)
            rows.append(dict(precision=precision, batch=batch, eager_ms=s['eager_ms'], compiled_ms=s['compiled_ms'],
                             ratio=s['ratio'], compile_s=s['compile_s'], break_even_steps=s['break_even_steps'],
                             compiled_gflops=s.get('compiled_gflops'), peak_gflops=s.get('peak_gflops'),
                             cuda_graphs=device.type == 'cuda', failure=rec['compile']['failure']))
    part.results['inversion'] = rows
    t = c['train']
    if not part.over('training Gmain + Dmain'):
        recs = {mode: bench_training_step.run_worker('overparam', t['res'], t['cmax'], t['cbase'], t['batch'],
                                                     t['rows'], t['dim'], t['iters'], t['warmup'], str(device), 0,
                                                     clock, compile_mode=mode) for mode in ('off', 'on')}
        eager, fast = (recs[m]['ms']['Gmain+Dmain'] for m in ('off', 'on'))
        part.results['training'] = dict(eager_ms=eager, compiled_ms=fast, ratio=_ratio(fast, eager),
                                        compile=recs['on']['compile'], first_iteration_s=recs['on']['warmup_s'][0])
    part.results['goals'] = dict(inversion_batch1=GOALS['compiled_inversion_ratio_batch1'],
                                 training=GOALS['compiled_training_ratio'])
    failed = [r for r in rows if r['failure']]
    if failed:
        raise RuntimeError(f'torch.compile fell back to eager: {failed[0]["failure"]}')

PARTS = dict(tests=part_tests, self_check=part_self_check, modconv_layers=part_modconv_layers,
             generator=part_generator, training=part_training, inversion=part_inversion, compiled=part_compiled)

#----------------------------------------------------------------------------
# Report.

def _fmt(v, digits=3):
    if v is None:
        return 'n/a'
    if isinstance(v, float):
        return f'{v:.{digits}g}'
    return str(v)


def _headline(name, r):
    if name == 'tests':
        return f'{r.get("passed", 0)} passed, {r.get("failed", 0)} failed, {r.get("skipped", 0)} skipped'
    if name == 'self_check':
        return f'{r.get("checked", 0)} configurations checked, {r.get("failed", 0)} failed'
    if name == 'modconv_layers':
        return f'measured max_fused_pixels {_fmt(r.get("measured_max_fused_pixels", {}).get("suggested"))} ' \
               f'(current {_fmt(r.get("current_max_fused_pixels"))})'
    if name == 'generator':
        return '; '.join(f'{q}: time ratio {_fmt(r[q].get("time_ratio"))} (goal <= 1.03), memory ratio '
                         f'{_fmt(r[q].get("memory_ratio"))} (goal <= 1.10)' for q in r if isinstance(r[q], dict)
                         and 'time_ratio' in r[q])
    if name == 'training':
        return '; '.join(f'{x["preset"]} {x["precision"]}: {_fmt(x["sec_per_kimg"])} s/kimg, '
                         f'{_fmt(x["peak_gpu_mem_gb"])} GB' for x in r.get('runs', []))
    if name == 'inversion':
        return '; '.join(f'batch {x["batch"]}: {_fmt(x["s_per_image_1000_steps"])} s/image' for x in r.get('runs', []))
    if name == 'compiled':
        inv = '; '.join(f'{x["precision"]} batch {x["batch"]}: compiled/eager {_fmt(x["ratio"]["median"])}, compile '
                        f'{_fmt(x["compile_s"])} s' for x in r.get('inversion', []))
        tr = r.get('training')
        return inv + (f'; Gmain+Dmain {_fmt(tr["ratio"])}' if tr else '') + ' (goals <= 0.5 at batch 1, <= 0.85)'
    return ''


def markdown(report):
    env = report['environment']
    lines = [f'GPU acceptance, {report["date"]}, {env["device_name"]}, torch {env["torch"]}, CUDA {env["cuda"]}'
             f'{" (DRY RUN: CPU, tiny sizes, not a measurement)" if report["dry_run"] else ""}', '',
             '| part | status | s | result | skipped |', '|---|---|---|---|---|']
    for name, p in report['parts'].items():
        skipped = '; '.join(f'{s["what"]} ({s["why"]})' for s in p['skipped']) or '-'
        status = p['status'] + (f': {p["error"].splitlines()[-1]}' if p.get('error') else '')
        lines.append(f'| {name} | {status} | {p["seconds"]:.0f} | {_headline(name, p["results"])} | {skipped} |')
    layers = report['parts'].get('modconv_layers', {}).get('results', {}).get('layers', [])
    if layers:
        lines += ['', '| precision | px | up | channels | fused ms | reference ms '
                      '| baseline non-fused ms | fused / reference |',
                  '|---|---|---|---|---|---|---|---|']
        for r in layers:
            lines.append(f'| {r["precision"]} | {r["res"]} | {r["up"]} | {r["channels"]} | {_fmt(r["fused_ms"])} | '
                         f'{_fmt(r["reference_ms"])} | {_fmt(r["baseline_nonfused_ms"])} | '
                         f'{_fmt(r["fused_over_reference"])} |')
    lines.append(f'\nTotal {report["seconds"]:.0f} s. Command: `{report["command"]}`')
    return '\n'.join(lines) + '\n'


def _write_atomic(path, text):
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)

#----------------------------------------------------------------------------

def run(out, dry_run=False, parts=None):
    """Run the parts (all by default) and write the report; returns it."""
    cfg = DRY if dry_run else REAL
    device = torch.device(cfg['device'])
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise click.ClickException('no CUDA device: run on a GPU machine, or use --dry-run for the CPU rehearsal')
    work = os.path.join(out, 'work')
    os.makedirs(work, exist_ok=True)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    start = time.perf_counter()
    report = dict(date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), dry_run=dry_run,
                  command=' '.join(['python -m benchmarks.gpu_acceptance'] + sys.argv[1:]),
                  environment=dict(device_name=torch.cuda.get_device_name(device) if device.type == 'cuda'
                                   else platform.processor() or 'CPU', torch=torch.__version__,
                                   cuda=torch.version.cuda, python=platform.python_version()),
                  budgets_s=cfg['budgets'], parts={})
    res = 32 if dry_run else 256
    data = os.path.join(work, f'synthetic-{res}.zip')
    if not os.path.isfile(data):
        from training.tiny_data import write_tiny_dataset
        write_tiny_dataset(data, num_images=cfg['data_images'], resolution=res)
    ctx = dict(device=device, work=work, repo=repo, data=data, res=res, dry_run=dry_run, overrides=cfg['overrides'])
    for name, fn in PARTS.items():
        if parts and name not in parts:
            continue
        part = Part(name, cfg['budgets'][name])
        status, error = 'ok', None
        try:
            fn(part, cfg, ctx)
        except Exception as exc:   # one failing part must not cost the others' results
            status, error = 'failed', ''.join(traceback.format_exception_only(type(exc), exc)).strip()
        finally:
            if device.type == 'cuda':
                torch.cuda.empty_cache()
        report['parts'][name] = dict(status=status if not part.skipped or status == 'failed' else 'partial',
                                     seconds=time.perf_counter() - part.start, budget_s=part.budget, error=error,
                                     results=part.results, skipped=part.skipped, notes=part.notes)
        print(f'{name}: {report["parts"][name]["status"]} in {report["parts"][name]["seconds"]:.0f} s'
              f'{" - " + error if error else ""}', flush=True)
        report['seconds'] = time.perf_counter() - start
        _write_atomic(os.path.join(out, 'gpu-acceptance.json'), json.dumps(report, indent=1, default=str))
    report['seconds'] = time.perf_counter() - start
    _write_atomic(os.path.join(out, 'gpu-acceptance.json'), json.dumps(report, indent=1, default=str))
    _write_atomic(os.path.join(out, 'gpu-acceptance.md'), markdown(report))
    return report


@click.command()
@click.option('--out', required=True, type=click.Path(file_okay=False), help='Output folder (created)')
@click.option('--dry-run', is_flag=True, help='CPU, tiny sizes: checks the command end to end')
@click.option('--parts', default=None, help=f'Comma-separated subset of: {", ".join(PARTS)}')
def main(out, dry_run, parts):
    """GPU acceptance run: writes OUT/gpu-acceptance.json and OUT/gpu-acceptance.md."""
    chosen = None if parts is None else [p.strip() for p in parts.split(',') if p.strip()]
    unknown = sorted(set(chosen or []) - set(PARTS))
    if unknown:
        raise click.BadParameter(f'unknown part(s) {", ".join(unknown)}; choose from {", ".join(PARTS)}',
                                 param_hint='--parts')
    if os.path.exists(out) and not os.path.isdir(out):
        raise click.BadParameter(f'{out} exists and is not a folder', param_hint='--out')
    torch.set_num_threads(max(1, int(os.environ.get('OMP_NUM_THREADS', '1') or 1)) if dry_run
                          else torch.get_num_threads())
    report = run(out, dry_run=dry_run, parts=chosen)
    print(markdown(report))
    failed = [n for n, p in report['parts'].items() if p['status'] == 'failed']
    if failed:
        raise SystemExit(f'gpu_acceptance: failed part(s): {", ".join(failed)} '
                         f'(see {os.path.join(out, "gpu-acceptance.json")})')


if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
