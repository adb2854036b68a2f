"""Resampling of 2-D images with an FIR filter: upsample, filter, downsample ("upfirdn2d").

One output channel is computed per input channel, in three steps along each axis:

1. upsampling by `up`: each pixel is followed by `up - 1` zeros;
2. padding `(p0, p1)` of the upsampled signal (a negative value removes pixels);
3. convolution with the taps `f` (a true convolution; `flip_filter=True` correlates),
   keeping only every `down`-th output.

Along an axis of `n` input pixels and `k` taps this gives `(n * up + p0 + p1 - k) // down + 1`
outputs. A 2-D filter `[fh, fw]` acts on both axes at once; a 1-D filter `[k]` is
separable (the same taps along x, then along y), with `sqrt(gain)` per pass.

`impl='ref'` runs PyTorch ops anywhere; `impl='cuda'` the kernel of `upfirdn2d.cu`. The
gradient of the operator is again an upfirdn2d (see `_adjoint_padding`), so the CUDA path
is differentiable to any order. `impl=None` picks the kernel for CUDA tensors when it
builds and, unless disabled, after it has passed its first-use self-check
(`torch_utils.ops.self_check`) for the configuration.
"""

import math

import torch
import torch.nn.functional as F

from .. import custom_ops
from . import self_check

#----------------------------------------------------------------------------
# Argument normalisation (also used by conv2d_resample and the fused modulated conv).

def scale_factors(factor):
    """`up` / `down` argument -> `(along x, along y)`; an int means the same on both axes."""
    pair = (factor, factor) if isinstance(factor, int) else tuple(factor)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f'upfirdn2d: a scale factor is an int >= 1 or a pair of them, got {factor!r}')
    return int(pair[0]), int(pair[1])

def padding_edges(padding):
    """`padding` argument -> `(left, right, top, bottom)` from an int, `[x, y]` or `[x0, x1, y0, y1]`."""
    edges = (padding,) * 4 if isinstance(padding, int) else tuple(int(p) for p in padding)
    if len(edges) == 2:
        return edges[0], edges[0], edges[1], edges[1]
    if len(edges) != 4:
        raise ValueError(f'upfirdn2d: padding is an int, [x, y] or [x0, x1, y0, y1], got {padding!r}')
    return edges

def filter_extent(f):
    """Number of taps `(along x, along y)` of a filter tensor; None stands for the 1x1 identity."""
    if f is None:
        return 1, 1
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2):
        raise ValueError(f'upfirdn2d: the filter must be a 1-D or 2-D tensor, got {type(f).__name__}')
    return int(f.shape[-1]), int(f.shape[0])

# The names under which the neighbouring modules import these helpers.
_parse_scaling = scale_factors
_parse_padding = padding_edges
_get_filter_size = filter_extent

#----------------------------------------------------------------------------

def setup_filter(f, device=torch.device('cpu'),
                 normalize=True, flip_filter=False, gain=1, separable=None):
    """Filter taps in the form `upfirdn2d` takes: a float32 tensor `[k]` (separable) or `[fh, fw]`.

    Args:
        f:           None (identity), a number, 1-D taps or a 2-D array of taps.
        device:      Device of the result.
        normalize:   Divide by the sum, so that a constant image keeps its value.
        flip_filter: Reverse the taps along every axis.
        gain:        Overall amplification; a separable filter carries `sqrt(gain)` (one per pass).
        separable:   Keep 1-D taps 1-D; None = only for 8 taps or more (1-D taps otherwise become
                     their outer product).
    """
    taps = torch.as_tensor(1 if f is None else f, dtype=torch.float32)
    if taps.ndim > 2 or taps.numel() == 0:
        raise ValueError(f'setup_filter: expected a number, 1-D or 2-D taps, got shape {list(taps.shape)}')
    taps = taps.reshape([1]) if taps.ndim == 0 else taps
    keep_1d = (taps.ndim == 1 and taps.numel() >= 8) if separable is None else bool(separable)
    if taps.ndim == 1 and not keep_1d:
        taps = taps[:, None] * taps[None, :]
    if keep_1d and taps.ndim != 1:
        raise ValueError('setup_filter: a 2-D filter cannot be separable')
    if normalize:
        taps = taps / taps.sum()
    if flip_filter:
        taps = taps.flip(list(range(taps.ndim)))
    taps = taps * (gain ** (taps.ndim / 2))
    return taps.to(device=device)

#----------------------------------------------------------------------------

def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl=None):
    """Upsample, pad, FIR-filter and downsample every channel of a batch of images.

    Args:
        x:           Images `[N, C, H, W]`.
        f:           float32 taps `[fh, fw]`, separable taps `[k]`, or None (identity).
        up, down:    Integer factors, an int or `[x, y]`.
        padding:     int, `[x, y]` or `[x0, x1, y0, y1]`, in pixels of the upsampled image;
                     negative values crop.
        flip_filter: False = convolution, True = correlation.
        gain:        Overall scale of the output.
        impl:        None (the CUDA kernel for CUDA tensors when available), 'ref' or 'cuda'.

    Returns `[N, C, (H * up_y + y0 + y1 - fh) // down_y + 1, (W * up_x + x0 + x1 - fw) // down_x + 1]`.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError('upfirdn2d: x must be a tensor [N, C, H, W]')
    if f is None:
        f = x.new_ones([1, 1], dtype=torch.float32)   # identity
    geometry = dict(up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    if _plugin.use_cuda(x, impl):
        if impl == 'cuda' or _kernel_trusted(x, f, geometry):
            return _cuda_function(**geometry).apply(x, f)
    return _upfirdn2d_ref(x, f, **geometry)

#----------------------------------------------------------------------------
# Reference implementation.

def _insert_zeros(x, factor_x, factor_y):
    """`[N, C, H, W]` -> `[N, C, H * factor_y, W * factor_x]`, the input on the grid of multiples."""
    if factor_x == factor_y == 1:
        return x
    grid = x.new_zeros([x.shape[0], x.shape[1], x.shape[2] * factor_y, x.shape[3] * factor_x])
    grid[:, :, ::factor_y, ::factor_x] = x
    return grid

def _pad_or_crop(x, left, right, top, bottom):
    """Zero padding with the positive edges, cropping with the negative ones."""
    grow = [max(left, 0), max(right, 0), max(top, 0), max(bottom, 0)]
    if any(grow):
        x = F.pad(x, grow)
    height, width = x.shape[2], x.shape[3]
    return x[:, :, max(-top, 0):height - max(-bottom, 0), max(-left, 0):width - max(-right, 0)]

def _depthwise(x, kernel):
    """Correlate every channel of `x` with the same 2-D `kernel [kh, kw]` (no padding)."""
    channels = x.shape[1]
    return F.conv2d(x, kernel.reshape(1, 1, *kernel.shape).expand(channels, 1, *kernel.shape), groups=channels)

def _upfirdn2d_ref(x, f, up=1, down=1, padding=0,
                   flip_filter=False, gain=1):
    """upfirdn2d from zero insertion, padding, depthwise convolution and strided slicing."""
    if not isinstance(f, torch.Tensor) or f.dtype != torch.float32 or f.ndim not in (1, 2) or f.requires_grad:
        raise ValueError('upfirdn2d: f must be a float32 tensor [k] or [fh, fw] without gradient')
    up_x, up_y = scale_factors(up)
    down_x, down_y = scale_factors(down)
    left, right, top, bottom = padding_edges(padding)

    x = _pad_or_crop(_insert_zeros(x, up_x, up_y), left, right, top, bottom)

    # The gain is folded into the float32 taps (sqrt per pass when separable), before the cast
    # to the image's dtype. F.conv2d correlates, so convolution means reversed taps.
    taps = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        taps = taps.flip(list(range(taps.ndim)))
    if taps.ndim == 1:
        x = _depthwise(_depthwise(x, taps[None, :]), taps[:, None])
    else:
        x = _depthwise(x, taps)
    return x[:, :, ::down_y, ::down_x]

#----------------------------------------------------------------------------
# CUDA implementation.

_plugin = custom_ops.LazyPlugin('upfirdn2d_plugin', sources=['upfirdn2d.cpp', 'upfirdn2d.cu'],
                                headers=['upfirdn2d.h'])

def _init():
    """Build the CUDA plugin now; True on success, False (after one warning) otherwise."""
    return _plugin.try_load()

def _adjoint_padding(in_size, out_size, up, down, pad_before, taps):
    """Padding `(before, after)` of the upfirdn that maps an output gradient back to the input.

    The transpose of "insert zeros (up), pad, convolve (taps), keep every down-th" along one axis is
    "insert zeros (down), pad, correlate, keep every up-th": `before` re-centres the reversed taps,
    `after` makes the result exactly `in_size` long.
    """
    before = taps - 1 - pad_before
    after = in_size * up - out_size * down + pad_before - up + 1
    return before, after

class _Upfirdn2dCuda(torch.autograd.Function):
    """upfirdn2d through the CUDA kernel for one geometry `g` (a `_Geometry`); f is a constant."""

    @staticmethod
    def forward(ctx, x, f, g):
        if not isinstance(f, torch.Tensor) or f.dtype != torch.float32 or f.ndim not in (1, 2):
            raise ValueError('upfirdn2d: f must be a float32 tensor [k] or [fh, fw]')
        kernel = _plugin.load().upfirdn2d
        f = f.to(x.device)
        (up_x, up_y), (down_x, down_y), (left, right, top, bottom) = g.up, g.down, g.padding
        if f.ndim == 2:
            y = kernel(x, f, up_x, up_y, down_x, down_y, left, right, top, bottom, g.flip, float(g.gain))
        else:
            # Separable: a horizontal pass, then a vertical one, each with half the gain's exponent.
            per_pass = math.sqrt(g.gain)
            y = kernel(x, f[None, :], up_x, 1, down_x, 1, left, right, 0, 0, g.flip, per_pass)
            y = kernel(y, f[:, None], 1, up_y, 1, down_y, 0, 0, top, bottom, g.flip, per_pass)
        ctx.save_for_backward(f)
        ctx.geometry = g
        ctx.in_size = (x.shape[3], x.shape[2])
        return y

    @staticmethod
    def backward(ctx, dy):
        need_x, need_f = ctx.needs_input_grad[:2]
        if need_f:
            raise RuntimeError('upfirdn2d: no gradient with respect to the filter')
        if not need_x:
            return None, None, None
        f, = ctx.saved_tensors
        g = ctx.geometry
        taps_x, taps_y = filter_extent(f)
        in_w, in_h = ctx.in_size
        left, right = _adjoint_padding(in_w, dy.shape[3], g.up[0], g.down[0], g.padding[0], taps_x)
        top, bottom = _adjoint_padding(in_h, dy.shape[2], g.up[1], g.down[1], g.padding[2], taps_y)
        adjoint = _Geometry(g.down, g.up, (left, right, top, bottom), not g.flip, g.gain)
        return _Upfirdn2dCuda.apply(dy, f, adjoint), None, None

class _Geometry:
    """Static arguments of `_Upfirdn2dCuda`: factors `(x, y)`, padding `(x0, x1, y0, y1)`, flip, gain."""

    def __init__(self, up, down, padding, flip, gain):
        self.up, self.down, self.padding = tuple(up), tuple(down), tuple(padding)
        self.flip, self.gain = bool(flip), float(gain)

    def apply(self, x, f):
        return _Upfirdn2dCuda.apply(x, f, self)

def _cuda_function(up=1, down=1, padding=0, flip_filter=False, gain=1):
    """The CUDA op for one geometry: `.apply(x, f)` -> upfirdn2d(x, f, ...)."""
    return _Geometry(scale_factors(up), scale_factors(down), padding_edges(padding), flip_filter, gain)

#----------------------------------------------------------------------------
# First-use self-check of the kernel.

def _kernel_trusted(x, f, geometry):
    """Whether the kernel passed (or now passes) its self-check for this configuration."""
    g = _cuda_function(**geometry)
    taps_x, taps_y = filter_extent(f)
    config = dict(up=g.up, down=g.down, padding=g.padding, flip_filter=g.flip, gain=g.gain,
                  filter=f'{taps_y}x{taps_x}' if f.ndim == 2 else f'{taps_x} separable',
                  channels_last=x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)
                  and not x.is_contiguous())
    return self_check.trusted('upfirdn2d', x.dtype, config, lambda: _self_check_case(x, f, g, config))

def _self_check_case(x, f, g, config):
    """A small random image like `x` (1-3 channels, at most 64 x 64) through both paths."""
    gen = torch.Generator(device=x.device).manual_seed(0)
    shape = [1, min(x.shape[1], 3), min(x.shape[2], 64), min(x.shape[3], 64)]
    probe = torch.randn(shape, generator=gen, device=x.device, dtype=torch.float32).to(x.dtype)
    if config['channels_last']:
        probe = probe.contiguous(memory_format=torch.channels_last)
    taps = torch.randn(f.shape, generator=gen, device=x.device, dtype=torch.float32)
    geometry = dict(up=g.up, down=g.down, padding=g.padding, flip_filter=g.flip, gain=g.gain)
    return self_check.Case(inputs=[probe],
                           kernel=lambda t: g.apply(t, taps),
                           reference=lambda t: _upfirdn2d_ref(t, taps, **geometry))

#----------------------------------------------------------------------------
# Shorthands with "same" padding.

def _centred(extra_before, extra_after, taps, factor, total):
    """Padding that centres `taps` over the signal: `total` pixels in all, the larger half first."""
    after = (taps - factor) // 2
    return extra_before + total - after, extra_after + after

def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl=None):
    """Filter `[N, C, H, W]` with `f`, keeping the size `[N, C, H, W]` (plus the extra `padding`)."""
    left, right, top, bottom = padding_edges(padding)
    taps_x, taps_y = filter_extent(f)
    pad = [*_centred(left, right, taps_x, 1, taps_x - 1), *_centred(top, bottom, taps_y, 1, taps_y - 1)]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)

def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl=None):
    """Upsample `[N, C, H, W]` -> `[N, C, H * up, W * up]` with the low-pass `f`.

    The gain is multiplied by `up_x * up_y`, the share of the upsampled pixels that are not zeros,
    so that the mean intensity is kept.
    """
    up_x, up_y = scale_factors(up)
    left, right, top, bottom = padding_edges(padding)
    taps_x, taps_y = filter_extent(f)
    pad = [*_centred(left, right, taps_x, up_x, taps_x - 1), *_centred(top, bottom, taps_y, up_y, taps_y - 1)]
    return upfirdn2d(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=gain * up_x * up_y, impl=impl)

def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl=None):
    """Low-pass with `f` and downsample `[N, C, H, W]` -> `[N, C, H // down, W // down]`."""
    down_x, down_y = scale_factors(down)
    left, right, top, bottom = padding_edges(padding)
    taps_x, taps_y = filter_extent(f)
    pad = [*_centred(left, right, taps_x, down_x, taps_x - down_x),
           *_centred(top, bottom, taps_y, down_y, taps_y - down_y)]
    return upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)

#----------------------------------------------------------------------------
