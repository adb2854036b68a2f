"""Forward+backward time and peak memory of the overparameterized generator (latent matrices,
eq. 2) against the StyleGAN2 baseline at the same batch size, in one run.

    python -m benchmarks.bench_generator --res 256 --batch 16 --rows 512 --device cuda --impl cuda
    python -m benchmarks.bench_generator --res 64 --batch 4 --device cpu --iters 3 --warmup 1

Variants (train mode, `G(z, None).square().mean().backward()` per iteration, grads reset):
  baseline_nonfused  latent vectors, fused_modconv=False (StyleGAN2's fastest training path)
  baseline_fused     latent vectors, fused_modconv=True (one grouped conv, as the paper's baseline)
  overparam          latent matrices with `--rows` rows (always one grouped conv / the fused
                     kernel; `--impl` picks the implementation of these layers)
Prints one JSON line; `--markdown FILE` appends a table row. Peak memory is measured on CUDA
only (`max_memory_allocated` during an iteration, minus what was allocated before it); on the
CPU it is reported as null.
"""

import functools
import json
import platform
import time

import click
import torch

import training.networks as networks
from torch_utils.ops import modulated_conv2d as modconv

#----------------------------------------------------------------------------

def build_generator(res, rows, channel_base, channel_max, device, seed=0):
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3, latent_rows=rows,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=0,
                                                 conv_clamp=256, use_noise=False))
    return G.train().requires_grad_(True).to(device)


def use_impl(impl):
    """Route the synthesis layers' per-row modulated convs through `impl` ('ref', 'cuda' or 'auto').
    Latent-vector (baseline) layers always run the reference formulations."""
    def patched(*args, impl_=impl, **kwargs):
        styles = kwargs.get('styles', args[2] if len(args) > 2 else None)
        chosen = None if impl_ == 'auto' else impl_
        if styles is not None and styles.ndim == 2:
            chosen = 'ref'
        return modconv.modulated_conv2d(*args, impl=chosen, **kwargs)
    networks.modulated_conv2d = functools.wraps(modconv.modulated_conv2d)(patched)


def measure(G, batch, iters, warmup, device, **synthesis_kwargs):
    """-> (ms per forward+backward, peak MB above the memory held before the iteration, or None)."""
    cuda = device.type == 'cuda'
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    z = G.sample_z(batch, generator=torch.Generator(device='cpu').manual_seed(1)).to(device)

    def step():
        G.zero_grad(set_to_none=True)
        G(z, None, **synthesis_kwargs).square().mean().backward()

    for _ in range(warmup):
        step()
    sync()
    peak = None
    if cuda:
        G.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync()
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return (time.perf_counter() - start) / iters * 1e3, peak

#----------------------------------------------------------------------------

@click.command()
@click.option('--res', type=int, default=256, show_default=True, help='Output resolution')
@click.option('--batch', type=int, default=16, show_default=True)
@click.option('--rows', type=int, default=512, show_default=True, help='Latent rows R of the overparameterized G')
@click.option('--channel-base', type=int, default=16384, show_default=True)
@click.option('--channel-max', type=int, default=512, show_default=True)
@click.option('--device', default='cuda', show_default=True, help='cuda or cpu')
@click.option('--impl', type=click.Choice(['ref', 'cuda', 'auto']), default='auto', show_default=True,
              help='Per-row modulated conv implementation (auto = CUDA kernel when available)')
@click.option('--iters', type=int, default=10, show_default=True)
@click.option('--warmup', type=int, default=2, show_default=True)
@click.option('--threads', type=int, default=None, help='torch.set_num_threads (CPU)')
@click.option('--strict-fp32', is_flag=True, help='Disable TF32 (the paper trained with --fp32 True)')
@click.option('--markdown', 'markdown', type=click.Path(dir_okay=False), default=None, help='Append a table row here')
def main(res, batch, rows, channel_base, channel_max, device, impl, iters, warmup, threads, strict_fp32, markdown):
    device = torch.device(device)
    if impl == 'cuda' and device.type != 'cuda':
        raise click.BadParameter('--impl cuda needs --device cuda', param_hint='--impl')
    if threads:
        torch.set_num_threads(threads)
    if strict_fp32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    use_impl(impl)

    results = {}
    G_base = build_generator(res, None, channel_base, channel_max, device)
    for name, fused in [('baseline_nonfused', False), ('baseline_fused', True)]:
        ms, peak = measure(G_base, batch, iters, warmup, device, fused_modconv=fused)
        results[name] = dict(ms=round(ms, 2), img_per_s=round(batch / ms * 1e3, 2),
                             peak_mb=None if peak is None else round(peak, 1))
    del G_base
    G_over = build_generator(res, rows, channel_base, channel_max, device)
    ms, peak = measure(G_over, batch, iters, warmup, device)
    results['overparam'] = dict(ms=round(ms, 2), img_per_s=round(batch / ms * 1e3, 2),
                                peak_mb=None if peak is None else round(peak, 1))

    ratios = {f'overparam_vs_{b}': round(results['overparam']['ms'] / results[b]['ms'], 3)
              for b in ('baseline_nonfused', 'baseline_fused')}
    if device.type == 'cuda':
        for b in ('baseline_nonfused', 'baseline_fused'):
            ratios[f'mem_overparam_vs_{b}'] = round(results['overparam']['peak_mb'] / results[b]['peak_mb'], 3)
        hw = torch.cuda.get_device_name(device)
    else:
        hw = f'{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads'
    record = dict(bench='generator_fwd_bwd', res=res, batch=batch, rows=rows, channel_base=channel_base,
                  channel_max=channel_max, device=device.type, hardware=hw, impl=impl, strict_fp32=strict_fp32,
                  iters=iters, warmup=warmup, torch=torch.__version__, results=results, ratios=ratios)
    print(json.dumps(record))

    if markdown:
        def fmt(v):
            return '-' if v is None else f'{v}'
        r = results
        row = (f'| {hw} | {res} | {batch} | {rows} | {impl} '
               f'| {r["baseline_nonfused"]["ms"]} | {r["baseline_fused"]["ms"]} '
               f'| {r["overparam"]["ms"]} | {ratios["overparam_vs_baseline_nonfused"]} '
               f'| {fmt(r["baseline_nonfused"]["peak_mb"])} | {fmt(r["baseline_fused"]["peak_mb"])} '
               f'| {fmt(r["overparam"]["peak_mb"])} |\n')
        with open(markdown, 'a', encoding='utf-8') as fh:
            if fh.tell() == 0:
                fh.write('| hardware | res | batch | rows | impl | base non-fused ms | base fused ms | overparam ms '
                         '| ratio | base nf MB | base f MB | overparam MB |\n|' + '---|' * 12 + '\n')
            fh.write(row)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()  # click supplies the arguments
