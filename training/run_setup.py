"""Building what a training run needs from `training_loop`'s arguments: backend flags, networks, data stream."""

import copy

import torch

import dnnlib
from torch_utils import misc

#----------------------------------------------------------------------------
# Backend flags.

def setup_backends(precision, cudnn_benchmark, G_kwargs, D_kwargs):
    """Set TF32 and cuDNN flags for `precision`; returns the old values. FP16 layers need precision='mixed'."""
    if precision not in ('fp32', 'tf32', 'mixed'):
        raise ValueError(f"precision must be 'fp32', 'tf32' or 'mixed', got {precision!r}")
    fp16_res = max(G_kwargs.get('synthesis_kwargs', {}).get('num_fp16_res', 0), D_kwargs.get('num_fp16_res', 0))
    if precision != 'mixed' and fp16_res > 0:
        raise ValueError(f"precision='{precision}' but the networks have num_fp16_res={fp16_res}; use precision='mixed' "
                         f'or set num_fp16_res=0 (configs.presets does this for you)')
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = (precision == 'tf32')
    torch.backends.cudnn.benchmark = cudnn_benchmark
    return old


def restore_backends(old):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = old

#----------------------------------------------------------------------------
# Networks.

def build_networks(cfg, training_set, device):
    """{'G', 'D', 'G_ema', 'augment_pipe'} for `training_set`'s shape, frozen (phases unfreeze what they train).

    Seeded with `cfg.random_seed` alone, so every rank and every world size starts from the same weights.
    """
    torch.manual_seed(cfg.random_seed)
    shape = dict(c_dim=training_set.label_dim, img_resolution=training_set.resolution,
                 img_channels=training_set.num_channels)

    def make(kwargs, **extra):
        return dnnlib.util.construct_class_by_name(**kwargs, **extra).train().requires_grad_(False).to(device)
    G, D = make(cfg.G_kwargs, **shape), make(cfg.D_kwargs, **shape)
    pipe = None
    if cfg.augment_kwargs is not None:
        pipe = make(cfg.augment_kwargs)
        pipe.p.copy_(torch.as_tensor(cfg.augment_p))
    return dict(G=G, D=D, G_ema=copy.deepcopy(G).eval(), augment_pipe=pipe)


def broadcast_networks(networks):
    """Rank 0's weights on every rank (they already agree unless a resume file differs between ranks)."""
    for module in networks.values():
        for tensor in misc.params_and_buffers(module) if module is not None else []:
            torch.distributed.broadcast(tensor, src=0)


def num_params(module):
    return sum(p.numel() for p in module.parameters())

#----------------------------------------------------------------------------
# Data.

def data_iterator(training_set, cfg, rank, world_size, batch_per_rank, start_nimg, device):
    """Endless iterator of `(images uint8 [B, C, H, W], labels [B, c_dim])`, `B = batch_per_rank`.

    The sampler starts at global step `start_nimg` (the images consumed so far), so a resumed run sees the same
    items as an uninterrupted one. The loader gets its own generator (seeded by the position): creating it does
    not draw from the global RNG that the training step uses.
    """
    sampler = misc.InfiniteSampler(training_set, rank=rank, num_replicas=world_size, seed=cfg.random_seed,
                                   start=start_nimg)
    loader_kwargs = dict(cfg.data_loader_kwargs)
    if device.type != 'cuda':
        loader_kwargs['pin_memory'] = False   # Pinned memory only helps host-to-GPU copies.
    generator = torch.Generator().manual_seed((cfg.random_seed * 1_000_003 + rank * 7919 + start_nimg) % (1 << 63))
    loader = torch.utils.data.DataLoader(training_set, sampler=sampler, batch_size=batch_per_rank,
                                         generator=generator, **loader_kwargs)
    return iter(loader)

#----------------------------------------------------------------------------
