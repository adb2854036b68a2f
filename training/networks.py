"""StyleGAN2 generator (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN",
config F with 'skip' outputs) with an optional overparameterized latent (Poirier-Ginter et al.,
"Overparameterization Improves StyleGAN Inversion", sec. 3).

The overparameterization is a shape, not a flag: with `latent_rows=R` a latent is a matrix
`[R, dim]` instead of a vector `[dim]`; the mapping maps every row at once, and each synthesis
layer with `O` output channels modulates output channel `i` with the style of latent row `i`
(eq. 2). `latent_rows=None` is StyleGAN2. Layers tell the two apart by `w.ndim` alone.
Parameter and buffer names are those of NVIDIA's StyleGAN2 pickles, so their state dicts load
one to one.

Latent shapes (N = batch, L = `num_ws`):
    z  `[N, *G.z_shape]`        `(z_dim,)` or `(R, z_dim)`
    ws `[N, L, *G.w_shape]`     `(w_dim,)` or `(R, w_dim)`; W / w = the same latent for every layer
"""

import math
from typing import Optional

import numpy as np
import torch
from torch import nn

from torch_utils import misc
from torch_utils.ops import upfirdn2d
from torch_utils.ops.modulated_conv2d import modulated_conv2d
from torch_utils.persistence import persistent_class
from training import nvlabs_layouts
from training.discriminator import Discriminator, DiscriminatorBlock, DiscriminatorEpilogue, MinibatchStdLayer  # noqa: F401  (re-export)
from training.latent_spaces import AUTO, LatentSpace
from training.layers import (  # noqa: F401  (re-export: callers name the layers as training.networks.X)
    Conv2dLayer,
    FullyConnectedLayer,
    MappingNetwork,
    activate,
    channels_at,
    compute_format,
    default_gain,
    float_dtype_of,
    lowest_fp16_resolution,
    memory_format_of,
    normalize_2nd_moment,
    register_resample_filter,
    remember,
)

_HALF_VARIANCE = math.sqrt(0.5)   # each branch of a residual sum, so the sum keeps unit variance

#----------------------------------------------------------------------------
# Modulated convolutions: the shared part of the 3x3 layers and the 1x1 toRGB layers.

class _ModulatedConv(nn.Module):
    """A weight `[O, I, k, k]` whose input channels are scaled per image by styles `A(w)` (eq. 1);
    for a latent matrix `w [N, R, w_dim]`, output channel `i` takes the style of row `i` (eq. 2)."""

    def _build(self, in_channels, out_channels, w_dim, kernel_size, channels_last):
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)   # styles start at 1
        shape = [out_channels, in_channels, kernel_size, kernel_size]
        self.weight = nn.Parameter(torch.randn(shape).to(memory_format=memory_format_of(channels_last)))

    def styles(self, w):
        """w `[N, w_dim]` -> `[N, I]`; w `[N, R, w_dim]` -> `[N, min(R, O), I]` (rows beyond O are unused)."""
        out_channels = self.weight.shape[0]
        if w.ndim == 3 and w.shape[1] > out_channels:
            w = w[:, :out_channels]
        return self.affine(w)

#----------------------------------------------------------------------------

@persistent_class
class SynthesisLayer(_ModulatedConv):
    def __init__(self,
        in_channels,                    # Input feature maps.
        out_channels,                   # Output feature maps.
        w_dim,                          # Width of one intermediate latent row.
        resolution,                     # Output size in px.
        kernel_size     = 3,            # Square kernel size.
        up              = 1,            # 2 = upsample the input first (transposed conv + low-pass).
        use_noise       = True,         # Add per-pixel noise (scaled by a learned strength)? The paper: no.
        activation      = 'lrelu',      # Nonlinearity after bias and noise.
        resample_filter = [1, 3, 3, 1], # Low-pass filter taps for upsampling.
        conv_clamp      = None,         # Clamp outputs to +-this; None = no clamp.
        channels_last   = False,        # Keep the weight in channels_last memory format?
    ):
        super().__init__()
        remember(self, in_channels=in_channels, out_channels=out_channels, w_dim=w_dim, resolution=resolution, up=up,
                 use_noise=use_noise, activation=activation, conv_clamp=conv_clamp, padding=kernel_size // 2)
        register_resample_filter(self, resample_filter)
        self.act_gain = default_gain(activation)
        self._build(in_channels, out_channels, w_dim, kernel_size, channels_last)
        if use_noise:
            self.register_buffer('noise_const', torch.randn([resolution, resolution]))   # for noise_mode='const'
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def _noise(self, batch_size, device, noise_mode):
        """Noise image broadcastable to the output, or None. 'random': fresh N(0, 1) per image;
        'const': the stored `noise_const`; 'none': no noise."""
        if noise_mode not in ('random', 'const', 'none'):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', not {noise_mode!r}")
        if not self.use_noise or noise_mode == 'none':
            return None
        if noise_mode == 'const':
            return self.noise_const * self.noise_strength
        size = self.resolution
        return torch.randn([batch_size, 1, size, size], device=device) * self.noise_strength

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = 'random', fused_modconv: bool = True,
                gain: float = 1) -> torch.Tensor:
        """x `[N, I, res/up, res/up]`, w `[N, w_dim]` or `[N, R, w_dim]` -> `[N, O, res, res]`, scaled by `gain`."""
        in_size = self.resolution // self.up
        misc.assert_shape(x, [None, self.in_channels, in_size, in_size])
        y = modulated_conv2d(x=x, weight=self.weight, styles=self.styles(w), up=self.up, padding=self.padding,
                             noise=self._noise(x.shape[0], x.device, noise_mode), resample_filter=self.resample_filter,
                             flip_weight=(self.up == 1), fused_modconv=fused_modconv)
        return activate(y, self.bias.to(y.dtype), self.activation, self.act_gain, gain, self.conv_clamp)

#----------------------------------------------------------------------------

@persistent_class
class ToRGBLayer(_ModulatedConv):
    def __init__(self,
        in_channels,                # Input feature maps.
        out_channels,               # Colour channels.
        w_dim,                      # Width of one intermediate latent row.
        kernel_size     = 1,        # Square kernel size.
        conv_clamp      = None,     # Clamp outputs to +-this; None = no clamp.
        channels_last   = False,    # Keep the weight in channels_last memory format?
    ):
        super().__init__()
        remember(self, in_channels=in_channels, out_channels=out_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self._build(in_channels, out_channels, w_dim, kernel_size, channels_last)
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        # Without demodulation the equalized-lr scale of the weight goes into the styles.
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        """x `[N, I, H, W]`, w `[N, w_dim]` or `[N, R, w_dim]` -> colours `[N, C, H, W]` (linear)."""
        y = modulated_conv2d(x=x, weight=self.weight, styles=self.styles(w) * self.weight_gain, demodulate=False,
                             fused_modconv=fused_modconv)
        return activate(y, self.bias.to(y.dtype), 'linear', 1, 1, self.conv_clamp)

#----------------------------------------------------------------------------
# One resolution of the synthesis network: (upsampling conv +) conv, and its colour output.

@persistent_class
class SynthesisBlock(nn.Module):
    def __init__(self,
        in_channels,                        # Feature maps from the previous block; 0 = first block (learned 4x4 input).
        out_channels,                       # Feature maps of this block.
        w_dim,                              # Width of one intermediate latent row.
        resolution,                         # Size of this block's output in px.
        img_channels,                       # Colour channels.
        is_last,                            # The highest resolution (always has a toRGB)?
        architecture        = 'skip',       # 'skip' (sum of upsampled RGB outputs), 'resnet' or 'orig'.
        resample_filter     = [1, 3, 3, 1], # Low-pass filter taps for upsampling.
        conv_clamp          = None,         # Clamp conv outputs to +-this; None = no clamp.
        use_fp16            = False,        # Compute this block in FP16?
        fp16_channels_last  = False,        # With FP16, use channels_last memory format?
        fused_modconv_default = None,       # fused_modconv when the call gives None: True, False,
                                            # 'inference_only' (= not training), or None = fused in
                                            # inference when FP32 or one image (the fastest choice).
        fp16_cuda_only      = False,        # FP16 on CUDA devices only, FP32 elsewhere (as NVIDIA's stylegan3
                                            # repository); False = FP16 on any device (stylegan2-ada-pytorch).
        **layer_kwargs,                     # More SynthesisLayer arguments (use_noise, activation, ...).
    ):
        assert architecture in ('orig', 'skip', 'resnet')
        assert fused_modconv_default in (None, True, False, 'inference_only')
        super().__init__()
        remember(self, in_channels=in_channels, w_dim=w_dim, resolution=resolution, img_channels=img_channels,
                 is_last=is_last, architecture=architecture, use_fp16=use_fp16,
                 channels_last=use_fp16 and fp16_channels_last, fused_modconv_default=fused_modconv_default,
                 fp16_cuda_only=fp16_cuda_only)
        register_resample_filter(self, resample_filter)

        memory = dict(channels_last=self.channels_last)
        per_layer = dict(w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp, **memory)
        doubling = dict(up=2, resample_filter=resample_filter)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, **doubling, **per_layer, **layer_kwargs)
        self.conv1 = SynthesisLayer(out_channels, out_channels, **per_layer, **layer_kwargs)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = int(is_last or architecture == 'skip')
        if self.num_torgb:
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp, **memory)
        if in_channels > 0 and architecture == 'resnet':
            self.skip = Conv2dLayer(in_channels, out_channels, 1, bias=False, **doubling, **memory)

    def _fused(self, fused_modconv, dtype, batch_size):
        """Whether to run the modulated convs as one grouped conv (see `fused_modconv_default`)."""
        if fused_modconv is None:
            fused_modconv = self.fused_modconv_default
        if fused_modconv == 'inference_only':
            return not self.training
        if fused_modconv is None:      # the grouped conv is the faster path in these cases
            return not self.training and (dtype == torch.float32 or batch_size == 1)
        return fused_modconv

    def modulated_layers(self):
        """The modulated layers in the order they read latents: (conv0,) conv1, (torgb)."""
        names = ['conv0'] * (self.num_conv == 2) + ['conv1'] + ['torgb'] * self.num_torgb
        return [getattr(self, name) for name in names]

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], ws,
                force_fp32: bool = False, fused_modconv: Optional[bool] = None, **layer_kwargs):
        """ws `[N, num_conv + num_torgb, *w_shape]`: one latent per conv, then the toRGB latent (or these
        latents already split, a sequence of `[N, *w_shape]`, rows beyond a layer's outputs may be left out).
        x `[N, in, res/2, res/2]` and img `[N, C, res/2, res/2]` from the previous block (None first)
        -> (x `[N, out, res, res]`, img `[N, C, res, res]` FP32, or None before the first toRGB)."""
        if isinstance(ws, torch.Tensor):
            misc.assert_shape(ws, [None, self.num_conv + self.num_torgb] + [None] * (ws.ndim - 3) + [self.w_dim])
            latents = ws.unbind(dim=1)
        else:
            latents = tuple(ws)
            assert len(latents) == self.num_conv + self.num_torgb, 'one latent per conv, then the toRGB latent'
        force_fp32 = force_fp32 or (self.fp16_cuda_only and latents[0].device.type != 'cuda')
        float_dtype = float_dtype_of(self.conv1.weight)
        compute = compute_format(self.use_fp16, self.channels_last, force_fp32, float_dtype)
        batch_size = latents[0].shape[0]
        fused = self._fused(fused_modconv, compute['dtype'], batch_size)
        conv_args = dict(fused_modconv=fused, **layer_kwargs)
        below = self.resolution // 2

        if self.in_channels == 0:
            start = self.const.to(**compute).unsqueeze(0).repeat([batch_size, 1, 1, 1])
            x = self.conv1(start, latents[0], **conv_args)
        else:
            misc.assert_shape(x, [None, self.in_channels, below, below])
            x = x.to(**compute)
            if hasattr(self, 'skip'):
                shortcut = self.skip(x, gain=_HALF_VARIANCE)
                main = self.conv0(x, latents[0], **conv_args)
                x = shortcut.add_(self.conv1(main, latents[1], gain=_HALF_VARIANCE, **conv_args))
            else:
                x = self.conv1(self.conv0(x, latents[0], **conv_args), latents[1], **conv_args)

        if img is not None:
            misc.assert_shape(img, [None, self.img_channels, below, below])
            img = upfirdn2d.upsample2d(img, self.resample_filter)       # the lower resolutions' sum, doubled
        if self.num_torgb:
            rgb = self.torgb(x, latents[self.num_conv], fused_modconv=fused)
            rgb = rgb.to(dtype=float_dtype, memory_format=torch.contiguous_format)
            img = rgb if img is None else img.add_(rgb)
        return x, img

#----------------------------------------------------------------------------
# Synthesis network: ws -> image, one block per resolution from 4x4 up.

@persistent_class
class SynthesisNetwork(nn.Module):
    def __init__(self,
        w_dim,                      # Width of one intermediate latent row.
        img_resolution,             # Output size in px (a power of two >= 4).
        img_channels,               # Colour channels.
        channel_base    = 32768,    # Feature maps at resolution r: channel_base / r, ...
        channel_max     = 512,      # ... capped at this.
        num_fp16_res    = 0,        # Compute the blocks of this many highest resolutions in FP16.
        **block_kwargs,             # More SynthesisBlock arguments.
    ):
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f'img_resolution must be a power of two >= 4, not {img_resolution}')
        super().__init__()
        log2 = int(math.log2(img_resolution))
        remember(self, w_dim=w_dim, img_resolution=img_resolution, img_resolution_log2=log2, img_channels=img_channels,
                 num_fp16_res=num_fp16_res, block_resolutions=[2 ** k for k in range(2, log2 + 1)])
        width = {res: channels_at(res, channel_base, channel_max) for res in self.block_resolutions}
        fp16_from = lowest_fp16_resolution(img_resolution, num_fp16_res)
        self.max_channels = max(width.values())   # rows a latent matrix needs (R >= this, or R == 1)

        convs = 0
        for res, channels in width.items():
            block = SynthesisBlock(width.get(res // 2, 0), channels, w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=res == img_resolution,
                                   use_fp16=res >= fp16_from, **block_kwargs)
            self.add_module(f'b{res}', block)
            convs += block.num_conv
        # Block k's toRGB shares its latent with block k+1's first conv, so there is one latent
        # per conv plus one for the last toRGB.
        self.num_ws = convs + 1

    def forward(self, ws: torch.Tensor, **block_kwargs) -> torch.Tensor:
        """ws `[N, num_ws, w_dim]` (w+) or `[N, num_ws, R, w_dim]` (W+) -> image `[N, C, res, res]` in about [-1, 1].

        block_kwargs: noise_mode ('random', 'const', 'none'), force_fp32, fused_modconv.
        """
        misc.assert_shape(ws, [None, self.num_ws] + [None] * (ws.ndim - 3) + [self.w_dim])
        blocks = [getattr(self, f'b{res}') for res in self.block_resolutions]
        ws = ws.to(float_dtype_of(blocks[0].conv1.weight))
        per_block = self._latents_per_block(ws, blocks)
        x = img = None
        for block, latents in zip(blocks, per_block):
            x, img = block(x, img, latents, **block_kwargs)
        return img

    @staticmethod
    def _latents_per_block(ws, blocks):
        """ws `[N, num_ws, *w_shape]` -> what each block reads. Vectors: `[N, k, w_dim]` slices, as always.
        Matrices: every layer's latent `[N, min(R, O), w_dim]` through one `_LayerLatents`, whose gradient
        is one `[N, num_ws, R, w_dim]` tensor with only the rows the layers read written (the per-block
        slices would zero-fill and sum that whole tensor once per block, ~8 % of the overparameterized Gmain).
        """
        spans, first = [], 0
        for block in blocks:
            spans.append((first, block.num_conv + block.num_torgb))
            first += block.num_conv
        if ws.ndim == 3:
            return [ws.narrow(1, start, count) for start, count in spans]
        uses = tuple((start + k, min(ws.shape[2], layer.weight.shape[0]))
                     for block, (start, _) in zip(blocks, spans) for k, layer in enumerate(block.modulated_layers()))
        flat = iter(_LayerLatents.apply(ws, uses))
        return [[next(flat) for _ in range(count)] for _, count in spans]

#----------------------------------------------------------------------------

class _LayerLatents(torch.autograd.Function):
    """`ws [N, L, R, w_dim]`, uses `((layer, rows), ...)` -> the views `ws[:, layer, :rows]`, one per use.

    Backward: one tensor like ws with every use's gradient added into its rows. Under `create_graph` (the
    path-length regularizer) it is built from padded pieces stacked along the layers, whose own gradient is
    views (in-place writes would make the double backward clone the whole tensor once per write).
    """

    @staticmethod
    def forward(ctx, ws, uses):
        ctx.shape, ctx.uses = ws.shape, uses
        return tuple(ws[:, layer, :rows] for layer, rows in uses)

    @staticmethod
    def backward(ctx, *grads):
        used = [(layer, rows, grad) for (layer, rows), grad in zip(ctx.uses, grads) if grad is not None]
        if not used:
            return None, None
        num_layers, num_rows = ctx.shape[1], ctx.shape[2]
        if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            grad_ws = used[0][2].new_zeros(ctx.shape)
            for layer, rows, grad in used:
                grad_ws[:, layer, :rows] += grad
            return grad_ws, None
        per_layer = [None] * num_layers
        for layer, rows, grad in used:
            padded = torch.nn.functional.pad(grad, [0, 0, 0, num_rows - rows]) if rows < num_rows else grad
            per_layer[layer] = padded if per_layer[layer] is None else per_layer[layer] + padded
        zeros = used[0][2].new_zeros([ctx.shape[0], *ctx.shape[2:]])
        return torch.stack([zeros if g is None else g for g in per_layer], dim=1), None

#----------------------------------------------------------------------------
# Generator = mapping + synthesis; `latent_rows` = R of the overparameterized model.

@persistent_class
class Generator(nn.Module):
    def __init__(self,
        z_dim,                      # Width of one latent row.
        c_dim,                      # Width of the label; 0 = unconditional.
        w_dim,                      # Width of one intermediate latent row.
        img_resolution,             # Output size in px.
        img_channels,               # Colour channels.
        latent_rows     = None,     # R rows per latent matrix (the paper: 512); None = StyleGAN2's vector.
        mapping_kwargs  = {},       # MappingNetwork arguments (num_layers, ...).
        synthesis_kwargs = {},      # SynthesisNetwork arguments (channel_base, num_fp16_res, ...).
    ):
        super().__init__()
        remember(self, z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                 latent_rows=latent_rows)
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, num_ws=self.synthesis.num_ws, **mapping_kwargs)
        needed = max(self.synthesis.max_channels, img_channels)
        if latent_rows is not None and latent_rows != 1 and latent_rows < needed:
            raise ValueError(f'latent_rows={latent_rows} is too small: every layer uses one row per output channel, '
                             f'so it must be >= {needed} (the widest layer) or 1')

    # Loading NVIDIA's records (torch_utils.checkpoint): their layouts translated into ours, then checked.
    nvlabs_arguments = staticmethod(nvlabs_layouts.generator_arguments)
    nvlabs_check = staticmethod(nvlabs_layouts.check_settings)

    @property
    def num_ws(self):
        """Number of per-layer latents the synthesis network takes."""
        return self.synthesis.num_ws

    @property
    def z_shape(self):
        """Per-image latent shape: `(z_dim,)` or `(R, z_dim)`."""
        return (self.z_dim,) if self.latent_rows is None else (self.latent_rows, self.z_dim)

    @property
    def w_shape(self):
        """Per-image, per-layer intermediate latent shape: `(w_dim,)` or `(R, w_dim)`."""
        return (self.w_dim,) if self.latent_rows is None else (self.latent_rows, self.w_dim)

    def latent_space(self, name=AUTO):
        """The `LatentSpace` `name` of this generator ('w', 'w+', 'W', 'W+'; 'auto' or None: W when it is
        overparameterized, w+ otherwise); ValueError for W or W+ of a StyleGAN2 generator."""
        return LatentSpace.for_generator(self, name)

    def sample_z(self, n, generator=None, device=None, row_spread=1.0):
        """`[n, *z_shape]` latents. Latent matrices use the paper's correlated rows
        `Z_i = (z~_i + z~) / sqrt(2)` (unit variance per entry, correlation 0.5 between rows).

        generator: a `torch.Generator`, a `numpy.random.RandomState` (NVIDIA's seed
        convention: `RandomState(seed).randn(n, z_dim)` for the baseline), or None.
        Drawn in float32 (float64 for a float64 copy of G: float32 draws of torch.randn differ in the
        last bit between CPUs with and without AVX2, float64 ones do not).
        row_spread: `a` in `Z_i = (a z~_i + z~) / sqrt(1 + a^2)` (unit variance, correlation
        `1 / (1 + a^2)` between rows): 1 is the paper's sampling, 0 gives identical rows (a
        fine-tuned StyleGAN2's vector in every row, see training.row_start). The same numbers are
        drawn whatever `a` is.
        """
        dtype = float_dtype_of(self.mapping.fc0.weight)     # float32 (float64 for a float64 copy of G)
        def randn(*shape):
            if isinstance(generator, np.random.RandomState):
                return torch.from_numpy(generator.randn(*shape)).to(device=device, dtype=dtype)
            where = device if generator is None else generator.device
            return torch.randn(shape, generator=generator, device=where, dtype=dtype).to(device)
        if self.latent_rows is None:
            return randn(n, self.z_dim)
        shared = randn(n, 1, self.z_dim)
        rows = randn(n, self.latent_rows, self.z_dim)
        if row_spread == 1:
            return (rows + shared) * np.float32(np.sqrt(0.5))
        a = float(row_spread)
        return (rows * np.float32(a) + shared) * np.float32(1 / np.sqrt(1 + a * a))

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor], truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, **synthesis_kwargs) -> torch.Tensor:
        """z `[N, *z_shape]`, c `[N, c_dim]` (or None) -> image `[N, C, res, res]`; see SynthesisNetwork.forward."""
        truncation = dict(truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(self.mapping(z, c, **truncation), **synthesis_kwargs)

#----------------------------------------------------------------------------
