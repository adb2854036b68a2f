"""Building what a training run needs from `training_loop`'s arguments: backend flags, networks, data stream."""

import copy
import dataclasses
import inspect
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch

import dnnlib
from torch_utils import misc

#----------------------------------------------------------------------------
# What resuming and saving a training state read and write of a run.

@dataclasses.dataclass
class RunState:
    """The part of a run (the GAN loop's or the encoder loop's) that a training state holds, for `training.resume`
    and `training.snapshot`: restored in place on resume, captured at a snapshot."""
    networks: dict              # name -> module or None: the networks whose weights are saved.
    phases: list                # training.phases.Phase: their optimizers' states are saved.
    loss: object                # The loss: its state_dict (the path-length mean), if it has one.
    progress: dict              # The counters (cur_nimg, cur_tick, batch_idx, ...): restored in place.
    rank: int                   # This process's rank ...
    world_size: int             # ... of this many (the RNG states of all of them are saved).
    device: torch.device        # This rank's device.
    log: Callable               # log(message).

#----------------------------------------------------------------------------
# Backend flags.

def bind_config(loop_fn, kwargs):
    """`loop_fn`'s keyword arguments with its defaults filled in, as an EasyDict (a run's `cfg`)."""
    bound = inspect.signature(loop_fn).bind(**kwargs)
    bound.apply_defaults()
    return dnnlib.EasyDict(bound.arguments)


def batch_per_rank(batch_size, batch_gpu, world_size):
    """Images per rank and step; raises ValueError unless the batch splits into whole rounds on every rank."""
    if batch_size % (batch_gpu * world_size) != 0:
        raise ValueError(f'batch_size={batch_size} must be a multiple of batch_gpu={batch_gpu} x '
                         f'world_size={world_size}')
    return batch_size // world_size


def setup_backends(precision, cudnn_benchmark, G_kwargs, D_kwargs):
    """Set TF32 and cuDNN flags for `precision`; returns the old values. FP16 layers need precision='mixed'."""
    if precision not in ('fp32', 'tf32', 'mixed'):
        raise ValueError(f"precision must be 'fp32', 'tf32' or 'mixed', got {precision!r}")
    fp16_res = max(G_kwargs.get('synthesis_kwargs', {}).get('num_fp16_res', 0), D_kwargs.get('num_fp16_res', 0))
    if precision != 'mixed' and fp16_res > 0:
        raise ValueError(f"precision='{precision}' but the networks have num_fp16_res={fp16_res}; "
                         "use precision='mixed' or set num_fp16_res=0 (configs.presets does this for you)")
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


def fetch_batch(data_iter, G, training_set, num_phases, batch_rank, batch_gpu, device, row_spread=1.0):
    """One step's inputs: reals split in rounds, and fresh latents and labels for each of the `num_phases` phases.

    Returns (real_img, real_c, gen_z, gen_c): real_img is a tuple of rounds `[batch_gpu, C, H, W]` in [-1, 1] and
    real_c of `[batch_gpu, c_dim]`; gen_z and gen_c hold one `[batch_rank, ...]` chunk per phase. Latents (G.sample_z
    with `row_spread`, see training.row_start) and the labels' dataset indices come from the global RNG of
    `device`/the CPU, in this order.
    """
    images, labels = next(data_iter)
    real_img = (images.to(device).to(torch.float32) / 127.5 - 1).split(batch_gpu)
    real_c = labels.to(device).split(batch_gpu)
    n = num_phases * batch_rank
    gen_z = G.sample_z(n, device=device, row_spread=row_spread).split(batch_rank)
    picks = torch.randint(len(training_set), [n]).tolist()
    gen_c = torch.from_numpy(np.stack([training_set.get_label(i) for i in picks])).to(device).split(batch_rank)
    return real_img, real_c, gen_z, gen_c


def log_setup(log, training_set, G, D, phases):
    log(f'Dataset: {len(training_set)} images, shape {training_set.image_shape}, label dim {training_set.label_dim}')
    log(f'Generator: latent {tuple(G.z_shape)}, {num_params(G) / 1e6:.2f} M parameters; discriminator '
        f'{num_params(D) / 1e6:.2f} M; phases {[p.name for p in phases]}')


@contextmanager
def side_rng(device):
    """Work outside the training step (grids, summaries, metrics) draws from a fork of the RNG of the CPU and of
    `device`: the training stream is left exactly where it was, so a resumed run stays exact."""
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        yield


def broadcast_flag(flag, device):
    """Rank 0's boolean on every rank."""
    value = torch.tensor(float(flag), device=device)
    torch.distributed.broadcast(value, src=0)
    return bool(value)

#----------------------------------------------------------------------------
