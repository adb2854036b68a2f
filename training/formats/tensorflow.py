"""NVIDIA's TensorFlow StyleGAN2 and StyleGAN2-ADA pickles -> our Generator and Discriminator.

Input: the records of `torch_utils.tf_records` (no TensorFlow, nothing of the file executed). A release
pickle is the tuple (G, D, Gs); Gs, the moving average of G, becomes our G_ema. Settings come from the
networks' `static_kwargs` (TF names -> ours in `_GENERATOR_KWARGS` / `_DISCRIMINATOR_KWARGS`, where TF's
`fmap_base` counts channels at stage `log2(res) - 1`, hence our `channel_base = 2 * fmap_base`), widths the
kwargs do not pin down (hidden mapping layers, label embeddings) from the variables' shapes. Variables are
renamed by the rules in `_GENERATOR_RULES` / `_DISCRIMINATOR_RULES` and re-laid out:

- dense weights `[in, out]` -> `[out, in]`; conv kernels `[k, k, in, out]` -> `[out, in, k, k]`;
- kernels of the upsampling convolutions (`Conv0_up`, the generator's resnet `Skip`) are also flipped in
  both spatial axes: TF runs them as a transposed convolution of the flipped kernel;
- `mod_bias` is stored without the constant 1 that TF adds at run time (our affine bias includes it);
- `4x4/Const/const [1, C, 4, 4]` -> `[C, 4, 4]`; noise input `noise{k} [1, 1, r, r]` -> the `noise_const`
  `[r, r]` of layer k (k = 0: the 4x4 conv; then two per resolution); `dlatent_avg` -> `mapping.w_avg`.

Supported: G_main with G_synthesis_stylegan2 (StyleGAN2 configs E and F) or StyleGAN2-ADA's G_synthesis,
any architecture ('orig', 'skip', 'resnet'), conditional StyleGAN2-ADA networks; D_stylegan2 and
StyleGAN2-ADA's D_main. Refused with one line: StyleGAN1 (G_style, D_basic), StyleGAN2 configs A-D
(G_synthesis_stylegan_revised, D_stylegan, their ToRGB_lod / FromRGB_lod layers), the labels of the original
StyleGAN2 code (LabelConcat, and its discriminator's unmapped projection), StyleGAN2-ADA's comparison methods
(PA-GAN, auxrot, spectral norm, adaptive dropout), and any setting or variable not listed here.
"""

import re

import numpy as np

from torch_utils.persistence import PickleLoadError
from torch_utils.tf_records import TFNetworkRecord
from training.formats import UnsupportedNetworkError, as_tensor, build_network, log2_resolution

_GENERATOR_FUNCS = {'G_main'}
_SYNTHESIS_FUNCS = {'G_synthesis_stylegan2', 'G_synthesis'}     # StyleGAN2 configs E/F; StyleGAN2-ADA.
_DISCRIMINATOR_FUNCS = {'D_stylegan2': 4, 'D_main': None}       # -> default minibatch-std group size.
_REFUSED_FUNCS = {
    'G_style': 'a StyleGAN1 generator (G_style)',
    'D_basic': 'a StyleGAN1 discriminator (D_basic)',
    'G_synthesis_stylegan_revised': 'a StyleGAN2 config B-D generator (G_synthesis_stylegan_revised, progressive '
                                    'growing with ToRGB_lod layers)',
    'D_stylegan': 'a StyleGAN2 config B-D discriminator (D_stylegan, FromRGB_lod layers)',
}

# TF keyword argument -> (our keyword path, TF's default).
_GENERATOR_KWARGS = {
    'latent_size': ('z_dim', 512), 'label_size': ('c_dim', 0), 'dlatent_size': ('w_dim', 512),
    'resolution': ('img_resolution', 1024), 'num_channels': ('img_channels', 3),
    'mapping_layers': ('mapping_kwargs.num_layers', 8), 'mapping_lrmul': ('mapping_kwargs.lr_multiplier', 0.01),
    'mapping_nonlinearity': ('mapping_kwargs.activation', 'lrelu'),
    'fmap_max': ('synthesis_kwargs.channel_max', 512), 'num_fp16_res': ('synthesis_kwargs.num_fp16_res', 0),
    'conv_clamp': ('synthesis_kwargs.conv_clamp', None), 'architecture': ('synthesis_kwargs.architecture', 'skip'),
    'resample_kernel': ('synthesis_kwargs.resample_filter', [1, 3, 3, 1]),
    'use_noise': ('synthesis_kwargs.use_noise', True), 'nonlinearity': ('synthesis_kwargs.activation', 'lrelu'),
}
_DISCRIMINATOR_KWARGS = {
    'label_size': ('c_dim', 0), 'resolution': ('img_resolution', 1024), 'num_channels': ('img_channels', 3),
    'architecture': ('architecture', 'resnet'), 'fmap_max': ('channel_max', 512),
    'num_fp16_res': ('num_fp16_res', 0), 'conv_clamp': ('conv_clamp', None),
    'resample_kernel': ('block_kwargs.resample_filter', [1, 3, 3, 1]),
    'freeze_layers': ('block_kwargs.freeze_layers', 0), 'mapping_layers': ('mapping_kwargs.num_layers', 0),
    'mapping_lrmul': ('mapping_kwargs.lr_multiplier', 0.1),
    'mbstd_num_features': ('epilogue_kwargs.mbstd_num_channels', 1),
}
# Read separately: fmap_base (x 2), the w_avg decay, nonlinearity of D, minibatch-std group, mapping widths.
_SPECIAL = {'fmap_base', 'dlatent_avg_beta', 'w_avg_beta', 'nonlinearity', 'mbstd_group_size', 'mapping_fmaps',
            'label_fmaps'}
# Settings we compute only at their defaults: anything else is refused.
_ONLY_DEFAULT = {'fmap_decay': 1, 'fmap_min': 1, 'fmap_const': None, 'normalize_latents': True, 'use_pagan': False,
                 'score_size': 1, 'score_max': 1, 'use_spectral_norm': False, 'adaptive_dropout': 0}
# Run-time options that do not change the network's function.
_IGNORED = {'truncation_psi', 'truncation_cutoff', 'truncation_psi_val', 'truncation_cutoff_val', 'style_mixing_prob',
            'structure', 'dtype', 'fused_modconv', 'randomize_noise', 'augment_strength', 'pagan_num', 'pagan_fade'}
_IGNORED_VARIABLES = {'lod'}                 # Progressive-growing level of detail: unused by these networks.


def _dense(array):
    return array.T


def _kernel(array):
    return array.transpose(3, 2, 0, 1)


def _flipped_kernel(array):
    return array[::-1, ::-1].transpose(3, 2, 0, 1)


def _plus_one(array):
    return array + np.float32(1)


def _same(array):
    return array


def _noise_layer(index):
    """Our name of the synthesis layer that reads TF noise input `index` (its resolution is 2**((index + 5) // 2))."""
    resolution = 2 ** ((index + 5) // 2)
    return f'synthesis.b{resolution}.{"conv0" if index % 2 else "conv1"}'


# Modulated layers: TF scope -> our layer; TF field -> (our field, layout change; None = the layer's kernel).
_TF_LAYERS = {'Conv': 'conv1', 'Conv0_up': 'conv0', 'Conv1': 'conv1', 'ToRGB': 'torgb'}
_MODULATED_FIELDS = {'weight': ('weight', None), 'bias': ('bias', _same), 'mod_weight': ('affine.weight', _dense),
                     'mod_bias': ('affine.bias', _plus_one), 'noise_strength': ('noise_strength', _same)}


def _modulated(resolution, layer, field):
    """(our name, layout change) of field `field` of the TF modulated layer `{res}x{res}/{layer}`, or None."""
    at_4x4 = resolution == '4'
    if field not in _MODULATED_FIELDS or (layer == 'Conv') != at_4x4 and layer != 'ToRGB':
        return None
    ours, change = _MODULATED_FIELDS[field]
    if change is None:
        change = _flipped_kernel if layer == 'Conv0_up' else _kernel
    return f'synthesis.b{resolution}.{_TF_LAYERS[layer]}.{ours}', change


# (TF variable name regex, our name: a template filled with the groups, layout change), first match wins; or
# (regex, a function of the groups -> (our name, layout change) or None).
_GENERATOR_RULES = (
    (r'dlatent_avg', 'mapping.w_avg', _same),
    (r'mapping/LabelEmbed/(weight|bias)', 'mapping.embed.{0}', _dense),
    (r'mapping/Dense(\d+)/(weight|bias)', 'mapping.fc{0}.{1}', _dense),
    (r'synthesis/4x4/Const/const', 'synthesis.b4.const', lambda a: a[0]),
    (r'synthesis/(\d+)x\1/Skip/weight', 'synthesis.b{0}.skip.weight', _flipped_kernel),
    (r'synthesis/noise(\d+)', lambda k: (f'{_noise_layer(int(k))}.noise_const', lambda a: a[0, 0])),
    (r'synthesis/(\d+)x\1/(Conv|Conv0_up|Conv1|ToRGB)/(\w+)', _modulated),
)
_DISCRIMINATOR_RULES = (
    (r'(\d+)x\1/FromRGB/weight', 'b{0}.fromrgb.weight', _kernel),
    (r'(\d+)x\1/FromRGB/bias', 'b{0}.fromrgb.bias', _same),
    (r'4x4/Conv/weight', 'b4.conv.weight', _kernel),
    (r'4x4/Conv/bias', 'b4.conv.bias', _same),
    (r'(\d+)x\1/Conv0/weight', 'b{0}.conv0.weight', _kernel),
    (r'(\d+)x\1/Conv0/bias', 'b{0}.conv0.bias', _same),
    (r'(\d+)x\1/Conv1_down/weight', 'b{0}.conv1.weight', _kernel),
    (r'(\d+)x\1/Conv1_down/bias', 'b{0}.conv1.bias', _same),
    (r'(\d+)x\1/Skip/weight', 'b{0}.skip.weight', _kernel),
    (r'4x4/Dense0/(weight|bias)', 'b4.fc.{0}', _dense),
    (r'Output/(weight|bias)', 'b4.out.{0}', _dense),
    (r'LabelEmbed/(weight|bias)', 'mapping.embed.{0}', _dense),
    (r'Mapping(\d+)/(weight|bias)', 'mapping.fc{0}.{1}', _dense),
)


def _rename(name, rules):
    """(our name, layout change) of TF variable `name`, or None when no rule knows it."""
    for pattern, *target in rules:
        found = re.fullmatch(pattern, name)
        if found is None:
            continue
        if len(target) == 1:
            return target[0](*found.groups())
        template, change = target
        return template.format(*found.groups()), change
    return None


def translate_variables(variables, rules, what):
    """{TF name: array} -> our state dict (float32 tensors); an unknown variable raises UnsupportedNetworkError."""
    state = {}
    for name, value in variables.items():
        if name in _IGNORED_VARIABLES:
            continue
        renamed = _rename(name, rules)
        if renamed is None:
            raise UnsupportedNetworkError(f'{what}: the TensorFlow variable {name!r} {list(value.shape)} belongs to a '
                                          f'layer this project does not implement')
        ours, change = renamed
        state[ours] = as_tensor(change(value))
    return state

# ----------------------------------------------------------------------------
# Settings.


def _set(kwargs, path, value):
    *parents, leaf = path.split('.')
    for parent in parents:
        kwargs = kwargs.setdefault(parent, {})
    kwargs[leaf] = value


def _check_kwargs(tf_kwargs, table, what):
    """Refuse any static kwarg that is neither translated, special, ignored nor at a supported default."""
    for name, value in tf_kwargs.items():
        if name in table or name in _SPECIAL or name in _IGNORED:
            continue
        if name in _ONLY_DEFAULT:
            if value != _ONLY_DEFAULT[name]:
                raise UnsupportedNetworkError(f'{what}: {name}={value!r} is not supported (only '
                                              f'{_ONLY_DEFAULT[name]!r}: other values are StyleGAN2-ADA comparison '
                                              f'methods or layouts this project does not implement)')
            continue
        raise UnsupportedNetworkError(f'{what}: unknown TensorFlow setting {name}={value!r}')


def _translate_kwargs(tf_kwargs, table):
    kwargs = {}
    for tf_name, (path, default) in table.items():
        value = tf_kwargs.get(tf_name, default)
        _set(kwargs, path, list(value) if isinstance(value, tuple) else value)
    return kwargs


def _out_width(variables, name):
    value = variables.get(name)
    return None if value is None else int(value.shape[-1])


def generator_kwargs(record, variables):
    """Our Generator's kwargs for a TF G_main record (`variables`: its `all_variables()`)."""
    what = f'the TensorFlow generator {record.name!r}'
    tf_kwargs = record.static_kwargs
    _check_kwargs(tf_kwargs, _GENERATOR_KWARGS, what)
    kwargs = _translate_kwargs(tf_kwargs, _GENERATOR_KWARGS)
    kwargs['synthesis_kwargs']['channel_base'] = 2 * tf_kwargs.get('fmap_base', 16384)
    beta = tf_kwargs.get('w_avg_beta', tf_kwargs.get('dlatent_avg_beta', 0.995))
    kwargs['mapping_kwargs']['w_avg_beta'] = 1 if beta is None else beta       # None: W's mean is not tracked.
    mapping = kwargs['mapping_kwargs']
    hidden = _out_width(variables, 'mapping/Dense0/weight') if mapping['num_layers'] > 1 else None
    if hidden not in (None, kwargs['w_dim']):
        mapping['layer_features'] = hidden                   # TF's mapping_fmaps: its default differs by release
    embed = _out_width(variables, 'mapping/LabelEmbed/weight') if kwargs['c_dim'] > 0 else None
    if embed not in (None, kwargs['w_dim']):
        mapping['embed_features'] = embed
    if kwargs['synthesis_kwargs']['resample_filter'] is None:
        raise UnsupportedNetworkError(f'{what}: resample_kernel=None (a box filter) is not supported')
    log2_resolution(kwargs['img_resolution'], what)
    return kwargs


def discriminator_kwargs(record, variables):
    """Our Discriminator's kwargs for a TF D_stylegan2 / D_main record."""
    what = f'the TensorFlow discriminator {record.name!r}'
    tf_kwargs = record.static_kwargs
    _check_kwargs(tf_kwargs, _DISCRIMINATOR_KWARGS, what)
    if record.build_func_name == 'D_stylegan2' and tf_kwargs.get('label_size', 0) > 0:
        raise UnsupportedNetworkError(f'{what}: the conditional discriminator of the original StyleGAN2 code projects '
                                      f'onto the raw labels, which this project\'s (StyleGAN2-ADA) discriminator '
                                      f'does not')
    kwargs = _translate_kwargs(tf_kwargs, _DISCRIMINATOR_KWARGS)
    kwargs['channel_base'] = 2 * tf_kwargs.get('fmap_base', 16384)
    activation = tf_kwargs.get('nonlinearity', 'lrelu')
    for part in ('block_kwargs', 'epilogue_kwargs', 'mapping_kwargs'):
        kwargs.setdefault(part, {})['activation'] = activation
    group = tf_kwargs.get('mbstd_group_size', _DISCRIMINATOR_FUNCS[record.build_func_name])
    epilogue = kwargs['epilogue_kwargs']
    if record.build_func_name == 'D_stylegan2' and group is not None and group <= 1:
        epilogue['mbstd_num_channels'] = 0                   # The original code's "0 = disable".
    epilogue['mbstd_group_size'] = group
    if kwargs['c_dim'] > 0:
        kwargs['cmap_dim'] = _out_width(variables, 'Output/weight')
        kwargs['mapping_kwargs']['embed_features'] = _out_width(variables, 'LabelEmbed/weight')
        kwargs['mapping_kwargs']['layer_features'] = _out_width(variables, 'Mapping0/weight')
    else:
        del kwargs['mapping_kwargs']                         # No label mapping without labels.
    if kwargs['block_kwargs']['resample_filter'] is None:
        raise UnsupportedNetworkError(f'{what}: resample_kernel=None (a box filter) is not supported')
    log2_resolution(kwargs['img_resolution'], what)
    return kwargs

# ----------------------------------------------------------------------------
# Records -> (kwargs, state dict) -> networks.


def _role(record):
    """'G' or 'D' for a supported record; UnsupportedNetworkError naming what the record is otherwise."""
    if not isinstance(record, TFNetworkRecord):
        raise PickleLoadError(f'expected TensorFlow networks, found a {type(record).__name__}')
    if record.version < 4:
        raise UnsupportedNetworkError(f'the TensorFlow network {record.name!r} has pickle version {record.version} '
                                      f'(from before StyleGAN2); version 4 or later is needed')
    funcs = [record.build_func_name] + [c.build_func_name for c in record.components.values()]
    for func in funcs:
        if func in _REFUSED_FUNCS:
            raise UnsupportedNetworkError(f'the pickle holds {_REFUSED_FUNCS[func]}, which this project does not '
                                          f'implement; it loads StyleGAN2 (configs E, F) and StyleGAN2-ADA networks')
    if record.build_func_name in _GENERATOR_FUNCS:
        synthesis = record.components.get('synthesis')
        if synthesis is None or synthesis.build_func_name not in _SYNTHESIS_FUNCS or 'mapping' not in record.components:
            found = None if synthesis is None else synthesis.build_func_name
            raise UnsupportedNetworkError(f'the TensorFlow generator {record.name!r} has the synthesis network '
                                          f'{found!r}, which this project does not implement')
        return 'G'
    if record.build_func_name in _DISCRIMINATOR_FUNCS:
        return 'D'
    raise UnsupportedNetworkError(f'the TensorFlow network {record.name!r} is built by {record.build_func_name!r}, '
                                  f'which this project does not implement')


def generator_from_tf(record):
    """A TF G_main record -> (our Generator kwargs, state dict)."""
    variables = record.all_variables()
    if any(name.startswith('mapping/LabelConcat/') for name in variables):
        raise UnsupportedNetworkError(f'the TensorFlow generator {record.name!r} embeds labels the way of the '
                                      f'original StyleGAN2 code (LabelConcat, normalised together with z), which '
                                      f'this project\'s (StyleGAN2-ADA) mapping does not compute')
    if any(re.fullmatch(r'synthesis/ToRGB_lod\d+/.*', name) for name in variables):
        raise UnsupportedNetworkError(f'the TensorFlow generator {record.name!r} has progressive-growing ToRGB_lod '
                                      f'layers (StyleGAN2 configs B-D), which this project does not implement')
    kwargs = generator_kwargs(record, variables)
    return kwargs, translate_variables(variables, _GENERATOR_RULES, f'the TensorFlow generator {record.name!r}')


def discriminator_from_tf(record):
    """A TF D_stylegan2 / D_main record -> (our Discriminator kwargs, state dict)."""
    variables = record.all_variables()
    kwargs = discriminator_kwargs(record, variables)
    return kwargs, translate_variables(variables, _DISCRIMINATOR_RULES, f'the TensorFlow discriminator {record.name!r}')


def networks_from(content):
    """A TF pickle's content (one record, or the (G, D, Gs) tuple) -> {'G', 'D', 'G_ema'} of our networks.

    Networks the file does not hold are None; each comes back in eval mode with gradients off.
    """
    from training.networks import Discriminator, Generator
    records = content if isinstance(content, tuple) else (content,)
    roles = [_role(record) for record in records]
    if len(records) == 3 and roles == ['G', 'D', 'G']:
        keys = ['G', 'D', 'G_ema']
    elif len(records) == 1:
        keys = ['G_ema' if roles[0] == 'G' else 'D']
    else:
        raise PickleLoadError(f'a TensorFlow pickle holds (G, D, Gs) or one network; this one holds {roles}')
    data = dict(G=None, D=None, G_ema=None)
    for key, record in zip(keys, records):
        what = f'the TensorFlow network {record.name!r}'
        if key == 'D':
            kwargs, state = discriminator_from_tf(record)
            data[key] = build_network(Discriminator, kwargs, state, what)
        else:
            kwargs, state = generator_from_tf(record)
            data[key] = build_network(Generator, kwargs, state, what)
    return data
