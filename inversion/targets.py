"""Target images for inversion: a folder (recursive), a single file, or a zip archive.

Files are listed once (`scan_targets`), then decoded lazily (`load_target`) so that large
folders do not sit in memory. Every image is converted to RGB (or L for one-channel
generators): grayscale, 16-bit, palette, CMYK and alpha images included (alpha is
composited over white); EXIF orientation is applied; then it is center-cropped to a square
(`crop='center'`, as NVIDIA's projector does) or squashed (`crop='none'`), and resized to the
generator's resolution with LANCZOS. Undecodable files raise `TargetError` so that callers
can skip and report them.

Which files are targets: in a folder or zip, every file except hidden ones and macOS resource forks
(those are reported by `list_targets` with their reason), whatever its extension: any format Pillow
can open is accepted (GIF and other animated formats give their first frame, and say so).
"""

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import PIL.Image
import PIL.ImageOps
import torch

from torch_utils.image_io import IMAGE_EXTENSIONS, ImageReadError, list_folder, list_zip, open_image

#----------------------------------------------------------------------------

CROP_MODES = ('center', 'none')


class TargetError(ValueError):
    """A target file that cannot be read or decoded as an image."""


@dataclass(frozen=True)
class TargetSource:
    """One target image before decoding.

    name:    unique output name (file-system safe, no extension), e.g. 'faces_0001'.
    source:  where it comes from, for reports: a path, or 'archive.zip:member'.
    """
    name: str
    source: str
    _path: str
    _member: str = None

    def read_bytes(self):
        """The encoded file content (raises OSError/zipfile errors)."""
        if self._member is None:
            return Path(self._path).read_bytes()
        with zipfile.ZipFile(self._path) as zf:
            return zf.read(self._member)

#----------------------------------------------------------------------------

def _safe_name(rel_path):
    """'sub dir/img 01.png' -> 'sub_dir_img_01' (characters outside [A-Za-z0-9._-] become '_')."""
    stem = os.path.splitext(rel_path)[0].replace('\\', '/').strip('/')
    name = re.sub(r'[^A-Za-z0-9._-]+', '_', stem.replace('/', '_')).strip('._') or 'image'
    return name


def _unique_names(rel_paths):
    """Output names for relative paths; collisions ('a.png', 'a.jpg') get the extension appended, then a counter."""
    names = [_safe_name(p) for p in rel_paths]
    counts = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
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


def list_targets(path):
    """Candidate target images under `path` (folder, single file, or .zip), sorted by relative path.

    Returns (sources, ignored): a list of `TargetSource`, and [(source, reason)] for the files left
    out (hidden files, macOS resource forks). Raises FileNotFoundError if `path` does not exist,
    TargetError for a zip that cannot be read. A single file is taken whatever its name.
    """
    path = Path(os.path.expanduser(str(path)))
    if not path.exists():
        raise FileNotFoundError(f'Target {path} does not exist')
    if path.is_dir():
        rels, ignored = list_folder(path)
        return ([TargetSource(n, str(path / r), str(path / r)) for n, r in zip(_unique_names(rels), rels)],
                [(str(path / r), why) for r, why in ignored])
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                members, ignored = list_zip(zf)
        except (zipfile.BadZipFile, OSError) as err:
            raise TargetError(f'{path} is not a readable zip ({err})') from err
        return ([TargetSource(n, f'{path}:{m}', str(path), m) for n, m in zip(_unique_names(members), members)],
                [(f'{path}:{m}', why) for m, why in ignored])
    return [TargetSource(_safe_name(path.name), str(path), str(path))], []


def scan_targets(path):
    """The `TargetSource`s of `list_targets(path)` (without the files left out)."""
    return list_targets(path)[0]

#----------------------------------------------------------------------------

def to_mode(img, mode='RGB'):
    """Any PIL image -> 'RGB' or 'L' (alpha composited over white, 16-bit/float scaled to 8 bits)."""
    if img.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max(initial=0)
        if img.mode.startswith('I;16') or (img.mode == 'I' and peak > 255):
            scale = 255 / 65535
        elif img.mode == 'F' and peak <= 1:
            scale = 255.0
        else:
            scale = 1.0
        img = PIL.Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), 'L')
    has_alpha = img.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or (img.mode == 'P' and 'transparency' in img.info)
    if has_alpha:
        rgba = img.convert('RGBA')
        background = PIL.Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        img = PIL.Image.alpha_composite(background, rgba)
    return img.convert(mode)


def preprocess(img, resolution, crop='center', mode='RGB'):
    """PIL image -> uint8 `[resolution, resolution, C]` (C = 3 for 'RGB', 1 for 'L')."""
    if crop not in CROP_MODES:
        raise ValueError(f'crop must be one of {CROP_MODES}, got {crop!r}')
    img = to_mode(PIL.ImageOps.exif_transpose(img), mode)
    if crop == 'center':
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), PIL.Image.LANCZOS)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_target(target, resolution, crop='center', channels=3):
    """Decode one `TargetSource` -> (uint8 `[resolution, resolution, channels]`, note or None); raises
    TargetError. The note says when an animated file gave its first frame only."""
    mode = {3: 'RGB', 1: 'L'}[channels]
    try:
        data = target.read_bytes()
    except (OSError, zipfile.BadZipFile, KeyError) as err:
        raise TargetError(f'cannot be read ({type(err).__name__}: {" ".join(str(err).split())})') from err
    try:
        img, note = open_image(data)
        with img:
            return preprocess(img, resolution, crop=crop, mode=mode), note
    except ImageReadError as err:
        raise TargetError(str(err)) from err
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        raise TargetError(f'unreadable image ({type(err).__name__}: {" ".join(str(err).split())})') from err


def load_target(target, resolution, crop='center', channels=3):
    """Decode one `TargetSource` -> uint8 `[resolution, resolution, channels]`; raises TargetError."""
    return decode_target(target, resolution, crop=crop, channels=channels)[0]


def to_tensor(images):
    """uint8 `[N, H, W, C]` (numpy) -> float32 torch tensor `[N, C, H, W]` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32)
    return x / 127.5 - 1

#----------------------------------------------------------------------------
