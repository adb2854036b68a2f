"""2-D convolution fused with FIR up/downsampling, as in StyleGAN2.

The result is always that of the slow recipe "zero-insert by `up` -> FIR filter `f` -> pad ->
conv2d with `w` -> FIR filter `f` -> keep every `down`-th pixel", with all padding given
relative to the upsampled image. Cheaper equivalent orders are picked from the kernel size
and the factors:

    1x1 kernel, down only      resample first, then the pointwise conv (fewer pixels to convolve)
    1x1 kernel, up only        pointwise conv first, then resample
    k x k kernel, down only    filter, then a conv with stride `down`
    k x k kernel, up           transposed conv with stride `up` (it does the zero insertion), then filter
    no resampling              conv2d with symmetric padding, or pad + conv2d otherwise
"""

import torch

from . import conv2d_gradfix, upfirdn2d
from .upfirdn2d import _get_filter_size, _parse_padding

#----------------------------------------------------------------------------

def _is_zero_padding(padding):
    if isinstance(padding, (list, tuple)):
        return all(p == 0 for p in padding)
    return padding == 0


def _pointwise_channels_last(x, w, groups):
    """A 1x1 conv of a channels-last `x` with few channels, done without cuDNN's slow
    channels-last kernels: a matmul for up to 4 output channels (toRGB), else a conv of
    contiguous copies. Returns a channels-last result."""
    num_out, num_in = w.shape[:2]
    if groups == 1 and num_out <= 4:
        n, _, h, width = x.shape
        flat = w.reshape(num_out, num_in) @ x.reshape(n, num_in, h * width)         # [N, O, H*W]
        y = flat.reshape(n, num_out, h, width)
    else:
        y = conv2d_gradfix.conv2d(x.contiguous(), w.contiguous(), groups=groups)
    return y.to(memory_format=torch.channels_last)


def _conv(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    """conv2d (correlation when `flip_weight`, true convolution otherwise) or its transpose."""
    if not flip_weight:
        w = w.flip([2, 3])
    few_channels = min(w.shape[0], w.shape[1]) < 64
    if (not transpose and stride == 1 and tuple(w.shape[2:]) == (1, 1) and _is_zero_padding(padding)
            and few_channels and x.stride()[1] == 1):
        return _pointwise_channels_last(x, w, groups)
    if transpose:
        return conv2d_gradfix.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return conv2d_gradfix.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def _centring_padding(taps, up, down):
    """Padding (before, after) along one axis that keeps a `taps`-tap filter centred on the
    pixel grid when it interpolates after an `up`x zero insertion and/or low-passes before
    a `down`x decimation."""
    before = after = 0
    if up > 1:
        before, after = before + (taps + up - 1) // 2, after + (taps - up) // 2
    if down > 1:
        before, after = before + (taps - down + 1) // 2, after + (taps - down) // 2
    return before, after


def _group_transposed_weight(w, groups):
    """`[O, I/g, kh, kw]` -> the `[I, O/g, kh, kw]` layout conv_transpose2d wants, group by group."""
    if groups == 1:
        return w.transpose(0, 1)
    num_out, in_per_group, kh, kw = w.shape
    per_group = w.reshape(groups, num_out // groups, in_per_group, kh, kw)
    return per_group.transpose(1, 2).reshape(groups * in_per_group, num_out // groups, kh, kw)


def _split_transposed_padding(pad, kh, kw, up):
    """Upsampling with a k x k kernel: the strided transposed conv inserts the zeros. Returns the
    padding it can apply itself ([y, x]: what both sides of an axis crop) and the padding left
    for the filter after it (x0, x1, y0, y1), having undone what the transposed conv adds."""
    left, right = pad[0] - (kw - 1), pad[1] - (kw - up)
    top, bottom = pad[2] - (kh - 1), pad[3] - (kh - up)
    crop_x = max(0, -max(left, right))
    crop_y = max(0, -max(top, bottom))
    return [crop_y, crop_x], [left + crop_x, right + crop_x, top + crop_y, bottom + crop_y]


def _filter_after_transposed(y, f, up, down, filter_pad, flip_filter):
    y = upfirdn2d.upfirdn2d(y, f, padding=filter_pad, gain=up ** 2, flip_filter=flip_filter)
    if down > 1:
        y = upfirdn2d.upfirdn2d(y, f, down=down, flip_filter=flip_filter)
    return y


def _transposed_then_filter(x, w, f, up, down, pad, groups, flip_weight, flip_filter):
    conv_pad, filter_pad = _split_transposed_padding(pad, w.shape[2], w.shape[3], up)
    y = _conv(x, _group_transposed_weight(w, groups), stride=up, padding=conv_pad, groups=groups,
              transpose=True, flip_weight=not flip_weight)
    return _filter_after_transposed(y, f, up, down, filter_pad, flip_filter)


def _full_padding(f, up, down, padding):
    """User padding plus the padding that centres the filter: [x0, x1, y0, y1]."""
    taps_x, taps_y = _get_filter_size(f)
    pad_x = _centring_padding(taps_x, up, down)
    pad_y = _centring_padding(taps_y, up, down)
    given = _parse_padding(padding)                                       # x0, x1, y0, y1
    return [given[0] + pad_x[0], given[1] + pad_x[1], given[2] + pad_y[0], given[3] + pad_y[1]]

#----------------------------------------------------------------------------

def conv2d_resample(x, w, f=None, up=1, down=1, padding=0,
                    groups=1, flip_weight=True, flip_filter=False):
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
    assert isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor), 'x and w must be tensors'
    assert x.ndim == 4 and w.ndim == 4 and x.dtype == w.dtype, 'x and w: 4-D, one dtype'
    assert f is None or (isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32)
    assert all(isinstance(v, int) and v >= 1 for v in (up, down, groups)), 'up, down, groups: positive ints'
    pad = _full_padding(f, up, down, padding)
    pointwise = tuple(w.shape[2:]) == (1, 1)
    resample_kw = dict(flip_filter=flip_filter)

    if pointwise and up == 1 and down > 1:
        small = upfirdn2d.upfirdn2d(x, f, down=down, padding=pad, **resample_kw)
        return _conv(small, w, groups=groups, flip_weight=flip_weight)
    if pointwise and up > 1 and down == 1:
        y = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d.upfirdn2d(y, f, up=up, padding=pad, gain=up ** 2, **resample_kw)
    if up == 1 and down > 1:
        blurred = upfirdn2d.upfirdn2d(x, f, padding=pad, **resample_kw)
        return _conv(blurred, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:
        return _transposed_then_filter(x, w, f, up, down, pad, groups, flip_weight, flip_filter)

    # No resampling from here on.
    symmetric = pad[0] == pad[1] and pad[2] == pad[3]
    if symmetric and min(pad) >= 0:
        return _conv(x, w, padding=[pad[2], pad[0]], groups=groups, flip_weight=flip_weight)
    padded = upfirdn2d.upfirdn2d(x, None, padding=pad, **resample_kw)
    return _conv(padded, w, groups=groups, flip_weight=flip_weight)

#----------------------------------------------------------------------------

def conv2d_resample_per_sample(x, weights, f=None, up=1, down=1, padding=0, flip_weight=True, flip_filter=False):
    """`conv2d_resample` of each sample with its own weight: x `[N, I, H, W]`, weights
    `[N, O, I, kh, kw]` (same dtype) -> `[N, O, H', W']`.

    Without upsampling this is one convolution with N groups. With upsampling (k x k kernel) the
    transposed convolutions run sample by sample and the filter once on the whole `[N, O]` batch:
    on the CPU a grouped transposed convolution is slower than N plain ones and copies its output
    once more, its per-group weight layout is one more copy of all the weights, and the filter
    (a depthwise convolution) costs per channel group, so N*O groups would cost twice O.
    """
    n, o, i, kh, kw = weights.shape
    if up == 1 or (kh, kw) == (1, 1):
        y = conv2d_resample(x.reshape(1, n * i, *x.shape[2:]), weights.reshape(n * o, i, kh, kw), f=f, up=up,
                            down=down, padding=padding, groups=n, flip_weight=flip_weight, flip_filter=flip_filter)
        return y.reshape(n, o, *y.shape[2:])
    conv_pad, filter_pad = _split_transposed_padding(_full_padding(f, up, down, padding), kh, kw, up)
    per_sample = [_conv(x[k:k + 1], weights[k].transpose(0, 1), stride=up, padding=conv_pad, transpose=True,
                        flip_weight=not flip_weight) for k in range(n)]
    y = torch.cat(per_sample) if n > 1 else per_sample[0]
    return _filter_after_transposed(y, f, up, down, filter_pad, flip_filter)

#----------------------------------------------------------------------------
