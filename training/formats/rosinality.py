"""rosinality/stylegan2-pytorch checkpoints <-> our Generator and Discriminator.

His files are `torch.save` dicts: `g_ema` (+ `latent_avg`) as his `convert_weight.py` writes them, or
training checkpoints with `g`, `d`, `g_ema`, `g_optim`, `d_optim`, `args` (an argparse.Namespace) and
`ada_aug_p`. His networks compute StyleGAN2 config F (skip generator, resnet discriminator, blur [1, 3, 3, 1],
mapping learning rate 0.01, minibatch-std groups of 4) with the same operations as ours (his upsampling conv is
a stride-2 transposed conv then the x4 blur padded (1, 1), his skip upsampler pads (2, 1), as ours) up to
rounding: his equalized-lr scale sits inside the demodulated weight, which moves demodulation's epsilon (1e-8)
by a factor fan_in (a relative change below 1e-8), and sums run in other orders. So the tensors map one to
one, only re-shaped (`_SHAPES`): names in `generator_names` / `discriminator_names`, both directions from the
same table. Sizes are read from the tensors (resolution from the number of `to_rgbs`, widths from the
weights, `n_mlp` and `style_dim` from `style.*`), since widths are not always his default table.

Noise buffers `noises.noise_i` become the layers' `noise_const` (noise_mode='const' reproduces his fixed
noise); `latent_avg` becomes `mapping.w_avg`, and where a file has none, w_avg is the mean of
`W_AVG_SAMPLES` mapped latents of a fixed seed (a notice says so). Optimizer states are not read.

Out (`to_rosinality`): the inverse, for generators his `Generator(size, style_dim, n_mlp, channel_multiplier)`
can express; an overparameterized generator (one style per output channel) cannot be, and is refused.
"""

import math
import warnings

import torch

from torch_utils.persistence import PickleLoadError
from training.formats import UnsupportedNetworkError, as_tensor, build_network, channel_parameters

W_AVG_SAMPLES = 10000              # Latents mapped to estimate w_avg when a file has no latent_avg.
W_AVG_SEED = 0
BLUR_TAPS = (1, 3, 3, 1)           # His blur_kernel: the only one his released models use.
MBSTD_GROUP = 4                    # His discriminator's stddev_group.
MAPPING_LR = 0.01                  # His Generator's lr_mlp default.

# Layout changes between his tensors and ours: (his -> ours, ours -> his), by kind (see generator_names).
_SHAPES = {
    'same': (lambda t: t, lambda t: t),
    'lead1': (lambda t: t[0], lambda t: t.unsqueeze(0)),                        # [1, *s] <-> [*s]
    'scalar': (lambda t: t.reshape([]), lambda t: t.reshape([1])),              # noise weight [1] <-> []
    'rgb_bias': (lambda t: t.reshape(-1), lambda t: t.reshape(1, -1, 1, 1)),    # [1, C, 1, 1] <-> [C]
    'noise': (lambda t: t[0, 0], lambda t: t.reshape(1, 1, *t.shape)),         # [1, 1, r, r] <-> [r, r]
}
# Rows of the name tables: (his name, our name, layout kind), or (his name, None, gain) for his blur kernels,
# buffers of his that we do not store (our filters are the same taps): checked on the way in, written out.


def _styled_conv(his, ours, upsample):
    return ([(f'{his}.conv.weight', f'{ours}.weight', 'lead1')] + [(f'{his}.conv.blur.kernel', None, 4)] * upsample
            + [(f'{his}.conv.modulation.weight', f'{ours}.affine.weight', 'same'),
               (f'{his}.conv.modulation.bias', f'{ours}.affine.bias', 'same'),
               (f'{his}.noise.weight', f'{ours}.noise_strength', 'scalar'),
               (f'{his}.activate.bias', f'{ours}.bias', 'same')])


def _to_rgb(his, ours, upsample):
    return ([(f'{his}.bias', f'{ours}.bias', 'rgb_bias')] + [(f'{his}.upsample.kernel', None, 4)] * upsample
            + [(f'{his}.conv.weight', f'{ours}.weight', 'lead1'),
               (f'{his}.conv.modulation.weight', f'{ours}.affine.weight', 'same'),
               (f'{his}.conv.modulation.bias', f'{ours}.affine.bias', 'same')])


def _noise_layer(index):
    """Our layer that reads his noise buffer `index` (of resolution 2**((index + 5) // 2))."""
    return f'synthesis.b{2 ** ((index + 5) // 2)}.{"conv0" if index % 2 else "conv1"}'


def generator_names(resolution, n_mlp):
    """Rows (in his state dict's order) of every tensor of his Generator(resolution, ..., n_mlp)."""
    blocks = [f'synthesis.b{2 ** (k + 3)}' for k in range(int(math.log2(resolution)) - 2)]
    rows = [(f'style.{i + 1}.{p}', f'mapping.fc{i}.{p}', 'same') for i in range(n_mlp) for p in ('weight', 'bias')]
    rows += [('input.input', 'synthesis.b4.const', 'lead1')]
    rows += _styled_conv('conv1', 'synthesis.b4.conv1', False) + _to_rgb('to_rgb1', 'synthesis.b4.torgb', False)
    for k, block in enumerate(blocks):
        rows += _styled_conv(f'convs.{2 * k}', f'{block}.conv0', True)
        rows += _styled_conv(f'convs.{2 * k + 1}', f'{block}.conv1', False)
    rows += [row for k, block in enumerate(blocks) for row in _to_rgb(f'to_rgbs.{k}', f'{block}.torgb', True)]
    rows += [(f'noises.noise_{i}', f'{_noise_layer(i)}.noise_const', 'noise') for i in range(2 * len(blocks) + 1)]
    return rows


def discriminator_names(resolution):
    """Rows (in his state dict's order) of every tensor of his Discriminator(resolution)."""
    rows = [('convs.0.0.weight', f'b{resolution}.fromrgb.weight', 'same'),
            ('convs.0.1.bias', f'b{resolution}.fromrgb.bias', 'same')]
    for k in range(1, int(math.log2(resolution)) - 1):
        his, ours = f'convs.{k}', f'b{resolution >> (k - 1)}'
        rows += [(f'{his}.conv1.0.weight', f'{ours}.conv0.weight', 'same'),
                 (f'{his}.conv1.1.bias', f'{ours}.conv0.bias', 'same'),
                 (f'{his}.conv2.0.kernel', None, 1),
                 (f'{his}.conv2.1.weight', f'{ours}.conv1.weight', 'same'),
                 (f'{his}.conv2.2.bias', f'{ours}.conv1.bias', 'same'),
                 (f'{his}.skip.0.kernel', None, 1),
                 (f'{his}.skip.1.weight', f'{ours}.skip.weight', 'same')]
    rows += [('final_conv.0.weight', 'b4.conv.weight', 'same'), ('final_conv.1.bias', 'b4.conv.bias', 'same')]
    rows += [(f'final_linear.{i}.{p}', f'b4.{name}.{p}', 'same') for i, name in enumerate(('fc', 'out'))
             for p in ('weight', 'bias')]
    return rows


def blur_kernel(gain):
    """His 2-D blur kernel: the outer product of BLUR_TAPS, normalised to sum 1, times `gain`."""
    taps = torch.tensor(BLUR_TAPS, dtype=torch.float32)
    kernel = taps[None, :] * taps[:, None]
    return kernel / kernel.sum() * gain

# ----------------------------------------------------------------------------
# In: his state dicts -> (our kwargs, our state dict).


def _tensor(state, name, what):
    value = state.get(name)
    if not isinstance(value, torch.Tensor):
        raise PickleLoadError(f'{what}: {name} is missing or not a tensor')
    return value


def _translate(state, rows, what):
    """Our state dict from his `state` by `rows`; a tensor of his that the table lacks, or a blur kernel other
    than BLUR_TAPS', is refused by name."""
    unknown = [name for name in state if name not in {his for his, _, _ in rows}]
    if unknown:
        raise UnsupportedNetworkError(f'{what}: {unknown[0]} is not a tensor of rosinality\'s StyleGAN2 '
                                      f'({len(unknown)} such); this file holds a network of another design')
    ours = {}
    for his, name, kind in rows:
        value = _tensor(state, his, what)
        if name is not None:
            ours[name] = as_tensor(_SHAPES[kind][0](value))
        elif value.shape != (4, 4) or not torch.allclose(value.float(), blur_kernel(kind), atol=1e-6):
            raise UnsupportedNetworkError(f'{what}: {his} is not the blur kernel of {list(BLUR_TAPS)}, the only one '
                                          f'supported')
    return ours


def generator_from_rosinality(state, latent_avg=None, what='g_ema'):
    """His Generator state dict (+ latent_avg) -> (our Generator kwargs, state dict without w_avg if none)."""
    n_mlp = sum(1 for name in state if name.startswith('style.') and name.endswith('.weight'))
    style = _tensor(state, 'style.1.weight', what)
    resolution = 2 ** (sum(1 for name in state if name.startswith('to_rgbs.') and name.endswith('.conv.weight')) + 2)
    widths = {4: int(_tensor(state, 'input.input', what).shape[1])}
    widths.update({2 ** (k + 3): int(_tensor(state, f'convs.{2 * k}.conv.weight', what).shape[1])
                   for k in range(int(math.log2(resolution)) - 2)})
    base, cap = channel_parameters(widths)
    kwargs = dict(z_dim=int(style.shape[1]), c_dim=0, w_dim=int(style.shape[0]), img_resolution=resolution,
                  img_channels=int(_tensor(state, 'to_rgb1.conv.weight', what).shape[1]),
                  mapping_kwargs=dict(num_layers=n_mlp, lr_multiplier=MAPPING_LR),
                  synthesis_kwargs=dict(channel_base=base, channel_max=cap, num_fp16_res=0, conv_clamp=None,
                                        resample_filter=list(BLUR_TAPS)))
    ours = _translate(state, generator_names(resolution, n_mlp), what)
    if latent_avg is not None:
        ours['mapping.w_avg'] = as_tensor(latent_avg).reshape(-1)
    return kwargs, ours


def discriminator_from_rosinality(state, what='d'):
    """His Discriminator state dict -> (our Discriminator kwargs, state dict)."""
    resolution = 2 ** (sum(1 for name in state if name.endswith('.conv2.1.weight')) + 2)
    widths = {resolution: int(_tensor(state, 'convs.0.0.weight', what).shape[0]),
              4: int(_tensor(state, 'final_conv.0.weight', what).shape[0])}
    widths.update({resolution >> k: int(_tensor(state, f'convs.{k}.conv2.1.weight', what).shape[0])
                   for k in range(1, int(math.log2(resolution)) - 1)})
    if _tensor(state, 'final_conv.0.weight', what).shape[1] != widths[4] + 1:
        raise UnsupportedNetworkError(f'{what}: its last conv reads {state["final_conv.0.weight"].shape[1]} channels, '
                                      f'not the {widths[4]} features + 1 minibatch-std channel of rosinality\'s design')
    base, cap = channel_parameters(widths)
    kwargs = dict(c_dim=0, img_resolution=resolution, img_channels=int(state['convs.0.0.weight'].shape[1]),
                  architecture='resnet', channel_base=base, channel_max=cap, num_fp16_res=0, conv_clamp=None,
                  epilogue_kwargs=dict(mbstd_group_size=MBSTD_GROUP, mbstd_num_channels=1))
    return kwargs, _translate(state, discriminator_names(resolution), what)


def estimate_w_avg(G, num_samples=W_AVG_SAMPLES, seed=W_AVG_SEED, batch_size=1000):
    """Mean of `num_samples` mapped latents z ~ N(0, I) of a fixed seed: `[w_dim]`."""
    rng = torch.Generator().manual_seed(seed)
    total = torch.zeros([G.w_dim], dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, num_samples, batch_size):
            z = torch.randn([min(batch_size, num_samples - start), G.z_dim], generator=rng)
            total += G.mapping(z.to(G.mapping.w_avg.device), None)[:, 0].sum(dim=0).double().cpu()
    return (total / num_samples).to(torch.float32)


def _is_generator_state(value):
    return isinstance(value, dict) and 'input.input' in value and 'style.1.weight' in value


def networks_from(content):
    """A rosinality checkpoint (the dict torch.load gives) -> {'G', 'D', 'G_ema', ...} of our networks.

    G from `g`, D from `d`, G_ema from `g_ema` (None where absent); `rosinality_args` (his `args` as a dict)
    and `ada_aug_p` where the file has them.
    """
    from training.networks import Discriminator, Generator
    if not isinstance(content, dict) or not any(_is_generator_state(content.get(k)) for k in ('g_ema', 'g')):
        found = ', '.join(sorted(map(str, content))[:8]) if isinstance(content, dict) else type(content).__name__
        raise UnsupportedNetworkError(f'it is a torch.save file that holds no StyleGAN2 generator of rosinality\'s '
                                      f'format (g_ema or g; found: {found or "nothing"})')
    data = dict(G=None, D=None, G_ema=None)
    for key, his in (('G_ema', 'g_ema'), ('G', 'g')):
        if content.get(his) is None:
            continue
        latent_avg = content.get('latent_avg') if his == 'g_ema' else None
        kwargs, state = generator_from_rosinality(content[his], latent_avg, what=his)
        state.setdefault('mapping.w_avg', torch.zeros([kwargs['w_dim']]))       # Estimated below.
        G = build_network(Generator, kwargs, state, his)
        if latent_avg is None:
            G.mapping.w_avg.copy_(estimate_w_avg(G))
            warnings.warn(f'{his} has no latent_avg: w_avg (the truncation centre) is estimated from '
                          f'{W_AVG_SAMPLES} mapped latents of seed {W_AVG_SEED}')
        data[key] = G
    if content.get('d') is not None:
        data['D'] = build_network(Discriminator, *discriminator_from_rosinality(content['d']), 'd')
    args = content.get('args')
    if args is not None and hasattr(args, '__dict__'):
        data['rosinality_args'] = {k: v for k, v in vars(args).items() if isinstance(v, (bool, int, float, str))}
    if isinstance(content.get('ada_aug_p'), (int, float)):
        data['ada_aug_p'] = float(content['ada_aug_p'])
    return data

# ----------------------------------------------------------------------------
# Out: our networks -> his state dicts.


def _from_ours(module, rows):
    """His state dict (by `rows`, in his order) from our `module`'s tensors, with his blur kernels.

    Noise inputs our layers lack (use_noise=False) are written as zero buffers with zero strength: his
    layers always add noise, and nothing times zero is nothing.
    """
    ours = module.state_dict()
    state = {}
    for his, name, kind in rows:
        if name is None:
            state[his] = blur_kernel(kind)
            continue
        value = ours.get(name)
        if value is None and name.endswith(('.noise_strength', '.noise_const')):
            size = module.get_submodule(name.rsplit('.', 1)[0]).resolution
            value = torch.zeros([] if name.endswith('strength') else [size, size])
        state[his] = _SHAPES[kind][1](value.detach().cpu().clone())
    return state


def _default_filter(module):
    from torch_utils.ops import upfirdn2d
    default = upfirdn2d.setup_filter(list(BLUR_TAPS))
    return all(torch.equal(buf.cpu(), default) for name, buf in module.named_buffers()
               if name.endswith('resample_filter'))


def _clamped(modules):
    return any(getattr(m, 'conv_clamp', None) is not None for m in modules)


def generator_to_rosinality(G, what='G_ema'):
    """Our Generator -> (his Generator state dict, notes); UnsupportedNetworkError if his design cannot express it."""
    def refuse(reason):
        return UnsupportedNetworkError(f'{what} cannot be written in rosinality\'s format: {reason}')
    if G.latent_rows is not None:
        raise refuse(f'it is overparameterized (latent matrices of {G.latent_rows} rows, one style per output '
                     f'channel), and his Generator takes one style vector per layer')
    if G.c_dim != 0 or G.img_channels != 3 or G.z_dim != G.w_dim:
        raise refuse(f'his Generator is unconditional, makes 3 colour channels and has z_dim = w_dim; this one has '
                     f'c_dim {G.c_dim}, {G.img_channels} channels, z_dim {G.z_dim}, w_dim {G.w_dim}')
    mapping = G.mapping
    dense = [getattr(mapping, f'fc{i}') for i in range(mapping.num_layers)]
    if any(tuple(fc.weight.shape) != (G.w_dim, G.w_dim) or fc.activation != 'lrelu' for fc in dense):
        raise refuse('his mapping layers are all style_dim wide, with leaky ReLU')
    blocks = [getattr(G.synthesis, f'b{res}') for res in G.synthesis.block_resolutions]
    convs = [layer for block in blocks for layer in (getattr(block, 'conv0', None), block.conv1) if layer is not None]
    if any(block.architecture != 'skip' for block in blocks) or any(c.activation != 'lrelu' for c in convs):
        raise refuse('his synthesis network is the skip architecture with leaky ReLU')
    if not _default_filter(G):
        raise refuse(f'his blur kernel is {list(BLUR_TAPS)}')
    notes = [f'{what}: conv_clamp dropped (his networks do not clamp; it acts only on activations beyond it)'] \
        if _clamped(G.modules()) else []
    state = _from_ours(G, generator_names(G.img_resolution, mapping.num_layers))
    scale = dense[0].bias_gain / MAPPING_LR if dense else 1         # His mapping runs at lr_mlp = 0.01.
    if scale != 1:
        for i in range(mapping.num_layers):
            for p in ('weight', 'bias'):
                state[f'style.{i + 1}.{p}'] = state[f'style.{i + 1}.{p}'] * scale
    return state, notes


def discriminator_to_rosinality(D, what='D'):
    """Our Discriminator -> (his Discriminator state dict, notes); UnsupportedNetworkError if he cannot express it."""
    def refuse(reason):
        return UnsupportedNetworkError(f'{what} cannot be written in rosinality\'s format: {reason}')
    blocks = [getattr(D, f'b{res}') for res in D.block_resolutions] + [D.b4]
    if D.c_dim != 0 or D.img_channels != 3 or any(block.architecture != 'resnet' for block in blocks):
        raise refuse('his Discriminator is unconditional, resnet, for 3 colour channels')
    mbstd = D.b4.mbstd
    if mbstd is None or mbstd.group_size != MBSTD_GROUP or mbstd.num_channels != 1:
        raise refuse(f'his minibatch-std layer takes groups of {MBSTD_GROUP} images and adds 1 channel')
    layers = [m for m in D.modules() if hasattr(m, 'activation') and getattr(m, 'bias', None) is not None]
    if any(m.activation != 'lrelu' for m in layers if m is not D.b4.out) or not _default_filter(D):
        raise refuse(f'his layers use leaky ReLU and the blur kernel {list(BLUR_TAPS)}')
    notes = [f'{what}: conv_clamp dropped (his networks do not clamp)'] if _clamped(D.modules()) else []
    return _from_ours(D, discriminator_names(D.img_resolution)), notes


def his_constructor(G):
    """How to build his Generator for G: 'Generator(size=..., style_dim=..., n_mlp=..., channel_multiplier=...)',
    or, when G's widths are not his table for any channel_multiplier, the table to put in his code."""
    widths = {res: int(getattr(G.synthesis, f'b{res}').conv1.weight.shape[0]) for res in G.synthesis.block_resolutions}
    head = f'Generator(size={G.img_resolution}, style_dim={G.w_dim}, n_mlp={G.mapping.num_layers}'
    for multiplier in (1, 2, 4):
        table = {res: 512 if res <= 32 else (16384 * multiplier) // res for res in widths}
        if table == widths:
            return f'{head}, channel_multiplier={multiplier})'
    return f'{head}) with the channel table {widths}'


def to_rosinality(G_ema, G=None, D=None):
    """(checkpoint dict for torch.save, notes) in his layout: g_ema, latent_avg, and g, d where given.

    A generator he cannot express raises UnsupportedNetworkError (write nothing); a discriminator he cannot
    express is left out with a note (g_ema is what his tools and their descendants read).
    """
    state, notes = generator_to_rosinality(G_ema, 'G_ema')
    checkpoint = dict(g_ema=state, latent_avg=G_ema.mapping.w_avg.detach().cpu().clone())
    if G is not None:
        checkpoint['g'], more = generator_to_rosinality(G, 'G')
        notes += more
    if D is not None:
        try:
            checkpoint['d'], more = discriminator_to_rosinality(D)
            notes += more
        except UnsupportedNetworkError as err:
            notes.append(f'd left out: {err}')
    return checkpoint, notes
