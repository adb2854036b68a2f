"""Image conversion and atomic PNG/JSON writing shared by the command-line tools."""

import json

import numpy as np
import PIL.Image
import torch

from dnnlib.util import atomic_write

#----------------------------------------------------------------------------

def to_uint8(img: torch.Tensor, drange=(-1, 1)) -> np.ndarray:
    """Images `[N, C, H, W]` in `drange` -> uint8 `[N, H, W, C]` (rounded, clipped)."""
    lo, hi = drange
    img = (img.detach().float() - lo) * (255 / (hi - lo))
    return img.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, cols: int = None) -> np.ndarray:
    """uint8 `[N, H, W, C]` -> one uint8 grid `[rows*H, cols*W, C]` (missing cells black)."""
    n, h, w, c = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros([rows * h, cols * w, c], dtype=np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = im
    return grid

#----------------------------------------------------------------------------

def save_png(path, image: np.ndarray):
    """Write uint8 `[H, W, C]` (C = 1 or 3) as PNG, atomically (temp file + rename)."""
    image = image[:, :, 0] if image.shape[2] == 1 else image
    atomic_write(path, lambda tmp: PIL.Image.fromarray(image).save(tmp, format='PNG'))


def save_json(path, obj, indent=2):
    """Write JSON atomically."""
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=indent)
            f.write('\n')
    atomic_write(path, write)


def append_jsonl(path, obj):
    """Append one JSON line (a line is written whole with one `write`)."""
    with open(path, 'a') as f:
        f.write(json.dumps(obj) + '\n')

#----------------------------------------------------------------------------
