"""Convert image folders, zips or procedural data into training zips (logic behind dataset_tool.py).

Output layout: see ``training.dataset_zip`` (as read by ``training.dataset.ImageFolderDataset``).
Every file of a source folder or zip ends up in the dataset or in ``skipped.json`` with its reason
(hidden files, files Pillow cannot read, images too small...); any format Pillow opens is accepted,
and animated images give their first frame (listed in ``ConvertResult.notes``).
"""

import json
import os
import re
import zipfile
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import PIL.ImageOps

from torch_utils.files import OutdirError, check_outdir
from torch_utils.image_io import IMAGE_EXTENSIONS, ImageReadError, list_folder, list_zip, open_image
from training.dataset_zip import LABELS_FILE, SKIPPED_FILE, archive_name, encode_png, write_image_zip, write_zip
from training.tiny_data import render_shapes

TRANSFORMS = ('center-crop', 'center-crop-wide', 'none')
__all__ = ['IMAGE_EXTENSIONS', 'LABELS_FILE', 'SKIPPED_FILE', 'TRANSFORMS', 'ConversionError', 'ConvertResult',
           'archive_name', 'convert_dataset', 'decode_image', 'open_source', 'parse_resolution', 'transform_image',
           'write_image_zip']


class ConversionError(Exception):
    """A one-line, user-facing problem with the conversion inputs."""


def parse_resolution(value):
    """Parse ``'32'`` or ``'32x32'`` into an int; ``None``/``''`` gives ``None``."""
    if value is None or value == '':
        return None
    m = re.fullmatch(r'\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?', str(value))
    if m is None:
        raise ConversionError(f"--resolution '{value}' is not a number; use e.g. --resolution 32")
    w = int(m.group(1))
    h = int(m.group(2)) if m.group(2) is not None else w
    if w != h:
        raise ConversionError(f"--resolution '{value}' is not square; use e.g. --resolution {max(w, h)}")
    if w < 4 or w & (w - 1):
        raise ConversionError(f'--resolution {w} must be a power of two >= 4 (e.g. 32, 64, 256)')
    return w


def _parse_labels(data, where):
    """``dataset.json`` contents -> {relative_path: label} or None."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConversionError(f"'{where}' is not valid JSON ({e}); fix or remove it") from None
    labels = obj.get('labels') if isinstance(obj, dict) else None
    if labels is None:
        return None
    try:
        return {str(name).replace('\\', '/'): label for name, label in labels}
    except (TypeError, ValueError):
        raise ConversionError(f"'{where}' must look like {{\"labels\": [[\"a/b.png\", 0], ...]}}") from None


# ---------------------------------------------------------------------------- sources

@dataclass
class Source:
    """A list of input items: ``(relative_name, reader)`` pairs plus optional labels."""
    description: str
    names: list
    labels: dict = None  # relative name -> label, or None
    reader: object = None  # callable(name) -> encoded bytes, or (name, resolution) -> HWC uint8 array
    close: object = None
    native_resolution: bool = False  # True: reader(name, resolution) renders at the target size
    ignored: list = field(default_factory=list)  # [(relative name, reason)]: files that are not candidates


def _folder_source(path):
    names, ignored = list_folder(path, exclude=(LABELS_FILE,))
    labels = None
    labels_path = os.path.join(path, LABELS_FILE)
    if os.path.isfile(labels_path):
        with open(labels_path, 'rb') as fp:
            labels = _parse_labels(fp.read(), labels_path)

    def read(name):
        with open(os.path.join(path, name), 'rb') as fp:
            return fp.read()
    return Source(f"folder '{path}'", names, labels, read, ignored=ignored)


def _zip_source(path):
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ConversionError(f"--source '{path}' is not a readable zip ({e})") from None
    names, ignored = list_zip(zf, exclude=(LABELS_FILE, SKIPPED_FILE))   # A converted zip's own metadata.
    labels = None
    if LABELS_FILE in zf.namelist():
        labels = _parse_labels(zf.read(LABELS_FILE), f'{path}:{LABELS_FILE}')
    return Source(f"zip '{path}'", names, labels, zf.read, zf.close, ignored=ignored)


def _tiny_source(spec):
    m = re.fullmatch(r'tiny:(\d+)(?::(\d+))?', spec)
    if m is None:
        raise ConversionError(f"--source '{spec}' is malformed; use tiny:NUM_IMAGES or tiny:NUM_IMAGES:SEED")
    count, seed = int(m.group(1)), int(m.group(2) or 0)
    cache = {}

    def read(name, resolution):
        if resolution not in cache:
            cache[resolution] = render_shapes(count, resolution, seed)
        return cache[resolution][int(name)]
    return Source(f'tiny shapes (seed {seed})', [str(i) for i in range(count)], None, read,
                  native_resolution=True)


def open_source(source):
    """Resolve a ``--source`` value (folder, .zip or ``tiny:N[:SEED]``) into a :class:`Source`."""
    source = str(source)
    if source.startswith('tiny:'):
        return _tiny_source(source)
    if not os.path.exists(source):
        raise ConversionError(f"--source '{source}' does not exist; pass an image folder, a .zip or tiny:1000")
    if os.path.isdir(source):
        return _folder_source(source)
    if zipfile.is_zipfile(source):
        return _zip_source(source)
    raise ConversionError(f"--source '{source}' is neither a folder nor a zip file")


# ---------------------------------------------------------------------------- images

def to_rgb(img):
    """Any PIL image (grey, 16-bit, palette, RGBA, CMYK, ...) -> RGB, alpha composited on white."""
    img = PIL.ImageOps.exif_transpose(img)
    if img.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'):
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and arr.max() > 255:  # 16-bit data: map 0..65535 onto 0..255.
            arr = arr / 257.0
        arr = np.clip(np.rint(arr), 0, 255)
        img = PIL.Image.fromarray(arr.astype(np.uint8), 'L')
    if img.mode == 'P' and 'transparency' in img.info:
        img = img.convert('RGBA')
    if img.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
        rgba = img.convert('RGBA')
        canvas = PIL.Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        img = PIL.Image.alpha_composite(canvas, rgba)
    return img.convert('RGB') if img.mode != 'RGB' else img


def decode_image(data):
    """Encoded bytes -> (RGB PIL image, note or None). Raises ImageReadError (a plain reason) on unreadable data."""
    img, note = open_image(data)
    with img:
        return to_rgb(img), note


def transform_image(img, resolution, transform, upscale=False):
    """Return ``(uint8 HxWx3 array, None)`` or ``(None, reason)`` when the image must be skipped."""
    w, h = img.size
    if transform == 'none':
        if (w, h) != (resolution, resolution):
            return None, f'is {w}x{h}, expected {resolution}x{resolution} (use --transform center-crop)'
        return np.asarray(img, dtype=np.uint8), None
    if transform == 'center-crop':
        side = min(w, h)
        if side < resolution and not upscale:
            return None, f'too small ({w}x{h} < {resolution}x{resolution}; pass --upscale to allow)'
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        img = img.resize((resolution, resolution), PIL.Image.LANCZOS)
        return np.asarray(img, dtype=np.uint8), None
    if transform == 'center-crop-wide':
        # Keep the full width: scale width to `resolution`, then crop or letterbox vertically.
        if w < resolution and not upscale:
            return None, f'too small (width {w} < {resolution}; pass --upscale to allow)'
        new_h = max(1, int(round(h * resolution / w)))
        img = img.resize((resolution, new_h), PIL.Image.LANCZOS)
        arr = np.asarray(img, dtype=np.uint8)
        out = np.zeros([resolution, resolution, 3], dtype=np.uint8)
        if new_h >= resolution:
            top = (new_h - resolution) // 2
            out[:] = arr[top:top + resolution]
        else:
            top = (resolution - new_h) // 2
            out[top:top + new_h] = arr
        return out, None
    raise ConversionError(f"--transform '{transform}' is unknown; use one of {', '.join(TRANSFORMS)}")


def _check_dest(dest):
    if not str(dest).lower().endswith('.zip'):
        raise ConversionError(f"--dest '{dest}' must end with .zip")
    if os.path.isdir(dest):
        raise ConversionError(f"--dest '{dest}' is a folder; pass a .zip file path")
    try:
        check_outdir(os.path.dirname(os.path.abspath(os.path.expanduser(str(dest)))), option='--dest folder')
    except OutdirError as err:
        raise ConversionError(str(err)) from None


@dataclass
class ConvertResult:
    dest: str
    num_images: int
    resolution: int
    skipped: list = field(default_factory=list)  # [{"file": ..., "reason": ...}]
    has_labels: bool = False
    notes: list = field(default_factory=list)    # [{"file": ..., "note": ...}] for images used with a remark

    def summary(self):
        """What was written, then one line per skipped file and per remark (all of them)."""
        msg = f"wrote {self.num_images} images at {self.resolution}x{self.resolution} to '{self.dest}'"
        msg += ' with labels' if self.has_labels else ''
        lines = [msg]
        if self.skipped:
            lines[0] += f'; skipped {len(self.skipped)} files (also listed in {SKIPPED_FILE} in the zip):'
            lines += [f"  {s['file']}: {s['reason']}" for s in self.skipped]
        if self.notes:
            lines.append(f'{len(self.notes)} files used with a remark:')
            lines += [f"  {n['file']}: {n['note']}" for n in self.notes]
        return '\n'.join(lines)


def convert_dataset(source, dest, resolution=None, transform='center-crop', max_images=None,
                    upscale=False, progress=True):
    """Convert ``source`` into a training zip at ``dest``; returns a :class:`ConvertResult`.

    Unreadable, too-small or wrongly sized files are skipped and listed in
    ``skipped.json`` inside the zip. Raises :class:`ConversionError` on bad input.
    """
    _check_dest(dest)
    if transform not in TRANSFORMS:
        raise ConversionError(f"--transform '{transform}' is unknown; use one of {', '.join(TRANSFORMS)}")
    resolution = parse_resolution(resolution)
    if max_images is not None and int(max_images) < 1:
        raise ConversionError(f'--max-images must be >= 1, got {max_images}')
    src = open_source(source)
    try:
        return _convert(src, source, dest, resolution, transform, max_images, upscale, progress)
    finally:
        if src.close is not None:
            src.close()


def _convert(src, source, dest, resolution, transform, max_images, upscale, progress):
    if not src.names:
        left_out = f', only {len(src.ignored)} hidden or junk files' if src.ignored else ''
        raise ConversionError(f"no images found in '{source}' (no files{left_out}); pass a folder or zip of images")
    if src.native_resolution and resolution is None:
        resolution = 32
    if resolution is None and transform != 'none':
        raise ConversionError(f'--resolution is required with --transform {transform}; e.g. --resolution 256')
    if src.labels is not None:
        missing = [n for n in src.names if n not in src.labels and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
        if missing:
            raise ConversionError(f"'{missing[0]}' has no entry in {LABELS_FILE} "
                                  f'({len(missing)} images missing); add labels or remove {LABELS_FILE}')

    from tqdm import tqdm
    skipped = [{'file': name, 'reason': why} for name, why in src.ignored]
    notes, out_labels = [], []
    state = dict(count=0, resolution=resolution)

    def image_for(name):
        """(uint8 array, None) or (None, reason)."""
        if src.native_resolution:
            return src.reader(name, state['resolution']), None
        try:
            img, note = decode_image(src.reader(name))
        except ImageReadError as err:
            return None, str(err)
        except (OSError, zipfile.BadZipFile, KeyError) as err:
            return None, f'cannot be read ({type(err).__name__}: {" ".join(str(err).split())})'
        if src.labels is not None and name not in src.labels:
            raise ConversionError(f"'{name}' has no entry in {LABELS_FILE}; add its label or remove {LABELS_FILE}")
        if note:
            notes.append({'file': name, 'note': note})
        if state['resolution'] is None:  # --transform none without --resolution: use the first image.
            state['resolution'] = img.size[0]
        return transform_image(img, state['resolution'], transform, upscale)

    def fill(zf):
        total = len(src.names) if max_images is None else min(len(src.names), int(max_images))
        with tqdm(total=total, unit='img', disable=not progress, desc='dataset_tool') as bar:
            for name in src.names:
                if max_images is not None and state['count'] >= int(max_images):
                    break
                arr, reason = image_for(name)
                if arr is None:
                    skipped.append({'file': name, 'reason': reason})
                    continue
                arcname = archive_name(state['count'])
                zf.writestr(arcname, encode_png(arr))
                if src.labels is not None:
                    out_labels.append([arcname, src.labels[name]])
                state['count'] += 1
                bar.update(1)
        if state['count'] == 0:
            raise ConversionError(f"no usable images in '{source}' ({len(skipped)} skipped, first: "
                                  f"'{skipped[0]['file']}': {skipped[0]['reason']})")
        zf.writestr(LABELS_FILE, json.dumps({'labels': out_labels if src.labels is not None else None}))
        if skipped:
            zf.writestr(SKIPPED_FILE, json.dumps({'skipped': skipped}, indent=1))

    write_zip(dest, fill)
    return ConvertResult(dest, state['count'], state['resolution'], skipped, src.labels is not None, notes)
