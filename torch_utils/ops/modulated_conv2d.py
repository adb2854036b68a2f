"""Modulated convolution of StyleGAN2 (Karras et al. 2020) and its overparameterized
form (Poirier-Ginter et al., "Overparameterization Improves StyleGAN Inversion", eq. 2).

Styles of shape `[N, I]` scale input channel `j` of every output row (eq. 1);
styles of shape `[N, R, I]` (R >= O, or R == 1) give output row `i` its own
style vector `S[n, i, :]` (eq. 2): `weight'[n, i, j] = weight[i, j] * S[n, i, j]`,
followed by demodulation over `(j, kh, kw)` for each `(n, i)`.

`impl='ref'` is the pure-PyTorch path (grouped convolution, runs anywhere and is
the oracle of the tests); `impl='cuda'` is the fused kernel of
`modulated_conv2d_cuda` (built with ninja at first use).
"""

import warnings

import numpy as np
import torch

from .. import misc
from . import conv2d_resample, fma

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
    q = weight.square().sum(dim=[2, 3])                                  # [OI]
    if styles.ndim == 2:
        return (styles.square() @ q.t() + eps).rsqrt()                   # [NO]
    return ((styles.square() * q.unsqueeze(0)).sum(dim=2) + eps).rsqrt() # [NO]

#----------------------------------------------------------------------------

def modulated_conv2d_ref(x, weight, styles, noise=None, up=1, down=1, padding=0, resample_filter=None,
                         demodulate=True, flip_weight=True, fused_modconv=True):
    """Pure-PyTorch modulated convolution; see `modulated_conv2d` for the arguments."""
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    per_row = (styles.ndim == 3)
    misc.assert_shape(x, [batch_size, in_channels, None, None])
    if per_row:
        misc.assert_shape(styles, [batch_size, None, in_channels])
        styles = _row_styles(styles, out_channels)                       # [NOI]
    else:
        misc.assert_shape(styles, [batch_size, in_channels])             # [NI]

    # Pre-normalize to avoid FP16 overflow; demodulation cancels any per-(n, o) scale.
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / np.sqrt(in_channels * kh * kw) / weight.norm(float('inf'), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float('inf'), dim=-1, keepdim=True)

    # Shared-weight path: scale activations before and after the convolution (eq. 1 only).
    if not fused_modconv and not per_row:
        dcoefs = None
        if demodulate:
            w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, -1, 1, 1)   # [NOIkk]
            dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()             # [NO]
        x = x * styles.to(x.dtype).reshape(batch_size, -1, 1, 1)
        x = conv2d_resample.conv2d_resample(x=x, w=weight.to(x.dtype), f=resample_filter, up=up, down=down,
                                            padding=padding, flip_weight=flip_weight)
        if demodulate and noise is not None:
            return fma.fma(x, dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1), noise.to(x.dtype))
        if demodulate:
            return x * dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1)
        if noise is not None:
            return x.add_(noise.to(x.dtype))
        return x

    # Per-sample weights, one grouped convolution (required for per-row styles).
    if per_row:
        w = weight.unsqueeze(0) * styles.unsqueeze(-1).unsqueeze(-1)          # [NOIkk]
    else:
        w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, -1, 1, 1)     # [NOIkk]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()               # [NO]
        w = w * dcoefs.reshape(batch_size, -1, 1, 1, 1)                       # [NOIkk]
    with misc.suppress_tracer_warnings():
        batch_size = int(batch_size)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_resample.conv2d_resample(x=x, w=w.to(x.dtype), f=resample_filter, up=up, down=down,
                                        padding=padding, groups=batch_size, flip_weight=flip_weight)
    x = x.reshape(batch_size, -1, *x.shape[2:])
    if noise is not None:
        x = x.add_(noise.to(x.dtype))
    return x

#----------------------------------------------------------------------------

_cuda_warned = False

def _cuda_available_for(x: torch.Tensor) -> bool:
    global _cuda_warned
    if x.device.type != 'cuda':
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
