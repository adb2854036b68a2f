"""Encoder-only reconstruction metrics (`encoder_recon`): how well `G(E(x))` reproduces a set of images x,
and how fast the encoder is, without any optimisation.

Inputs (`MetricOptions` fields): `encoder` (a network with the public API of `training.encoder.Encoder`:
`img_resolution`, `img_channels`, `space`, `param_shape`, `forward(img [N, C, H, W] in [-1, 1]) ->
params [N, *param_shape]`, `to_ws(params) -> ws [N, num_ws, *w_shape]`), the generator `G` it was
trained for (`G.synthesis`), and the images through `dataset_kwargs` (calc_metrics.py --data/--target:
a zip or folder at G's resolution, read like the real images of FID). `max_real` caps the number.

Per image: the encoder's latent, `G.synthesis(E.to_ws(E(x)), noise_mode='const')` converted to uint8 as
inversion outputs are (`torch_utils.image_io.to_uint8`), then the metrics of `reconstruction` on the
uint8 pairs: LPIPS (mean and median), MSE and PSNR on [0, 1] intensities, SSIM. Speed: images per
second of the encoder alone and of encoder + synthesis, timed per batch after one warm-up batch
(devices synchronised), summed over batches (per device when sharded).
"""

import time

import numpy as np
import torch

from torch_utils import distributed
from torch_utils.image_io import to_uint8
from training.encoder import generator_mismatch

from .reconstruction import reconstruction_metrics

PREFIX = 'encoder_recon_'


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def check_encoder(E, G):
    """Raise ValueError (one line) unless E reads G's images and predicts latents of G's geometry."""
    if E is None:
        raise ValueError('encoder_recon needs an encoder: pass calc_metrics.py --encoder PKL')
    mismatch = generator_mismatch(E, G)
    if mismatch is not None:
        raise ValueError(f'{mismatch}; pass the generator it was trained for')


@torch.no_grad()
def encode_batches(E, G, dataset, num_items, batch_size, device):
    """[(target uint8 [n, H, W, C], recon uint8 [n, H, W, C], encoder seconds, encoder + synthesis seconds)]
    per batch of `batch_size` consecutive items, batch k on rank k mod K, gathered in order."""
    num_batches = (num_items + batch_size - 1) // batch_size
    warmed = []

    def one_batch(k):
        items = range(k * batch_size, min(num_items, (k + 1) * batch_size))
        target = torch.from_numpy(np.stack([dataset[i][0] for i in items])).to(device)          # uint8 [n, C, H, W]
        x = target.to(torch.float32) / 127.5 - 1
        if not warmed:                                   # one untimed pass: kernels, allocator, caches
            G.synthesis(E.to_ws(E(x)), noise_mode='const', force_fp32=True)
            warmed.append(True)
        _sync(device)
        start = time.perf_counter()
        params = E(x)
        _sync(device)
        encoded = time.perf_counter()
        images = G.synthesis(E.to_ws(params), noise_mode='const', force_fp32=True)
        _sync(device)
        done = time.perf_counter()
        return (target.permute(0, 2, 3, 1).cpu().numpy(), to_uint8(images), encoded - start, done - start)

    return distributed.map_in_order(one_batch, num_batches)


def compute_encoder_recon(opts):
    """The `encoder_recon` metric: {encoder_recon_<name>: value}, rank > 0 returns {}."""
    E, G = opts.get('encoder'), opts.G
    check_encoder(E, G)
    E = E.eval().requires_grad_(False).to(opts.device)
    G = G.eval().requires_grad_(False).to(opts.device)
    dataset = opts.make_dataset()
    try:
        num_items, _ = opts.counts(max_real=None, num_gen=0)
        num_items = len(dataset) if num_items is None else min(len(dataset), int(num_items))
        if num_items < 1:
            raise ValueError(f'encoder_recon: no images in {opts.dataset_kwargs.get("path")}')
        shape = list(dataset.image_shape)
        if shape != [G.img_channels, G.img_resolution, G.img_resolution]:
            raise ValueError(f'encoder_recon: the images are {shape[2]}x{shape[1]} with {shape[0]} channels, the '
                             f'generator makes {G.img_resolution} px {G.img_channels}-channel images; rebuild them '
                             f'with dataset_tool.py --resolution {G.img_resolution}')
        batches = encode_batches(E, G, dataset, num_items, max(1, opts.batch_size), opts.device)
    finally:
        dataset.close()
    target = np.concatenate([b[0] for b in batches])
    recon = np.concatenate([b[1] for b in batches])
    encoder_seconds = sum(b[2] for b in batches)
    total_seconds = sum(b[3] for b in batches)
    stats = reconstruction_metrics(recon, target, distance_fn=opts.lpips_distance(), feature_fn=None,
                                   batch_size=max(1, min(opts.batch_size, 16)), device=opts.device)
    if opts.rank != 0:
        return {}
    results = {f'{PREFIX}{k}': v for k, v in stats.items()}
    results[f'{PREFIX}images_per_second'] = num_items / encoder_seconds if encoder_seconds > 0 else None
    results[f'{PREFIX}images_per_second_with_G'] = num_items / total_seconds if total_seconds > 0 else None
    return results
