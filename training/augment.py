"""Differentiable discriminator augmentation with an adaptive strength p, after ADA (Karras et al. 2020,
"Training Generative Adversarial Networks with Limited Data", appendix B: pixel blitting, general
geometric transforms, colour transforms; image-space corruptions).

Every transform is applied to each image independently with probability `multiplier * p`, with the
probabilities and strengths of the paper (and of stylegan2-ada-pytorch, whose constructor arguments,
buffer names and pipeline names this module keeps, so that its pickles rebuild into this class):

- pixel blitting: x-flip, rotation by a multiple of 90 degrees, integer translation (reflected border);
- general geometry: isotropic scaling, rotation before and after anisotropic scaling (each with
  probability `1 - sqrt(1 - rotate * p)`, so that at least one happens with probability `rotate * p`),
  anisotropic scaling, fractional translation;
- colour (one 4x4 homogeneous RGB matrix per image): brightness, contrast, luma flip, hue rotation
  around the grey axis, saturation;
- corruptions: additive Gaussian noise, cutout.

The geometric transforms of one image compose into one 3x3 matrix. An image that drew only blits is
moved by an exact pixel gather; the others are resampled as the paper describes: reflect-pad, upsample 2x
with the orthogonal `sym6` wavelet low-pass filter (buffer `Hz_geom`), sample the transformed grid
bilinearly, downsample 2x with the same filter (the adjoint of the upsampling, so the identity map gives
the image back) and crop. All of it is linear in the images, differentiable to any order with respect to
them (R1 on augmented reals needs the second order). Random numbers come from torch's default generator
of the images' device. Image-space filtering (`imgfilter`) is not implemented and raises ValueError.
"""

import math

import numpy as np
import torch
from torch import nn

from torch_utils.persistence import persistent_class

# Pipelines of stylegan2-ada-pytorch's train.py, by name; NVIDIA's default is 'bgc'.
_BLIT_OPS = dict(xflip=1, rotate90=1, xint=1)
_GEOM_OPS = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOUR_OPS = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
AUGPIPE_SPECS = {
    'blit':   dict(_BLIT_OPS),
    'geom':   dict(_GEOM_OPS),
    'color':  dict(_COLOUR_OPS),
    'noise':  dict(noise=1),
    'cutout': dict(cutout=1),
    'bg':     {**_BLIT_OPS, **_GEOM_OPS},
    'bgc':    {**_BLIT_OPS, **_GEOM_OPS, **_COLOUR_OPS},
    'bc':     {**_BLIT_OPS, **_COLOUR_OPS},           # Ours: 'bgc' without the resampled group (cheap).
}

# Daubechies' least-asymmetric wavelet with 6 vanishing moments ('sym6'), low-pass decomposition filter,
# orthonormal: sum(h) = sqrt(2), sum(h[j] h[j + 2k]) = delta(k).
_SYM6_LOWPASS = (
    +0.015404109327027373, +0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    +0.4910559419267466, +0.787641141030194, +0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, +0.04472490177066578, +0.0017677118642428036, -0.007800708325034148,
)

_GEOMETRY_KEYS = ('xflip', 'rotate90', 'xint', 'scale', 'rotate_pre', 'aniso', 'rotate_post', 'xfrac')
_GREY_AXIS = np.full([3], 1 / math.sqrt(3))         # Unit luma axis v of RGB space.

#----------------------------------------------------------------------------
# Small matrix builders. Entries are Python numbers or [N] tensors.

def _stack_matrix(rows, n, device):
    """Nested list of entries (numbers or [N] tensors) -> `[N, R, K]` float32 tensor."""
    one = torch.ones([n], device=device)
    flat = [torch.as_tensor(e, dtype=torch.float32, device=device) * one for row in rows for e in row]
    return torch.stack(flat, dim=1).reshape(n, len(rows), len(rows[0]))


def _planar(n, device, a=1, b=0, tx=0, c=0, d=1, ty=0):
    """Homogeneous 2D maps (x, y) -> (a x + b y + tx, c x + d y + ty) as `[N, 3, 3]`."""
    return _stack_matrix([[a, b, tx], [c, d, ty], [0, 0, 1]], n, device)


def _planar_rotation(n, device, theta):
    """Rotation by `theta` (radians): (x, y) -> (x cos - y sin, x sin + y cos) as `[N, 3, 3]`.
    In image coordinates (y down) a positive angle turns the content clockwise on screen."""
    cos, sin = torch.cos(theta), torch.sin(theta)
    return _planar(n, device, a=cos, b=-sin, c=sin, d=cos)


def _reflect_index(idx, size):
    """Integer coordinates -> `[0, size)` by mirror reflection without repeating the edge, for any distance."""
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= size, period - idx, idx)


def _reflect_pad(images, left, right, top, bottom):
    """`[N, C, H, W]` -> `[N, C, H + top + bottom, W + left + right]`, mirrored like 'reflect' padding but
    without its limit of `size - 1` pixels (the mirror image repeats)."""
    height, width = images.shape[2:]
    rows = _reflect_index(torch.arange(-top, height + bottom, device=images.device), height)
    cols = _reflect_index(torch.arange(-left, width + right, device=images.device), width)
    return images.index_select(2, rows).index_select(3, cols)

#----------------------------------------------------------------------------
# Geometric resampling.

def _filter_pass(images, taps, axis, transposed):
    """2x up (`transposed`) or down filtering along `axis` (2 = rows, 3 = cols) with `taps` `[L]`, L even.
    Down keeps sample m = sum_j taps[j] x[2m + j - (L/2 - 1)]; up is its exact adjoint (times 2 per axis,
    the gain that makes down(up(x)) = x for an orthonormal filter). `[N, C, H, W]` in and out.
    Reference path: strided (transposed) convolution."""
    n, channels, height, width = images.shape
    length = taps.numel()
    shape = [1, 1, length, 1] if axis == 2 else [1, 1, 1, length]
    stride = (2, 1) if axis == 2 else (1, 2)
    pad = (length // 2 - 1, 0) if axis == 2 else (0, length // 2 - 1)
    flat = images.reshape(n * channels, 1, height, width)
    if transposed:
        out = torch.nn.functional.conv_transpose2d(flat, (taps * 2).reshape(shape), stride=stride, padding=pad)
    else:
        out = torch.nn.functional.conv2d(flat, taps.reshape(shape), stride=stride, padding=pad)
    return out.reshape(n, channels, out.shape[2], out.shape[3])


def _filter_pass_dense(images, taps, axis, transposed):
    """Same as `_filter_pass` as a product with the banded filter matrix (one GEMM per pass): on CPUs about 3x
    faster than one-channel strided convolutions for small images; the matrix grows with the axis."""
    size_in = images.shape[axis]
    size_down = size_in if transposed else size_in // 2
    size_up = 2 * size_down
    rows = torch.arange(size_down, device=images.device).unsqueeze(1)
    cols = torch.arange(size_up, device=images.device).unsqueeze(0)
    tap = cols - 2 * rows + (taps.numel() // 2 - 1)                  # down[m] = sum_n taps[n - 2m + pad] x[n]
    inside = (tap >= 0) & (tap < taps.numel())
    matrix = torch.where(inside, taps.to(images.dtype)[tap.clamp(0, taps.numel() - 1)], 0)   # [size_down, size_up]
    if transposed:
        matrix = 2 * matrix.t()                                      # The adjoint, with the gain 2.
    return matrix @ images if axis == 2 else images @ matrix.t()


def _filter_pass_blocked(images, taps, axis, transposed, block=16):
    """Same as `_filter_pass` as small GEMMs on overlapping windows: `block` outputs of the down pass (2 *
    `block` of the up pass) per window, so the matrix is only about 3x wider than the filter at any size."""
    x = images if axis == 3 else images.transpose(2, 3)
    size, length = x.shape[3], taps.numel()
    pad = length // 2 - 1
    if transposed:                           # u[i] = 2 sum_k taps[i + pad - 2k] x[k]; block b: i = 2 b B + s.
        outputs, per_block, stride = 2 * size, 2 * block, block
        first = -((length - 1 - pad) // 2)                                   # x[b B + first + w] is window w
        window = (2 * block - 1 + pad) // 2 - first + 1
        w, s = torch.meshgrid(torch.arange(window, device=x.device), torch.arange(per_block, device=x.device),
                              indexing='ij')
        tap, gain = s + pad - 2 * (w + first), 2
    else:                                    # y[m] = sum_j taps[j] x[2m + j - pad]; block b: m = b B + r.
        outputs, per_block, stride = size // 2, block, 2 * block
        first, window = -pad, 2 * block + length - 2
        w, r = torch.meshgrid(torch.arange(window, device=x.device), torch.arange(per_block, device=x.device),
                              indexing='ij')
        tap, gain = w - 2 * r, 1
    inside = (tap >= 0) & (tap < length)
    kernel = torch.where(inside, gain * taps.to(x.dtype)[tap.clamp(0, length - 1)], 0)   # [window, per_block]
    blocks = -(-outputs // per_block)
    right = max(0, (blocks - 1) * stride + window + first - size)
    windows = torch.nn.functional.pad(x, [-first, right]).unfold(3, window, stride)[..., :blocks, :]
    out = (windows @ kernel).flatten(3)[..., :outputs]
    return out if axis == 3 else out.transpose(2, 3)


def resample_affine(images, inverse, taps, impl='auto'):
    """Warp images by per-image affine maps, band-limited: out(q) = images(inverse @ q).

    images: `[N, C, H, W]`. inverse: `[N, 3, 3]`, maps an output pixel to its source pixel, both in centred
    pixel coordinates (x = column - (W - 1) / 2, y = row - (H - 1) / 2, homogeneous). taps: `[L]` orthonormal
    low-pass filter normalised to sum 1 (`Hz_geom`). Pixels outside the image mirror it. Returns `[N, C, H, W]`.
    impl: how the 2x filters run: 'conv' (reference: strided convolutions), 'dense' (banded-matrix products),
    'blocked' (GEMMs on overlapping windows); 'auto' = conv on CUDA, else dense up to 128 px, blocked above.
    """
    if impl == 'auto':
        impl = 'conv' if images.device.type == 'cuda' else 'dense' if max(images.shape[2:]) <= 128 else 'blocked'
    filter_pass = {'conv': _filter_pass, 'dense': _filter_pass_dense, 'blocked': _filter_pass_blocked}[impl]
    n, channels, height, width = images.shape
    taps = taps.to(images.dtype)
    margin_out = taps.numel() // 4                    # Output pixels beyond the crop that the down filter reads.
    reach = taps.numel() / 4 + 0.25 + 1               # Source pixels the upsampling + bilinear tap reads, + 1.

    # The filter is not symmetric: a 2x upsampled sample i sits at (i - 0.5) / 2 + delay (input pixels), delay
    # from the filter's centre of mass; the down pass (the adjoint) reads its input at the same places.
    centre_of_mass = (taps * torch.arange(taps.numel(), dtype=taps.dtype, device=taps.device)).sum().item()
    delay = ((taps.numel() - 1) / 2 - centre_of_mass) / 2

    # Output grid at twice the resolution, centred coordinates.
    rows_up, cols_up = 2 * (height + 2 * margin_out), 2 * (width + 2 * margin_out)
    coord = torch.float64 if images.dtype == torch.float64 else torch.float32
    ys = (torch.arange(rows_up, device=images.device, dtype=coord) - 0.5) / 2 + delay - margin_out - (height - 1) / 2
    xs = (torch.arange(cols_up, device=images.device, dtype=coord) - 0.5) / 2 + delay - margin_out - (width - 1) / 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
    points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1).reshape(-1, 3)   # [P, 3]
    source = points @ inverse.to(coord).transpose(1, 2)                                   # [N, P, 3]

    # Reflect-pad so that every source sample the filters touch exists.
    corners = source[:, [0, cols_up - 1, (rows_up - 1) * cols_up, rows_up * cols_up - 1], :2]
    lo = corners.amin(dim=(0, 1)) + torch.tensor([(width - 1) / 2, (height - 1) / 2], device=images.device)
    hi = corners.amax(dim=(0, 1)) + torch.tensor([(width - 1) / 2, (height - 1) / 2], device=images.device)
    left, top = [max(0, math.ceil(reach - v)) for v in lo.tolist()]
    right, bottom = [max(0, math.ceil(v - s + 1 + reach)) for v, s in zip(hi.tolist(), (width, height))]
    padded = _reflect_pad(images, left, right, top, bottom)

    # Upsample: sample i of the result sits at padded pixel (i - 0.5) / 2 + delay.
    up = filter_pass(filter_pass(padded, taps, 2, True), taps, 3, True)

    # Bilinear lookup in the upsampled image (grid_sample's normalised coordinates, align_corners=False).
    col_up = 2 * (source[..., 0] + (width - 1) / 2 + left - delay) + 0.5
    row_up = 2 * (source[..., 1] + (height - 1) / 2 + top - delay) + 0.5
    grid = torch.stack([(2 * col_up + 1) / up.shape[3] - 1, (2 * row_up + 1) / up.shape[2] - 1], dim=-1)
    grid = grid.reshape(n, rows_up, cols_up, 2).to(images.dtype)
    warped = torch.nn.functional.grid_sample(up, grid, mode='bilinear', padding_mode='zeros', align_corners=False)

    # Downsample with the adjoint filter and drop the margin.
    down = filter_pass(filter_pass(warped, taps, 2, False), taps, 3, False)
    return down[:, :, margin_out:margin_out + height, margin_out:margin_out + width]


def blit_affine(images, inverse):
    """Exact warp for maps that send pixel centres to pixel centres (flips, quarter turns, integer shifts).

    images `[N, C, H, W]`, inverse `[N, 3, 3]` as in `resample_affine`; sources outside mirror the image."""
    n, channels, height, width = images.shape
    ys, xs = torch.meshgrid(torch.arange(height, device=images.device, dtype=torch.float32) - (height - 1) / 2,
                            torch.arange(width, device=images.device, dtype=torch.float32) - (width - 1) / 2,
                            indexing='ij')
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(-1, 3)
    source = points @ inverse.to(torch.float32).transpose(1, 2)                           # [N, H*W, 3]
    cols = _reflect_index(torch.round(source[..., 0] + (width - 1) / 2).to(torch.int64), width)
    rows = _reflect_index(torch.round(source[..., 1] + (height - 1) / 2).to(torch.int64), height)
    index = (rows * width + cols).unsqueeze(1).expand(-1, channels, -1)
    return images.reshape(n, channels, height * width).gather(2, index).reshape(n, channels, height, width)

#----------------------------------------------------------------------------

@persistent_class
class AugmentPipe(nn.Module):
    """ADA's augmentation pipe. Arguments: probability multipliers (0 = off, 1 = with probability p) and
    strengths, with stylegan2-ada-pytorch's names and defaults. `p` (buffer, scalar) is the overall strength
    that the training loop adapts; it starts at 1 as in NVIDIA's class."""

    def __init__(self,
        xflip=0, rotate90=0, xint=0,            # Blits: x-flip, quarter turns, integer translation.
        xint_max=0.125,                         # Integer translation range, fraction of the image size.
        scale=0, rotate=0, aniso=0, xfrac=0,    # General geometry.
        scale_std=0.2,                          # Isotropic scaling: log2 standard deviation.
        rotate_max=1,                           # Rotation range, 1 = the full circle.
        aniso_std=0.2,                          # Anisotropic scaling: log2 standard deviation.
        xfrac_std=0.125,                        # Fractional translation: standard deviation, fraction of size.
        brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0,   # Colour.
        brightness_std=0.2,                     # Brightness offset: standard deviation (images in [-1, 1]).
        contrast_std=0.5,                       # Contrast factor: log2 standard deviation.
        hue_max=1,                              # Hue rotation range, 1 = the full circle.
        saturation_std=1,                       # Saturation factor: log2 standard deviation.
        imgfilter=0, imgfilter_bands=(1, 1, 1, 1), imgfilter_std=1,   # Image-space filtering (not implemented).
        noise=0, cutout=0,                      # Corruptions: additive noise, cutout.
        noise_std=0.1,                          # Noise: std of the per-image noise level |N(0, 1)| * noise_std.
        cutout_size=0.5,                        # Cutout square side, fraction of the image size.
    ):
        super().__init__()
        if imgfilter:
            raise ValueError('AugmentPipe: imgfilter (image-space filtering) is not implemented; '
                             'use one of ' + ', '.join(sorted(AUGPIPE_SPECS)))
        self.register_buffer('p', torch.ones([]))
        self.register_buffer('Hz_geom', torch.tensor(_SYM6_LOWPASS, dtype=torch.float64).div_(
            sum(_SYM6_LOWPASS)).to(torch.float32))
        self.xflip, self.rotate90, self.xint, self.xint_max = (float(xflip), float(rotate90), float(xint),
                                                                float(xint_max))
        self.scale, self.rotate, self.aniso, self.xfrac = float(scale), float(rotate), float(aniso), float(xfrac)
        self.scale_std, self.rotate_max = float(scale_std), float(rotate_max)
        self.aniso_std, self.xfrac_std = float(aniso_std), float(xfrac_std)
        self.brightness, self.contrast, self.lumaflip = float(brightness), float(contrast), float(lumaflip)
        self.hue, self.saturation = float(hue), float(saturation)
        self.brightness_std, self.contrast_std = float(brightness_std), float(contrast_std)
        self.hue_max, self.saturation_std = float(hue_max), float(saturation_std)
        self.imgfilter, self.imgfilter_bands, self.imgfilter_std = 0.0, list(imgfilter_bands), float(imgfilter_std)
        self.noise, self.cutout = float(noise), float(cutout)
        self.noise_std, self.cutout_size = float(noise_std), float(cutout_size)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # NVIDIA's pipes also hold 'Hz_fbank' (the image-space filter bank, unused here); pickles of our
        # earlier pipe hold no 'Hz_geom' (a constant: keep ours).
        state_dict.pop(prefix + 'Hz_fbank', None)
        state_dict.setdefault(prefix + 'Hz_geom', self.Hz_geom)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    #------------------------------------------------------------------ random draws

    def _chosen(self, multiplier, n, device, probability=None):
        """Bool `[N]`: the images that get this transform (probability `multiplier * p` unless given)."""
        if probability is None:
            probability = multiplier * self.p
        return torch.rand([n], device=device) < probability

    def _draw(self, kind, multiplier, shape, device, identity, probability=None):
        """`shape`-sized random values of `kind` for the chosen images, `identity` for the others."""
        n = shape[0]
        if kind == 'bit':
            value = torch.randint(0, 2, shape, device=device).to(torch.float32)
        elif kind == 'quarter':
            value = torch.randint(0, 4, shape, device=device).to(torch.float32)
        elif kind == 'uniform':
            value = torch.rand(shape, device=device) * 2 - 1
        else:
            value = torch.randn(shape, device=device)
        chosen = self._chosen(multiplier, n, device, probability).reshape([n] + [1] * (len(shape) - 1))
        return torch.where(chosen, value, torch.full_like(value, identity))

    def draw(self, n, height, width, device):
        """Random parameters of the enabled transforms for `n` images of `height` x `width` pixels: a dict of
        `[N]` (or `[N, 2]`, x then y) float tensors, identity values for images that skip a transform.
        Units: pixels (translations), radians (angles), factors (scales, contrast, saturation)."""
        d = {}
        if self.xflip > 0:
            d['xflip'] = self._draw('bit', self.xflip, [n], device, 0)                # 1 = mirrored
        if self.rotate90 > 0:
            d['rotate90'] = self._draw('quarter', self.rotate90, [n], device, 0)      # quarter turns
        if self.xint > 0:
            t = self._draw('uniform', self.xint, [n, 2], device, 0) * self.xint_max
            d['xint'] = torch.round(t * torch.tensor([width, height], device=device, dtype=torch.float32))
        if self.scale > 0:
            d['scale'] = torch.exp2(self._draw('normal', self.scale, [n], device, 0) * self.scale_std)
        if self.rotate > 0:                       # Pre and post rotation: P(at least one) = rotate * p.
            p_each = 1 - torch.sqrt((1 - self.rotate * self.p).clamp(0, 1))
            d['rotate_pre'] = self._draw('uniform', 0, [n], device, 0, p_each) * (math.pi * self.rotate_max)
        if self.aniso > 0:
            d['aniso'] = torch.exp2(self._draw('normal', self.aniso, [n], device, 0) * self.aniso_std)
        if self.rotate > 0:
            d['rotate_post'] = self._draw('uniform', 0, [n], device, 0, p_each) * (math.pi * self.rotate_max)
        if self.xfrac > 0:
            t = self._draw('normal', self.xfrac, [n, 2], device, 0) * self.xfrac_std
            d['xfrac'] = t * torch.tensor([width, height], device=device, dtype=torch.float32)
        if self.brightness > 0:
            d['brightness'] = self._draw('normal', self.brightness, [n], device, 0) * self.brightness_std
        if self.contrast > 0:
            d['contrast'] = torch.exp2(self._draw('normal', self.contrast, [n], device, 0) * self.contrast_std)
        if self.lumaflip > 0:
            d['lumaflip'] = self._draw('bit', self.lumaflip, [n], device, 0)
        if self.hue > 0:
            d['hue'] = self._draw('uniform', self.hue, [n], device, 0) * (math.pi * self.hue_max)
        if self.saturation > 0:
            d['saturation'] = torch.exp2(self._draw('normal', self.saturation, [n], device, 0) * self.saturation_std)
        if self.noise > 0:
            d['noise'] = self._draw('normal', self.noise, [n], device, 0).abs() * self.noise_std
        if self.cutout > 0:
            size = torch.where(self._chosen(self.cutout, n, device), self.cutout_size, 0.0)
            d['cutout'] = torch.cat([torch.rand([n, 2], device=device), size.unsqueeze(1)], dim=1)  # cx, cy, side
        return d

    #------------------------------------------------------------------ matrices from draws

    @staticmethod
    def geometry(d, n, device):
        """Draws -> (`[N, 3, 3]` map from output to source pixel in centred coordinates, bool `[N]`: needs
        resampling). The content is flipped, quarter-turned, shifted by the integer offset, scaled, rotated,
        stretched (x by s, y by 1 / s), rotated again and shifted by the fractional offset, in that order."""
        inverse = torch.eye(3, device=device).repeat(n, 1, 1)
        general = torch.zeros([n], dtype=torch.bool, device=device)
        def then(step_inverse):
            return inverse @ step_inverse
        if 'xflip' in d:
            inverse = then(_planar(n, device, a=1 - 2 * d['xflip']))
        if 'rotate90' in d:
            k = d['rotate90'].to(torch.int64)
            cos = torch.tensor([1., 0., -1., 0.], device=device)[k]
            sin = torch.tensor([0., 1., 0., -1.], device=device)[k]
            inverse = then(_planar(n, device, a=cos, b=sin, c=-sin, d=cos))          # Exact R(-k * 90 deg).
        if 'xint' in d:
            inverse = then(_planar(n, device, tx=-d['xint'][:, 0], ty=-d['xint'][:, 1]))
        for key in ('scale', 'rotate_pre', 'aniso', 'rotate_post', 'xfrac'):
            if key not in d:
                continue
            v = d[key]
            if key == 'scale':
                inverse = then(_planar(n, device, a=1 / v, d=1 / v))
                general |= v != 1
            elif key == 'aniso':
                inverse = then(_planar(n, device, a=1 / v, d=v))
                general |= v != 1
            elif key == 'xfrac':
                inverse = then(_planar(n, device, tx=-v[:, 0], ty=-v[:, 1]))
                general |= (v != 0).any(dim=1)
            else:
                inverse = then(_planar_rotation(n, device, -v))
                general |= v != 0
        return inverse, general

    @staticmethod
    def colour(d, n, device):
        """Draws -> `[N, 4, 4]` homogeneous RGB map: offset by the brightness, times the contrast, luma flipped
        (Householder reflection across the plane normal to the grey axis v), hue-rotated around v, and the
        component orthogonal to v scaled by the saturation, in that order. None when no colour op is on."""
        if not any(key in d for key in ('brightness', 'contrast', 'lumaflip', 'hue', 'saturation')):
            return None
        v = torch.tensor(np.append(_GREY_AXIS, 0), dtype=torch.float32, device=device)
        vv = torch.outer(v, v)
        eye = torch.eye(4, device=device)
        m = eye.repeat(n, 1, 1)
        if 'brightness' in d:
            b = d['brightness']
            m = _stack_matrix([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]], n, device) @ m
        if 'contrast' in d:
            c = d['contrast']
            m = _stack_matrix([[c, 0, 0, 0], [0, c, 0, 0], [0, 0, c, 0], [0, 0, 0, 1]], n, device) @ m
        if 'lumaflip' in d:
            m = (eye - 2 * vv * d['lumaflip'].reshape(n, 1, 1)) @ m
        if 'hue' in d:                                   # Rodrigues: I + sin K + (1 - cos) K^2, K = [v]x.
            skew = torch.zeros([4, 4], device=device)
            skew[:3, :3] = torch.tensor(np.cross(np.eye(3), _GREY_AXIS), dtype=torch.float32, device=device)
            theta = d['hue'].reshape(n, 1, 1)
            m = (eye + torch.sin(theta) * skew + (1 - torch.cos(theta)) * (skew @ skew)) @ m
        if 'saturation' in d:
            m = (vv + (eye - vv) * d['saturation'].reshape(n, 1, 1)) @ m
        return m

    #------------------------------------------------------------------ application

    def apply(self, images, d):
        """Apply draws `d` (from `draw`) to images `[N, C, H, W]`; returns the same shape."""
        n, channels, height, width = images.shape
        device = images.device
        if any(key in d for key in _GEOMETRY_KEYS):
            inverse, general = self.geometry(d, n, device)
            identity = (inverse == torch.eye(3, device=device)).all(dim=(1, 2))
            if not bool(identity.all()):
                if 'rotate90' in d and height != width:
                    raise ValueError(f'AugmentPipe: rotate90 needs square images, got {height}x{width}')
                images = self._warp(images, inverse, general)

        m = self.colour(d, n, device)
        if m is not None and not bool((m == torch.eye(4, device=device)).all()):
            m = m.to(images.dtype)
            flat = images.reshape(n, channels, height * width)
            if channels == 3:
                flat = torch.baddbmm(m[:, :3, 3:], m[:, :3, :3], flat)
            elif channels == 1:                          # Grey: the mean response of R, G and B.
                rows = m[:, :3, :].mean(dim=1)           # [N, 4]
                flat = flat * rows[:, :3].sum(dim=1).reshape(n, 1, 1) + rows[:, 3].reshape(n, 1, 1)
            else:
                raise ValueError(f'AugmentPipe: colour transforms need RGB (3 channels) or L (1 channel) images, '
                                 f'got {channels} channels')
            images = flat.reshape(n, channels, height, width)

        if 'noise' in d and bool((d['noise'] > 0).any()):
            images = images + torch.randn_like(images) * d['noise'].to(images.dtype).reshape(n, 1, 1, 1)
        if 'cutout' in d and bool((d['cutout'][:, 2] > 0).any()):
            cx, cy, side = [d['cutout'][:, i].reshape(n, 1, 1, 1) for i in range(3)]
            xs = ((torch.arange(width, device=device) + 0.5) / width).reshape(1, 1, 1, width)
            ys = ((torch.arange(height, device=device) + 0.5) / height).reshape(1, 1, height, 1)
            inside = ((xs - cx).abs() < side / 2) & ((ys - cy).abs() < side / 2)
            images = images * (~inside).to(images.dtype)
        return images

    def _warp(self, images, inverse, general):
        """Blit the images whose map is exact, resample the others; order of the batch kept."""
        if not bool(general.any()):
            return blit_affine(images, inverse)
        resampled = general.nonzero()[:, 0]
        if bool(general.all()):
            return resample_affine(images, inverse, self.Hz_geom)
        blitted = (~general).nonzero()[:, 0]
        parts = torch.cat([blit_affine(images[blitted], inverse[blitted]),
                           resample_affine(images[resampled], inverse[resampled], self.Hz_geom)])
        order = torch.argsort(torch.cat([blitted, resampled]))
        return parts[order]

    def forward(self, images):
        """images `[N, C, H, W]` (C = 3, or 1 where hue and saturation act as identity), zero-centred
        (e.g. [-1, 1]) -> augmented images of the same shape, differentiable with respect to `images`."""
        if images.ndim != 4:
            raise ValueError(f'AugmentPipe expects [N, C, H, W] images, got shape {tuple(images.shape)}')
        n, channels, height, width = images.shape
        d = self.draw(n, height, width, images.device)
        if channels == 1:
            d.pop('hue', None)
            d.pop('saturation', None)
        return self.apply(images, d)

    @torch.no_grad()
    def adjust_p(self, sign_mean, batch, target=0.6, speed_kimg=500):
        """ADA's heuristic: move p by `batch / (speed_kimg * 1000)` up when `sign_mean > target`, down otherwise.

        sign_mean: mean of sign(D(real)) since the last adjustment (float or tensor), the overfitting gauge r_t.
        batch: number of real images shown since the last adjustment (batch size * adjustment interval).
        speed_kimg: images (in thousands) for p to move from 0 to 1. p stays >= 0.
        """
        sign_mean = torch.as_tensor(sign_mean, dtype=torch.float32, device=self.p.device)
        step = torch.sign(sign_mean - target) * (float(batch) / (float(speed_kimg) * 1000))
        self.p.copy_((self.p + step).clamp(min=0))

#----------------------------------------------------------------------------
