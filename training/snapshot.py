"""What a training run writes besides logs: image grids, network snapshots in the stylegan2-ada-pytorch
layout (`network-snapshot-{kimg:06d}.pkl`), and resumable training states (`training-state-{kimg:06d}.pt`); below
a whole kimg the tag gets the remaining images (`000012.345`), so frequent snapshots never overwrite each other.

Export pickles and resumable state are kept apart (as NVlabs/edm2's CheckpointIO): a training state holds the
weights of G, D, G_ema and the augment pipe plus both Adam states, the counters (with the ADA accumulators), every
rank's RNG states and the loss's state (the path-length mean), so it resumes alone and exactly; it is a plain
`torch.save` of tensors and builtins, read back with `torch.load(weights_only=True)`. A snapshot's pickle and state
are written as one unit (`save_snapshot_pair`), each through a temporary name and a rename, so an interrupted write
never leaves a partial file, damages the previous one, or pairs files of different kimg.
"""

import copy
import glob
import os
import re
import zipfile

import numpy as np
import torch

from torch_utils import checkpoint, files, misc
from torch_utils.image_io import make_grid, save_png, to_uint8
from training.phases import optimizers

STATE_FORMAT = checkpoint.TRAINING_STATE_FORMAT
STATE_VERSION = 1
_TAG = r'(\d{6,})(?:\.(\d{3}))?'           # kimg, with the remainder in images when not a whole kimg
_STATE_RE = re.compile(rf'training-state-{_TAG}\.pt$')
_SNAPSHOT_RE = re.compile(rf'network-snapshot-{_TAG}\.pkl$')


class StateError(ValueError):
    """A training state that cannot be read (truncated, empty, not ours, unsupported version)."""

#----------------------------------------------------------------------------
# File names: `network-snapshot-000012.pkl` at whole kimg (stylegan2-ada-pytorch's names), else
# `network-snapshot-000012.345.pkl`, so snapshots more often than once per kimg never overwrite each other.

def kimg_tag(cur_nimg):
    kimg, rest = divmod(int(cur_nimg), 1000)
    return f'{kimg:06d}' if rest == 0 else f'{kimg:06d}.{rest:03d}'


def _nimg_of(match):
    return int(match.group(1)) * 1000 + int(match.group(2) or 0)


def snapshot_name(cur_nimg):
    return f'network-snapshot-{kimg_tag(cur_nimg)}.pkl'


def state_name(cur_nimg):
    return f'training-state-{kimg_tag(cur_nimg)}.pt'


def fakes_name(cur_nimg):
    return f'fakes{kimg_tag(cur_nimg)}.png'


def state_for_snapshot(pkl_path):
    """The training state written with a network snapshot (same folder and tag), or None."""
    m = _SNAPSHOT_RE.search(os.path.basename(os.fspath(pkl_path)))
    if m is None:
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(pkl_path)), state_name(_nimg_of(m)))
    return path if os.path.isfile(path) else None


def is_training_state_file(path):
    """Whether `path` is (meant to be) a training state: by its name (training-state-*.pt, so that a damaged one
    is reported as such) or by its content (the format marker in its pickle); other files, `.pt` ones included
    (rosinality's checkpoints), are network files for `checkpoint.load_network_pkl`."""
    path = os.fspath(path)
    if _STATE_RE.search(os.path.basename(path)):
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            member = next((name for name in archive.namelist() if name.endswith('data.pkl')), None)
            return member is not None and STATE_FORMAT.encode() in archive.read(member)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False


def list_states(run_dir):
    """Training states in `run_dir`, oldest first (by the image count in the name)."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), 'training-state-*.pt')):
        m = _STATE_RE.search(os.path.basename(path))
        if m is not None:
            found.append((_nimg_of(m), path))
    return [path for _, path in sorted(found)]


def remove_stale_temporaries(run_dir, log=None):
    """Delete the `.NAME.XXXX.tmp` files that `atomic_write` leaves when a process is killed mid-write."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), '.*.tmp')):
        try:
            os.remove(path)
            removed.append(os.path.basename(path))
        except OSError:
            pass
    if removed and log is not None:
        log(f'Removed {len(removed)} temporary file(s) of an interrupted write: {", ".join(removed)}')
    return removed

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
    images = [G(z, c, noise_mode='const').float().cpu()
              for z, c in zip(grid_z.split(batch_gpu), grid_c.split(batch_gpu))]
    return to_uint8(torch.cat(images))


def save_grid(path, images, columns):
    save_png(path, make_grid(images, cols=columns))


class GridWriter:
    """A run's image grids: seeded real images and fixed latents (`random_seed`), written by rank 0 only."""

    def __init__(self, run_dir, training_set, G, image_grid, random_seed, batch_gpu, device, rank=0):
        self.run_dir, self.batch_gpu, self.enabled = run_dir, batch_gpu, rank == 0
        if not self.enabled:
            return
        self.columns, rows = grid_shape(training_set.resolution, image_grid)
        self.reals, labels = real_grid(training_set, self.columns * rows, random_seed)
        self.z = G.sample_z(self.columns * rows, generator=torch.Generator().manual_seed(random_seed)).to(device)
        self.c = torch.from_numpy(labels).to(device)

    def save_reals(self):
        if self.enabled:
            save_grid(os.path.join(self.run_dir, 'reals.png'), self.reals, self.columns)

    def save_fakes(self, G, name):
        if self.enabled:
            save_grid(os.path.join(self.run_dir, name), fake_grid(G, self.z, self.c, self.batch_gpu), self.columns)

#----------------------------------------------------------------------------
# Network snapshots (export pickles): the keys of stylegan2-ada-pytorch plus ours.

def snapshot_data(networks, training_set_kwargs, **extra):
    """The pickle's dict: CPU copies of `networks` ({'G', 'D', 'G_ema', 'augment_pipe'}), stylegan2-ada-pytorch's
    keys (plus training_set_kwargs), and ours in `extra` (cur_nimg, latent_rows)."""
    data = {key: None if module is None else copy.deepcopy(module).eval().requires_grad_(False).cpu()
            for key, module in networks.items()}
    data['training_set_kwargs'] = dict(training_set_kwargs)
    data.update(extra)
    return data


def save_network_snapshot(path, networks, training_set_kwargs, **extra):
    """Pickle `snapshot_data(...)` to `path` atomically."""
    checkpoint.save_network_pkl(path, snapshot_data(networks, training_set_kwargs, **extra))


def save_snapshot_pair(run_dir, cur_nimg, data, state, pkl_name=None, write_pkl=checkpoint.save_network_pkl):
    """network-snapshot-K.pkl (or `pkl_name`) and training-state-K.pt as one unit; returns their paths.

    Both are written to temporaries first; the state is renamed into place, then the pickle. A failure in either
    write leaves neither new file (and no temporary); only a kill between the two renames can leave a new state
    without its pickle, never a pickle beside a state of another kimg. `write_pkl(path, data)` writes the pickle
    (the encoder loop passes its own, which checks what it is given).
    """
    pkl_path = os.path.join(run_dir, pkl_name or snapshot_name(cur_nimg))
    state_path = os.path.join(run_dir, state_name(cur_nimg))

    def write_both(tmp_pkl):
        write_pkl(tmp_pkl, data)
        save_training_state(state_path, state)
    files.atomic_write(pkl_path, write_both, fsync=True)
    return pkl_path, state_path

_PER_RANK_BUFFERS = r'.*\.w_avg'    # running mean of each rank's own latents: allowed to differ


def capture_run_state(state, **extra):
    """The training state of a run (`run_setup.RunState`; a collective call: every rank's RNG state is gathered),
    with `extra` entries (a fine-tuning run keeps its record there, see training.finetune)."""
    if state.world_size > 1:   # All ranks must hold the same weights (w_avg follows each rank's own latents).
        for module in (m for m in state.networks.values() if m is not None):
            misc.check_ddp_consistency(module, ignore_regex=_PER_RANK_BUFFERS)
    saved = capture_training_state(state.progress, state.networks, state.phases, state.loss, state.device,
                                   state.world_size)
    saved.update({key: value for key, value in extra.items() if value})
    return saved


def save_snapshot(run_dir, cur_nimg, data, state, keep_states, log, **pair_kwargs):
    """Rank 0: the snapshot pair at `cur_nimg` (`save_snapshot_pair`, with `pair_kwargs`), then the training states
    beyond the newest `keep_states` removed; logged; returns both paths."""
    paths = save_snapshot_pair(run_dir, cur_nimg, data, state, **pair_kwargs)
    prune_states(run_dir, keep_states)
    log(f'Saved {os.path.basename(paths[0])} and {os.path.basename(paths[1])}')
    return paths

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
    files.atomic_write(path, write, fsync=True)


def load_training_state(path):
    """Read a training state safely (weights_only: tensors and builtins only); StateError when unreadable."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise StateError(f'{path} is not a readable training state (empty file)')
    try:
        state = torch.load(os.fspath(path), map_location='cpu', weights_only=True)
    except (OSError, *checkpoint.READ_ERRORS) as err:    # random bytes alone raise IndexError, KeyError, ...
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StateError(f'{path} is not a readable training state ({detail[:160]})') from None
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
        raise StateError(f'{path} is not a training state written by this project')
    if state.get('version') != STATE_VERSION:
        raise StateError(f'{path}: training state version {state.get("version")} is not supported '
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

    Keys missing from the pickle are skipped (an NVIDIA pickle without augment_pipe); shapes must match. A file
    with a G_ema but no G (a released generator: NVIDIA's Gs alone, rosinality's g_ema) starts G from G_ema.
    """
    with open(path, 'rb') as f:
        data = checkpoint.load_network_pkl(f, trust=trust)
    if data.get('G') is None and data.get('G_ema') is not None:
        data['G'] = data['G_ema']
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
