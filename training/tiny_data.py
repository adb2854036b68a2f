"""Procedural "shapes" images: a tiny, download-free dataset for quickstarts and tests.

Each image is a smooth two-colour gradient with one to three anti-aliased
circles, squares or triangles of random colour, size, position and rotation.
Image ``i`` of seed ``s`` depends only on ``(s, i)``, so a prefix of a larger
render is identical to a smaller render with the same seed.
"""

import os

import numpy as np

from training.dataset_zip import write_image_zip

TRAIN_SEED = 0
HELDOUT_SEED = 123457  # Seed for held-out images (e.g. inversion targets).
MAX_SHAPES = 3
SHAPE_NAMES = ('circle', 'square', 'triangle')
_CHUNK = 256  # Images rendered per vectorised batch (bounds memory use).


def _check_args(num_images, resolution, seed):
    if int(num_images) < 0:
        raise ValueError(f'num_images must be >= 0, got {num_images}')
    if int(resolution) < 4:
        raise ValueError(f'resolution must be >= 4, got {resolution}')
    if int(seed) < 0:
        raise ValueError(f'seed must be >= 0, got {seed}')


def _sample_params(num_images, seed):
    """Draw per-image parameters; image i uses its own generator seeded by (seed, i)."""
    fields = {
        'bg0': (3,), 'bg1': (3,), 'bg_angle': (), 'count': (),
        'kind': (MAX_SHAPES,), 'center': (MAX_SHAPES, 2), 'radius': (MAX_SHAPES,),
        'rotation': (MAX_SHAPES,), 'color': (MAX_SHAPES, 3),
    }
    p = {k: np.zeros((num_images,) + s, dtype=np.float64) for k, s in fields.items()}
    for i in range(num_images):
        rng = np.random.default_rng([int(seed), i])
        p['bg0'][i] = rng.uniform(0.0, 1.0, 3)
        p['bg1'][i] = rng.uniform(0.0, 1.0, 3)
        p['bg_angle'][i] = rng.uniform(0.0, 2 * np.pi)
        p['count'][i] = rng.integers(1, MAX_SHAPES + 1)
        p['kind'][i] = rng.integers(0, len(SHAPE_NAMES), MAX_SHAPES)
        p['center'][i] = rng.uniform(0.15, 0.85, (MAX_SHAPES, 2))
        p['radius'][i] = rng.uniform(0.10, 0.28, MAX_SHAPES)
        p['rotation'][i] = rng.uniform(0.0, 2 * np.pi, MAX_SHAPES)
        # Saturated colours: one channel pushed high, one low, so shapes stand out.
        color = rng.uniform(0.0, 1.0, (MAX_SHAPES, 3))
        for s in range(MAX_SHAPES):
            hi, lo = rng.permutation(3)[:2]
            color[s, hi] = 0.75 + 0.25 * color[s, hi]
            color[s, lo] = 0.25 * color[s, lo]
        p['color'][i] = color
    return p


def _render_chunk(p, resolution):
    """Render a batch of images described by parameter dict ``p`` -> float32 [N, H, W, 3]."""
    r = float(resolution)
    coords = (np.arange(resolution, dtype=np.float32) + 0.5)
    x = coords[None, None, :]  # [1, 1, W]
    y = coords[None, :, None]  # [1, H, 1]

    # Background: linear gradient between two colours along a random direction.
    ca = np.cos(p['bg_angle']).astype(np.float32)[:, None, None]
    sa = np.sin(p['bg_angle']).astype(np.float32)[:, None, None]
    t = ((x / r - 0.5) * ca + (y / r - 0.5) * sa) / np.sqrt(2.0) + 0.5  # in [0, 1]
    t = t[..., None]
    img = p['bg0'].astype(np.float32)[:, None, None, :] * (1 - t) \
        + p['bg1'].astype(np.float32)[:, None, None, :] * t

    for s in range(MAX_SHAPES):
        cx = (p['center'][:, s, 0] * r).astype(np.float32)[:, None, None]
        cy = (p['center'][:, s, 1] * r).astype(np.float32)[:, None, None]
        rad = (p['radius'][:, s] * r).astype(np.float32)[:, None, None]
        rot = p['rotation'][:, s].astype(np.float32)[:, None, None]
        kind = p['kind'][:, s][:, None, None]
        dx, dy = x - cx, y - cy
        # Signed distances in pixels (negative inside); exact enough for 1 px anti-aliasing.
        sdf_circle = np.sqrt(dx * dx + dy * dy) - rad
        u = dx * np.cos(rot) + dy * np.sin(rot)
        v = -dx * np.sin(rot) + dy * np.cos(rot)
        sdf_square = np.maximum(np.abs(u), np.abs(v)) - 0.8 * rad
        sdf_tri = None
        for k in range(3):
            a = rot + np.float32(np.pi / 2 + k * 2 * np.pi / 3)
            d = dx * np.cos(a) + dy * np.sin(a)
            sdf_tri = d if sdf_tri is None else np.maximum(sdf_tri, d)
        sdf_tri = sdf_tri - 0.6 * rad
        sdf = np.where(kind == 0, sdf_circle, np.where(kind == 1, sdf_square, sdf_tri))
        active = (p['count'] > s).astype(np.float32)[:, None, None]
        alpha = (np.clip(0.5 - sdf, 0.0, 1.0) * active)[..., None]
        color = p['color'][:, s].astype(np.float32)[:, None, None, :]
        img = img * (1 - alpha) + color * alpha
    return img


def render_shapes(num_images, resolution=32, seed=TRAIN_SEED, return_labels=False):
    """Render ``num_images`` RGB images -> uint8 array [N, resolution, resolution, 3].

    With ``return_labels=True`` also returns int64 labels in {0, 1, 2} (number of
    shapes minus one), usable as classes for conditional training.
    """
    _check_args(num_images, resolution, seed)
    num_images, resolution = int(num_images), int(resolution)
    out = np.zeros([num_images, resolution, resolution, 3], dtype=np.uint8)
    p = _sample_params(num_images, seed)
    for start in range(0, num_images, _CHUNK):
        chunk = {k: v[start:start + _CHUNK] for k, v in p.items()}
        img = _render_chunk(chunk, resolution)
        out[start:start + _CHUNK] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    if return_labels:
        return out, (p['count'].astype(np.int64) - 1)
    return out


def write_tiny_dataset(path_zip, num_images=1000, resolution=32, seed=TRAIN_SEED, labels=False):
    """Write a training zip in the dataset_tool.py format; returns the path."""
    images, classes = render_shapes(num_images, resolution, seed, return_labels=True)
    return write_image_zip(path_zip, images, labels=(classes.tolist() if labels else None))


def write_tiny_images(folder, num_images=16, resolution=32, seed=HELDOUT_SEED):
    """Write held-out images as ``folder/tiny_00000.png`` ...; returns the list of paths."""
    import PIL.Image
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, img in enumerate(render_shapes(num_images, resolution, seed)):
        path = os.path.join(folder, f'tiny_{i:05d}.png')
        PIL.Image.fromarray(img, 'RGB').save(path)
        paths.append(path)
    return paths
