"""2-D convolution fused with FIR up/downsampling, as in StyleGAN2.

All padding is applied once, relative to the upsampled image. Depending on the
kernel size and factors the work is done by a strided convolution, a strided
transposed convolution, or upfirdn2d + conv2d; every path gives the result of
"upfirdn2d(up) -> conv2d -> upfirdn2d(down)".
"""

import torch

from . import conv2d_gradfix, upfirdn2d
from .upfirdn2d import _get_filter_size, _parse_padding

#----------------------------------------------------------------------------

def _conv(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    """conv2d (correlation when `flip_weight`, convolution otherwise) or its transpose."""
    out_channels, in_per_group, kh, kw = (int(s) for s in w.shape)
    if not flip_weight:
        w = w.flip([2, 3])

    # 1x1 kernel on a channels-last input with few channels: use a matmul or a
    # contiguous conv instead of the slow cuDNN channels-last path.
    if (kh == 1 and kw == 1 and stride == 1 and not transpose and padding in (0, [0, 0], (0, 0))
            and x.stride()[1] == 1 and min(out_channels, in_per_group) < 64):
        if out_channels <= 4 and groups == 1:
            n, _, h, wd = x.shape
            y = w.reshape(out_channels, in_per_group) @ x.reshape(n, in_per_group, h * wd)
            y = y.reshape(n, out_channels, h, wd)
        else:
            y = conv2d_gradfix.conv2d(x.contiguous(), w.contiguous(), groups=groups)
        return y.to(memory_format=torch.channels_last)

    if transpose:
        return conv2d_gradfix.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return conv2d_gradfix.conv2d(x, w, stride=stride, padding=padding, groups=groups)

#----------------------------------------------------------------------------

def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    """Convolution with optional up/downsampling.

    Args:
        x:           `[N, I, H, W]`.
        w:           `[O, I // groups, kh, kw]`, same dtype as `x`.
        f:           float32 FIR filter from `upfirdn2d.setup_filter` (None = identity).
        up, down:    Integer factors.
        padding:     int, [x, y] or [x0, x1, y0, y1], relative to the upsampled image.
        groups:      Number of channel groups.
        flip_weight: True = correlation (like conv2d), False = convolution.
        flip_filter: False = convolution with `f`, True = correlation.

    Returns `[N, O, H', W']`.
    """
    assert isinstance(x, torch.Tensor) and x.ndim == 4
    assert isinstance(w, torch.Tensor) and w.ndim == 4 and w.dtype == x.dtype
    assert f is None or (isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32)
    assert isinstance(up, int) and up >= 1
    assert isinstance(down, int) and down >= 1
    assert isinstance(groups, int) and groups >= 1
    out_channels, in_per_group, kh, kw = (int(s) for s in w.shape)
    fw, fh = _get_filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)

    # Padding that centres the resampling filter.
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2
    pad = [px0, px1, py0, py1]
    pointwise = (kw == 1 and kh == 1)

    # 1x1 kernel, downsampling only: downsample first, then the cheap conv.
    if pointwise and down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)

    # 1x1 kernel, upsampling only: conv first, then upsample.
    if pointwise and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d.upfirdn2d(x, f, up=up, padding=pad, gain=up ** 2, flip_filter=flip_filter)

    # Downsampling only: filter, then strided conv.
    if down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling (maybe with downsampling): strided transposed conv, then filter.
    if up > 1:
        if groups == 1:
            wt = w.transpose(0, 1)
        else:
            wt = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            wt = wt.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        # Let the transposed conv crop what both sides crop; upfirdn2d handles the rest.
        tx = max(min(-px0, -px1), 0)
        ty = max(min(-py0, -py1), 0)
        x = _conv(x, wt, stride=up, padding=[ty, tx], groups=groups, transpose=True,
                  flip_weight=not flip_weight)
        x = upfirdn2d.upfirdn2d(x, f, padding=[px0 + tx, px1 + tx, py0 + ty, py1 + ty],
                                gain=up ** 2, flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    # No resampling and symmetric non-negative padding: plain conv2d.
    if up == 1 and down == 1 and px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    # General case.
    x = upfirdn2d.upfirdn2d(x, f if up > 1 else None, up=up, padding=pad, gain=up ** 2, flip_filter=flip_filter)
    x = _conv(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x

#----------------------------------------------------------------------------
