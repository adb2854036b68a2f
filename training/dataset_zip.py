"""The training-zip format that `training.dataset.ImageFolderDataset` reads, and writing one atomically.

Layout: images as `00000/img00000000.png`, `00001/img00001000.png`, ... (1000 per folder), `dataset.json`
with `{"labels": [["00000/img00000000.png", 3], ...]}` or `{"labels": null}`, and, when a conversion
left files out, `skipped.json` with `{"skipped": [{"file": ..., "reason": ...}, ...]}`.

Both the converter (`training.dataset_convert`) and the procedural data (`training.tiny_data`) write
through here, so neither imports the other.
"""

import io
import json
import zipfile

import numpy as np
import PIL.Image

from torch_utils.files import atomic_write

LABELS_FILE = 'dataset.json'
SKIPPED_FILE = 'skipped.json'


def archive_name(idx):
    """Name of image ``idx`` inside an output zip, e.g. ``00001/img00001234.png``."""
    return f'{idx // 1000:05d}/img{idx:08d}.png'


def encode_png(arr):
    """uint8 [H, W, 3] -> PNG bytes."""
    buf = io.BytesIO()
    PIL.Image.fromarray(arr, 'RGB').save(buf, format='PNG', compress_level=6)
    return buf.getvalue()


def write_zip(dest, fill):
    """Create the zip `dest` atomically: `fill(zf)` writes the entries into an open `zipfile.ZipFile`;
    the zip replaces `dest` only if `fill` returns (its result is returned). Umask-respecting mode."""
    result = []

    def write(tmp):
        with zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_STORED) as zf:
            result.append(fill(zf))
    atomic_write(dest, write)
    return result[0]


def write_image_zip(dest, images, labels=None):
    """Write uint8 [N, H, W, 3] images (and optional per-image labels) as a dataset zip; returns `dest`."""
    if not str(dest).lower().endswith('.zip'):
        raise ValueError(f"'{dest}' must end with .zip")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f'got {len(labels)} labels for {len(images)} images')
    names = [archive_name(i) for i in range(len(images))]

    def fill(zf):
        for name, img in zip(names, images):
            zf.writestr(name, encode_png(np.asarray(img, dtype=np.uint8)))
        meta = {'labels': None if labels is None else [[n, l] for n, l in zip(names, labels)]}
        zf.writestr(LABELS_FILE, json.dumps(meta))
    write_zip(dest, fill)
    return dest
