"""Face detection + 68-point landmarks behind one small interface, with a dlib backend.

A detector is any callable `detector(image) -> list[Face]` taking a uint8 [H, W, 3] RGB photo (`FaceDetector`);
tests pass landmarks in directly. `DlibDetector` uses dlib's HOG frontal-face detector (no model file) and the
68-point shape predictor shipped by the `face-recognition-models` package (iBUG 300-W markup, the one the FFHQ
recipe uses). dlib and the model file are loaded on first use, never at import time.
"""

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable, List

import numpy as np
import PIL.Image

#----------------------------------------------------------------------------

PREDICTOR_FILE = 'shape_predictor_68_face_landmarks.dat'
INSTALL_HINT = 'pip install -r requirements.txt (dlib-bin, face-recognition-models)'


class DetectorUnavailable(RuntimeError):
    """dlib or the landmark model is missing; the message says how to install it."""


@dataclass
class Face:
    """One detected face.

    box:       (left, top, right, bottom) of the detection in source pixels.
    score:     detector confidence (dlib HOG: SVM margin; > 0 = detected at the default threshold).
    landmarks: float64 [68, 2] (x, y) in source pixel indices (iBUG 300-W order).
    """
    box: tuple
    score: float
    landmarks: np.ndarray

    @property
    def area(self):
        return max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0)

    def to_json(self):
        return dict(box=[float(v) for v in self.box], score=float(self.score))


FaceDetector = Callable[[np.ndarray], List[Face]]


def order_faces(faces):
    """Largest box first; equal boxes (dlib's boxes come in few sizes) by higher score."""
    return sorted(faces, key=lambda f: (-f.area, -f.score))

#----------------------------------------------------------------------------

def find_shape_predictor(path=None):
    """Path of the 68-point model: `path` if given, else $FACE_LANDMARKS_MODEL, else the copy inside the
    installed `face-recognition-models` package (found without importing it: its __init__ needs pkg_resources)."""
    path = path or os.environ.get('FACE_LANDMARKS_MODEL')
    if path:
        if not os.path.isfile(path):
            raise DetectorUnavailable(f'landmark model {path} not found')
        return path
    spec = importlib.util.find_spec('face_recognition_models')
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = os.path.join(folder, 'models', PREDICTOR_FILE)
        if os.path.isfile(candidate):
            return candidate
    raise DetectorUnavailable(f'{PREDICTOR_FILE} not found: {INSTALL_HINT}, or pass its path')


def _import_dlib():
    try:
        import dlib  # pylint: disable=import-outside-toplevel
    except ImportError as missing:
        raise DetectorUnavailable(f'face alignment needs dlib: {INSTALL_HINT}') from missing
    return dlib


@functools.lru_cache(maxsize=None)
def _load_dlib(predictor_path):
    """(HOG detector, shape predictor); loading takes seconds, so it happens once per process and path."""
    dlib = _import_dlib()
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor_path)


class DlibDetector:
    """dlib HOG face detector + 68-point shape predictor.

    predictor_path:  the .dat model; None = `find_shape_predictor()`.
    upsample:        times dlib doubles the image before detecting (1 finds faces down to ~40 px).
    min_score:       keep detections scoring above this (dlib's own threshold is 0).
    max_detect_side: detect on a copy whose longer side is at most this many pixels (speed on large photos);
                     landmarks are always predicted on the full-resolution photo. None = never downscale.
    """

    def __init__(self, predictor_path=None, upsample=1, min_score=0.0, max_detect_side=1024):
        self.predictor_path = find_shape_predictor(predictor_path)
        self.upsample, self.min_score, self.max_detect_side = int(upsample), float(min_score), max_detect_side
        _import_dlib()

    def describe(self):
        """The settings that change which faces are found and where (recorded with the crops)."""
        return (f'dlib-hog+{os.path.basename(self.predictor_path)} upsample={self.upsample} '
                f'min_score={self.min_score} max_detect_side={self.max_detect_side}')

    def __call__(self, image):
        dlib = _import_dlib()
        detector, predictor = _load_dlib(self.predictor_path)
        image = np.ascontiguousarray(image, dtype=np.uint8)
        h, w = image.shape[:2]
        scale = 1.0
        small = image
        if self.max_detect_side and max(h, w) > self.max_detect_side:
            scale = self.max_detect_side / max(h, w)
            size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
            small = np.asarray(PIL.Image.fromarray(image).resize(size, PIL.Image.LANCZOS))
        rects, scores, _kinds = detector.run(small, self.upsample, self.min_score)
        faces = []
        for rect, score in zip(rects, scores):
            box = tuple(v / scale for v in (rect.left(), rect.top(), rect.right(), rect.bottom()))
            full = dlib.rectangle(*(int(round(v)) for v in box))
            shape = predictor(image, full)
            landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            faces.append(Face(box=box, score=float(score), landmarks=landmarks))
        return order_faces(faces)
