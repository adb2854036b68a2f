"""AugmentPipe cost per batch: forward and forward+backward (gradient to the images, as D's training needs)
of the pipelines side by side at several strengths p.

    python -m benchmarks.bench_augment --device cpu                                 # 32 px x 32, 256 px x 64
    python -m benchmarks.bench_augment --device cuda --size 256:64 --p 0.6 --iters 20

Pipelines: AUGPIPE_SPECS names (default bc = blits + colour, no resampling; bgc = NVIDIA's default).
Prints one JSON line per (size, batch, spec, p) and a table with the ratio to the first spec.
"""

import json

import click
import torch

from benchmarks.timing import time_fn
from training.augment import AUGPIPE_SPECS, AugmentPipe

#----------------------------------------------------------------------------

def make_closures(spec, p, batch, res, device):
    """-> (forward closure, forward+backward closure) for one pipeline at strength p; seeded draws."""
    aug = AugmentPipe(**AUGPIPE_SPECS[spec]).to(device)
    aug.p.fill_(p)
    gen = torch.Generator(device='cpu').manual_seed(0)
    x = (torch.rand([batch, 3, res, res], generator=gen) * 2 - 1).to(device).requires_grad_(True)
    gy = torch.randn([batch, 3, res, res], generator=gen).to(device)
    torch.manual_seed(0)

    def fwd():
        with torch.no_grad():
            aug(x)

    def fwd_bwd():
        x.grad = None
        aug(x).backward(gy)
    return fwd, fwd_bwd


@click.command()
@click.option('--device', default='cpu', show_default=True)
@click.option('--size', 'sizes', multiple=True, default=['32:32', '256:64'], show_default=True,
              help='RES:BATCH, repeatable')
@click.option('--spec', 'specs', multiple=True, default=['bc', 'bgc'], show_default=True, help='repeatable')
@click.option('--p', 'ps', multiple=True, type=float, default=[0.0, 0.2, 0.6, 1.0], show_default=True)
@click.option('--iters', default=5, show_default=True)
@click.option('--warmup', default=1, show_default=True)
def main(device, sizes, specs, ps, iters, warmup):
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == 'cuda' else (lambda: None)
    rows = []
    for size in sizes:
        res, batch = (int(v) for v in size.split(':'))
        for p in ps:
            for spec in specs:
                fwd, fwd_bwd = make_closures(spec, p, batch, res, device)
                row = dict(res=res, batch=batch, spec=spec, p=p, device=str(device), threads=torch.get_num_threads(),
                           fwd_ms=time_fn(fwd, iters, warmup, sync), fwd_bwd_ms=time_fn(fwd_bwd, iters, warmup, sync))
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(f'\n{"res":>4} {"batch":>5} {"p":>4} {"spec":>6} {"fwd ms":>9} {"fwd+bwd ms":>11} {"x first":>8}')
    for row in rows:
        first = next(r for r in rows if (r['res'], r['batch'], r['p']) == (row['res'], row['batch'], row['p']))
        print(f'{row["res"]:>4} {row["batch"]:>5} {row["p"]:>4.1f} {row["spec"]:>6} {row["fwd_ms"]:>9.2f} '
              f'{row["fwd_bwd_ms"]:>11.2f} {row["fwd_bwd_ms"] / first["fwd_bwd_ms"]:>8.2f}')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()
