"""Loading other codebases' checkpoints: `load_network_pkl` time per format, on the fixtures (32 px) and on a
256 px config-F-like generator (style_dim 512, 8 mapping layers) written as our pickle and as rosinality's .pt,
with and without latent_avg (without: w_avg is estimated from 10,000 mapped latents).

    python -m benchmarks.bench_formats --iters 3 --warmup 1
"""

import argparse
import json
import os
import tempfile
import warnings

import torch

from benchmarks.timing import time_fn
from torch_utils import checkpoint
from training import networks
from training.formats import rosinality

FIXTURES = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'fixtures')


def _files(folder):
    torch.manual_seed(0)
    G = networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
                           mapping_kwargs=dict(num_layers=8),
                           synthesis_kwargs=dict(channel_base=32768, channel_max=512))
    ours = os.path.join(folder, 'g256.pkl')
    checkpoint.save_network_pkl(ours, dict(G_ema=G))
    his, _ = rosinality.to_rosinality(G)
    with_avg, without_avg = os.path.join(folder, 'g256.pt'), os.path.join(folder, 'g256-no-latent-avg.pt')
    torch.save(his, with_avg)
    torch.save(dict(g_ema=his['g_ema']), without_avg)
    return {'TF fixture (32 px)': os.path.join(FIXTURES, 'tf-stylegan2-32px.pkl'),
            'rosinality fixture (32 px, g, d, g_ema; w_avg estimated twice)':
                os.path.join(FIXTURES, 'rosinality-stylegan2-32px-narrow.pt'),
            'ours, 256 px G_ema': ours, 'rosinality, 256 px g_ema + latent_avg': with_avg,
            'rosinality, 256 px g_ema, w_avg estimated': without_avg}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1)
    args = parser.parse_args()
    warnings.simplefilter('ignore')
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in _files(tmp).items():
            ms = time_fn(lambda: checkpoint.load_network_pkl(path), args.iters, args.warmup, lambda: None)
            print(json.dumps(dict(file=label, mib=round(os.path.getsize(path) / 2**20, 1),
                                  load_network_pkl_ms=round(ms, 1))))


if __name__ == '__main__':
    main()
