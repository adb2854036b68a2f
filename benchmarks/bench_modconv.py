"""One modulated conv layer (default 512 -> 512, 3x3, batch 16): forward+backward time (and
forward-only time) of the baseline vs the per-row (eq. 2) formulations and implementations.

    python -m benchmarks.bench_modconv --device cuda                     # ref vs fused kernel
    python -m benchmarks.bench_modconv --device cpu --batch 4 --res 8 --res 64 --iters 3

Variants:
  base_nonfused  latent-vector styles [N, I], fused_modconv=False (scale x, shared-weight conv)
  base_fused     latent-vector styles [N, I], fused_modconv=True (grouped conv)
  rows_ref       per-row styles [N, R, I], reference path (grouped conv with [N,O,I,k,k] weights)
  rows_cuda      per-row styles, fused kernel at every size (CUDA only; ignores max_fused_pixels)
`--up` adds the upsampling layer (conv0 of a block: up = 2, output `res`).
Prints one JSON line per (resolution, up) and a summary table.
"""

import json

import click
import torch

from benchmarks.timing import time_fn
from torch_utils.ops import modulated_conv2d_cuda as mcc, upfirdn2d
from torch_utils.ops.modulated_conv2d import modulated_conv2d

#----------------------------------------------------------------------------



def make_layer(variant, batch, channels, rows, res, up, dtype, device, backend):
    """-> (forward closure, forward+backward closure) of one layer variant."""
    gen = torch.Generator(device='cpu').manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, generator=gen).to(device)
    in_res = res // up
    x = rnd(batch, channels, in_res, in_res).to(dtype).requires_grad_(True)
    weight = rnd(channels, channels, 3, 3).requires_grad_(True)
    per_row = variant.startswith('rows')
    styles = (rnd(batch, rows, channels) if per_row else rnd(batch, channels)).add_(1).requires_grad_(True)
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=device) if up > 1 else None
    kw = dict(padding=1, up=up, resample_filter=f, flip_weight=(up == 1))

    if variant == 'rows_cuda':
        def forward():
            return mcc.fused_modulated_conv2d(x, weight, styles, backend=backend, max_pixels=None, **kw)
    else:
        fused = variant != 'base_nonfused'
        def forward():
            return modulated_conv2d(x, weight, styles, fused_modconv=fused, impl='ref', **kw)
    gy = torch.randn(forward().shape, generator=gen).to(device=device, dtype=dtype)

    def fwd():
        with torch.no_grad():
            forward()

    def fwd_bwd():
        x.grad = weight.grad = styles.grad = None
        forward().backward(gy)
    return fwd, fwd_bwd

#----------------------------------------------------------------------------

@click.command()
@click.option('--device', default='cuda', show_default=True)
@click.option('--batch', type=int, default=16, show_default=True)
@click.option('--channels', type=int, default=512, show_default=True)
@click.option('--rows', type=int, default=512, show_default=True)
@click.option('--res', 'resolutions', type=int, multiple=True, help='Output resolutions [default: 8 16 32 64]')
@click.option('--up', 'with_up', is_flag=True, help='Also the up = 2 layer')
@click.option('--dtype', type=click.Choice(['fp32', 'fp16']), default='fp32', show_default=True)
@click.option('--iters', type=int, default=20, show_default=True)
@click.option('--warmup', type=int, default=3, show_default=True)
@click.option('--threads', type=int, default=None, help='torch.set_num_threads (CPU)')
@click.option('--strict-fp32', is_flag=True, help='Disable TF32 for the reference convolutions')
def main(device, batch, channels, rows, resolutions, with_up, dtype, iters, warmup, threads, strict_fp32):
    device = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    if strict_fp32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    dtype = torch.float16 if dtype == 'fp16' else torch.float32
    cuda = device.type == 'cuda'
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    variants = ['base_nonfused', 'base_fused', 'rows_ref']
    backend = None
    if cuda:
        ok, reason = mcc.is_available()
        if ok:
            variants.append('rows_cuda')
            backend = mcc._plugin.load()
        else:
            print(f'# fused kernel unavailable: {reason}')
    table = []
    for res in resolutions or (8, 16, 32, 64):
        for up in ((1, 2) if with_up else (1,)):
            row = dict(bench='modconv_layer', device=device.type, dtype=str(dtype).replace('torch.', ''), batch=batch,
                       channels=channels, rows=rows, res=res, up=up, threads=torch.get_num_threads(), results={})
            for variant in variants:
                fwd, fwd_bwd = make_layer(variant, batch, channels, rows, res, up, dtype, device, backend)
                row['results'][variant] = dict(fwd_ms=round(time_fn(fwd, iters, warmup, sync), 3),
                                               fwd_bwd_ms=round(time_fn(fwd_bwd, iters, warmup, sync), 3))
            print(json.dumps(row), flush=True)
            table.append(row)

    print(f'\nfwd+bwd ms ({device.type}, {row["dtype"]}, batch {batch}, {channels}->{channels} 3x3, rows {rows})')
    print('res  up  ' + ''.join(f'{v:>15}' for v in variants))
    for row in table:
        print(f'{row["res"]:<4} {row["up"]:<3} '
              + ''.join(f'{row["results"][v]["fwd_bwd_ms"]:>15.2f}' for v in variants))

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()  # click supplies the arguments
