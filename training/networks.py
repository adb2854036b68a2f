"""StyleGAN2 generator (Karras et al. 2020, stylegan2-ada-pytorch layout) with an optional
overparameterized latent (Poirier-Ginter et al., "Overparameterization Improves StyleGAN
Inversion", sec. 3).

The overparameterization is a shape, not a flag: with `latent_rows=R` a latent is a matrix
`[R, dim]` instead of a vector `[dim]`; the mapping maps every row at once, and each
synthesis layer with `O` output channels modulates output row `i` with the style of latent
row `i` (eq. 2). `latent_rows=None` is StyleGAN2. Parameter and buffer names match
stylegan2-ada-pytorch so that its state dicts load one to one.

Latent shapes (N = batch, L = `num_ws`):
    z  `[N, *G.z_shape]`        `(z_dim,)` or `(R, z_dim)`
    ws `[N, L, *G.w_shape]`     `(w_dim,)` or `(R, w_dim)`; W / w = the same latent for every layer
"""

import numpy as np
import torch

from torch_utils import misc, persistence
from torch_utils.ops import bias_act, upfirdn2d
from torch_utils.ops.modulated_conv2d import modulated_conv2d
from training.discriminator import Discriminator, DiscriminatorBlock, DiscriminatorEpilogue, MinibatchStdLayer  # noqa: F401  (re-export)
from training.layers import Conv2dLayer, FullyConnectedLayer, MappingNetwork, normalize_2nd_moment  # noqa: F401

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------

def _used_rows(w, num_rows):
    """Latent `[N, w_dim]` or `[N, R, w_dim]` -> only the rows a layer uses (R == 1 broadcasts)."""
    if w.ndim == 3 and w.shape[1] > num_rows:
        return w[:, :num_rows]
    return w

#----------------------------------------------------------------------------
# Modulated 3x3 convolution of the synthesis network (eq. 1, or eq. 2 for latent matrices).

@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    def __init__(self,
        in_channels,                    # Input channels.
        out_channels,                   # Output channels.
        w_dim,                          # Intermediate latent dimensionality.
        resolution,                     # Output resolution of this layer.
        kernel_size     = 3,            # Kernel width and height.
        up              = 1,            # Integer upsampling factor.
        use_noise       = True,         # Per-pixel noise input? (the paper: False)
        activation      = 'lrelu',      # Activation function.
        resample_filter = [1, 3, 3, 1], # Low-pass filter for resampling.
        conv_clamp      = None,         # Clamp the output to +-X, None = no clamping.
        channels_last   = False,        # Weights in channels_last memory format?
    ):
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = bias_act.activation_funcs[activation].def_gain

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        if use_noise:
            self.register_buffer('noise_const', torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode='random', fused_modconv=True, gain=1):
        """x `[N, I, res/up, res/up]`, w `[N, w_dim]` or `[N, R, w_dim]` -> `[N, O, res, res]`."""
        assert noise_mode in ('random', 'const', 'none')
        misc.assert_shape(x, [None, self.weight.shape[1], self.resolution // self.up, self.resolution // self.up])
        styles = self.affine(_used_rows(w, self.weight.shape[0]))       # [N, I] or [N, O, I]

        noise = None
        if self.use_noise and noise_mode == 'random':
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
        if self.use_noise and noise_mode == 'const':
            noise = self.noise_const * self.noise_strength

        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1), fused_modconv=fused_modconv)
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=act_clamp)

#----------------------------------------------------------------------------
# 1x1 modulated convolution to RGB, no demodulation (per-row styles for latent matrices).

@persistence.persistent_class
class ToRGBLayer(torch.nn.Module):
    def __init__(self,
        in_channels,                # Input channels.
        out_channels,               # Output (colour) channels.
        w_dim,                      # Intermediate latent dimensionality.
        kernel_size     = 1,        # Kernel width and height.
        conv_clamp      = None,     # Clamp the output to +-X, None = no clamping.
        channels_last   = False,    # Weights in channels_last memory format?
    ):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size ** 2))

    def forward(self, x, w, fused_modconv=True):
        """x `[N, I, H, W]`, w `[N, w_dim]` or `[N, R, w_dim]` -> `[N, C, H, W]`."""
        styles = self.affine(_used_rows(w, self.weight.shape[0])) * self.weight_gain
        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

#----------------------------------------------------------------------------
# One resolution of the synthesis network ('skip' architecture by default).

@persistence.persistent_class
class SynthesisBlock(torch.nn.Module):
    def __init__(self,
        in_channels,                        # Input channels, 0 = first block (learned constant).
        out_channels,                       # Output channels.
        w_dim,                              # Intermediate latent dimensionality.
        resolution,                         # Resolution of this block.
        img_channels,                       # Output colour channels.
        is_last,                            # Last block?
        architecture        = 'skip',       # 'orig', 'skip' or 'resnet'.
        resample_filter     = [1, 3, 3, 1], # Low-pass filter for resampling.
        conv_clamp          = None,         # Clamp conv outputs to +-X, None = no clamping.
        use_fp16            = False,        # Run this block in FP16?
        fp16_channels_last  = False,        # channels_last memory format with FP16?
        **layer_kwargs,                     # Arguments for SynthesisLayer.
    ):
        assert architecture in ('orig', 'skip', 'resnet')
        super().__init__()
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = (use_fp16 and fp16_channels_last)
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0

        common = dict(w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp, channels_last=self.channels_last)
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, resample_filter=resample_filter, **common, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **common, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == 'skip':
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp, channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == 'resnet':
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, **layer_kwargs):
        """ws `[N, num_conv + num_torgb, *w_shape]`; x, img from the previous block (None for the first)."""
        misc.assert_shape(ws, [None, self.num_conv + self.num_torgb] + [None] * (ws.ndim - 3) + [self.w_dim])
        w_iter = iter(ws.unbind(dim=1))
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        memory_format = torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format
        if fused_modconv is None:
            with misc.suppress_tracer_warnings():
                fused_modconv = (not self.training) and (dtype == torch.float32 or int(ws.shape[0]) == 1)

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=memory_format)
            x = x.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        else:
            misc.assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2])
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0:
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        elif self.architecture == 'resnet':
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, gain=np.sqrt(0.5), **layer_kwargs)
            x = y.add_(x)
        else:
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)

        if img is not None:
            misc.assert_shape(img, [None, self.img_channels, self.resolution // 2, self.resolution // 2])
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == 'skip':
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img.add_(y) if img is not None else y
        return x, img

#----------------------------------------------------------------------------
# Synthesis network ws -> image.

@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    def __init__(self,
        w_dim,                      # Intermediate latent dimensionality.
        img_resolution,             # Output resolution (power of two >= 4).
        img_channels,               # Output colour channels.
        channel_base    = 32768,    # Channels at resolution r: min(channel_base // r, channel_max).
        channel_max     = 512,      # Maximum channels of any layer.
        num_fp16_res    = 0,        # Run the N highest resolutions in FP16.
        **block_kwargs,             # Arguments for SynthesisBlock.
    ):
        assert img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.max_channels = max(channels.values())   # Rows a latent matrix needs (R >= this, or R == 1).

        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=(res == img_resolution),
                                   use_fp16=(res >= fp16_resolution), **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f'b{res}', block)

    def forward(self, ws, **block_kwargs):
        """ws `[N, num_ws, w_dim]` (w+) or `[N, num_ws, R, w_dim]` (W+) -> image `[N, C, res, res]` in about [-1, 1]."""
        misc.assert_shape(ws, [None, self.num_ws] + [None] * (ws.ndim - 3) + [self.w_dim])
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f'b{res}')
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), **block_kwargs)
            w_idx += block.num_conv
        return img

#----------------------------------------------------------------------------
# Generator = mapping + synthesis; `latent_rows` = R of the overparameterized model.

@persistence.persistent_class
class Generator(torch.nn.Module):
    def __init__(self,
        z_dim,                      # Latent (Z) dimensionality per row.
        c_dim,                      # Conditioning label dimensionality, 0 = unconditional.
        w_dim,                      # Intermediate latent (W) dimensionality per row.
        img_resolution,             # Output resolution.
        img_channels,               # Output colour channels.
        latent_rows     = None,     # R rows per latent matrix (paper: 512), None = StyleGAN2 latent vector.
        mapping_kwargs  = {},       # Arguments for MappingNetwork.
        synthesis_kwargs = {},      # Arguments for SynthesisNetwork.
    ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.latent_rows = latent_rows
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)
        needed = max(self.synthesis.max_channels, img_channels)
        if latent_rows is not None and latent_rows != 1 and latent_rows < needed:
            raise ValueError(f'latent_rows={latent_rows} is too small: every layer uses one row per output channel, '
                             f'so it must be >= {needed} (the widest layer) or 1')

    @property
    def z_shape(self):
        """Per-image latent shape: `(z_dim,)` or `(R, z_dim)`."""
        return (self.z_dim,) if self.latent_rows is None else (self.latent_rows, self.z_dim)

    @property
    def w_shape(self):
        """Per-image, per-layer intermediate latent shape: `(w_dim,)` or `(R, w_dim)`."""
        return (self.w_dim,) if self.latent_rows is None else (self.latent_rows, self.w_dim)

    def sample_z(self, n, generator=None, device=None):
        """`[n, *z_shape]` latents. Latent matrices use the paper's correlated rows
        `Z_i = (z~_i + z~) / sqrt(2)` (unit variance per entry, correlation 0.5 between rows).

        generator: a `torch.Generator`, a `numpy.random.RandomState` (NVIDIA's seed
        convention: `RandomState(seed).randn(n, z_dim)` for the baseline), or None.
        """
        def randn(*shape):
            if isinstance(generator, np.random.RandomState):
                return torch.from_numpy(generator.randn(*shape).astype(np.float32)).to(device)
            return torch.randn(shape, generator=generator, device=device if generator is None else generator.device).to(device)
        if self.latent_rows is None:
            return randn(n, self.z_dim)
        shared = randn(n, 1, self.z_dim)
        rows = randn(n, self.latent_rows, self.z_dim)
        return (rows + shared) * np.float32(np.sqrt(0.5))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs):
        """z `[N, *z_shape]`, c `[N, c_dim]` (or None) -> image `[N, C, res, res]`."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)

#----------------------------------------------------------------------------
