"""Modulated convolution of StyleGAN2 (Karras et al. 2020) and its overparameterized
form (Poirier-Ginter et al., "Overparameterization Improves StyleGAN Inversion", eq. 2).

Styles of shape `[N, I]` scale input channel `j` of every output row (eq. 1);
styles of shape `[N, R, I]` (R >= O, or R == 1) give output row `i` its own
style vector `S[n, i, :]` (eq. 2): `weight'[n, i, j] = weight[i, j] * S[n, i, j]`,
followed by demodulation over `(j, kh, kw)` for each `(n, i)`.

For per-row styles, demodulation is folded: the coefficient `d[n, o]` (`demodulation_coefficients`,
O(N*O*I)) scales the convolution's *output*, which equals demodulating the weight because
`d` is constant over the input channels and taps of output `o`; no second `[N, O, I, kh, kw]`
tensor is formed, in the forward pass or in any backward pass. Vector styles keep StyleGAN2's
own order of operations, so that baseline networks reproduce NVIDIA's outputs bit for bit.

`impl='ref'` is the pure-PyTorch path (runs anywhere and is the oracle of the tests);
`impl='cuda'` is the fused kernel of `modulated_conv2d_cuda` (built with ninja at first use).
"""

import warnings

import numpy as np
import torch

from .. import misc
from . import conv2d_resample

#----------------------------------------------------------------------------

def _row_styles(styles: torch.Tensor, out_channels: int) -> torch.Tensor:
    """Per-row styles `[N, R, I]` -> the `[N, O, I]` rows a layer uses (eq. 2, footnote 3)."""
    num_rows = styles.shape[1]
    if num_rows == out_channels:
        return styles
    if num_rows > out_channels:
        return styles[:, :out_channels]
    if num_rows == 1:
        return styles.expand(-1, out_channels, -1)
    raise ValueError(f'modulated_conv2d: styles have {num_rows} rows but the layer has '
                     f'{out_channels} output channels; need R >= O (or R == 1)')

#----------------------------------------------------------------------------

def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Folded demodulation `d[n, o] = rsqrt(sum_i S[n,o,i]^2 * Q[o,i] + eps)`, `Q = sum_k weight^2`.

    weight `[O, I, kh, kw]`, styles `[N, I]` or `[N, O, I]` -> `[N, O]`. Equals the
    direct form `rsqrt(sum_{i,k} (weight * S)^2)` without forming `[N, O, I, k, k]`.
    """
    energy = weight.square().sum(dim=[2, 3])                             # [OI]
    if styles.ndim == 2:
        styles = styles.unsqueeze(1)                                     # [N1I]
    # One elementwise reduction for both shapes (not a matmul for vectors), so that vector
    # styles and R == 1 broadcast rows give bitwise the same coefficients.
    return ((styles.square() * energy).sum(dim=2) + eps).rsqrt()         # [NO]

#----------------------------------------------------------------------------

def _rescale_for_fp16(weight, styles):
    """Divide weight and styles by their largest magnitudes (per output channel of the weight,
    per style vector), the weight also by sqrt(fan-in), so that an FP16 convolution of them
    cannot overflow. Demodulation divides every such per-(n, o) factor out again.
    """
    fan_in = weight[0].numel()
    weight_peak = weight.abs().amax(dim=[1, 2, 3], keepdim=True)         # [O111]
    style_peak = styles.abs().amax(dim=-1, keepdim=True)                 # [N1] or [NO1]
    return weight * (1 / np.sqrt(fan_in) / weight_peak), styles / style_peak


def _finish(y, d, noise):
    """Apply the folded demodulation `d [N, O]` (None = none) and add the noise to the conv output `y`."""
    if d is not None:
        d = d.to(y.dtype).reshape(*d.shape, 1, 1)
        return y * d if noise is None else torch.addcmul(noise.to(y.dtype), y, d)
    return y if noise is None else y.add_(noise.to(y.dtype))


def _vector_styles_ref(x, weight, styles, noise, resample, demodulate, fused_modconv):
    """Eq. 1 with StyleGAN2's own arithmetic, so that a baseline network gives NVIDIA's numbers to the bit.

    The coefficient is taken from the modulated weight itself (`sum_{i,k} (weight * s)^2`), not folded;
    the shared-weight path scales the activations before and the output after the convolution, and the
    per-sample path demodulates the weight before one grouped convolution.
    """
    n, o = x.shape[0], weight.shape[0]
    modulated = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)      # [NOIkk]
    d = (modulated.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None   # [NO]
    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        return _finish(conv2d_resample.conv2d_resample(x=x, w=weight.to(x.dtype), **resample), d, noise)
    if d is not None:
        modulated = modulated * d.reshape(n, o, 1, 1, 1)
    grouped = modulated.reshape(n * o, *weight.shape[1:]).to(x.dtype)
    y = conv2d_resample.conv2d_resample(x=x.reshape(1, -1, *x.shape[2:]), w=grouped, groups=n, **resample)
    y = y.reshape(n, o, *y.shape[2:])
    return y if noise is None else y.add_(noise.to(y.dtype))


def modulated_conv2d_ref(x, weight, styles, noise=None, up=1, down=1, padding=0, resample_filter=None,
                         demodulate=True, flip_weight=True, fused_modconv=True):
    """Pure-PyTorch modulated convolution; see `modulated_conv2d` for the arguments.

    Vector styles `[N, I]` (and R == 1 rows, which are the same thing) keep StyleGAN2's arithmetic
    (`_vector_styles_ref`). Per-row styles modulate once and scale the output by the folded `d`:
    conv_n(x_n, weight * S_n) * d.
    """
    batch_size = x.shape[0]
    out_channels, in_channels = weight.shape[:2]
    misc.assert_shape(styles, [batch_size] + [None] * (styles.ndim - 2) + [in_channels])
    misc.assert_shape(x, [styles.shape[0], weight.shape[1], None, None])
    if styles.ndim == 3 and styles.shape[1] == 1:
        styles = styles[:, 0]                                            # One row for all outputs: eq. 1.
    if styles.ndim == 3:
        styles = _row_styles(styles, out_channels)                       # [NOI]
    if demodulate and x.dtype == torch.float16:
        weight, styles = _rescale_for_fp16(weight, styles)
    resample = dict(f=resample_filter, up=up, down=down, padding=padding, flip_weight=flip_weight)
    if styles.ndim == 2:
        return _vector_styles_ref(x, weight, styles, noise, resample, demodulate, fused_modconv)

    d = demodulation_coefficients(weight, styles) if demodulate else None  # [NO]
    weights = weight.unsqueeze(0) * styles.unsqueeze(-1).unsqueeze(-1)   # [NOIkk]
    y = conv2d_resample.conv2d_resample_per_sample(x, weights.to(x.dtype), **resample)
    return _finish(y, d, noise)

#----------------------------------------------------------------------------

_cuda_warned = False

def _cuda_available_for(x: torch.Tensor) -> bool:
    global _cuda_warned
    if x.device.type != 'cuda' or torch.compiler.is_compiling():   # compiled: the traced reference path
        return False
    try:
        from . import modulated_conv2d_cuda
    except ImportError:
        return False
    ok, reason = modulated_conv2d_cuda.is_available()
    if not ok and not _cuda_warned:
        warnings.warn(f'modulated_conv2d: fused CUDA kernel unavailable ({reason}); using the reference path')
        _cuda_warned = True
    return ok


def modulated_conv2d(
    x,                      # Input `[N, I, H, W]`.
    weight,                 # Weight `[O, I, kh, kw]`.
    styles,                 # `[N, I]` (StyleGAN2, eq. 1) or `[N, R, I]` per output row (eq. 2).
    noise=None,             # Optional noise added to the output, broadcastable to `[N, O, H', W']`.
    up=1,                   # Integer upsampling factor.
    down=1,                 # Integer downsampling factor.
    padding=0,              # Padding with respect to the upsampled image.
    resample_filter=None,   # Low-pass filter from `upfirdn2d.setup_filter()`.
    demodulate=True,        # Apply weight demodulation?
    flip_weight=True,       # False = convolution, True = correlation (as `torch.nn.functional.conv2d`).
    fused_modconv=True,     # One fused op (grouped conv)? Per-row styles always run fused.
    impl=None,              # 'ref', 'cuda', or None = cuda for CUDA tensors when available.
):
    """Modulated (and demodulated) convolution. Returns `[N, O, H', W']` in `x.dtype`."""
    assert impl in (None, 'ref', 'cuda')
    if impl is None:
        impl = 'cuda' if (styles.ndim == 3 and _cuda_available_for(x)) else 'ref'
    if impl == 'cuda':
        from . import modulated_conv2d_cuda
        return modulated_conv2d_cuda.modulated_conv2d(x=x, weight=weight, styles=styles, noise=noise, up=up, down=down,
                                                      padding=padding, resample_filter=resample_filter,
                                                      demodulate=demodulate, flip_weight=flip_weight)
    return modulated_conv2d_ref(x=x, weight=weight, styles=styles, noise=noise, up=up, down=down, padding=padding,
                                resample_filter=resample_filter, demodulate=demodulate, flip_weight=flip_weight,
                                fused_modconv=fused_modconv)

#----------------------------------------------------------------------------
