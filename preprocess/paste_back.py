"""Undo an FFHQ alignment: put a reconstruction of the aligned crop back into the original photo.

The crop's square (`quad`, from the alignment record) defines the transform exactly (`ffhq_align`), at any
reconstruction size R: a generator at 256 px can be pasted back into an alignment made at 1024 px. Each photo
pixel inside the square is sampled from the reconstruction (bilinear, after an antialiasing downscale when the
reconstruction is much sharper than the photo there) and blended in with a soft square mask that is 1 inside
and falls smoothly (smoothstep) to 0 over the outer `feather` of the crop, so no seam shows.
"""

import numpy as np
import PIL.Image
import scipy.ndimage

from .ffhq_align import AlignmentError, aligned_from_source, quad_side

#----------------------------------------------------------------------------

DEFAULT_FEATHER = 0.1    # fraction of the crop side over which the mask falls from 1 to 0
OVERSAMPLE_LIMIT = 2.0   # reconstructions sharper than this (crop px per photo px) are first downscaled to it


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def square_mask(u, v, size, feather=DEFAULT_FEATHER):
    """Soft mask at aligned pixel-index coordinates `u`, `v` (float arrays) of a `size`^2 crop -> float32, same
    shape: 1 at least `feather * size` pixels inside the crop's edges, 0 outside, smoothstep between."""
    width = max(feather * size, 1e-6)
    edge_u = np.minimum(u + 0.5, size - (u + 0.5)) / width
    edge_v = np.minimum(v + 0.5, size - (v + 0.5)) / width
    return _smoothstep(np.minimum(edge_u, edge_v)).astype(np.float32)


def _as_rgb_uint8(image, what):
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise AlignmentError(f'{what}: expected a uint8 [H, W, 3] image, got {arr.dtype} {list(arr.shape)}')
    return arr


def paste_back(photo, reconstruction, quad, feather=DEFAULT_FEATHER):
    """Blend a reconstruction of an aligned crop into the photo it was cut from.

    photo:          uint8 [H, W, 3], the original (unaligned) photo.
    reconstruction: uint8 [R, R, 3] (or [R, R] gray), the generator's image of the aligned crop.
    quad:           float [4, 2] square of the crop in the photo (TL, BL, BR, TR; the alignment record's 'quad').
    Returns (composite uint8 [H, W, 3], mask float32 [H, W] in [0, 1]); pixels where mask == 0 equal the photo.
    """
    photo = _as_rgb_uint8(photo, 'photo')
    recon = _as_rgb_uint8(reconstruction, 'reconstruction')
    if recon.shape[0] != recon.shape[1]:
        raise AlignmentError(f'reconstruction: expected a square image, got {recon.shape[1]}x{recon.shape[0]}')
    quad = np.asarray(quad, dtype=np.float64)
    if quad.shape != (4, 2):
        raise AlignmentError(f'quad: expected 4 (x, y) corners, got shape {list(quad.shape)}')
    side = quad_side(quad)
    if recon.shape[0] > OVERSAMPLE_LIMIT * side:
        n = max(int(np.ceil(OVERSAMPLE_LIMIT * side)), 2)
        recon = np.asarray(PIL.Image.fromarray(recon).resize((n, n), PIL.Image.LANCZOS))
    size = recon.shape[0]

    # Photo pixels the square can touch.
    h, w = photo.shape[:2]
    x0, y0 = np.maximum(np.floor(quad.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(quad.max(axis=0)).astype(int) + 1, [w, h])
    composite = photo.copy()
    mask = np.zeros([h, w], dtype=np.float32)
    if x1 <= x0 or y1 <= y0:
        return composite, mask
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    m = aligned_from_source(quad, size)
    u = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    v = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]

    # Sample the reconstruction there and blend.
    alpha = square_mask(u, v, size, feather)
    warped = np.stack([scipy.ndimage.map_coordinates(recon[:, :, ch].astype(np.float32), [v, u], order=1,
                                                     mode='nearest') for ch in range(3)], axis=-1)
    region = photo[y0:y1, x0:x1].astype(np.float32)
    blended = region + (warped - region) * alpha[:, :, None]
    composite[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    mask[y0:y1, x0:x1] = alpha
    return composite, mask
