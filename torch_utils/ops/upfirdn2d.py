"""Upsample, FIR-filter and downsample 2-D images (upfirdn2d) and its shorthands.

`upfirdn2d` inserts `up - 1` zeros after every pixel, pads (or crops, for negative
padding), convolves each channel with the filter `f`, and keeps every `down`-th
pixel. `impl='ref'` is pure PyTorch; `impl='cuda'` uses the kernel in
`upfirdn2d.cu`, whose gradient is again an upfirdn2d (so higher orders work).
"""


import numpy as np
import torch
import torch.nn.functional as F

from .. import custom_ops
from . import conv2d_gradfix

#----------------------------------------------------------------------------

_plugin = custom_ops.LazyPlugin('upfirdn2d_plugin', sources=['upfirdn2d.cpp', 'upfirdn2d.cu'],
                                headers=['upfirdn2d.h'])

def _parse_scaling(scaling):
    """int or [x, y] -> (sx, sy)."""
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    assert isinstance(scaling, (list, tuple)) and len(scaling) == 2
    sx, sy = scaling
    assert sx >= 1 and sy >= 1
    return int(sx), int(sy)

def _parse_padding(padding):
    """int, [x, y] or [x0, x1, y0, y1] -> (x0, x1, y0, y1)."""
    if isinstance(padding, int):
        padding = [padding, padding]
    assert isinstance(padding, (list, tuple)) and len(padding) in (2, 4)
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    return tuple(int(p) for p in padding)

def _get_filter_size(f):
    """Filter -> (width, height); None means the 1x1 identity filter."""
    if f is None:
        return 1, 1
    assert isinstance(f, torch.Tensor) and f.ndim in (1, 2)
    width = int(f.shape[-1])
    height = int(f.shape[0])
    return width, height

#----------------------------------------------------------------------------

def setup_filter(f, device=torch.device('cpu'), normalize=True, flip_filter=False, gain=1, separable=None):
    """Turn filter taps into the float32 tensor expected by `upfirdn2d`.

    Args:
        f:           None (identity), a scalar, 1-D taps `[taps]` or 2-D `[fh, fw]`.
        device:      Device of the result.
        normalize:   Scale the taps to sum to 1 (for a 1-D input the outer product does).
        flip_filter: Flip the taps along every dimension.
        gain:        Overall gain; a separable filter gets `sqrt(gain)` per pass.
        separable:   Keep a 1-D filter 1-D (None = only when it has >= 8 taps).

    Returns `[taps]` (separable) or `[fh, fw]`.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    assert f.ndim in (0, 1, 2) and f.numel() > 0
    if f.ndim == 0:
        f = f.reshape(1)
    if separable is None:
        separable = (f.ndim == 1 and f.numel() >= 8)
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    assert f.ndim == (1 if separable else 2)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)

#----------------------------------------------------------------------------

def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl=None):
    """Pad, upsample, filter and downsample a batch of images.

    Args:
        x:           `[N, C, H, W]`.
        f:           float32 filter `[fh, fw]` or separable `[taps]`; None = identity.
        up, down:    int or [x, y] integer factors.
        padding:     int, [x, y] or [x0, x1, y0, y1], relative to the upsampled
                     image; negative values crop.
        flip_filter: False = convolution, True = correlation.
        gain:        Overall scale of the output.
        impl:        None (CUDA if possible), 'ref' or 'cuda'.

    Returns `[N, C, (H*up + y0 + y1 - fh) // down + 1, (W*up + x0 + x1 - fw) // down + 1]`.
    """
    assert isinstance(x, torch.Tensor) and x.ndim == 4
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if _plugin.use_cuda(x, impl):
        return _cuda_function(up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain).apply(x, f)
    return _upfirdn2d_ref(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)

def _upfirdn2d_ref(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Pure-PyTorch upfirdn2d built from pad, grouped conv2d and strided slicing."""
    assert isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32
    assert not f.requires_grad
    n, c, h, w = x.shape
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    x0, x1, y0, y1 = _parse_padding(padding)

    # Zero insertion: every pixel is followed by (up - 1) zeros in each direction.
    if upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)

    # Padding (positive part) then cropping (negative part).
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]

    # FIR filter: conv2d is a correlation, so flip to get a true convolution.
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = conv2d_gradfix.conv2d(x, f[None, None].expand(c, 1, *f.shape), groups=c)
    else:
        x = conv2d_gradfix.conv2d(x, f.reshape(1, 1, 1, -1).expand(c, 1, 1, f.numel()), groups=c)
        x = conv2d_gradfix.conv2d(x, f.reshape(1, 1, -1, 1).expand(c, 1, f.numel(), 1), groups=c)

    # Decimation.
    return x[:, :, ::downy, ::downx]

#----------------------------------------------------------------------------

def _init():
    """Build the CUDA plugin now; True on success, False (after one warning) otherwise."""
    return _plugin.try_load()

_cuda_functions = dict()

def _cuda_function(up=1, down=1, padding=0, flip_filter=False, gain=1):
    """autograd.Function class for one static configuration of the CUDA upfirdn2d."""
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    x0, x1, y0, y1 = _parse_padding(padding)
    key = (upx, upy, downx, downy, x0, x1, y0, y1, bool(flip_filter), float(gain))
    if key in _cuda_functions:
        return _cuda_functions[key]

    class Upfirdn2dCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, f):
            assert isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32
            plugin = _plugin.load()
            f = f.to(x.device)
            if f.ndim == 1:
                # Separable: horizontal pass then vertical pass, sqrt(gain) each.
                g = float(np.sqrt(gain))
                y = plugin.upfirdn2d(x, f.reshape(1, -1), upx, 1, downx, 1, x0, x1, 0, 0, bool(flip_filter), g)
                y = plugin.upfirdn2d(y, f.reshape(-1, 1), 1, upy, 1, downy, 0, 0, y0, y1, bool(flip_filter), g)
            else:
                y = plugin.upfirdn2d(x, f, upx, upy, downx, downy, x0, x1, y0, y1, bool(flip_filter), float(gain))
            ctx.save_for_backward(f)
            ctx.x_shape = x.shape
            return y

        @staticmethod
        def backward(ctx, dy):
            f, = ctx.saved_tensors
            _, _, ih, iw = ctx.x_shape
            _, _, oh, ow = dy.shape
            fw, fh = _get_filter_size(f)
            # Adjoint: upfirdn2d with up/down swapped, flipped filter, mirrored padding.
            pad = [fw - x0 - 1, iw * upx - ow * downx + x0 - upx + 1,
                   fh - y0 - 1, ih * upy - oh * downy + y0 - upy + 1]
            dx = None
            if ctx.needs_input_grad[0]:
                dx = _cuda_function(up=[downx, downy], down=[upx, upy], padding=pad,
                                    flip_filter=not flip_filter, gain=gain).apply(dy, f)
            assert not ctx.needs_input_grad[1]
            return dx, None

    _cuda_functions[key] = Upfirdn2dCuda
    return Upfirdn2dCuda

#----------------------------------------------------------------------------

def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl=None):
    """Filter `[N, C, H, W]` with `f`, keeping the size (for zero padding).

    padding: int, [x, y] or [x0, x1, y0, y1] extra padding. Returns `[N, C, H', W']`.
    """
    x0, x1, y0, y1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    pad = [x0 + fw // 2, x1 + (fw - 1) // 2, y0 + fh // 2, y1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)

def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl=None):
    """Upsample `[N, C, H, W]` by `up` with filter `f` -> `[N, C, H*up, W*up]` (zero padding).

    The gain is multiplied by `upx * upy` to keep the mean intensity.
    """
    upx, upy = _parse_scaling(up)
    x0, x1, y0, y1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    pad = [x0 + (fw + upx - 1) // 2, x1 + (fw - upx) // 2,
           y0 + (fh + upy - 1) // 2, y1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)

def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl=None):
    """Downsample `[N, C, H, W]` by `down` with filter `f` -> `[N, C, H//down, W//down]` (zero padding)."""
    downx, downy = _parse_scaling(down)
    x0, x1, y0, y1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    pad = [x0 + (fw - downx + 1) // 2, x1 + (fw - downx) // 2,
           y0 + (fh - downy + 1) // 2, y1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)

#----------------------------------------------------------------------------
