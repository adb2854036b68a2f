"""Saved latents of an inversion run: reading `latents.npz` / `<name>.npy` and rendering them.

`latents.npz` (written by `outputs.write_latents_npz`): names `[N]`, latents `[N, *param_shape]`,
space, checkpoint_sha256 (of the network file they were fitted to), num_ws, w_dim, latent_rows.
A single `<name>.npy` holds one latent `[*param_shape]` with no space recorded: the space is given,
or inferred from the shape when only one space of the generator has it.

Rendering (`render`) is the runner's final rendering: `G.synthesis(space.to_ws(latents),
noise_mode='const', force_fp32=True)` with strict fp32 math, then `to_uint8`, so the PNGs equal the
run's `<name>-recon.png` when the batches are the same.
"""

import zipfile
from pathlib import Path

import numpy as np
import torch

from torch_utils.image_io import to_uint8

from .optimize import precision_context
from training.latent_spaces import SPACES, LatentSpace


def infer_space(G, shape):
    """The space of G whose per-image shape is `shape`; ValueError when none or several fit."""
    fits = []
    for name in SPACES:
        try:
            space = LatentSpace.for_generator(G, name)
        except ValueError:
            continue
        if tuple(space.param_shape) == tuple(shape):
            fits.append(name)
    if len(fits) != 1:
        what = 'no latent space' if not fits else f'several spaces ({", ".join(fits)})'
        raise ValueError(f'a latent of shape {list(shape)} fits {what} of this generator (num_ws {G.num_ws}, '
                         f'w_dim {G.w_dim}, latent_rows {G.latent_rows}); pass --space')
    return fits[0]


def read_latents(path, G, space=None):
    """`latents.npz` or one `<name>.npy` -> (names, LatentSpace, float32 tensor `[N, *param_shape]`, sha256 or None).

    Raises ValueError (one line naming the file) for a missing, damaged or ill-shaped file.
    """
    path = Path(path)
    try:
        if path.suffix == '.npy':
            array = np.load(path, allow_pickle=False)[None]
            names, recorded, sha256 = [path.stem], None, None
        else:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in ('names', 'latents', 'space') if k not in data.files]
                if missing:
                    raise ValueError(f'{path} has no {", ".join(missing)}: pass the latents.npz of an invert.py run '
                                     f'or one <name>.npy')
                names, array, recorded = [str(n) for n in data['names']], data['latents'], str(data['space'])
                sha256 = str(data['checkpoint_sha256']) if 'checkpoint_sha256' in data.files else None
    except FileNotFoundError as err:
        raise ValueError(f'{path} does not exist: pass the latents.npz of an invert.py run or one <name>.npy') from err
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f'{path} cannot be read ({" ".join(str(err).split())[:120]})') from err
    if array.dtype.kind != 'f':
        raise ValueError(f'{path} holds {array.dtype} values, not float latents')
    if space is not None and recorded is not None and space != recorded:
        raise ValueError(f'{path} holds {recorded} latents; leave out --space {space} or pass other latents')
    name = space or recorded or infer_space(G, array.shape[1:])
    try:
        latent_space = LatentSpace.for_generator(G, name)
    except ValueError as err:
        raise ValueError(f'{path}: {err}') from err
    if tuple(array.shape[1:]) != tuple(latent_space.param_shape):
        raise ValueError(f'{path}: {name} latents of this generator are {list(latent_space.param_shape)} each, '
                         f'the file holds {list(array.shape[1:])}: another network?')
    return names, latent_space, torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), sha256


@torch.no_grad()
def render(G, space, latents, batch_size=8, device=None):
    """Latents `[N, *param_shape]` -> uint8 images `[N, H, W, C]`, `batch_size` at a time (strict fp32)."""
    device = torch.device(device) if device is not None else G.mapping.w_avg.device
    out = []
    with precision_context('fp32'):
        for i in range(0, latents.shape[0], int(batch_size)):
            params = latents[i:i + int(batch_size)].to(device)
            out.append(to_uint8(G.synthesis(space.to_ws(params), noise_mode='const', force_fp32=True)))
    return np.concatenate(out) if out else np.zeros([0, G.img_resolution, G.img_resolution, G.img_channels], np.uint8)
