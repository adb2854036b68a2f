"""NVIDIA's pickle layouts of StyleGAN2, told apart and translated into our constructor arguments.

A NVIDIA network pickle records, per top-level network, the class name, the constructor arguments
and the object's attributes (see `torch_utils.persistence.PersistentRecord`); no code of theirs is
run or kept. Three layouts carry the class name 'Generator':

- stylegan2-ada-pytorch `training.networks`: our layout (`mapping_kwargs`, `synthesis_kwargs`).
- the stylegan3 repository's `training.networks_stylegan2` (NVIDIA's current StyleGAN2 releases):
  synthesis options at the top level beside `z_dim` (`channel_base`, `channel_max`, `num_fp16_res`,
  `conv_clamp`, `fused_modconv_default`, ...), and other defaults: `num_fp16_res=4`, `conv_clamp=256`
  (generator and discriminator), `w_avg_beta=0.998`, `fused_modconv_default=True`, and its blocks
  compute in FP32 on any device but CUDA (our `fp16_cuda_only=True`). Its records are
  recognised by the `in_features` attribute of their dense layers. It is rebuilt as our Generator
  with our nested arguments, so it pickles again in our layout (`training.networks.Generator`).
- the stylegan3 repository's `training.networks_stylegan3` (StyleGAN3, alias-free; recognised by
  its `SynthesisInput` layer): refused with `UnsupportedNetworkError`.

After the weights are loaded, `check_settings` compares the settings a record kept as attributes
(FP16 blocks, clamps, architecture, widths, ...) with the rebuilt network's, so a default that
differs between NVIDIA's versions cannot slip through silently.
"""

import math

from torch_utils.persistence import PersistentRecord, PickleLoadError


class UnsupportedNetworkError(PickleLoadError):
    """A pickle holds a network this project does not implement (a ValueError; the loader reports its message as is)."""


STYLEGAN3_MESSAGE = ('the pickle holds a StyleGAN3 (alias-free, training.networks_stylegan3) network, which this '
                     'project does not implement; it loads StyleGAN2 networks only')

# Constructor order of NVIDIA's Generator (both repositories), to name positional arguments.
_GENERATOR_POSITIONAL = ('z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels', 'mapping_kwargs')
_GENERATOR_OWN = {'z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels', 'mapping_kwargs', 'synthesis_kwargs'}

# Defaults of the stylegan3 repository's StyleGAN2 where they differ from ours.
# Its blocks also compute in FP32 on any device but CUDA (`fp16_cuda_only`, ours only).
_SG3_REPO_SYNTHESIS_DEFAULTS = dict(num_fp16_res=4, conv_clamp=256, fused_modconv_default=True)
_SG3_REPO_MAPPING_DEFAULTS = dict(w_avg_beta=0.998)
_SG3_REPO_DISCRIMINATOR_DEFAULTS = dict(num_fp16_res=4, conv_clamp=256)

# Attributes both NVIDIA's classes and ours keep, with the same meaning.
_CHECKED_SETTINGS = ('in_channels', 'out_channels', 'in_features', 'out_features', 'resolution', 'img_resolution',
                     'img_channels', 'z_dim', 'c_dim', 'w_dim', 'cmap_dim', 'num_ws', 'w_avg_beta', 'num_layers',
                     'architecture', 'is_last', 'use_fp16', 'channels_last', 'use_noise', 'activation', 'up', 'down',
                     'padding', 'conv_clamp', 'group_size', 'num_channels', 'first_layer_idx', 'num_conv', 'num_torgb',
                     'block_resolutions', 'fused_modconv_default', 'weight_gain', 'bias_gain', 'act_gain')


def _records(record, path=''):
    """(dotted path, record) for `record` and every record below it."""
    yield path, record
    for name, child in (record.state.get('_modules') or {}).items():
        if isinstance(child, PersistentRecord):
            yield from _records(child, f'{path}.{name}' if path else name)


def is_stylegan3(record):
    return any(r.class_name == 'SynthesisInput' for _, r in _records(record))


def from_stylegan3_repository(record):
    """True for records pickled by the stylegan3 repository (its dense layers keep `in_features`)."""
    return any(r.class_name == 'FullyConnectedLayer' and 'in_features' in r.state for _, r in _records(record))


def _recorded_arguments(record):
    args = record.state.get('_init_args', ())
    kwargs = record.state.get('_init_kwargs', {})
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise PickleLoadError(f'malformed constructor arguments in the {record.class_name!r} record')
    return tuple(args), dict(kwargs)


def generator_arguments(record):
    """(args, kwargs) for our Generator from a NVIDIA Generator record; StyleGAN3 raises UnsupportedNetworkError."""
    if is_stylegan3(record):
        raise UnsupportedNetworkError(STYLEGAN3_MESSAGE)
    args, kwargs = _recorded_arguments(record)
    if len(args) > len(_GENERATOR_POSITIONAL):
        raise PickleLoadError(f'{len(args)} positional Generator arguments in the record; expected at most '
                         f'{len(_GENERATOR_POSITIONAL)}')
    kwargs.update(zip(_GENERATOR_POSITIONAL, args))       # ours has latent_rows in sixth place
    if 'synthesis_kwargs' in kwargs or not from_stylegan3_repository(record):
        return (), kwargs
    own = {name: kwargs.pop(name) for name in list(kwargs) if name in _GENERATOR_OWN}
    own['synthesis_kwargs'] = {**_SG3_REPO_SYNTHESIS_DEFAULTS, **kwargs, 'fp16_cuda_only': True}
    own['mapping_kwargs'] = {**_SG3_REPO_MAPPING_DEFAULTS, **own.get('mapping_kwargs', {})}
    return (), own


def discriminator_arguments(record):
    """(args, kwargs) for our Discriminator: the same names in both repositories, other defaults."""
    args, kwargs = _recorded_arguments(record)
    if from_stylegan3_repository(record):
        block_kwargs = {**kwargs.get('block_kwargs', {}), 'fp16_cuda_only': True}
        kwargs = {**_SG3_REPO_DISCRIMINATOR_DEFAULTS, **kwargs, 'block_kwargs': block_kwargs}
    return args, kwargs


def _same(recorded, ours):
    if isinstance(recorded, (int, float)) and isinstance(ours, (int, float)):
        return math.isclose(recorded, ours, rel_tol=1e-9)
    return recorded == ours


def check_settings(net, record):
    """Raise ValueError naming the first setting of `record` that the rebuilt `net` does not share."""
    modules = dict(net.named_modules())
    for path, rec in _records(record):
        module = modules.get(path)
        if module is None:
            continue
        for name in _CHECKED_SETTINGS:
            if name not in rec.state or not hasattr(module, name):
                continue
            recorded, ours = rec.state[name], getattr(module, name)
            if isinstance(recorded, (bool, int, float, str, list, tuple, type(None))) and not _same(recorded, ours):
                where = f'{path}.{name}' if path else name
                raise ValueError(f'the pickle records {where} = {recorded!r}, but the rebuilt network has {ours!r}')
