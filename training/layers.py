"""Building blocks shared by the generator and the discriminator: equalized-learning-rate dense and
convolution layers (Karras et al. 2018, "Progressive Growing of GANs", sec. 4.1) and the mapping
network z -> w (Karras et al. 2019), which maps the rows of a latent matrix independently
(Poirier-Ginter et al., "Overparameterization Improves StyleGAN Inversion", sec. 3.1).

Equalized learning rate: a weight is stored as `N(0, 1) / lr_multiplier` and multiplied at run time
by `lr_multiplier / sqrt(fan_in)`, so every layer starts with unit-variance outputs and Adam sees
weights of similar scale. Parameter and buffer names are those of NVIDIA's StyleGAN2 pickles, so
their state dicts load into these classes one to one.
"""

import math
from typing import Optional

import torch
from torch import nn

from torch_utils import misc
from torch_utils.ops import bias_act, conv2d_resample, upfirdn2d
from torch_utils.persistence import persistent_class

#----------------------------------------------------------------------------
# Small helpers.

def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Divide `x` by its root mean square along `dim` (the pixel norm of a latent)."""
    mean_square = x.square().mean(dim=dim, keepdim=True)
    return x * (mean_square + eps).rsqrt()


def channels_at(resolution, channel_base, channel_max):
    """Feature maps of a StyleGAN2 layer at `resolution` px: `channel_base / resolution`, capped."""
    return min(channel_base // resolution, channel_max)


def lowest_fp16_resolution(img_resolution, num_fp16_res):
    """Resolutions >= this run in FP16: the `num_fp16_res` highest ones, never 4x4."""
    highest_log2 = int(math.log2(img_resolution))
    return max(2 ** (highest_log2 + 1 - num_fp16_res), 8)


def memory_format_of(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


def float_dtype_of(tensor):
    """The dtype a layer computes in outside FP16: float32 for weights stored in float32 or less, float64 for a
    network converted with `.double()` (exact references in tests; never a training setting)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def compute_format(use_fp16, channels_last, force_fp32, float_dtype=torch.float32):
    """Keyword arguments of `Tensor.to` for a block's activations: FP16 (and channels_last, if asked)
    for an FP16 block unless `force_fp32`; `float_dtype` (FP32, see `float_dtype_of`) and contiguous otherwise."""
    if force_fp32 or not use_fp16:
        return dict(dtype=float_dtype, memory_format=memory_format_of(channels_last and not force_fp32))
    return dict(dtype=torch.float16, memory_format=memory_format_of(channels_last))


def remember(module, **settings):
    """Keep constructor settings as attributes (the names NVIDIA's pickles record, for inspection)."""
    for name, value in settings.items():
        setattr(module, name, value)


def register_resample_filter(module, taps):
    """Buffer `resample_filter`: the normalized 2-D low-pass filter built from 1-D `taps`."""
    module.register_buffer('resample_filter', upfirdn2d.setup_filter(taps))


def store_tensor(module, name, value, trainable):
    """Register `value` as a parameter (trainable) or as a buffer (frozen); None registers nothing."""
    if value is None:
        setattr(module, name, None)
    elif trainable:
        module.register_parameter(name, nn.Parameter(value))
    else:
        module.register_buffer(name, value)


def default_gain(activation):
    """Output scale that keeps unit variance through `activation` (sqrt(2) for lrelu, 1 for linear)."""
    return bias_act.activation_funcs[activation].def_gain


def activate(x, bias, activation, act_gain, gain, conv_clamp):
    """Bias, activation, then the output scale `act_gain * gain`, clamped to +-`conv_clamp * gain`.

    A layer whose output is scaled by `gain` (e.g. sqrt(1/2) in a residual sum) clamps to the
    correspondingly scaled range, so the clamp acts on the same pre-scale magnitudes.
    """
    clamp = None if conv_clamp is None else conv_clamp * gain
    return bias_act.bias_act(x, bias, act=activation, gain=act_gain * gain, clamp=clamp)

#----------------------------------------------------------------------------
# Dense layer with equalized learning rate.

@persistent_class
class FullyConnectedLayer(nn.Module):
    def __init__(self,
        in_features,                # Width of the input.
        out_features,               # Width of the output.
        bias            = True,     # Learn an additive bias (applied before the activation)?
        activation      = 'linear', # Nonlinearity after the bias, a name known to bias_act.
        lr_multiplier   = 1,        # Scale of this layer's effective learning rate.
        bias_init       = 0,        # Starting value of every bias entry.
        trainable       = True,     # False stores weight and bias as frozen buffers.
    ):
        super().__init__()
        remember(self, activation=activation)
        # (No in_features / out_features attributes: their presence marks the records of NVIDIA's stylegan3
        # repository, see training.nvlabs_layouts; the weight's shape says them.)
        # Equalized learning rate: run-time scales of the stored weight and bias.
        self.weight_gain, self.bias_gain = lr_multiplier / math.sqrt(in_features), lr_multiplier
        initial_weight = torch.randn([out_features, in_features]) / lr_multiplier
        initial_bias = torch.full([out_features], float(bias_init)) if bias else None
        store_tensor(self, 'weight', initial_weight, trainable)
        store_tensor(self, 'bias', initial_bias, trainable)

    def _effective_bias(self, dtype):
        """The stored bias times its learning-rate scale, in `dtype`; None without a bias."""
        if self.bias is None:
            return None
        bias = self.bias.to(dtype)
        return bias if self.bias_gain == 1 else bias * self.bias_gain

    def forward(self, x):
        """`[..., in_features]` -> `[..., out_features]`; leading dims go through one matrix product."""
        out_features, in_features = self.weight.shape
        flat = x.reshape(-1, in_features)
        weight = self.weight.to(x.dtype) * self.weight_gain
        bias = self._effective_bias(x.dtype)
        if bias is not None and self.activation == 'linear':
            y = torch.addmm(bias.unsqueeze(0), flat, weight.t())       # bias + flat @ weight^T in one call
        else:
            y = bias_act.bias_act(flat.matmul(weight.t()), bias, act=self.activation)
        return y.reshape(*x.shape[:-1], out_features)

#----------------------------------------------------------------------------
# Convolution with equalized learning rate, optional resampling, bias and activation.

@persistent_class
class Conv2dLayer(nn.Module):
    def __init__(self,
        in_channels,                    # Input feature maps.
        out_channels,                   # Output feature maps.
        kernel_size,                    # Square kernel size (odd: 'same' padding).
        bias            = True,         # Learn an additive bias?
        activation      = 'linear',     # Nonlinearity, a name known to bias_act.
        up              = 1,            # Upsample the input by this factor first (transposed conv).
        down            = 1,            # Downsample the output by this factor.
        resample_filter = [1, 3, 3, 1], # 1-D taps of the separable low-pass filter used to resample.
        conv_clamp      = None,         # Clamp outputs to +-this (FP16 safety); None = no clamp.
        channels_last   = False,        # Keep the weight in channels_last memory format?
        trainable       = True,         # False stores weight and bias as frozen buffers.
    ):
        super().__init__()
        remember(self, in_channels=in_channels, out_channels=out_channels, activation=activation, up=up, down=down,
                 conv_clamp=conv_clamp, padding=kernel_size // 2)
        register_resample_filter(self, resample_filter)
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.act_gain = default_gain(activation)
        shape = [out_channels, in_channels, kernel_size, kernel_size]
        store_tensor(self, 'weight', torch.randn(shape).to(memory_format=memory_format_of(channels_last)), trainable)
        store_tensor(self, 'bias', torch.zeros([out_channels]) if bias else None, trainable)

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        """`[N, in, H, W]` -> `[N, out, H * up / down, W * up / down]`, outputs scaled by `gain`."""
        scaled_weight = (self.weight * self.weight_gain).to(x.dtype)
        y = conv2d_resample.conv2d_resample(x=x, w=scaled_weight, f=self.resample_filter, up=self.up, down=self.down,
                                            padding=self.padding, flip_weight=(self.up == 1))
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return activate(y, bias, self.activation, self.act_gain, gain, self.conv_clamp)

#----------------------------------------------------------------------------
# Mapping network: z (and an optional label) -> w, row by row for latent matrices.

@persistent_class
class MappingNetwork(nn.Module):
    def __init__(self,
        z_dim,                      # Width of one latent row; 0 = labels only (the discriminator's use).
        c_dim,                      # Width of the label; 0 = unconditional.
        w_dim,                      # Width of one intermediate latent row.
        num_ws,                     # Copies of w to output (one per synthesis layer); None = just w.
        num_layers      = 8,        # Dense layers (the paper trains with 2).
        embed_features  = None,     # Width of the label embedding; None = w_dim.
        layer_features  = None,     # Width of the hidden layers; None = w_dim.
        activation      = 'lrelu',  # Nonlinearity of every dense layer.
        lr_multiplier   = 0.01,     # Learning-rate scale of the dense layers (not of the embedding).
        w_avg_beta      = 0.995,    # Per-step decay of the running mean of w; None = no running mean.
    ):
        super().__init__()
        remember(self, z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws, num_layers=num_layers,
                 w_avg_beta=w_avg_beta)

        label_width = 0
        if c_dim > 0:
            label_width = w_dim if embed_features is None else embed_features
            self.embed = FullyConnectedLayer(c_dim, label_width)
        hidden = w_dim if layer_features is None else layer_features
        widths = [z_dim + label_width] + [hidden] * (num_layers - 1) + [w_dim]
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:num_layers + 1])):   # none for 0 layers
            self.add_module(f'fc{i}', FullyConnectedLayer(fan_in, fan_out, activation=activation,
                                                          lr_multiplier=lr_multiplier))
        if self.tracks_w_avg:
            self.register_buffer('w_avg', torch.zeros([w_dim]))    # one mean for all rows and layers

    @property
    def tracks_w_avg(self):
        """A running mean of w exists for a generator's mapping (per-layer outputs, a decay given)."""
        return self.num_ws is not None and self.w_avg_beta is not None

    def _inputs(self, z, c, num_images, rows_per_image):
        """Normalized latent rows, each followed by its image's normalized label embedding: `[N*R, F]`."""
        parts = []
        dtype = float_dtype_of(next(self.parameters()))          # fc0's, or the label embedding's
        if self.z_dim > 0:
            parts.append(normalize_2nd_moment(z.to(dtype).reshape(-1, self.z_dim)))
        if self.c_dim > 0:
            misc.assert_shape(c, [num_images, self.c_dim])
            label = normalize_2nd_moment(self.embed(c.to(dtype)))                      # [N, embed]
            if rows_per_image != 1:
                label = label.repeat_interleave(rows_per_image, dim=0)               # [N*R, embed]
            parts.append(label)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(self, z: Optional[torch.Tensor], c: Optional[torch.Tensor], truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, skip_w_avg_update: bool = False) -> torch.Tensor:
        """z `[N, z_dim]` or `[N, R, z_dim]`, c `[N, c_dim]` -> ws `[N, num_ws, *z.shape[1:-1], w_dim]`.

        The rows of a latent matrix are mapped in one batch of `N*R` vectors and share their image's
        label. In training mode the running mean `w_avg` follows the mean over all mapped rows.
        Truncation moves ws toward `w_avg` by `truncation_psi` (in the first `truncation_cutoff`
        layers only, if given). Without truncation the layer copies are an expand view: clone
        before writing into them.
        """
        if self.z_dim > 0:
            misc.assert_shape(z, [None] * (z.ndim - 1) + [self.z_dim])
            image_shape = z.shape[:-1]                  # (N,) or (N, R)
        else:
            image_shape = c.shape[:1]
        rows_per_image = math.prod(image_shape[1:])

        w = self._inputs(z, c, image_shape[0], rows_per_image)
        for i in range(self.num_layers):
            w = getattr(self, f'fc{i}')(w)

        if self.training and self.tracks_w_avg and not skip_w_avg_update:
            batch_mean = w.detach().mean(dim=0)
            self.w_avg.copy_(torch.lerp(batch_mean, self.w_avg, self.w_avg_beta))

        w = w.reshape(*image_shape, self.w_dim)
        per_layer = self.num_ws is not None
        if per_layer:
            w = w.unsqueeze(1).expand(w.shape[0], self.num_ws, *w.shape[1:])      # [N, num_ws, (R,) w_dim]
        if truncation_psi == 1:
            return w
        assert self.w_avg_beta is not None, 'truncation needs the running mean w_avg'
        pulled = torch.lerp(self.w_avg, w, truncation_psi)
        if truncation_cutoff is not None and per_layer:
            pulled = torch.cat([pulled[:, :truncation_cutoff], w[:, truncation_cutoff:]], dim=1)
        return pulled

#----------------------------------------------------------------------------
