"""Shared layers of the StyleGAN2 networks (stylegan2-ada-pytorch layout): equalized-lr dense
and convolution layers, and the mapping network, which maps latent rows independently
(Poirier-Ginter et al., sec. 3.1)."""

import numpy as np
import torch

from torch_utils import misc, persistence
from torch_utils.ops import bias_act, conv2d_resample, upfirdn2d

#----------------------------------------------------------------------------

def normalize_2nd_moment(x, dim=1, eps=1e-8):
    """Scale `x` to unit mean square along `dim`."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()

#----------------------------------------------------------------------------
# Dense layer with equalized learning rate (StyleGAN2, stylegan2-ada-pytorch).

@persistence.persistent_class
class FullyConnectedLayer(torch.nn.Module):
    def __init__(self,
        in_features,                # Input features.
        out_features,               # Output features.
        bias            = True,     # Add a bias before the activation?
        activation      = 'linear', # Activation: 'linear', 'lrelu', ... (see bias_act).
        lr_multiplier   = 1,        # Learning-rate multiplier (equalized learning rate).
        bias_init       = 0,        # Initial bias value.
    ):
        super().__init__()
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], np.float32(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        """`[..., in_features]` -> `[..., out_features]` (leading dims flattened into one matmul)."""
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == 'linear' and b is not None:
            x = torch.addmm(b.unsqueeze(0), x, w.t())
        else:
            x = bias_act.bias_act(x.matmul(w.t()), b, act=self.activation)
        return x.reshape(*lead, x.shape[-1])

#----------------------------------------------------------------------------
# Convolution with optional up/down-sampling, bias and activation (discriminator, resnet skips).

@persistence.persistent_class
class Conv2dLayer(torch.nn.Module):
    def __init__(self,
        in_channels,                    # Input channels.
        out_channels,                   # Output channels.
        kernel_size,                    # Kernel width and height.
        bias            = True,         # Add a bias before the activation?
        activation      = 'linear',     # Activation function.
        up              = 1,            # Integer upsampling factor.
        down            = 1,            # Integer downsampling factor.
        resample_filter = [1, 3, 3, 1], # Low-pass filter for resampling.
        conv_clamp      = None,         # Clamp the output to +-X, None = no clamping.
        channels_last   = False,        # Weights in channels_last memory format?
        trainable       = True,         # Parameters (True) or frozen buffers (False)?
    ):
        super().__init__()
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size ** 2))
        self.act_gain = bias_act.activation_funcs[activation].def_gain

        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        bias = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias) if bias is not None else None
        else:
            self.register_buffer('weight', weight)
            if bias is not None:
                self.register_buffer('bias', bias)
            else:
                self.bias = None

    def forward(self, x, gain=1):
        """`[N, I, H, W]` -> `[N, O, H*up/down, W*up/down]`."""
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = conv2d_resample.conv2d_resample(x=x, w=w.to(x.dtype), f=self.resample_filter, up=self.up,
                                            down=self.down, padding=self.padding, flip_weight=(self.up == 1))
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=act_clamp)

#----------------------------------------------------------------------------
# Mapping network z -> w, applied row-wise to latent matrices (paper sec. 3.1).

@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    def __init__(self,
        z_dim,                      # Latent (Z) dimensionality per row, 0 = no latent.
        c_dim,                      # Conditioning label (C) dimensionality, 0 = no label.
        w_dim,                      # Intermediate latent (W) dimensionality per row.
        num_ws,                     # Number of per-layer latents to output, None = no broadcast.
        num_layers      = 8,        # Number of mapping layers (the paper uses 2).
        embed_features  = None,     # Label embedding dimensionality, None = w_dim.
        layer_features  = None,     # Hidden features, None = w_dim.
        activation      = 'lrelu',  # Activation function.
        lr_multiplier   = 0.01,     # Learning-rate multiplier of the mapping layers.
        w_avg_beta      = 0.995,    # Decay of the running mean of W, None = do not track.
    ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        embed_features = (w_dim if embed_features is None else embed_features) if c_dim > 0 else 0
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier)
            setattr(self, f'fc{idx}', layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer('w_avg', torch.zeros([w_dim]))   # Row-agnostic mean of W.

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, skip_w_avg_update=False):
        """z `[N, z_dim]` or `[N, R, z_dim]`, c `[N, c_dim]` -> ws `[N, num_ws, *z.shape[1:-1], w_dim]`.

        Every row is mapped independently in one batched pass (`[N*R, z_dim]`); the label
        embedding is shared by the rows of an image. The per-layer broadcast is an expand
        view: clone before writing into it.
        """
        if self.z_dim > 0:
            batch_shape = z.shape[:-1]
            misc.assert_shape(z, [None] * (z.ndim - 1) + [self.z_dim])
        else:
            batch_shape = c.shape[:1]
        num_rows = int(np.prod(batch_shape[1:], dtype=np.int64))

        x = None
        if self.z_dim > 0:
            x = normalize_2nd_moment(z.to(torch.float32).reshape(-1, self.z_dim))         # [N*R, z_dim]
        if self.c_dim > 0:
            misc.assert_shape(c, [batch_shape[0], self.c_dim])
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))                    # [N, embed]
            y = y.repeat_interleave(num_rows, dim=0) if num_rows != 1 else y             # [N*R, embed]
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f'fc{idx}')(x)

        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        x = x.reshape(*batch_shape, self.w_dim)                                          # [N, (R,) w_dim]
        if self.num_ws is not None:
            x = x.unsqueeze(1).expand(x.shape[0], self.num_ws, *x.shape[1:])             # [N, L, (R,) w_dim]
        if truncation_psi != 1:
            assert self.w_avg_beta is not None, 'truncation needs a tracked w_avg'
            truncated = self.w_avg.lerp(x, truncation_psi)
            if self.num_ws is None or truncation_cutoff is None:
                x = truncated
            else:
                x = torch.cat([truncated[:, :truncation_cutoff], x[:, truncation_cutoff:]], dim=1)
        return x

