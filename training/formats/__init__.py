"""Checkpoint formats of other StyleGAN2 codebases, translated into our networks (and back, where possible).

- `tensorflow`: NVIDIA's TensorFlow StyleGAN2 / StyleGAN2-ADA pickles (records of `torch_utils.tf_records`).
- `rosinality`: rosinality/stylegan2-pytorch `torch.save` checkpoints, in and out.

Each translator is a set of pure functions `file content -> (our constructor kwargs, our state dict)` with the
name tables as data, plus `networks_from(content)`, which `torch_utils.checkpoint` reaches by module name
once it has recognised a file's format. The helpers here are shared by both.
"""

import math

import torch

from torch_utils.persistence import PickleLoadError
from training.layers import channels_at
from training.nvlabs_layouts import UnsupportedNetworkError  # noqa: F401  (re-export: one refusal type)


def channel_parameters(widths):
    """(channel_base, channel_max) whose `channels_at` gives `widths` ({resolution: channels}); ValueError if none.

    StyleGAN2 tables halve the channels per doubling of the resolution below a cap; one that is not of that
    form (e.g. more channels at a higher resolution) cannot be expressed by our networks.
    """
    resolutions = sorted(widths)
    cap = max(widths.values())
    below_cap = [res for res in resolutions if widths[res] < cap]
    base = widths[below_cap[0]] * below_cap[0] if below_cap else cap * resolutions[-1]
    if any(channels_at(res, base, cap) != widths[res] for res in resolutions):
        table = ', '.join(f'{res}: {widths[res]}' for res in resolutions)
        raise UnsupportedNetworkError(f'its channel table {{{table}}} is not of the form min(base / resolution, max) '
                                      f'that this project\'s networks use')
    return base, cap


def log2_resolution(resolution, what):
    """log2 of a power-of-two resolution >= 4, or a PickleLoadError naming `what`."""
    if not isinstance(resolution, int) or resolution < 4 or resolution & (resolution - 1):
        raise PickleLoadError(f'{what}: resolution {resolution!r} is not a power of two >= 4')
    return int(math.log2(resolution))


def build_network(cls, kwargs, state_dict, what):
    """`cls(**kwargs)` in eval mode, frozen, with `state_dict` loaded; the low-pass filter buffers
    (`resample_filter`), which no foreign format stores, keep their constructed values.

    A file whose tensors do not fit the network its settings describe raises PickleLoadError naming the
    first missing, unexpected or misshapen tensor (in our names).
    """
    try:
        net = cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise PickleLoadError(f'{what}: cannot build {cls.__name__} from the settings {kwargs}: {err}') from err
    own = net.state_dict()
    missing = [name for name in own if name not in state_dict and not name.endswith('resample_filter')]
    unexpected = [name for name in state_dict if name not in own]
    if missing or unexpected:
        detail = f'no {missing[0]}' if missing else f'an unexpected {unexpected[0]}'
        raise PickleLoadError(f'{what}: the file\'s tensors do not fit a {cls.__name__} of its settings ({detail}; '
                              f'{len(missing)} missing, {len(unexpected)} unexpected)')
    for name, value in state_dict.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise PickleLoadError(f'{what}: {name} has shape {list(value.shape)} in the file, {list(own[name].shape)} '
                                  f'in a {cls.__name__} of its settings')
    merged = {name: state_dict.get(name, value) for name, value in own.items()}
    net.load_state_dict({name: value.to(own[name].dtype) for name, value in merged.items()}, strict=True)
    return net.eval().requires_grad_(False)


def as_tensor(array):
    """A contiguous float32 CPU tensor of a numpy array or tensor (views and negative strides copied)."""
    if isinstance(array, torch.Tensor):
        return array.detach().to('cpu', torch.float32).contiguous()
    return torch.from_numpy(array.copy()).to(torch.float32)
