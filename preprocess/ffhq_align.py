"""FFHQ-style face alignment (Karras et al., "A Style-Based Generator Architecture for Generative Adversarial
Networks", 2019, the FFHQ dataset recipe): 68 landmarks -> an oriented square around eyes and mouth -> a crop.

Coordinates: every point in this module's API uses the pixel-index convention, as dlib does: the centre of
the pixel in row i, column j is at (x, y) = (j, i), x to the right, y down. PIL's transforms measure from
pixel edges (centres at +0.5); that conversion happens only inside `warp_quad`.

Geometry (`ffhq_quad`; all vectors in source pixels):
    e_l, e_r  means of landmarks 36-41 and 42-47 (the eye on the image's left, the eye on its right)
    m_l, m_r  landmarks 48 and 54 (outer corners of the mouth)
    e = (e_l + e_r) / 2,   d = e_r - e_l,   m = (m_l + m_r) / 2 - e
    axis = d + turn(m), turn(v) = (v_y, -v_x)     (turn maps 'down' onto 'right': the two cues are averaged)
    h = max(2.0 |d|, 1.8 |m|)                       half the side of the square
    x^ = axis / |axis|,   y^ = (-x^_y, x^_x)          (y^ points down)
    c = e + 0.1 m                                   centre of the square
    quad = [c - h x^ - h y^, c - h x^ + h y^, c + h x^ + h y^, c + h x^ - h y^]   (TL, BL, BR, TR)
The N x N output pixel (u, v) shows source point c + h (2 (u + 1/2) / N - 1) x^ + h (2 (v + 1/2) / N - 1) y^,
so a source point L lands at
    u = N (1/2 + (L - c).x^ / (2h)) - 1/2,     v = N (1/2 + (L - c).y^ / (2h)) - 1/2.
For a level face with d perpendicular to m and 2|d| >= 1.8|m| (the usual case) the eye centres land at
u = 3N/8 - 1/2 and 5N/8 - 1/2, v = N (1/2 - |m| / (40 |d|)) - 1/2 (`level_face_eye_positions`).

Pixels (`warp_quad`), in the recipe's order: shrink the photo by an integer factor when the square is more
than 4x the output side; crop to the square's bounding box plus a border of 10% of its side; where the square
(plus border) leaves the photo, pad by reflection (at least 30% of the side), blur the padding (sigma 2% of the
side) and fade it toward the median colour; warp the square onto `transform_size`^2 pixels (bilinear), then
resize to N x N (LANCZOS).
"""

from dataclasses import dataclass

import numpy as np
import PIL.Image
import scipy.ndimage

#----------------------------------------------------------------------------

NUM_LANDMARKS = 68
EYE_LEFT = slice(36, 42)     # dlib 68-point indices of the eye on the image's left (the person's right eye).
EYE_RIGHT = slice(42, 48)
MOUTH_LEFT, MOUTH_RIGHT = 48, 54

EYE_WIDTH_FACTOR = 2.0       # half side >= this x eye-to-eye distance ...
MOUTH_HEIGHT_FACTOR = 1.8    # ... and >= this x eye-to-mouth distance.
CENTRE_SHIFT = 0.1           # centre = eye midpoint + this x eye-to-mouth vector.
TRANSFORM_SIZE = 4096        # the square is first rendered at this size, then resized to the output.


class AlignmentError(ValueError):
    """Landmarks or an image that cannot be aligned (wrong shape, degenerate face)."""

#----------------------------------------------------------------------------

def face_keypoints(landmarks):
    """[68, 2] landmarks -> dict of float64 [2] points: eye_left, eye_right, mouth_left, mouth_right."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (NUM_LANDMARKS, 2) or not np.all(np.isfinite(lm)):
        raise AlignmentError(f'expected {NUM_LANDMARKS} finite (x, y) landmarks, got an array of shape {lm.shape}')
    return dict(eye_left=lm[EYE_LEFT].mean(axis=0), eye_right=lm[EYE_RIGHT].mean(axis=0),
                mouth_left=lm[MOUTH_LEFT], mouth_right=lm[MOUTH_RIGHT])


def ffhq_quad(landmarks, centre_shift=CENTRE_SHIFT):
    """[68, 2] source landmarks -> float64 [4, 2] corners (TL, BL, BR, TR) of the FFHQ square, in source pixels."""
    k = face_keypoints(landmarks)
    eye_mid = (k['eye_left'] + k['eye_right']) / 2
    across = k['eye_right'] - k['eye_left']                             # d
    down = (k['mouth_left'] + k['mouth_right']) / 2 - eye_mid           # m
    axis = across + np.array([down[1], -down[0]])
    norm = np.hypot(*axis)
    half = max(EYE_WIDTH_FACTOR * np.hypot(*across), MOUTH_HEIGHT_FACTOR * np.hypot(*down))
    if norm < 1e-9 or half < 1e-9:
        raise AlignmentError('degenerate landmarks: eyes and mouth coincide')
    right = axis * (half / norm)                                        # h x^
    below = np.array([-right[1], right[0]])                             # h y^
    centre = eye_mid + centre_shift * down
    return np.stack([centre - right - below, centre - right + below, centre + right + below, centre + right - below])


def quad_side(quad):
    """Side length (source pixels) of the square `quad` [4, 2] (mean of its top and left edges)."""
    q = np.asarray(quad, dtype=np.float64)
    return (np.hypot(*(q[3] - q[0])) + np.hypot(*(q[1] - q[0]))) / 2


def source_from_aligned(quad, resolution):
    """3x3 matrix taking (u, v, 1) in the `resolution`^2 aligned image to (x, y, 1) in the source (pixel indices)."""
    q = np.asarray(quad, dtype=np.float64)
    step_u = (q[3] - q[0]) / resolution        # source displacement per aligned pixel along u
    step_v = (q[1] - q[0]) / resolution
    origin = q[0] + (step_u + step_v) / 2      # the centre of aligned pixel (0, 0)
    return np.array([[step_u[0], step_v[0], origin[0]],
                     [step_u[1], step_v[1], origin[1]],
                     [0.0, 0.0, 1.0]])


def aligned_from_source(quad, resolution):
    """3x3 matrix taking (x, y, 1) in the source to (u, v, 1) in the `resolution`^2 aligned image."""
    return np.linalg.inv(source_from_aligned(quad, resolution))


def map_points(matrix, points):
    """Apply a 3x3 affine `matrix` to float [K, 2] points -> float64 [K, 2]."""
    p = np.asarray(points, dtype=np.float64)
    return p @ np.asarray(matrix, dtype=np.float64)[:2, :2].T + np.asarray(matrix, dtype=np.float64)[:2, 2]


def level_face_eye_positions(resolution, eye_distance, mouth_distance):
    """Where the recipe puts the eyes of a level face (eye-to-mouth perpendicular to eye-to-eye): float64 [2, 2]
    (left eye, right eye) in pixel indices of the `resolution`^2 output (see the module docstring)."""
    half = max(EYE_WIDTH_FACTOR * eye_distance, MOUTH_HEIGHT_FACTOR * mouth_distance)
    n = resolution
    du, dv = eye_distance / (4 * half), CENTRE_SHIFT * mouth_distance / (2 * half)
    return np.array([[n * (0.5 - du) - 0.5, n * (0.5 - dv) - 0.5], [n * (0.5 + du) - 0.5, n * (0.5 - dv) - 0.5]])

#----------------------------------------------------------------------------

@dataclass
class AlignedFace:
    """One aligned crop and what is needed to undo it.

    image:      uint8 [N, N, 3] aligned crop.
    quad:       float64 [4, 2] square in the source (TL, BL, BR, TR; pixel indices). The transform follows from it.
    landmarks:  float64 [68, 2] source landmarks the square came from (None if the quad was given directly).
    source_size: (width, height) of the source photo in pixels.
    shrink:     integer factor the photo was shrunk by before cropping (1 = none).
    padded:     whether reflection padding was needed (the square leaves the photo).
    """
    image: np.ndarray
    quad: np.ndarray
    landmarks: np.ndarray
    source_size: tuple
    shrink: int
    padded: bool

    @property
    def resolution(self):
        return int(self.image.shape[0])

    def aligned_from_source(self):
        return aligned_from_source(self.quad, self.resolution)

    def source_from_aligned(self):
        return source_from_aligned(self.quad, self.resolution)

    def to_json(self):
        """JSON-serialisable record (everything but the pixels)."""
        return dict(resolution=self.resolution, source_size=list(self.source_size),
                    coordinates='pixel indices: centre of pixel (row i, column j) at (x, y) = (j, i)',
                    quad=self.quad.tolist(), quad_order='top-left, bottom-left, bottom-right, top-right',
                    landmarks=None if self.landmarks is None else self.landmarks.tolist(),
                    aligned_from_source=self.aligned_from_source().tolist(),
                    source_from_aligned=self.source_from_aligned().tolist(),
                    shrink=self.shrink, padded=self.padded)


def align_face(image, landmarks, resolution, *, transform_size=TRANSFORM_SIZE, padding=True):
    """uint8 [H, W, 3] photo + its [68, 2] landmarks -> `AlignedFace` with an N x N crop (N = `resolution`)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    face = warp_quad(image, ffhq_quad(landmarks), resolution, transform_size=transform_size, padding=padding)
    face.landmarks = landmarks
    return face


def _check_image(image):
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 2:
        raise AlignmentError(f'expected a uint8 [H, W, 3] RGB image, got {arr.dtype} {list(arr.shape)}')
    return arr


def _bounds(quad):
    """Integer bounding box (x0, y0, x1, y1) of a quad in pixel indices, rounded outward."""
    lo, hi = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
    return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])


def _pad_depth(n, before, after):
    """float32 [n]: how deep index i lies in the padding, as a fraction of its width (1 at the outer edge,
    0 where the padding meets the photo, negative inside the photo)."""
    i = np.arange(n, dtype=np.float32)
    return np.maximum((before - i) / before, (i - (n - 1 - after)) / after)


def reflect_pad_soft(image, pad, side):
    """Pad uint8 [H, W, 3] by reflection with `pad` = (left, top, right, bottom) pixels, blur the padding with
    sigma = 2% of `side` (fading in over a third of the padding width inside the photo) and fade it toward the
    median colour with its depth -> uint8 [H + top + bottom, W + left + right, 3]."""
    left, top, right, bottom = (max(int(p), 1) for p in pad)
    x = np.pad(image.astype(np.float32), ((top, bottom), (left, right), (0, 0)), mode='reflect')
    depth = np.maximum(_pad_depth(x.shape[0], top, bottom)[:, None], _pad_depth(x.shape[1], left, right)[None, :])
    sigma = side * 0.02
    blurred = scipy.ndimage.gaussian_filter(x, [sigma, sigma, 0])
    x += (blurred - x) * np.clip(3 * depth + 1, 0, 1)[:, :, None]
    x += (np.median(x, axis=(0, 1)) - x) * np.clip(depth, 0, 1)[:, :, None]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def warp_quad(image, quad, resolution, *, transform_size=TRANSFORM_SIZE, padding=True):
    """Render the square `quad` (float [4, 2], TL, BL, BR, TR, source pixel indices) of a uint8 [H, W, 3] photo
    as an N x N crop -> `AlignedFace` (landmarks None). `padding=False`: outside the photo is black."""
    src = _check_image(image)
    if int(resolution) < 1:
        raise AlignmentError(f'resolution must be a positive integer, got {resolution}')
    resolution = int(resolution)
    original_quad = np.asarray(quad, dtype=np.float64).copy()
    q = original_quad.copy()
    img = PIL.Image.fromarray(src)
    side = quad_side(q)

    # Shrink by an integer factor when the square is much larger than the output; carry the quad exactly.
    shrink = int(np.floor(side / resolution * 0.5))
    if shrink > 1:
        size = (max(int(np.rint(img.width / shrink)), 2), max(int(np.rint(img.height / shrink)), 2))
        scale = np.array(size, dtype=np.float64) / np.array(img.size, dtype=np.float64)
        img = img.resize(size, PIL.Image.LANCZOS)
        q = (q + 0.5) * scale - 0.5
        side /= shrink
    else:
        shrink = 1

    # Crop to the square's bounding box plus a border.
    border = max(int(np.rint(side * 0.1)), 3)
    x0, y0, x1, y1 = _bounds(q)
    box = (max(x0 - border, 0), max(y0 - border, 0), min(x1 + border, img.width), min(y1 + border, img.height))
    if box != (0, 0, img.width, img.height):
        img = img.crop(box)
        q -= box[:2]

    # Pad where the square (plus border) leaves the photo.
    x0, y0, x1, y1 = _bounds(q)
    need = np.array([border - x0, border - y0, x1 - img.width + border, y1 - img.height + border]).clip(min=0)
    padded = bool(padding and need.max() > border - 4)
    if padded:
        pad = np.maximum(need, int(np.rint(side * 0.3)))
        img = PIL.Image.fromarray(reflect_pad_soft(np.asarray(img), pad, side))
        q += pad[:2]

    # Warp the square onto T x T pixels (PIL: edge-based coordinates), then resize to N x N.
    size = max(int(transform_size), resolution)
    step_u, step_v, origin = (q[3] - q[0]) / size, (q[1] - q[0]) / size, q[0] + 0.5
    coeffs = (step_u[0], step_v[0], origin[0], step_u[1], step_v[1], origin[1])
    img = img.transform((size, size), PIL.Image.AFFINE, coeffs, PIL.Image.BILINEAR)
    if size > resolution:
        img = img.resize((resolution, resolution), PIL.Image.LANCZOS)
    return AlignedFace(image=np.asarray(img).copy(), quad=original_quad, landmarks=None,
                       source_size=(src.shape[1], src.shape[0]), shrink=shrink, padded=padded)
