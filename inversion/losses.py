"""Reconstruction losses for inversion: LPIPS (any network of `metrics.lpips`) plus optional pixel terms.

Images larger than `resolution` (256) are downsampled with area averaging before the VGG, as NVIDIA's projector
does; smaller images are evaluated at their own size. With masks (`prepare_target(target, mask)`, `mask`
`[N, 1, H, W]` in [0, 1], 1 = keep) LPIPS is taken on its spatial map (`spatial_weights` of the LPIPS network)
and the pixel terms are weighted the same way; the pixels with mask 0 are set to grey in both the target and the
generated image before the VGG, so that nothing under the mask reaches the loss through the receptive fields of
the kept positions either. A mask of ones gives bitwise the unmasked loss.
"""

import contextlib

import torch
import torch.nn.functional as F

from metrics.lpips import DEFAULT_LPIPS, load_lpips, lpips_network_name, normalised_weights

#----------------------------------------------------------------------------

class InversionLoss(torch.nn.Module):
    """Per-image reconstruction loss `[N]`: LPIPS + mse_weight * MSE + l1_weight * L1.

    MSE and L1 are means over pixels and channels with images scaled to [0, 1].

    Args:
        perceptual:   an LPIPS network of `metrics.lpips.load_lpips`.
        resolution:   images larger than this are area-downsampled before the VGG; None = never.
        mse_weight:   weight of the pixel MSE term (0 = off, the paper's setting).
        l1_weight:    weight of the pixel L1 term (0 = off).
        vgg_autocast: dtype of autocast around the VGG forward (e.g. torch.bfloat16), None = off.
    """

    def __init__(self, perceptual, resolution=256, mse_weight=0.0, l1_weight=0.0, vgg_autocast=None):
        super().__init__()
        self.perceptual = perceptual
        self.resolution = None if resolution is None else int(resolution)   # px; larger images are shrunk
        self.mse_weight = float(mse_weight)
        self.l1_weight = float(l1_weight)
        self.vgg_autocast = vgg_autocast

    def _vgg_input(self, img):
        """`[N, C, H, W]` in [-1, 1] -> `[N, 3, h, w]`: grey repeated to RGB, area-downsampled to `resolution`."""
        if img.shape[1] == 1:
            img = img.expand(-1, 3, -1, -1)
        if self.resolution is not None and img.shape[2] > self.resolution:
            img = F.interpolate(img, size=(self.resolution, self.resolution), mode='area')
        return img

    def prepare_compile(self, image_shape, device):
        """Make the perceptual network traceable (`make_traceable`, NVIDIA's TorchScript VGG16) for generated images
        of `image_shape` `[N, C, H, W]`, before torch.compile traces this loss; no-op for the other networks."""
        make = getattr(self.perceptual, 'make_traceable', None)
        if make is not None:
            n, _c, h, w = image_shape
            if self.resolution is not None and h > self.resolution:
                h = w = self.resolution
            make((n, 3, h, w), device)

    def _autocast(self, device):
        if self.vgg_autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.vgg_autocast)

    def features(self, img):
        """VGG features of images `[N, C, H, W]` in [-1, 1] (opaque: pass them to `prepare_target` users)."""
        with self._autocast(img.device):
            return self.perceptual.features(self._vgg_input(img.to(torch.float32)))

    @torch.no_grad()
    def prepare_target(self, target, mask=None):
        """target `[N, C, H, W]` in [-1, 1], mask None or `[N, 1, H, W]` in [0, 1] (1 = keep) -> dict reused at
        every step: image, features, and for a mask that is not all ones: keep (`[N, 1, H, W]` bool, mask > 0),
        pixel_weights (mask over its mean), lpips_weights (`spatial_weights` of the perceptual network)."""
        target = target.to(torch.float32)
        if mask is None or bool((mask == 1).all()):
            return dict(image=target, features=self.features(target))
        mask = mask.to(device=target.device, dtype=torch.float32).clamp(0, 1)
        if tuple(mask.shape) != (target.shape[0], 1, *target.shape[2:]):
            raise ValueError(f'mask shape {list(mask.shape)} does not fit targets {list(target.shape)}')
        keep = mask > 0
        features = self.features(torch.where(keep, target, 0.0))
        vgg_mask = mask
        if self.resolution is not None and mask.shape[2] > self.resolution:
            vgg_mask = F.interpolate(mask, size=(self.resolution, self.resolution), mode='area')
        return dict(image=target, features=features, keep=keep, pixel_weights=normalised_weights(mask),
                    lpips_weights=self.perceptual.spatial_weights(features, vgg_mask))

    def forward(self, img, target_state):
        """img `[N, C, H, W]` (generator output, about [-1, 1]) -> dict(loss `[N]`, lpips `[N]`)."""
        keep = target_state.get('keep')
        vgg_img = img if keep is None else torch.where(keep, img.to(torch.float32), 0.0)
        lpips = self.perceptual.distance(self.features(vgg_img), target_state['features'],
                                         target_state.get('lpips_weights'))
        loss = lpips
        diff = (img.to(torch.float32) - target_state['image']) / 2
        weights = target_state.get('pixel_weights')
        if self.mse_weight != 0:
            sq = diff.square()
            loss = loss + self.mse_weight * (sq if weights is None else sq * weights).mean(dim=(1, 2, 3))
        if self.l1_weight != 0:
            ab = diff.abs()
            loss = loss + self.l1_weight * (ab if weights is None else ab * weights).mean(dim=(1, 2, 3))
        return dict(loss=loss, lpips=lpips)


class MaskedLoss(torch.nn.Module):
    """An `InversionLoss` bound to the masks of one batch (`[N, 1, H, W]` in [0, 1], or None), for
    `optimize.Inverter`, which calls `prepare_target(targets)`."""

    def __init__(self, loss, mask):
        super().__init__()
        self.loss, self.mask = loss, mask

    def prepare_target(self, target):
        return self.loss.prepare_target(target, self.mask)

    def forward(self, img, target_state):
        return self.loss(img, target_state)

    def __getattr__(self, name):                     # resolution, lpips_network, ... of the wrapped loss
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.loss, name)


def build_loss(spec=DEFAULT_LPIPS, device=None, resolution=256, mse_weight=0.0, l1_weight=0.0, precision='fp32',
               seed=0):
    """`InversionLoss` from an `--lpips` spec (see `parse_lpips_spec`), on `device`.

    precision: 'bf16' runs the VGG under bfloat16 autocast; 'fp32'/'tf32' leave it in float32.
    seed:      seed of the random trunk of 'vgg-random' (ignored otherwise).
    """
    perceptual = load_lpips(spec, device=device, seed=seed)
    autocast = torch.bfloat16 if precision == 'bf16' else None
    loss = InversionLoss(perceptual, resolution=resolution, mse_weight=mse_weight, l1_weight=l1_weight,
                         vgg_autocast=autocast)
    loss.lpips_network = lpips_network_name(spec)     # what outputs record as the LPIPS used
    return loss.to(device) if device is not None else loss

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# Checks before a run.

MIN_RESOLUTION = 16        # VGG16's relu5_3 is 1x1 at 16 px.


def check_lpips_input(G):
    """Raise ValueError (one line) if LPIPS cannot be computed on G's images."""
    if G.img_channels not in (1, 3):
        raise ValueError(f'The generator makes {G.img_channels}-channel images; inversion with LPIPS needs 1 or 3')
    if G.img_resolution < MIN_RESOLUTION:
        raise ValueError(f'The generator makes {G.img_resolution} px images; LPIPS (VGG16) needs at least '
                             f'{MIN_RESOLUTION} px')


def check_mask_support(loss, G, device):
    """Raise MaskUnsupportedError (one line) when `loss`'s LPIPS network gives no spatial map to mask."""
    r = G.img_resolution
    probe = torch.zeros([1, G.img_channels, r, r], device=device)
    half = torch.ones([1, 1, r, r], device=device)
    half[..., : r // 2] = 0
    loss.prepare_target(probe, half)
