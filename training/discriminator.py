"""StyleGAN2 discriminator (Karras et al. 2020; stylegan2-ada-pytorch layout: resnet blocks,
minibatch standard deviation, projection conditioning). Images are the same for the
baseline and the overparameterized generator, so one discriminator serves both."""

import numpy as np
import torch

from torch_utils import misc, persistence
from torch_utils.ops import upfirdn2d
from training.layers import Conv2dLayer, FullyConnectedLayer, MappingNetwork

#----------------------------------------------------------------------------
# One resolution of the discriminator.

@persistence.persistent_class
class DiscriminatorBlock(torch.nn.Module):
    def __init__(self,
        in_channels,                        # Input channels, 0 = first block (from RGB).
        tmp_channels,                       # Intermediate channels.
        out_channels,                       # Output channels.
        resolution,                         # Input resolution of this block.
        img_channels,                       # Input colour channels.
        first_layer_idx,                    # Index of this block's first layer (for freeze_layers).
        architecture        = 'resnet',     # 'orig', 'skip' or 'resnet'.
        activation          = 'lrelu',      # Activation function.
        resample_filter     = [1, 3, 3, 1], # Low-pass filter for resampling.
        conv_clamp          = None,         # Clamp conv outputs to +-X, None = no clamping.
        use_fp16            = False,        # Run this block in FP16?
        fp16_channels_last  = False,        # channels_last memory format with FP16?
        freeze_layers       = 0,            # Freeze-D: number of leading layers kept frozen.
    ):
        assert in_channels in (0, tmp_channels)
        assert architecture in ('orig', 'skip', 'resnet')
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = (use_fp16 and fp16_channels_last)
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.num_layers = 0

        def trainable():
            idx = self.first_layer_idx + self.num_layers
            self.num_layers += 1
            return idx >= freeze_layers

        common = dict(activation=activation, conv_clamp=conv_clamp, channels_last=self.channels_last)
        if in_channels == 0 or architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, trainable=trainable(), **common)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, trainable=trainable(), **common)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, down=2, trainable=trainable(),
                                 resample_filter=resample_filter, **common)
        if architecture == 'resnet':
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2, trainable=trainable(),
                                    resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x, img, force_fp32=False):
        """x `[N, tmp, res, res]` (None for the first block), img `[N, C, res, res]` -> (x at res/2, img)."""
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        memory_format = torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format
        if x is not None:
            misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
            x = x.to(dtype=dtype, memory_format=memory_format)
        if self.in_channels == 0 or self.architecture == 'skip':
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = upfirdn2d.downsample2d(img, self.resample_filter) if self.architecture == 'skip' else None
        if self.architecture == 'resnet':
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=np.sqrt(0.5))
            x = y.add_(x)
        else:
            x = self.conv1(self.conv0(x))
        return x, img

#----------------------------------------------------------------------------
# Minibatch standard deviation (Karras et al. 2018), as appended by StyleGAN2's epilogue.

@persistence.persistent_class
class MinibatchStdLayer(torch.nn.Module):
    def __init__(self,
        group_size,                 # Samples per group, None = whole minibatch.
        num_channels = 1,           # Feature channels appended.
    ):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        """`[N, C, H, W]` -> `[N, C + F, H, W]`; N must be divisible by the group size."""
        N, C, H, W = x.shape
        with misc.suppress_tracer_warnings():
            G = min(int(self.group_size), int(N)) if self.group_size is not None else int(N)
        F = self.num_channels
        y = x.reshape(G, -1, F, C // F, H, W)          # [GnFcHW]
        y = y - y.mean(dim=0)                           # deviation from the group mean
        y = (y.square().mean(dim=0) + 1e-8).sqrt()      # [nFcHW] stddev over the group
        y = y.mean(dim=[2, 3, 4])                       # [nF]
        y = y.reshape(-1, F, 1, 1).repeat(G, 1, H, W)   # [NFHW]
        return torch.cat([x, y], dim=1)

#----------------------------------------------------------------------------
# Last block at 4x4: minibatch std, conv, two dense layers, projection conditioning.

@persistence.persistent_class
class DiscriminatorEpilogue(torch.nn.Module):
    def __init__(self,
        in_channels,                    # Input channels.
        cmap_dim,                       # Mapped label dimensionality, 0 = unconditional.
        resolution,                     # Resolution (4).
        img_channels,                   # Input colour channels.
        architecture        = 'resnet', # 'orig', 'skip' or 'resnet'.
        mbstd_group_size    = 4,        # Minibatch-std group size, None = whole minibatch.
        mbstd_num_channels  = 1,        # Minibatch-std features, 0 = disable.
        activation          = 'lrelu',  # Activation function.
        conv_clamp          = None,     # Clamp conv outputs to +-X, None = no clamping.
    ):
        assert architecture in ('orig', 'skip', 'resnet')
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        if architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation, conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * (resolution ** 2), in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap, force_fp32=False):
        """x `[N, C, 4, 4]`, cmap `[N, cmap_dim]` or None -> logits `[N, 1]` (always FP32)."""
        misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.architecture == 'skip':
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            x = x + self.fromrgb(img.to(dtype=torch.float32, memory_format=torch.contiguous_format))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.out(self.fc(self.conv(x).flatten(1)))
        if self.cmap_dim > 0:
            misc.assert_shape(cmap, [None, self.cmap_dim])
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        return x

#----------------------------------------------------------------------------
# Discriminator: image (+ label) -> realness logit.

@persistence.persistent_class
class Discriminator(torch.nn.Module):
    def __init__(self,
        c_dim,                          # Conditioning label dimensionality, 0 = unconditional.
        img_resolution,                 # Input resolution.
        img_channels,                   # Input colour channels.
        architecture        = 'resnet', # 'orig', 'skip' or 'resnet'.
        channel_base        = 32768,    # Channels at resolution r: min(channel_base // r, channel_max).
        channel_max         = 512,      # Maximum channels of any layer.
        num_fp16_res        = 0,        # Run the N highest resolutions in FP16.
        conv_clamp          = None,     # Clamp conv outputs to +-X, None = no clamping.
        cmap_dim            = None,     # Mapped label dimensionality, None = channels at 4x4.
        block_kwargs        = {},       # Arguments for DiscriminatorBlock.
        mapping_kwargs      = {},       # Arguments for the label MappingNetwork.
        epilogue_kwargs     = {},       # Arguments for DiscriminatorEpilogue.
    ):
        super().__init__()
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        cmap_dim = (channels[4] if cmap_dim is None else cmap_dim) if c_dim > 0 else 0

        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res], channels[res // 2],
                                       resolution=res, first_layer_idx=layer_idx, use_fp16=(res >= fp16_resolution),
                                       **block_kwargs, **common)
            setattr(self, f'b{res}', block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None, **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs, **common)

    def forward(self, img, c, **block_kwargs):
        """img `[N, C, res, res]` in about [-1, 1], c `[N, c_dim]` -> logits `[N, 1]`."""
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f'b{res}')(x, img, **block_kwargs)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, img, cmap)

#----------------------------------------------------------------------------
