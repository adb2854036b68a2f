"""StyleGAN2 discriminator (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN",
fig. 7: residual blocks, minibatch standard deviation, projection conditioning of Miyato & Koyama 2018).

Images look the same whatever latent produced them, so one discriminator serves the baseline and the
overparameterized generator. Parameter names follow NVIDIA's StyleGAN2 pickles (`b{res}.conv0.weight`,
`b4.fc.weight`, `mapping.embed.weight`, ...).
"""

import math
from typing import Optional

import torch
from torch import nn

from torch_utils import misc
from torch_utils.ops import upfirdn2d
from torch_utils.persistence import persistent_class
from training import nvlabs_layouts
from training.layers import (
    Conv2dLayer,
    FullyConnectedLayer,
    MappingNetwork,
    channels_at,
    compute_format,
    lowest_fp16_resolution,
    register_resample_filter,
    remember,
)

_ARCHITECTURES = ('orig', 'skip', 'resnet')
_HALF_VARIANCE = math.sqrt(0.5)   # each branch of a residual sum, so the sum keeps unit variance


#----------------------------------------------------------------------------
# One resolution: (fromRGB +) two 3x3 convolutions, the second halving the resolution.

@persistent_class
class DiscriminatorBlock(nn.Module):
    def __init__(self,
        in_channels,                        # Feature maps from the previous block; 0 = first block (reads RGB).
        tmp_channels,                       # Feature maps inside the block.
        out_channels,                       # Feature maps handed to the next block (at half resolution).
        resolution,                         # Resolution this block reads.
        img_channels,                       # Colour channels of the image.
        first_layer_idx,                    # Running index of this block's first layer (for freeze_layers).
        architecture        = 'resnet',     # 'orig' (plain), 'skip' (image at every scale), 'resnet'.
        activation          = 'lrelu',      # Nonlinearity of the convolutions.
        resample_filter     = [1, 3, 3, 1], # Low-pass filter taps for downsampling.
        conv_clamp          = None,         # Clamp conv outputs to +-this; None = no clamp.
        use_fp16            = False,        # Compute this block in FP16?
        fp16_channels_last  = False,        # With FP16, use channels_last memory format?
        freeze_layers       = 0,            # Freeze-D: layers with a running index below this stay fixed.
        fp16_cuda_only      = False,        # FP16 on CUDA devices only, FP32 elsewhere (as NVIDIA's stylegan3
                                            # repository); False = FP16 on any device (stylegan2-ada-pytorch).
    ):
        assert architecture in _ARCHITECTURES
        assert in_channels in (0, tmp_channels)
        super().__init__()
        remember(self, in_channels=in_channels, resolution=resolution, img_channels=img_channels,
                 first_layer_idx=first_layer_idx, architecture=architecture, use_fp16=use_fp16,
                 channels_last=use_fp16 and fp16_channels_last, fp16_cuda_only=fp16_cuda_only)
        register_resample_filter(self, resample_filter)

        reads_image = in_channels == 0 or architecture == 'skip'
        residual = architecture == 'resnet'
        layer_names = ['fromrgb'] * reads_image + ['conv0', 'conv1'] + ['skip'] * residual
        self.num_layers = len(layer_names)
        frozen = {name: first_layer_idx + i < freeze_layers for i, name in enumerate(layer_names)}
        shared = dict(activation=activation, conv_clamp=conv_clamp, channels_last=self.channels_last)
        halving = dict(down=2, resample_filter=resample_filter)
        if reads_image:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, trainable=not frozen['fromrgb'], **shared)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, trainable=not frozen['conv0'], **shared)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, trainable=not frozen['conv1'], **halving, **shared)
        if residual:
            self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, trainable=not frozen['skip'],
                                    channels_last=self.channels_last, **halving)

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], force_fp32: bool = False):
        """x `[N, tmp, res, res]` (None in the first block), img `[N, C, res, res]` ->
        (features `[N, out, res/2, res/2]`, the image at res/2 for 'skip', else None)."""
        if self.fp16_cuda_only and (img if x is None else x).device.type != 'cuda':
            force_fp32 = True
        compute = compute_format(self.use_fp16, self.channels_last, force_fp32)
        res = self.resolution
        if x is not None:
            misc.assert_shape(x, [None, self.in_channels, res, res])
            x = x.to(**compute)
        if hasattr(self, 'fromrgb'):
            misc.assert_shape(img, [None, self.img_channels, res, res])
            img = img.to(**compute)
            from_image = self.fromrgb(img)
            x = from_image if x is None else x + from_image
            keep_image = self.architecture == 'skip'
            img = upfirdn2d.downsample2d(img, self.resample_filter) if keep_image else None
        if not hasattr(self, 'skip'):
            return self.conv1(self.conv0(x)), img
        shortcut = self.skip(x, gain=_HALF_VARIANCE)
        return shortcut.add_(self.conv1(self.conv0(x), gain=_HALF_VARIANCE)), img

#----------------------------------------------------------------------------
# Minibatch standard deviation (Karras et al. 2018, sec. 3): a cue for the variety of a batch.

@persistent_class
class MinibatchStdLayer(nn.Module):
    def __init__(self,
        group_size,                 # Images per statistics group; None = the whole minibatch.
        num_channels = 1,           # Feature maps appended (channels are split into this many sets).
    ):
        super().__init__()
        remember(self, group_size=group_size, num_channels=num_channels)

    def forward(self, x):
        """`[N, C, H, W]` -> `[N, C + num_channels, H, W]`.

        Groups are strided: with `n = N / G` groups of `G` images, image `i` belongs to group `i mod n`.
        For each group and each of the `num_channels` sets of `C / num_channels` channels, the standard
        deviation over the group's images is averaged over channels and pixels and appended as a
        constant feature map to every image of the group. N must be a multiple of G.
        """
        N, C, H, W = x.shape
        G = N if self.group_size is None else min(self.group_size, N)
        sets = self.num_channels
        per_group = x.reshape(G, -1, sets, C // sets, H, W)            # [G, n, sets, C/sets, H, W]
        deviation = per_group - per_group.mean(dim=0)
        std = (deviation.square().mean(dim=0) + 1e-8).sqrt()          # [n, sets, C/sets, H, W]
        summary = std.mean(dim=[2, 3, 4])                                # [n, sets]
        maps = summary.reshape(-1, sets, 1, 1).repeat(G, 1, H, W)      # [N, sets, H, W]
        return torch.cat([x, maps], dim=1)

#----------------------------------------------------------------------------
# The 4x4 head: minibatch std, a conv, two dense layers, and the projection onto the mapped label.

@persistent_class
class DiscriminatorEpilogue(nn.Module):
    def __init__(self,
        in_channels,                    # Feature maps at 4x4.
        cmap_dim,                       # Width of the mapped label; 0 = unconditional (one logit).
        resolution,                     # Spatial size of the input (4).
        img_channels,                   # Colour channels (read here only by 'skip').
        architecture        = 'resnet', # 'orig', 'skip' or 'resnet' (as the blocks).
        mbstd_group_size    = 4,        # Minibatch-std group size; None = the whole minibatch.
        mbstd_num_channels  = 1,        # Minibatch-std feature maps; 0 = no minibatch std.
        activation          = 'lrelu',  # Nonlinearity of the conv and the first dense layer.
        conv_clamp          = None,     # Clamp the conv output to +-this; None = no clamp.
    ):
        assert architecture in _ARCHITECTURES
        super().__init__()
        remember(self, in_channels=in_channels, cmap_dim=cmap_dim, resolution=resolution, img_channels=img_channels,
                 architecture=architecture)
        if architecture == 'skip':                      # the 4x4 image joins the features
            self.fromrgb = Conv2dLayer(img_channels, in_channels, 1, activation=activation)
        self.mbstd = None
        if mbstd_num_channels > 0:
            self.mbstd = MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution * resolution, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, cmap_dim if cmap_dim > 0 else 1)

    def forward(self, x: torch.Tensor, img: Optional[torch.Tensor], cmap: Optional[torch.Tensor],
                force_fp32: bool = False) -> torch.Tensor:
        """x `[N, in, 4, 4]`, cmap `[N, cmap_dim]` (None if unconditional) -> logits `[N, 1]`, always FP32.

        Conditional: the logit is the projection `<out(x), cmap> / sqrt(cmap_dim)`.
        """
        fp32 = dict(dtype=torch.float32, memory_format=torch.contiguous_format)
        res = self.resolution
        misc.assert_shape(x, [None, self.in_channels, res, res])
        x = x.to(**fp32)
        if hasattr(self, 'fromrgb'):
            misc.assert_shape(img, [None, self.img_channels, res, res])
            x = x + self.fromrgb(img.to(**fp32))
        features = x if self.mbstd is None else self.mbstd(x)
        out = self.out(self.fc(self.conv(features).flatten(1)))
        if self.cmap_dim == 0:
            return out
        misc.assert_shape(cmap, [len(out), self.cmap_dim])
        return (out * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))

#----------------------------------------------------------------------------
# Discriminator: blocks from the image resolution down to 8x8, then the 4x4 head.

@persistent_class
class Discriminator(nn.Module):
    def __init__(self,
        c_dim,                          # Width of the label; 0 = unconditional.
        img_resolution,                 # Image size in px (a power of two).
        img_channels,                   # Colour channels.
        architecture        = 'resnet', # 'orig', 'skip' or 'resnet'.
        channel_base        = 32768,    # Feature maps at resolution r: channel_base / r, ...
        channel_max         = 512,      # ... capped at this.
        num_fp16_res        = 0,        # Compute the blocks of this many highest resolutions in FP16.
        conv_clamp          = None,     # Clamp conv outputs to +-this; None = no clamp.
        cmap_dim            = None,     # Width of the mapped label; None = feature maps at 4x4.
        block_kwargs        = {},       # More DiscriminatorBlock arguments.
        mapping_kwargs      = {},       # More MappingNetwork arguments (label mapping).
        epilogue_kwargs     = {},       # More DiscriminatorEpilogue arguments.
    ):
        super().__init__()
        log2 = int(math.log2(img_resolution))
        remember(self, c_dim=c_dim, img_resolution=img_resolution, img_resolution_log2=log2, img_channels=img_channels,
                 block_resolutions=[2 ** k for k in range(log2, 2, -1)])
        width = {res: channels_at(res, channel_base, channel_max) for res in self.block_resolutions + [4]}
        fp16_from = lowest_fp16_resolution(img_resolution, num_fp16_res)
        if c_dim == 0:
            cmap_dim = 0
        elif cmap_dim is None:
            cmap_dim = width[4]

        shared = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        layers_so_far = 0                               # running layer index, for Freeze-D
        for i, res in enumerate(self.block_resolutions):
            feature_input = width[res] if i > 0 else 0     # the first block reads the image only
            block = DiscriminatorBlock(feature_input, width[res], width[res // 2],
                                       resolution=res, first_layer_idx=layers_so_far, use_fp16=res >= fp16_from,
                                       **block_kwargs, **shared)
            self.add_module(f'b{res}', block)
            layers_so_far += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(width[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs, **shared)

    # Loading NVIDIA's records (torch_utils.checkpoint): their defaults filled in, then checked.
    nvlabs_arguments = staticmethod(nvlabs_layouts.discriminator_arguments)
    nvlabs_check = staticmethod(nvlabs_layouts.check_settings)

    def forward(self, img: torch.Tensor, c: Optional[torch.Tensor], **block_kwargs) -> torch.Tensor:
        """img `[N, C, res, res]` in about [-1, 1], c `[N, c_dim]` (ignored if unconditional) -> logits `[N, 1]`.

        block_kwargs: `force_fp32=True` computes every block in FP32.
        """
        features = None
        for block in (getattr(self, f'b{res}') for res in self.block_resolutions):
            features, img = block(features, img, **block_kwargs)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(features, img, cmap)

#----------------------------------------------------------------------------
