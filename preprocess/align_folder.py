"""Align the faces of a folder of photos (the job behind align_faces.py), and paste reconstructions back.

`align_folder(source, dest, resolution)` writes into `dest`:
    <name>.png          one N x N aligned crop per photo (multiple='all': <name>_face<k>.png, k = 0 the largest)
    alignment.jsonl     one line per crop: name, photo, source path, detection, landmarks, quad, both matrices
                        (`ffhq_align.AlignedFace.to_json`): everything needed to undo the alignment
    skipped.json        [{source, reason}]: unreadable files, photos without a face, several faces with 'skip'
    settings.json       settings that change the crops (another run into `dest` must use the same ones)
    log.txt, summary.json
Only crops are images, so `dest` can be given to invert.py or dataset_tool.py as it is. Running again into the
same `dest` resumes: photos with all their crops recorded in alignment.jsonl are not redone.

`paste_back_folder(aligned, reconstructions, dest)` puts each reconstruction (found by crop name) back into
its photo: <photo>.png (all of the photo's faces pasted), <photo>-mask.png, skipped.json, summary.json.
"""

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
from tqdm import tqdm

from figures import sheets
from torch_utils.files import append_line, save_json
from torch_utils.image_io import IMAGE_EXTENSIONS, disambiguate_names, save_png

from .ffhq_align import TRANSFORM_SIZE, AlignmentError, align_face, face_keypoints
from .paste_back import DEFAULT_FEATHER, paste_back

#----------------------------------------------------------------------------

MULTIPLE_MODES = ('largest', 'all', 'skip')
SETTINGS = ('resolution', 'multiple', 'transform_size', 'padding', 'detector')


class AlignFolderError(Exception):
    """A problem with the user's inputs or settings, reported as one line."""


class PhotoError(ValueError):
    """A file that cannot be read as an image."""

#----------------------------------------------------------------------------
# Listing, names and reading.

def list_photos(source, exclude=None):
    """Image files under `source` (a folder, searched recursively, hidden paths ignored; or one file) ->
    sorted list of (relative path, absolute Path). Files under `exclude` (e.g. the destination) are left out."""
    root = Path(os.path.expanduser(str(source)))
    if not root.exists():
        raise AlignFolderError(f'--source {source} does not exist')
    if root.is_file():
        if root.suffix.lower() == '.zip':
            raise AlignFolderError(f'--source {source}: face alignment reads a folder or one image, not a zip '
                                   f'(unzip it first)')
        return [(root.name, root.resolve())]
    exclude = Path(exclude).resolve() if exclude is not None else None
    found = []
    for path in root.rglob('*'):
        rel = path.relative_to(root)
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if any(part.startswith('.') for part in rel.parts):
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        found.append((rel.as_posix(), path.resolve()))
    return sorted(found)


def photo_names(rel_paths):
    """Relative paths -> unique file-system-safe stems: 'a b/c.jpg' -> 'a_b_c';
    'x.png' + 'x.jpg' -> 'x_png', 'x_jpg'."""
    stems = [re.sub(r'[^A-Za-z0-9-]+', '_', os.path.splitext(p)[0]).strip('_') or 'photo' for p in rel_paths]
    return disambiguate_names(stems, rel_paths)


def load_photo(path):
    """Image file -> uint8 [H, W, 3] RGB (EXIF orientation applied, alpha over white); raises PhotoError."""
    try:
        with PIL.Image.open(path) as img:
            img = PIL.ImageOps.exif_transpose(img)
            if img.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):
                arr = np.asarray(img, dtype=np.float64)
                arr = arr * (255 / 65535) if arr.max(initial=0) > 255 else arr
                img = PIL.Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
            if img.mode in ('RGBA', 'LA', 'PA') or (img.mode == 'P' and 'transparency' in img.info):
                rgba = img.convert('RGBA')
                img = PIL.Image.alpha_composite(PIL.Image.new('RGBA', rgba.size, (255, 255, 255, 255)), rgba)
            return np.asarray(img.convert('RGB'), dtype=np.uint8).copy()
    except PIL.UnidentifiedImageError as err:
        raise PhotoError('not a recognised image file') from err
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        raise PhotoError(f'{type(err).__name__}: {err}') from err

def _eyes(aligned):
    """The two eye centres (px of the photo) of an aligned crop."""
    keypoints = face_keypoints(aligned.landmarks)
    return keypoints['eye_left'], keypoints['eye_right']


def read_alignment(folder):
    """`folder`/alignment.jsonl -> {crop name: record} (a later line for the same name wins)."""
    path = Path(folder) / 'alignment.jsonl'
    if not path.is_file():
        raise AlignFolderError(f'{folder}: no alignment.jsonl there (align with align_faces.py first)')
    records = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                records[record['name']] = record
    return records

#----------------------------------------------------------------------------
# Aligning a folder.

def _choose_faces(faces, multiple):
    """(faces to align, skip reason or None) for one photo's detections (largest first)."""
    if not faces:
        return [], 'no face detected'
    if len(faces) > 1 and multiple == 'skip':
        return [], f'{len(faces)} faces detected (--multiple skip)'
    return (faces if multiple == 'all' else faces[:1]), None


def _make_dest(dest):
    try:
        Path(dest).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AlignFolderError(f'--dest {dest}: cannot create the folder ({err.strerror})') from err
    return Path(dest)


def _check_settings(dest, settings):
    path = Path(dest) / 'settings.json'
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [f'{k} ({old.get(k)!r} -> {settings.get(k)!r})' for k in SETTINGS if old.get(k) != settings.get(k)]
        if diff:
            raise AlignFolderError(f'--dest {dest} holds crops made with other settings: {", ".join(diff)}; '
                                   f'use another --dest or the same settings')
    save_json(path, settings)


def _done_photos(dest):
    """Sources whose crops are all recorded and present in `dest` (from an earlier run)."""
    path = Path(dest) / 'alignment.jsonl'
    if not path.is_file():
        return set()
    crops = {}
    for record in read_alignment(dest).values():
        crops.setdefault(record['source'], []).append(record)
    return {src for src, recs in crops.items()
            if len(recs) == recs[0]['crops_of_photo'] and all((Path(dest) / r['file']).is_file() for r in recs)}


def align_folder(source, dest, resolution, *, multiple='largest', detector=None, transform_size=TRANSFORM_SIZE,
                 padding=True, overview=None, overview_photos=8, progress=True):
    """Detect, align and save every face of the photos under `source` (see the module docstring).

    resolution:  side N of the crops in pixels.
    multiple:    photos with several faces: 'largest' (one crop), 'all' (one crop each), 'skip' (none, reported).
    detector:    callable uint8 [H, W, 3] -> list of `landmarks.Face`, largest first; None = `DlibDetector()`.
    overview:    path of a labelled PNG (photos with their squares, beside their crops); None = none.
    Returns the summary dict (also written to dest/summary.json).
    """
    if multiple not in MULTIPLE_MODES:
        raise AlignFolderError(f'--multiple {multiple!r}: use one of {", ".join(MULTIPLE_MODES)}')
    if int(resolution) < 8:
        raise AlignFolderError(f'--resolution {resolution}: use at least 8 pixels (e.g. 256 or 1024)')
    photos = list_photos(source, exclude=dest)
    if not photos:
        raise AlignFolderError(f'--source {source}: no image files ({", ".join(IMAGE_EXTENSIONS)}) found')
    if detector is None:
        from .landmarks import DetectorUnavailable, DlibDetector  # pylint: disable=import-outside-toplevel
        try:
            detector = DlibDetector()
        except DetectorUnavailable as err:
            raise AlignFolderError(str(err)) from err
    dest = _make_dest(dest)
    settings = dict(resolution=int(resolution), multiple=multiple, transform_size=int(transform_size),
                    padding=bool(padding), detector=getattr(detector, 'describe', lambda: type(detector).__name__)())
    _check_settings(dest, settings)
    done = _done_photos(dest)

    start = time.time()
    skipped, counts, shown = [], dict(photos=len(photos), aligned_photos=0, crops=0, resumed=0), []
    names = photo_names([rel for rel, _ in photos])
    for (rel, path), name in tqdm(list(zip(photos, names)), desc='Aligning', unit='photo', disable=not progress):
        if rel in done:
            counts['resumed'] += 1
            continue
        crops, reason, detected = [], None, []
        try:
            image = load_photo(path)
            detected = detector(image)
            faces, reason = _choose_faces(detected, multiple)
            for k, face in enumerate(faces):
                crop_name = f'{name}_face{k}' if multiple == 'all' else name
                aligned = align_face(image, face.landmarks, resolution, transform_size=transform_size, padding=padding)
                crops.append((crop_name, face, aligned))
        except PhotoError as err:
            reason = f'unreadable: {err}'
        except AlignmentError as err:
            reason, crops = f'alignment failed: {err}', []
        if reason is not None:
            skipped.append(dict(source=rel, reason=reason))
            append_line(dest / 'log.txt', f'{rel}: skipped ({reason})')
            continue
        for k, (crop_name, face, aligned) in enumerate(crops):
            save_png(dest / f'{crop_name}.png', aligned.image)
            record = dict(name=crop_name, file=f'{crop_name}.png', photo=name, source=rel, source_path=str(path),
                          face_index=k, crops_of_photo=len(crops),
                          faces_detected=len(detected), detection=face.to_json(), **aligned.to_json())
            append_line(dest / 'alignment.jsonl', json.dumps(record))
        counts['aligned_photos'] += 1
        counts['crops'] += len(crops)
        append_line(dest / 'log.txt', f'{rel}: {len(crops)} crop(s) of {len(detected)} face(s) -> '
                                       f'{", ".join(c[0] + ".png" for c in crops)}')
        if overview is not None and len(shown) < overview_photos:
            shown.append(sheets.alignment_row(rel, image, [(crop, aligned.quad, _eyes(aligned), aligned.image)
                                                           for crop, _, aligned in crops]))

    save_json(dest / 'skipped.json', skipped)
    reasons = {}
    for s in skipped:
        key = s['reason'].split(':')[0] if s['reason'].startswith(('unreadable', 'alignment failed')) else s['reason']
        reasons[key] = reasons.get(key, 0) + 1
    seconds = time.time() - start
    summary = dict(counts, skipped=len(skipped), skipped_reasons=reasons, seconds=round(seconds, 3),
                   seconds_per_photo=round(seconds / max(len(photos) - counts['resumed'], 1), 4),
                   source=str(source), dest=str(dest), settings=settings,
                   outputs=dict(crops='<name>.png', alignment='alignment.jsonl', skipped='skipped.json',
                                log='log.txt', overview=None if overview is None else str(overview)))
    save_json(dest / 'summary.json', summary)
    if overview is not None and shown:
        save_png(overview, sheets.stack_rows(shown, gap=4))
    return summary

#----------------------------------------------------------------------------
# Pasting reconstructions back.

def paste_back_folder(aligned, reconstructions, dest, *, pattern='{name}.png', feather=DEFAULT_FEATHER,
                      progress=True):
    """Paste reconstructions of the crops in `aligned` (an align_folder dest) back into their photos.

    reconstructions: folder holding one image per crop, named `pattern.format(name=crop name)`
                     (invert.py writes '{name}-recon.png'); any square size.
    Writes dest/<photo>.png (every face of the photo pasted), dest/<photo>-mask.png (the blend weights),
    skipped.json (crops without a reconstruction, photos that cannot be read) and summary.json.
    """
    records = read_alignment(aligned)
    by_photo = {}
    for record in records.values():
        by_photo.setdefault(record['photo'], []).append(record)
    dest = _make_dest(dest)
    start, skipped, pasted = time.time(), [], 0
    for photo, recs in tqdm(sorted(by_photo.items()), desc='Pasting back', unit='photo', disable=not progress):
        try:
            image = load_photo(recs[0]['source_path'])
        except PhotoError as err:
            skipped.append(dict(photo=photo, source=recs[0]['source_path'], reason=f'unreadable: {err}'))
            continue
        if [image.shape[1], image.shape[0]] != recs[0]['source_size']:
            skipped.append(dict(photo=photo, source=recs[0]['source_path'],
                                reason=f'photo is now {image.shape[1]}x{image.shape[0]}, was aligned at '
                                       f'{recs[0]["source_size"][0]}x{recs[0]["source_size"][1]}'))
            continue
        composite, mask = image, np.zeros(image.shape[:2], dtype=np.float32)
        for rec in sorted(recs, key=lambda r: r['face_index']):
            recon_path = Path(reconstructions) / pattern.format(name=rec['name'])
            try:
                recon = load_photo(recon_path)
                composite, alpha = paste_back(composite, recon, rec['quad'], feather=feather)
            except (PhotoError, AlignmentError) as err:
                skipped.append(dict(photo=photo, crop=rec['name'], source=str(recon_path), reason=str(err)))
                continue
            mask = np.maximum(mask, alpha)
            pasted += 1
        save_png(dest / f'{photo}.png', composite)
        save_png(dest / f'{photo}-mask.png', np.rint(mask * 255).astype(np.uint8))
    save_json(dest / 'skipped.json', skipped)
    summary = dict(photos=len(by_photo), crops=len(records), pasted=pasted, skipped=len(skipped),
                   seconds=round(time.time() - start, 3), aligned=str(aligned), reconstructions=str(reconstructions),
                   pattern=pattern, feather=feather, dest=str(dest))
    save_json(dest / 'summary.json', summary)
    return summary
