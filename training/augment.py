"""Differentiable discriminator augmentation with an adaptive probability, after ADA (Karras et al. 2020,
"Training Generative Adversarial Networks with Limited Data"), reduced to its pixel-blitting and colour
groups and written with plain tensor ops (gather and batched 3x3 colour matrices, no custom kernels).

Implemented (ADA's names and default strengths): xflip, rotate90, xint (integer translation with
reflect padding, xint_max = 0.125); brightness, contrast, lumaflip, hue, saturation.
Left out of ADA's 'bgc' default: the general geometric group (isotropic/anisotropic scaling, arbitrary
rotation, fractional translation), which needs the wavelet-filtered up/downsampling and grid_sample;
also ADA's image-space filtering, additive noise and cutout. Asking for any of them raises ValueError.
The paper trains without augmentation; this pipe is for small data sets.
"""

import numpy as np
import torch

from torch_utils import persistence

# Presets: NVIDIA's 'blit' and 'color', and 'bc' = both (ADA's 'bgc' minus the geometric group).
AUGPIPE_SPECS = {
    'blit':  dict(xflip=1, rotate90=1, xint=1),
    'color': dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
    'bc':    dict(xflip=1, rotate90=1, xint=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
}

_UNSUPPORTED = ('scale', 'rotate', 'aniso', 'xfrac', 'imgfilter', 'noise', 'cutout')
_UNSUPPORTED_SETTINGS = ('scale_std', 'rotate_max', 'aniso_std', 'xfrac_std', 'imgfilter_bands', 'imgfilter_std',
                         'noise_std', 'cutout_size')

#----------------------------------------------------------------------------

def _reflect_index(idx, size):
    """Integer coordinates -> `[0, size)` by mirror reflection without repeating the edge ('reflect' padding)."""
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= size, period - idx, idx)


_LUMA = np.full([3], 1 / np.sqrt(3))                                   # Unit grey axis v of RGB.
_LUMA_OUTER = np.outer(_LUMA, _LUMA)                                    # v v^T
_LUMA_CROSS = np.cross(np.eye(3), _LUMA)                                # [v]_x: K @ x = v x x

#----------------------------------------------------------------------------
# Pixel blitting + colour transforms of ADA, each applied per image with probability (multiplier * p).

@persistence.persistent_class
class AugmentPipe(torch.nn.Module):
    def __init__(self,
        xflip           = 0,        # Probability multiplier for a random x-flip.
        rotate90        = 0,        # Probability multiplier for a random multiple of 90 degrees (square images).
        xint            = 0,        # Probability multiplier for integer translation.
        xint_max        = 0.125,    # Range of the integer translation, relative to the image size.
        brightness      = 0,        # Probability multiplier for brightness (additive).
        contrast        = 0,        # Probability multiplier for contrast (multiplicative).
        lumaflip        = 0,        # Probability multiplier for a random flip of the luma axis.
        hue             = 0,        # Probability multiplier for hue rotation (around the luma axis).
        saturation      = 0,        # Probability multiplier for saturation.
        brightness_std  = 0.2,      # Standard deviation of the brightness offset.
        contrast_std    = 0.5,      # Log2 standard deviation of the contrast factor.
        hue_max         = 1,        # Range of the hue rotation, 1 = full circle.
        saturation_std  = 1,        # Log2 standard deviation of the saturation factor.
        **unsupported,              # ADA's other groups: accepted only when disabled (0), see the module doc.
    ):
        super().__init__()
        unknown = sorted(set(unsupported) - set(_UNSUPPORTED) - set(_UNSUPPORTED_SETTINGS))
        if unknown:
            raise TypeError(f'AugmentPipe: unknown arguments {unknown}')
        enabled = sorted(k for k in _UNSUPPORTED if unsupported.get(k, 0))
        if enabled:
            raise ValueError(f'AugmentPipe: {enabled} are not implemented (only pixel blitting and colour)')
        self.register_buffer('p', torch.ones([]))   # Overall probability multiplier; ADA starts it at 0.
        self.xflip, self.rotate90, self.xint, self.xint_max = float(xflip), float(rotate90), float(xint), float(xint_max)
        self.brightness, self.contrast, self.lumaflip = float(brightness), float(contrast), float(lumaflip)
        self.hue, self.saturation = float(hue), float(saturation)
        self.brightness_std, self.contrast_std = float(brightness_std), float(contrast_std)
        self.hue_max, self.saturation_std = float(hue_max), float(saturation_std)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # stylegan2-ada-pytorch pipes also store constant filter banks used only by the groups left out.
        for name in ('Hz_geom', 'Hz_fbank'):
            state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _chosen(self, multiplier, batch_size, device):
        """Bool `[N]`: images that get this augmentation (probability multiplier * p)."""
        return torch.rand([batch_size], device=device) < multiplier * self.p

    def _blit(self, images):
        """x-flip, 90-degree rotation, integer translation as one gather of source pixels. `[N,C,H,W]` -> same."""
        n, num_channels, height, width = images.shape
        device = images.device
        # Doubled centred pixel coordinates (integers): X = 2x - (W - 1).
        ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing='ij')
        X = (2 * xs - (width - 1)).reshape(1, -1).expand(n, -1)                      # [N, H*W]
        Y = (2 * ys - (height - 1)).reshape(1, -1).expand(n, -1)

        # Source = flip(rotate(out - t)): content moves by +t, then is rotated, then flipped.
        if self.xint > 0:
            t = (torch.rand([n, 2], device=device) * 2 - 1) * self.xint_max
            t = torch.where(self._chosen(self.xint, n, device).unsqueeze(1), t, torch.zeros_like(t))
            t = torch.round(t * torch.tensor([width, height], device=device)).to(torch.int64)
            X = X - 2 * t[:, :1]
            Y = Y - 2 * t[:, 1:]
        if self.rotate90 > 0:
            if height != width:
                raise ValueError('AugmentPipe: rotate90 needs square images')
            k = torch.randint(0, 4, [n], device=device)
            k = torch.where(self._chosen(self.rotate90, n, device), k, torch.zeros_like(k))
            cos = torch.tensor([1, 0, -1, 0], device=device)[k].unsqueeze(1)
            sin = torch.tensor([0, 1, 0, -1], device=device)[k].unsqueeze(1)
            X, Y = cos * X - sin * Y, sin * X + cos * Y
        if self.xflip > 0:
            i = torch.randint(0, 2, [n], device=device)
            i = torch.where(self._chosen(self.xflip, n, device), i, torch.zeros_like(i))
            X = X * (1 - 2 * i).unsqueeze(1)

        src_x = _reflect_index(torch.div(X + (width - 1), 2, rounding_mode='floor'), width)
        src_y = _reflect_index(torch.div(Y + (height - 1), 2, rounding_mode='floor'), height)
        index = (src_y * width + src_x).unsqueeze(1).expand(-1, num_channels, -1)    # [N, C, H*W]
        out = images.reshape(n, num_channels, height * width).gather(2, index)
        return out.reshape(n, num_channels, height, width)

    def _colour_transform(self, n, device, rgb=True):
        """Per-image affine colour map `x -> A x + b`: A `[N, 3, 3]`, b `[N, 3, 1]` (ADA's order of ops).
        Without `rgb` (grey images) hue and saturation are skipped."""
        eye = torch.eye(3, device=device)
        A = eye.expand(n, 3, 3)
        b = torch.zeros([n, 3, 1], device=device)
        vvT = torch.as_tensor(_LUMA_OUTER, dtype=torch.float32, device=device)
        if self.brightness > 0:
            delta = torch.randn([n], device=device) * self.brightness_std
            delta = torch.where(self._chosen(self.brightness, n, device), delta, torch.zeros_like(delta))
            b = b + delta.reshape(n, 1, 1)
        if self.contrast > 0:
            c = torch.exp2(torch.randn([n], device=device) * self.contrast_std)
            c = torch.where(self._chosen(self.contrast, n, device), c, torch.ones_like(c)).reshape(n, 1, 1)
            A, b = A * c, b * c
        if self.lumaflip > 0:
            i = torch.randint(0, 2, [n], device=device).to(torch.float32)
            i = torch.where(self._chosen(self.lumaflip, n, device), i, torch.zeros_like(i))
            M = eye - 2 * vvT * i.reshape(n, 1, 1)                                 # Householder reflection.
            A, b = M @ A, M @ b
        if self.hue > 0 and rgb:
            theta = (torch.rand([n], device=device) * 2 - 1) * np.pi * self.hue_max
            theta = torch.where(self._chosen(self.hue, n, device), theta, torch.zeros_like(theta)).reshape(n, 1, 1)
            K = torch.as_tensor(_LUMA_CROSS, dtype=torch.float32, device=device)
            M = eye + torch.sin(theta) * K + (1 - torch.cos(theta)) * (K @ K)        # Rodrigues rotation about v.
            A, b = M @ A, M @ b
        if self.saturation > 0 and rgb:
            s = torch.exp2(torch.randn([n], device=device) * self.saturation_std)
            s = torch.where(self._chosen(self.saturation, n, device), s, torch.ones_like(s)).reshape(n, 1, 1)
            M = eye + (s - 1) * (eye - vvT)                                         # Scale the chroma plane.
            A, b = M @ A, M @ b
        return A, b

    def forward(self, images):
        """images `[N, C, H, W]` (C = 3, or 1 for which hue and saturation are skipped), zero-centred
        (e.g. [-1, 1]) -> augmented images, same shape; differentiable with respect to `images`."""
        if images.ndim != 4:
            raise ValueError(f'AugmentPipe expects [N, C, H, W] images, got shape {tuple(images.shape)}')
        n, num_channels, height, width = images.shape
        if self.xflip > 0 or self.rotate90 > 0 or self.xint > 0:
            images = self._blit(images)
        colour = (self.brightness, self.contrast, self.lumaflip) + ((self.hue, self.saturation) if num_channels > 1 else ())
        if any(m > 0 for m in colour):
            if num_channels not in (1, 3):
                raise ValueError('AugmentPipe: colour transforms need RGB (3 channels) or L (1 channel) images')
            A, b = self._colour_transform(n, images.device, rgb=(num_channels == 3))
            A, b = A.to(images.dtype), b.to(images.dtype)
            flat = images.reshape(n, num_channels, height * width)
            if num_channels == 3:
                flat = torch.baddbmm(b, A, flat)                                    # A @ x + b
            else:                                                                   # Grey: average the RGB response.
                flat = flat * A.mean(dim=1).sum(dim=1, keepdim=True).unsqueeze(2) + b.mean(dim=1, keepdim=True)
            images = flat.reshape(n, num_channels, height, width)
        return images

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
