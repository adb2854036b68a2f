"""Safe checkpoint loading: the checked pure-Python unpickler vs the C unpickler with the same allow-list.

The safe loader uses `pickle._Unpickler` so that BUILD can be checked; this measures what that costs
on the NVIDIA fixture and on a paper-size (256 px) generator pickle, side by side in one run:

    python -m benchmarks.bench_checkpoint_load --iters 3 --warmup 1
"""

import argparse
import io
import json
import os
import pickle
import tempfile

import torch

from benchmarks.timing import time_fn
from torch_utils import checkpoint, safe_pickle
from training import networks


class _CUnpickler(pickle.Unpickler):
    """The C unpickler resolving the same allow-list (no BUILD checks): the speed reference."""

    def __init__(self, f):
        super().__init__(f)
        self._allowed = safe_pickle.safe_globals()

    find_class = safe_pickle.SafeUnpickler.find_class


def _paper_generator_pickle(folder):
    torch.manual_seed(0)
    G = networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=16384, channel_max=512, num_fp16_res=0, conv_clamp=256))
    path = os.path.join(folder, 'paper256.pkl')
    checkpoint.save_network_pkl(path, dict(G_ema=G))
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {'nvlabs fixture (32 px)': os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'fixtures',
                                                        'nvlabs-sg2ada-32px.pkl'),
                 'ours, 256 px generator': _paper_generator_pickle(tmp)}
        for label, path in paths.items():
            data = open(path, 'rb').read()
            c_ms = time_fn(lambda: _CUnpickler(io.BytesIO(data)).load(), args.iters, args.warmup, lambda: None)
            safe_ms = time_fn(lambda: safe_pickle.SafeUnpickler(io.BytesIO(data)).load(), args.iters, args.warmup,
                              lambda: None)
            full_ms = time_fn(lambda: checkpoint.load_network_pkl(path), args.iters, args.warmup, lambda: None)
            rows.append(dict(pickle=label, mib=round(len(data) / 2**20, 1), c_unpickler_ms=round(c_ms, 1),
                             safe_unpickler_ms=round(safe_ms, 1), ratio=round(safe_ms / c_ms, 2),
                             load_network_pkl_ms=round(full_ms, 1)))
    for row in rows:
        print(json.dumps(row))


if __name__ == '__main__':
    main()
