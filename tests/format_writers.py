"""Test helpers: write NVIDIA TensorFlow pickles (and rosinality-shaped state dicts) of our networks, from the
formats' descriptions, independently of the translators in training/formats (which only read them).

TensorFlow layouts (NVIDIA's networks_stylegan2.py / StyleGAN2-ADA networks.py): dense weights [in, out],
conv kernels [k, k, in, out], upsampling kernels flipped spatially, `mod_bias` without the +1 added at run
time, the 4x4 constant [1, C, 4, 4], noise inputs `noise{k}` [1, 1, r, r] numbered in layer order.
"""

import copyreg
import math
import pickle
import sys
import types

import numpy as np


class Network:
    """Pickles as NVIDIA's `dnnlib.tflib.network.Network` (NEWOBJ, then BUILD with the state dict)."""

    def __init__(self, name, func, static_kwargs, variables, components=None, version=4):
        self.state = dict(version=version, name=name, static_kwargs=static_kwargs, components=components or {},
                          build_module_src='import os\nos.system("touch SENTINEL")\n', build_func_name=func,
                          variables=list(variables.items()))

    def __reduce_ex__(self, protocol):
        return copyreg.__newobj__, (Network,), self.state


Network.__module__, Network.__qualname__ = 'dnnlib.tflib.network', 'Network'


def dumps_tf(obj):
    """Pickle bytes as TensorFlow-era Python wrote them: protocol 3, arrays as numpy.core.multiarray."""
    tflib = types.ModuleType('dnnlib.tflib')
    network = types.ModuleType('dnnlib.tflib.network')
    network.Network = Network
    saved = {name: sys.modules.get(name) for name in ('dnnlib.tflib', 'dnnlib.tflib.network')}
    sys.modules.update({'dnnlib.tflib': tflib, 'dnnlib.tflib.network': network})
    try:
        data = pickle.dumps(obj, protocol=3)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return data.replace(b'cnumpy._core.multiarray\n', b'cnumpy.core.multiarray\n')


def _np(t):
    return t.detach().cpu().numpy().astype(np.float32)


def _kernel(t, flip=False):
    k = _np(t).transpose(2, 3, 1, 0)                       # [O, I, k, k] -> [k, k, I, O]
    return np.ascontiguousarray(k[::-1, ::-1] if flip else k)


def tf_generator_variables(G):
    """{'mapping': {...}, 'synthesis': {...}, 'top': {...}} of TF variables holding our Generator G."""
    sd = {k: v for k, v in G.state_dict().items()}
    mapping = {}
    if G.c_dim:
        mapping['LabelEmbed/weight'] = _np(sd['mapping.embed.weight']).T.copy()
        mapping['LabelEmbed/bias'] = _np(sd['mapping.embed.bias'])
    for i in range(G.mapping.num_layers):
        mapping[f'Dense{i}/weight'] = _np(sd[f'mapping.fc{i}.weight']).T.copy()
        mapping[f'Dense{i}/bias'] = _np(sd[f'mapping.fc{i}.bias'])
    synthesis = {'4x4/Const/const': _np(sd['synthesis.b4.const'])[None]}
    noise_index = 0
    for res in G.synthesis.block_resolutions:
        block = getattr(G.synthesis, f'b{res}')
        layers = [('Conv', 'conv1')] if res == 4 else [('Conv0_up', 'conv0'), ('Conv1', 'conv1')]
        for tf_name, ours in layers:
            p = f'synthesis.b{res}.{ours}'
            scope = f'{res}x{res}/{tf_name}'
            synthesis[f'{scope}/weight'] = _kernel(sd[f'{p}.weight'], flip=tf_name == 'Conv0_up')
            synthesis[f'{scope}/bias'] = _np(sd[f'{p}.bias'])
            synthesis[f'{scope}/mod_weight'] = _np(sd[f'{p}.affine.weight']).T.copy()
            synthesis[f'{scope}/mod_bias'] = _np(sd[f'{p}.affine.bias']) - np.float32(1)
            if f'{p}.noise_strength' in sd:
                synthesis[f'{scope}/noise_strength'] = _np(sd[f'{p}.noise_strength'])
                synthesis[f'noise{noise_index}'] = _np(sd[f'{p}.noise_const'])[None, None]
            noise_index += 1
        if hasattr(block, 'torgb'):
            p, scope = f'synthesis.b{res}.torgb', f'{res}x{res}/ToRGB'
            synthesis[f'{scope}/weight'] = _kernel(sd[f'{p}.weight'])
            synthesis[f'{scope}/bias'] = _np(sd[f'{p}.bias'])
            synthesis[f'{scope}/mod_weight'] = _np(sd[f'{p}.affine.weight']).T.copy()
            synthesis[f'{scope}/mod_bias'] = _np(sd[f'{p}.affine.bias']) - np.float32(1)
        if hasattr(block, 'skip'):
            synthesis[f'{res}x{res}/Skip/weight'] = _kernel(sd[f'synthesis.b{res}.skip.weight'], flip=True)
    return dict(mapping=mapping, synthesis=synthesis,
                top={'dlatent_avg': _np(sd['mapping.w_avg']), 'lod': np.zeros([], np.float32)})


def tf_generator(G, static_kwargs, name='Gs', synthesis_func='G_synthesis_stylegan2'):
    """A G_main Network record holding G (static_kwargs: the TF settings that describe it)."""
    v = tf_generator_variables(G)
    components = dict(mapping=Network(f'{name}_mapping', 'G_mapping', {}, v['mapping']),
                      synthesis=Network(f'{name}_synthesis', synthesis_func, {}, v['synthesis']))
    return Network(name, 'G_main', static_kwargs, v['top'], components)


def tf_discriminator_variables(D):
    sd = {k: v for k, v in D.state_dict().items()}
    out = {}
    for res in D.block_resolutions + [4]:
        block = getattr(D, f'b{res}')
        names = [('fromrgb', 'FromRGB')] + ([('conv', 'Conv')] if res == 4 else
                                            [('conv0', 'Conv0'), ('conv1', 'Conv1_down'), ('skip', 'Skip')])
        for ours, tf_name in names:
            if not hasattr(block, ours):
                continue
            out[f'{res}x{res}/{tf_name}/weight'] = _kernel(sd[f'b{res}.{ours}.weight'])
            if f'b{res}.{ours}.bias' in sd:
                out[f'{res}x{res}/{tf_name}/bias'] = _np(sd[f'b{res}.{ours}.bias'])
    for ours, tf_name in (('b4.fc', '4x4/Dense0'), ('b4.out', 'Output'), ('mapping.embed', 'LabelEmbed')):
        if f'{ours}.weight' in sd:
            out[f'{tf_name}/weight'] = _np(sd[f'{ours}.weight']).T.copy()
            out[f'{tf_name}/bias'] = _np(sd[f'{ours}.bias'])
    for i in range(D.mapping.num_layers if D.c_dim else 0):
        out[f'Mapping{i}/weight'] = _np(sd[f'mapping.fc{i}.weight']).T.copy()
        out[f'Mapping{i}/bias'] = _np(sd[f'mapping.fc{i}.bias'])
    return out


def tf_discriminator(D, static_kwargs, func='D_stylegan2', name='D'):
    return Network(name, func, static_kwargs, tf_discriminator_variables(D))


def fmap_kwargs(resolution, channel_base, channel_max):
    """TF's fmap_base / fmap_max for our channel_base / channel_max (TF counts stages from log2(res) - 1)."""
    assert channel_base % 2 == 0 and math.log2(resolution) % 1 == 0
    return dict(fmap_base=channel_base // 2, fmap_max=channel_max)
