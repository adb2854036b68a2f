"""Target images for inversion: a folder (recursive), a single file, or a zip archive.

Files are listed once (`scan_targets`), then decoded lazily (`load_target`) so that large
folders do not sit in memory. Every image is converted to RGB (or L for one-channel
generators): grayscale, 16-bit, palette, CMYK and alpha images included (alpha is
composited over white); EXIF orientation is applied; then it is center-cropped to a square
(`crop='center'`, as NVIDIA's projector does), squashed (`crop='none'`) or padded to a square
(`crop='pad'`, the padding grey and masked out), and resized to the generator's resolution with
LANCZOS. Undecodable files raise `TargetError` so that callers can skip and report them.

Masks (`decode_target_with_mask`): a uint8 `[R, R]` weight per pixel (255 = keep, 0 = ignore, grey =
weight) from a mask file (`find_mask`: same relative path in a mask folder, any image format), the
alpha channel of the target, and the padding of `crop='pad'`, multiplied together; it goes through the
same EXIF rotation, crop and resize as the image (area average when shrinking).

Which files are targets: in a folder or zip, every file except hidden ones and macOS resource forks
(those are reported by `list_targets` with their reason), whatever its extension: any format Pillow
can open is accepted (GIF and other animated formats give their first frame, and say so). In a folder
written by align_faces.py (it holds alignment.jsonl) only the crops are targets.
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

from torch_utils.image_io import ImageReadError, disambiguate_names, list_folder, list_zip, open_image

#----------------------------------------------------------------------------

CROP_MODES = ('center', 'none', 'pad')
PAD_GREY = 128                      # fill of the padding of crop='pad' (masked out)


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
    _rel: str = None

    @property
    def relative_path(self):
        """The path inside the target folder or zip ('sub/img.png'); the file name for a single file."""
        return self._member or self._rel or Path(self._path).name

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
    return disambiguate_names([_safe_name(p) for p in rel_paths], rel_paths)


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
        return ([TargetSource(n, str(path / r), str(path / r), _rel=r) for n, r in zip(_unique_names(rels), rels)],
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


def _has_alpha(img):
    return img.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or (img.mode == 'P' and 'transparency' in img.info)


def _square_box(w, h, crop):
    """(left, top, side) of the square that `crop` makes of a w x h image (negative offsets = padding)."""
    if crop == 'center':
        s = min(w, h)
        return (w - s) // 2, (h - s) // 2, s
    s = max(w, h)
    return -((s - w) // 2), -((s - h) // 2), s


def preprocess_with_mask(img, resolution, crop='center', mode='RGB', mask=None):
    """PIL image (+ optional PIL mask of the same size) -> (uint8 `[R, R, C]`, uint8 `[R, R]` mask or None).

    The mask returned combines `mask` (converted to 8-bit grey), the image's alpha channel and the padding of
    crop='pad'; None when there is none of the three.
    """
    if crop not in CROP_MODES:
        raise ValueError(f'crop must be one of {CROP_MODES}, got {crop!r}')
    img = PIL.ImageOps.exif_transpose(img)
    weights = None
    if mask is not None:
        weights = np.asarray(to_mode(PIL.ImageOps.exif_transpose(mask), 'L'), dtype=np.float64) / 255
        if weights.shape != (img.size[1], img.size[0]):
            raise TargetError(f'its mask is {weights.shape[1]}x{weights.shape[0]} px, the image '
                              f'{img.size[0]}x{img.size[1]}; give a mask of the same size')
    if _has_alpha(img):
        alpha = np.asarray(img.convert('RGBA'), dtype=np.float64)[:, :, 3] / 255
        weights = alpha if weights is None else weights * alpha
    img = to_mode(img, mode)
    w, h = img.size
    if crop == 'pad' and w != h and weights is None:
        weights = np.ones([h, w])
    mask_img = None if weights is None else PIL.Image.fromarray(np.rint(weights * 255).astype(np.uint8), 'L')
    if crop in ('center', 'pad') and w != h:
        left, top, side = _square_box(w, h, crop)
        fill = PAD_GREY if mode == 'L' else (PAD_GREY,) * 3
        square = PIL.Image.new(mode, (side, side), fill)
        square.paste(img.crop((max(left, 0), max(top, 0), max(left, 0) + min(side, w), max(top, 0) + min(side, h))),
                     (max(-left, 0), max(-top, 0)))
        img = square
        if mask_img is not None:
            square_mask = PIL.Image.new('L', (side, side), 0)
            square_mask.paste(mask_img.crop((max(left, 0), max(top, 0), max(left, 0) + min(side, w),
                                             max(top, 0) + min(side, h))), (max(-left, 0), max(-top, 0)))
            mask_img = square_mask
    if img.size != (resolution, resolution):
        shrink = img.size[0] > resolution
        img = img.resize((resolution, resolution), PIL.Image.LANCZOS)
        if mask_img is not None:
            mask_img = mask_img.resize((resolution, resolution), PIL.Image.BOX if shrink else PIL.Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return arr, (None if mask_img is None else np.asarray(mask_img, dtype=np.uint8))


def preprocess(img, resolution, crop='center', mode='RGB'):
    """PIL image -> uint8 `[resolution, resolution, C]` (C = 3 for 'RGB', 1 for 'L')."""
    return preprocess_with_mask(img, resolution, crop=crop, mode=mode)[0]


def find_mask(mask_dir, target):
    """The mask file of `target` (a `TargetSource`) in `mask_dir`: the same relative path, or the same path
    with another extension (masks are often PNG for JPEG photos). Returns a Path; raises TargetError."""
    root = Path(os.path.expanduser(str(mask_dir)))
    rel = target.relative_path
    stem = os.path.splitext(rel)[0]
    exact = root / rel
    if exact.is_file():
        return exact
    others = sorted(p for p in root.glob(f'{glob_escape(stem)}.*')
                    if p.is_file() and os.path.splitext(p.name)[0] == os.path.basename(stem))
    if others:
        return others[0]
    raise TargetError(f'no mask for it in --mask {mask_dir} (looked for {rel} or {stem}.*)')


def glob_escape(text):
    """`text` with glob wildcards escaped."""
    return re.sub(r'([*?\[])', r'[\1]', text)


def _open(read, what):
    """Decode bytes from `read()` -> (PIL image, note); raises TargetError with `what` in the reason."""
    try:
        data = read()
    except (OSError, zipfile.BadZipFile, KeyError) as err:
        raise TargetError(f'{what}cannot be read ({type(err).__name__}: {" ".join(str(err).split())})') from err
    try:
        return open_image(data)
    except ImageReadError as err:
        raise TargetError(f'{what}{err}') from err


def decode_target_with_mask(target, resolution, crop='center', channels=3, mask_dir=None):
    """Decode one `TargetSource` (and its mask from `mask_dir`, see `find_mask`) -> (uint8 `[R, R, channels]`,
    uint8 `[R, R]` mask or None, note or None); raises TargetError (also for a missing or unreadable mask).
    The note says when an animated file gave its first frame only."""
    mode = {3: 'RGB', 1: 'L'}[channels]
    img, note = _open(target.read_bytes, '')
    mask = None
    try:
        if mask_dir is not None:
            mask_path = find_mask(mask_dir, target)
            mask, _ = _open(mask_path.read_bytes, f'its mask {mask_path} ')
        image, weights = preprocess_with_mask(img, resolution, crop=crop, mode=mode, mask=mask)
        return image, weights, note
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        if isinstance(err, TargetError):
            raise
        raise TargetError(f'unreadable image ({type(err).__name__}: {" ".join(str(err).split())})') from err
    finally:
        img.close()
        if mask is not None:
            mask.close()


def decode_target(target, resolution, crop='center', channels=3):
    """Decode one `TargetSource` -> (uint8 `[resolution, resolution, channels]`, note or None); raises
    TargetError. The note says when an animated file gave its first frame only."""
    image, _mask, note = decode_target_with_mask(target, resolution, crop=crop, channels=channels)
    return image, note


def load_target(target, resolution, crop='center', channels=3):
    """Decode one `TargetSource` -> uint8 `[resolution, resolution, channels]`; raises TargetError."""
    return decode_target(target, resolution, crop=crop, channels=channels)[0]


def to_tensor(images):
    """uint8 `[N, H, W, C]` (numpy) -> float32 torch tensor `[N, C, H, W]` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32)
    return x / 127.5 - 1

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# Batches of targets with their masks (the inversion job appends the mask as a last channel).

def split_mask(images):
    """uint8 `[N, H, W, C + 1]` (the inversion job's batches: image channels, then the mask) ->
    (images `[N, H, W, C]`, masks `[N, H, W]` uint8, 255 = keep)."""
    return images[..., :-1], images[..., -1]


def mask_tensor(masks, device):
    """uint8 masks `[N, H, W]` -> float `[N, 1, H, W]` in [0, 1], or None when every pixel is kept."""
    if (masks == 255).all():
        return None
    return torch.from_numpy(masks.copy()).to(device=device, dtype=torch.float32)[:, None] / 255
