"""Image files in, images out: listing and opening input images, conversion, atomic PNG writing.

Inputs (`list_folder`, `list_zip`, `open_image`): every file of a folder or zip is either taken as a
candidate image or reported with the reason it is left out (hidden files, macOS resource forks). A
candidate is whatever Pillow can open, whatever its extension; what Pillow cannot decode raises
`ImageReadError` with a plain reason. Animated images (GIF, APNG, WebP, multi-page TIFF) give their
first frame, and say so.
"""

import io
import os
import re
import zipfile

import numpy as np
import PIL
import PIL.Image
import torch

from torch_utils.files import atomic_write

#----------------------------------------------------------------------------
# Listing and opening input images.

# Extensions of the usual image formats, for messages ("no images (.png .jpg ...) found"); files with other
# extensions are tried too, since Pillow recognises formats by content.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
_JUNK_DIRS = ('__MACOSX',)
# The record files of a folder written by align_faces.py (it holds alignment.jsonl): the crops are the images.
ALIGNED_RECORDS = ('alignment.jsonl', 'skipped.json', 'settings.json', 'summary.json', 'log.txt')


class ImageReadError(ValueError):
    """An input file that is not an image Pillow can decode; the message is the reason, without the file name."""


def _left_out(rel):
    """Why the file at relative path `rel` ('a/b.png') is not a candidate image, or None if it is."""
    parts = rel.split('/')
    if parts[0] in _JUNK_DIRS:
        return 'macOS resource fork (__MACOSX), not an image'
    if any(p.startswith('.') for p in parts):
        return 'hidden file or folder (name starts with "."), left out'
    return None


def _split(rels, exclude):
    files, ignored = [], []
    for rel in sorted(rels):
        if rel in exclude:
            continue
        reason = _left_out(rel)
        if reason is None:
            files.append(rel)
        else:
            ignored.append((rel, reason))
    return files, ignored


def list_folder(root, exclude=()):
    """Files under `root`, recursively, sorted: (candidates, ignored).

    candidates: relative paths ('sub/img.png', '/'-separated) to try as images; ignored: [(relative path,
    reason)] for hidden files and macOS resource forks; names in `exclude` (e.g. 'dataset.json') are in
    neither list, nor are the record files (`ALIGNED_RECORDS`) of a folder written by align_faces.py.
    """
    if os.path.isfile(os.path.join(root, ALIGNED_RECORDS[0])):
        exclude = tuple(exclude) + ALIGNED_RECORDS
    rels = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            rels.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, '/'))
    return _split(rels, set(exclude))


def list_zip(zf, exclude=()):
    """`list_folder` for the members of an open `zipfile.ZipFile` (folders skipped)."""
    return _split([m for m in zf.namelist() if not m.endswith('/')], set(exclude))


def open_image(data):
    """Encoded bytes -> (decoded PIL image, note or None). The note says when only the first frame of an
    animated file was used. Raises ImageReadError with a plain reason when Pillow cannot decode it."""
    try:
        img = PIL.Image.open(io.BytesIO(data))
    except PIL.UnidentifiedImageError:
        raise ImageReadError('not an image file Pillow can read') from None
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        raise ImageReadError(f'unreadable image ({type(err).__name__}: {_reason(err)})') from err
    note = None
    try:
        frames = int(getattr(img, 'n_frames', 1) or 1)
        if frames > 1:
            img.seek(0)
            note = f'animated {img.format or "image"} with {frames} frames: used the first frame'
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError, zipfile.BadZipFile, PIL.Image.DecompressionBombError) as err:
        raise ImageReadError(f'damaged {img.format or "image"} file ({type(err).__name__}: {_reason(err)})') from err
    return img, note


def _reason(err):
    """An exception's message on one line, without Pillow's '<_io.BytesIO object at 0x...>'."""
    text = re.sub(r'\s*<_io\.\w+ object at 0x[0-9a-fA-F]+>', '', ' '.join(str(err).split()))
    return text.strip() or type(err).__name__

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
    """Write uint8 `[H, W, C]` (C = 1 or 3) or `[H, W]` as PNG, atomically (temp file + rename)."""
    image = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
    atomic_write(path, lambda tmp: PIL.Image.fromarray(image).save(tmp, format='PNG'))


#----------------------------------------------------------------------------


def disambiguate_names(names, rel_paths):
    """Make file-system-safe `names` (one per entry of `rel_paths`) unique: a name shared by several files
    gets the file's extension appended ('a.png', 'a.jpg' -> 'a_png', 'a_jpg'), then a counter if needed."""
    counts = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    used, result = set(), []
    for rel, name in zip(rel_paths, names):
        if counts[name] > 1:
            name = f'{name}_{os.path.splitext(rel)[1].lstrip(".").lower() or "x"}'
        base, k = name, 1
        while name in used:
            k += 1
            name = f'{base}_{k}'
        used.add(name)
        result.append(name)
    return result
