"""What a training run writes besides logs: image grids, network snapshots in the stylegan2-ada-pytorch
layout (`network-snapshot-{kimg:06d}.pkl`), and resumable training states (`training-state-{kimg:06d}.pt`).

Export pickles and resumable state are kept apart (as NVlabs/edm2's CheckpointIO): a training state holds the
weights of G, D, G_ema and the augment pipe plus both Adam states, the counters, every rank's RNG states and the
loss's state (the path-length mean), so it resumes alone; it is a plain `torch.save` of tensors and builtins, read back with
`torch.load(weights_only=True)`. Every file is written to a temporary name and renamed, so an interrupted
write never leaves a partial file or damages the previous one.
"""

import copy
import glob
import os
import re

import numpy as np
import torch

import dnnlib
from torch_utils import checkpoint, misc
from torch_utils.image_io import make_grid, save_png, to_uint8
from training.phases import optimizers

STATE_FORMAT = 'overparam-stylegan-training-state'
STATE_VERSION = 1
_STATE_RE = re.compile(r'training-state-(\d+)\.pt$')

#----------------------------------------------------------------------------
# File names.

def snapshot_name(cur_nimg):
    return f'network-snapshot-{cur_nimg // 1000:06d}.pkl'


def state_name(cur_nimg):
    return f'training-state-{cur_nimg // 1000:06d}.pt'


def state_for_snapshot(pkl_path):
    """The training state written with a network snapshot (same folder and kimg), or None."""
    m = re.search(r'network-snapshot-(\d+)\.pkl$', os.fspath(pkl_path))
    if m is None:
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(pkl_path)), f'training-state-{m.group(1)}.pt')
    return path if os.path.isfile(path) else None


def list_states(run_dir):
    """Training states in `run_dir`, oldest first (by kimg in the name, then modification time)."""
    paths = [p for p in glob.glob(os.path.join(run_dir, 'training-state-*.pt')) if _STATE_RE.search(p)]
    return sorted(paths, key=lambda p: (int(_STATE_RE.search(p).group(1)), os.path.getmtime(p)))

#----------------------------------------------------------------------------
# Image grids.

def grid_shape(resolution, image_grid=None):
    """(columns, rows) of the image grids: given, or stylegan2-ada-pytorch's fit to about 7680x4320 pixels."""
    if image_grid is not None:
        return int(image_grid[0]), int(image_grid[1])
    return int(np.clip(7680 // resolution, 7, 32)), int(np.clip(4320 // resolution, 4, 32))


def real_grid(training_set, num, seed):
    """`num` seeded-random training images (uint8 [N, H, W, C]) and their labels (float32 [N, c_dim])."""
    order = np.random.RandomState(seed).permutation(len(training_set))
    idx = [int(order[i % len(order)]) for i in range(num)]
    images, labels = zip(*[training_set[i] for i in idx])
    images = np.stack(images).transpose(0, 2, 3, 1)
    return images, np.stack(labels).astype(np.float32)


@torch.no_grad()
def fake_grid(G, grid_z, grid_c, batch_gpu):
    """Images of G for fixed latents (const noise), uint8 [N, H, W, C]."""
    images = [G(z, c, noise_mode='const').float().cpu() for z, c in zip(grid_z.split(batch_gpu), grid_c.split(batch_gpu))]
    return to_uint8(torch.cat(images))


def save_grid(path, images, columns):
    save_png(path, make_grid(images, cols=columns))

#----------------------------------------------------------------------------
# Network snapshots (export pickles): the keys of stylegan2-ada-pytorch plus ours.

def save_network_snapshot(path, networks, training_set_kwargs, **extra):
    """Pickle CPU copies of `networks` ({'G': .., 'D': .., 'G_ema': .., 'augment_pipe': ..}) atomically.

    stylegan2-ada-pytorch keys: G, D, G_ema, augment_pipe, training_set_kwargs. Ours: `extra` (e.g. cur_nimg).
    """
    data = {}
    for key, module in networks.items():
        data[key] = None if module is None else copy.deepcopy(module).eval().requires_grad_(False).cpu()
    data['training_set_kwargs'] = dict(training_set_kwargs)
    data.update(extra)
    checkpoint.save_network_pkl(path, data)

#----------------------------------------------------------------------------
# Training state.

def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {key: _to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(value) for value in obj)
    return obj


def _rng_state(device):
    state = dict(cpu=torch.get_rng_state(), cuda=None)
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def capture_training_state(progress, networks, phases, loss, device, world_size=1):
    """Everything needed to continue training, as a dict of CPU tensors and builtins.

    progress: dict(cur_nimg, cur_tick, batch_idx, skipped_steps). A collective call when world_size > 1
    (every rank's RNG state is gathered); only rank 0 needs to save the result.
    """
    rng = [_rng_state(device)]
    if world_size > 1:
        rng = [None] * world_size
        torch.distributed.all_gather_object(rng, _to_cpu(_rng_state(device)))
    state = dict(
        format=STATE_FORMAT, version=STATE_VERSION, world_size=world_size, progress=dict(progress),
        networks={key: None if module is None else module.state_dict() for key, module in networks.items()},
        optimizers={key: opt.state_dict() for key, opt in optimizers(phases).items()},
        loss=loss.state_dict() if hasattr(loss, 'state_dict') else {},
        rng=rng,
    )
    return _to_cpu(state)


def save_training_state(path, state):
    """torch.save to a temporary file in the same folder, then rename (atomic)."""
    def write(tmp):
        with open(tmp, 'wb') as f:
            torch.save(state, f)
    dnnlib.util.atomic_write(path, write, fsync=True)


def load_training_state(path):
    """Read a training state safely (weights_only: tensors and builtins only)."""
    state = torch.load(os.fspath(path), map_location='cpu', weights_only=True)
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
        raise ValueError(f'{path} is not a training state written by this project')
    if state.get('version') != STATE_VERSION:
        raise ValueError(f'{path}: training state version {state.get("version")} is not supported '
                         f'(this code reads version {STATE_VERSION})')
    return state


def restore_training_state(state, networks, phases, loss, rank, world_size, device):
    """Load `state` into the networks, optimizers, loss and RNGs; returns the progress dict.

    The optimizers keep the hyperparameters of the current config (lr, betas, eps): a resumed run may change
    them. RNG states are restored when the world size matches; otherwise the caller reseeds.
    """
    for key, module in networks.items():
        saved = state['networks'].get(key)
        if module is None or saved is None:
            continue
        module.load_state_dict(saved, strict=True)
    for key, opt in optimizers(phases).items():
        groups = [{k: v for k, v in group.items() if k != 'params'} for group in opt.param_groups]
        opt.load_state_dict(state['optimizers'][key])
        for group, config in zip(opt.param_groups, groups):
            group.update(config)
    if state['loss'] and hasattr(loss, 'load_state_dict'):
        loss.load_state_dict(state['loss'])
    restored_rng = state['world_size'] == world_size and len(state['rng']) == world_size
    if restored_rng:
        rng = state['rng'][rank]
        torch.set_rng_state(rng['cpu'])
        if device.type == 'cuda' and rng['cuda'] is not None:
            torch.cuda.set_rng_state(rng['cuda'], device)
    return dict(state['progress'], restored_rng=restored_rng)


def prune_states(run_dir, keep):
    """Delete all but the `keep` newest training states (None or 0 = keep all)."""
    if not keep:
        return
    for path in list_states(run_dir)[:-keep]:
        os.remove(path)

#----------------------------------------------------------------------------
# Weights-only resume from a network pickle (ours or stylegan2-ada-pytorch's).

def load_snapshot_weights(path, networks, trust=False):
    """Copy same-named weights from a snapshot pickle into `networks`; returns the pickle's `cur_nimg` or None.

    Keys missing from the pickle are skipped (an NVIDIA pickle without augment_pipe); shapes must match.
    """
    with open(path, 'rb') as f:
        data = checkpoint.load_network_pkl(f, trust=trust)
    missing = []
    for key, module in networks.items():
        src = data.get(key)
        if module is None:
            continue
        if src is None:
            missing.append(key)
            continue
        misc.copy_params_and_buffers(src, module, require_all=False)
    cur_nimg = data.get('cur_nimg')
    return (int(cur_nimg) if isinstance(cur_nimg, (int, np.integer)) else None), missing

#----------------------------------------------------------------------------
