"""CPU/GPU timing of the stylegan2-ada-pytorch fixture through our code: safe vs trusted loading,
G forward (fused modulation, as NVIDIA's eval path) and the training path (non-fused), D forward.

    python -m benchmarks.bench_fixture --pkl ../shared/fixtures/nvlabs-sg2ada-32px.pkl --batch 16
"""

import json
import platform
import time

import click
import torch

from benchmarks.timing import time_fn
from torch_utils import checkpoint


@click.command()
@click.option('--pkl', required=True, help='stylegan2-ada-pytorch snapshot')
@click.option('--batch', type=int, default=16, show_default=True)
@click.option('--iters', type=int, default=20, show_default=True)
@click.option('--warmup', type=int, default=3, show_default=True)
@click.option('--device', default='cpu', show_default=True)
def main(pkl, batch, iters, warmup, device):
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    t0 = time.perf_counter()
    data = checkpoint.load_network_pkl(pkl)
    load_safe = time.perf_counter() - t0
    t0 = time.perf_counter()
    checkpoint.load_network_pkl(pkl, trust=True)
    load_trusted = time.perf_counter() - t0
    G, D = data['G_ema'].to(device), data['D'].to(device)
    z = torch.randn(batch, G.z_dim, device=device)
    c = torch.zeros(batch, G.c_dim, device=device)
    ws = G.mapping(z, c)
    with torch.no_grad():
        img = G.synthesis(ws, noise_mode='const', force_fp32=True)
        res = dict(
            device=str(device), torch=torch.__version__, machine=platform.processor() or platform.machine(),
            threads=torch.get_num_threads(), batch=batch,
            load_safe_ms=round(load_safe * 1e3, 1), load_trusted_ms=round(load_trusted * 1e3, 1),
            G_forward_fused_ms=time_fn(lambda: G(z, c, noise_mode='const', force_fp32=True), iters, warmup, sync),
            G_forward_unfused_ms=time_fn(lambda: G(z, c, noise_mode='const', force_fp32=True, fused_modconv=False),
                                        iters, warmup, sync),
            D_forward_ms=time_fn(lambda: D(img, c), iters, warmup, sync),
        )
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.items()}))


if __name__ == '__main__':
    main()
