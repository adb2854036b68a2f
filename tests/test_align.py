"""FFHQ face alignment (preprocess/) and align_faces.py: the square from landmarks, the transform, the pixels,
paste-back, and the CLI on real offline photos (scikit-image's astronaut, coffee, chelsea)."""

import json
import math

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

from preprocess import ffhq_align
from preprocess.align_folder import align_folder, read_alignment
from preprocess.ffhq_align import (
    align_face,
    aligned_from_source,
    ffhq_quad,
    level_face_eye_positions,
    map_points,
    reflect_pad_soft,
    source_from_aligned,
    warp_quad,
)
from preprocess.landmarks import Face
from preprocess.paste_back import paste_back

#----------------------------------------------------------------------------
# Landmarks and expected positions, written independently of the module (angles instead of vectors).

def synthetic_landmarks(eye_left, eye_right, mouth_left, mouth_right):
    """[68, 2] landmarks whose eye means and mouth corners are the given points (others: noise far away)."""
    lm = np.random.default_rng(0).uniform(-500, 500, size=(68, 2))
    for sl, centre in ((slice(36, 42), eye_left), (slice(42, 48), eye_right)):
        ring = np.random.default_rng(1).normal(size=(6, 2))
        lm[sl] = np.asarray(centre, dtype=np.float64) + ring - ring.mean(axis=0)
    lm[48], lm[54] = mouth_left, mouth_right
    return lm


def recipe_positions(lm, points, n):
    """Where the recipe puts source `points` [K, 2] in the n x n crop, by angles in the frame of the eye line:
    quad axis angle = eye-line angle + atan2(-p, |d| + q), (p, q) = eye-to-mouth along/across the eye line."""
    el, er = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    eye_mid, mouth = (el + er) / 2, (lm[48] + lm[54]) / 2
    dist, phi = math.hypot(*(er - el)), math.atan2(*(er - el)[::-1])
    m = mouth - eye_mid
    p, q = m @ [math.cos(phi), math.sin(phi)], m @ [-math.sin(phi), math.cos(phi)]
    alpha = phi + math.atan2(-p, dist + q)
    half = max(2.0 * dist, 1.8 * math.hypot(p, q))
    r = np.asarray(points, dtype=np.float64) - (eye_mid + 0.1 * m)
    along = r @ [math.cos(alpha), math.sin(alpha)]
    across = r @ [-math.sin(alpha), math.cos(alpha)]
    return np.stack([n * (0.5 + along / (2 * half)) - 0.5, n * (0.5 + across / (2 * half)) - 0.5], axis=1)


def eye_centres(lm):
    return np.stack([lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)])

#----------------------------------------------------------------------------
# The square from landmarks.

def test_quad_of_a_level_face_is_the_analytic_square():
    # Eyes 60 px apart dominate (2 * 60 > 1.8 * 40): half side 120, centre 0.1 * 40 px below the eye midpoint.
    lm = synthetic_landmarks((70, 100), (130, 100), (80, 140), (120, 140))
    expected = np.array([[-20, -16], [-20, 224], [220, 224], [220, -16]], dtype=np.float64)   # TL, BL, BR, TR
    np.testing.assert_allclose(ffhq_quad(lm), expected, atol=1e-9)
    # Mouth dominates (1.8 * 100 > 2 * 40): half side 180, centre 10 px below the eyes.
    lm = synthetic_landmarks((80, 100), (120, 100), (90, 200), (110, 200))
    expected = np.array([[-80, -70], [-80, 290], [280, 290], [280, -70]], dtype=np.float64)
    np.testing.assert_allclose(ffhq_quad(lm), expected, atol=1e-9)


def test_quad_of_a_tilted_sheared_face_matches_the_angle_formula():
    lm = synthetic_landmarks((100, 120), (160, 95), (120, 170), (165, 150))
    quad = ffhq_quad(lm)
    n = 1000
    corners = np.array([[-0.5, -0.5], [-0.5, n - 0.5], [n - 0.5, n - 0.5], [n - 0.5, -0.5]])   # TL, BL, BR, TR edges
    np.testing.assert_allclose(recipe_positions(lm, quad, n), corners, atol=1e-6)
    # Rotating and shifting the face rotates and shifts the square, corner for corner.
    c, s = math.cos(0.7), math.sin(0.7)
    rot, shift = np.array([[c, -s], [s, c]]), np.array([31.0, -12.0])
    np.testing.assert_allclose(ffhq_quad(lm @ rot.T + shift), quad @ rot.T + shift, atol=1e-9)


def test_transform_matrices_map_crop_edges_to_the_quad():
    lm = synthetic_landmarks((100, 120), (160, 95), (120, 170), (165, 150))
    quad, n = ffhq_quad(lm), 64
    edges = np.array([[-0.5, -0.5], [-0.5, n - 0.5], [n - 0.5, n - 0.5], [n - 0.5, -0.5]])
    np.testing.assert_allclose(map_points(source_from_aligned(quad, n), edges), quad, atol=1e-9)
    np.testing.assert_allclose(aligned_from_source(quad, n) @ source_from_aligned(quad, n), np.eye(3), atol=1e-12)
    np.testing.assert_allclose(map_points(aligned_from_source(quad, n), eye_centres(lm)),
                               recipe_positions(lm, eye_centres(lm), n), atol=1e-9)


def test_level_face_eye_positions_formula():
    # 2|d| >= 1.8|m|: eyes at 3N/8 - 1/2 and 5N/8 - 1/2, height N (1/2 - |m| / (40 |d|)) - 1/2.
    np.testing.assert_allclose(level_face_eye_positions(256, 60, 40),
                               [[95.5, 256 * (0.5 - 40 / 2400) - 0.5], [159.5, 256 * (0.5 - 40 / 2400) - 0.5]])
    lm = synthetic_landmarks((80, 100), (120, 100), (90, 200), (110, 200))
    np.testing.assert_allclose(level_face_eye_positions(256, 40, 100), recipe_positions(lm, eye_centres(lm), 256),
                               atol=1e-9)

#----------------------------------------------------------------------------
# The pixels.

def _dot_photo(h, w, x, y, r):
    img = np.zeros([h, w, 3], dtype=np.uint8)
    img[y - r:y + r + 1, x - r:x + r + 1] = 255
    return img


def _centroid_near(image, guess, radius=5):
    a = image[:, :, 0].astype(np.float64)
    ys, xs = np.mgrid[:a.shape[0], :a.shape[1]]
    near = (np.abs(xs - guess[0]) <= radius) & (np.abs(ys - guess[1]) <= radius)
    w = a * near
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


@pytest.mark.parametrize('case', ['inside', 'padded', 'shrunk'])
def test_warp_puts_a_dot_where_the_transform_says(case):
    # A rotated square; 'padded' leaves the photo at the top, 'shrunk' is > 4x the output side.
    n, size, dot = 64, (200, 240), (120, 80)
    centre, half, angle = {'inside': ((110, 95), 50, 0.3), 'padded': ((110, 60), 55, -0.4),
                           'shrunk': ((160, 160), 75, 0.5)}[case]
    if case == 'shrunk':
        n, size, dot = 32, (320, 320), (150, 130)
    ax = np.array([math.cos(angle), math.sin(angle)]) * half
    down = np.array([-ax[1], ax[0]])
    c = np.asarray(centre, dtype=np.float64)
    quad = np.stack([c - ax - down, c - ax + down, c + ax + down, c + ax - down])
    face = warp_quad(_dot_photo(*size, *dot, 2), quad, n, transform_size=1024)
    assert (face.padded, face.shrink > 1) == (case == 'padded', case == 'shrunk')
    expected = map_points(face.aligned_from_source(), [dot])[0]
    np.testing.assert_allclose(_centroid_near(face.image, expected), expected, atol=0.1)


def test_reflection_padding_keeps_the_photo_blurs_and_fades_to_the_median():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(40, 50, 3)).astype(np.uint8)
    pad, side = (12, 9, 15, 6), 100.0
    out = reflect_pad_soft(img, pad, side)
    assert out.shape == (40 + 9 + 6, 50 + 12 + 15, 3)
    # Deeper than a third of the padding width inside the photo, nothing changes.
    np.testing.assert_array_equal(out[9 + 3:9 + 40 - 2, 12 + 4:12 + 50 - 5], img[3:-2, 4:-5])
    # The outer edge is the median colour; the padding is much smoother than a plain reflection.
    plain = np.pad(img, ((9, 6), (12, 15), (0, 0)), mode='reflect').astype(np.float64)
    corner = out[0, 0].astype(np.float64)
    np.testing.assert_allclose(corner, np.median(out.reshape(-1, 3), axis=0), atol=2.5)
    band = (slice(0, 9), slice(None))
    assert (np.abs(np.diff(out[band].astype(np.float64), axis=1)).mean()
            < 0.2 * np.abs(np.diff(plain[band], axis=1)).mean())

#----------------------------------------------------------------------------
# Paste-back (synthetic photo; the real-photo case is below).

def test_paste_back_blends_inside_the_square_only():
    photo = np.random.default_rng(0).integers(0, 256, size=(120, 160, 3)).astype(np.uint8)
    lm = synthetic_landmarks((70, 50), (100, 52), (75, 80), (96, 81))
    quad = ffhq_quad(lm)
    recon = np.full([48, 48, 3], 77, dtype=np.uint8)
    composite, mask = paste_back(photo, recon, quad, feather=0.1)
    assert mask.max() == 1.0 and mask.min() == 0.0
    np.testing.assert_array_equal(composite[mask == 0], photo[mask == 0])
    np.testing.assert_array_equal(composite[mask == 1], 77)
    # Mask 1 exactly on the inner square (10% feather each side), in aligned coordinates.
    ys, xs = np.mgrid[:120, :160]
    uv = map_points(aligned_from_source(quad, 48), np.stack([xs.ravel(), ys.ravel()], axis=1)).reshape(120, 160, 2)
    inner = np.all((uv + 0.5 >= 4.8 + 1e-6) & (uv + 0.5 <= 48 - 4.8 - 1e-6), axis=2)
    outside = np.any((uv + 0.5 <= 0) | (uv + 0.5 >= 48), axis=2)
    assert np.all(mask[inner] == 1) and np.all(mask[outside] == 0)

#----------------------------------------------------------------------------
# Real photos (dlib + scikit-image's offline data).

@pytest.fixture(scope='module')
def dlib_detector():
    pytest.importorskip('dlib', reason='face alignment needs dlib-bin (requirements.txt)')
    from preprocess.landmarks import DetectorUnavailable, DlibDetector
    try:
        return DlibDetector()
    except DetectorUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope='module')
def photos():
    data = pytest.importorskip('skimage.data', reason='the offline test photos come with scikit-image')
    return dict(astronaut=data.astronaut(), coffee=data.coffee(), chelsea=data.chelsea())


@pytest.fixture(scope='module')
def astronaut_face(dlib_detector, photos):
    faces = dlib_detector(photos['astronaut'])
    assert len(faces) >= 1 and faces[0].score > 1.0   # faces[1], if any, is the mission patch (score ~0.1)
    return faces[0]


def test_astronaut_eyes_land_at_the_ffhq_positions(dlib_detector, photos, astronaut_face):
    n = 256
    lm = astronaut_face.landmarks
    face = align_face(photos['astronaut'], lm, n)
    expected = recipe_positions(lm, eye_centres(lm), n)
    el, er = eye_centres(lm)
    m = (lm[48] + lm[54]) / 2 - (el + er) / 2
    level = level_face_eye_positions(n, np.hypot(*(er - el)), np.hypot(*m))
    # 1) The source landmarks mapped through the recorded transform.
    record = face.to_json()
    mapped = map_points(np.array(record['aligned_from_source']), eye_centres(lm))
    np.testing.assert_allclose(mapped, expected, atol=1e-6)
    # 2) Landmarks found again on the aligned crop: the pixels went where the transform says.
    again = dlib_detector(face.image)
    assert len(again) == 1
    redetected = eye_centres(again[0].landmarks)
    err_exact = np.hypot(*(redetected - expected).T)
    err_level = np.hypot(*(redetected - level).T)
    print(f'eye errors at {n} px, re-detected vs exact recipe: {err_exact.round(2)}, vs level-face formula: '
          f'{err_level.round(2)}; mapped vs level: {np.hypot(*(mapped - level).T).round(2)}')
    assert err_exact.max() < 2.0 and err_level.max() < 2.0
    np.testing.assert_allclose(level[:, 0], [3 * n / 8 - 0.5, 5 * n / 8 - 0.5])


def test_paste_back_of_the_crop_restores_the_astronaut(photos, astronaut_face):
    for top in (0, 60):   # 60: the face near the top edge, so the crop is reflection-padded.
        photo = photos['astronaut'][top:]
        lm = astronaut_face.landmarks - [0, top]
        face = align_face(photo, lm, 256)
        assert face.padded == (top == 60)
        composite, mask = paste_back(photo, face.image, face.quad)
        side = ffhq_align.quad_side(face.quad)
        inside = mask == 1
        if top == 0:   # the inner 80% of the square (padded: clipped by the photo's edge)
            assert abs(inside.sum() / (0.8 * side) ** 2 - 1) < 0.01
        error = np.abs(composite.astype(np.float64) - photo)[inside].mean()
        print(f'paste-back of the crop (top={top}): mean |error| {error:.2f} / 255 over {inside.sum()} px')
        assert error < 3.5
        np.testing.assert_array_equal(composite[mask == 0], photo[mask == 0])


def test_align_faces_cli_end_to_end(tmp_path, dlib_detector, photos):
    import align_faces  # pylint: disable=import-outside-toplevel
    src = tmp_path / 'photos'
    (src / 'sub').mkdir(parents=True)
    PIL.Image.fromarray(photos['astronaut']).save(src / 'astronaut.png')
    PIL.Image.fromarray(photos['coffee']).save(src / 'coffee.jpg', quality=95)
    PIL.Image.fromarray(photos['chelsea']).save(src / 'sub' / 'chelsea.png')
    twins = np.concatenate([photos['astronaut'][:300], photos['astronaut'][:300, ::-1]], axis=1)
    PIL.Image.fromarray(twins).save(src / 'twins.png')
    (src / 'broken.png').write_bytes(b'not an image')
    runner = CliRunner()
    dest = tmp_path / 'aligned'
    args = ['--source', str(src), '--dest', str(dest), '--resolution', '128', '--transform-size', '512', '--quiet',
            '--multiple', 'skip', '--min-score', '0.5', '--overview', str(tmp_path / 'overview.png')]
    result = runner.invoke(align_faces.main, args)
    assert result.exit_code == 0, result.output
    skipped = {s['source']: s['reason'] for s in json.loads((dest / 'skipped.json').read_text())}
    assert skipped == {'broken.png': 'unreadable: not a recognised image file', 'coffee.jpg': 'no face detected',
                       'sub/chelsea.png': 'no face detected', 'twins.png': '2 faces detected (--multiple skip)'}
    assert sorted(p.name for p in dest.glob('*.png')) == ['astronaut.png']
    records = read_alignment(dest)
    assert list(records) == ['astronaut'] and records['astronaut']['resolution'] == 128
    summary = json.loads((dest / 'summary.json').read_text())
    assert (summary['photos'], summary['crops'], summary['skipped']) == (5, 1, 4)
    assert PIL.Image.open(tmp_path / 'overview.png').size[1] > 0

    # Same dest again: resumed, not redone; other settings: one line, non-zero exit.
    result = runner.invoke(align_faces.main, args)
    assert result.exit_code == 0 and json.loads((dest / 'summary.json').read_text())['resumed'] == 1
    result = runner.invoke(align_faces.main, args[:5] + ['256'] + args[6:])
    assert result.exit_code == 1 and 'resolution (128 -> 256)' in result.output

    # --multiple all: one crop per face, largest first.
    dest_all = tmp_path / 'all'
    result = runner.invoke(align_faces.main, ['--source', str(src / 'twins.png'), '--dest', str(dest_all),
                                              '--resolution', '64', '--transform-size', '256', '--quiet',
                                              '--multiple', 'all'])
    assert result.exit_code == 0, result.output
    assert sorted(read_alignment(dest_all)) == ['twins_face0', 'twins_face1']

    # paste-back of the crops themselves (at 2x their size) gives back the photo inside the squares.
    recon = tmp_path / 'recon'
    recon.mkdir()
    for name in records:
        crop = PIL.Image.open(dest / f'{name}.png')
        crop.resize((256, 256), PIL.Image.LANCZOS).save(recon / f'{name}-recon.png')
    pasted = tmp_path / 'pasted'
    result = runner.invoke(align_faces.main, ['paste-back', '--aligned', str(dest), '--reconstructions', str(recon),
                                              '--pattern', '{name}-recon.png', '--dest', str(pasted), '--quiet'])
    assert result.exit_code == 0, result.output
    composite = np.asarray(PIL.Image.open(pasted / 'astronaut.png')).astype(np.float64)
    mask = np.asarray(PIL.Image.open(pasted / 'astronaut-mask.png'))
    assert np.abs(composite - photos['astronaut'])[mask == 255].mean() < 4.0
    np.testing.assert_array_equal(composite[mask == 0], photos['astronaut'][mask == 0])

    result = runner.invoke(align_faces.main, ['--dest', str(dest)])
    assert result.exit_code == 2 and '--source is required' in result.output


def test_align_folder_with_landmarks_handed_in(tmp_path):
    # The detector is an interface: tests (and other detectors) hand landmarks in directly.
    rng = np.random.default_rng(0)
    (tmp_path / 'src').mkdir()
    PIL.Image.fromarray(rng.integers(0, 256, size=(90, 120, 3)).astype(np.uint8)).save(tmp_path / 'src' / 'a.png')
    PIL.Image.fromarray(rng.integers(0, 256, size=(90, 100, 3)).astype(np.uint8)).save(tmp_path / 'src' / 'b.png')
    good = synthetic_landmarks((50, 40), (70, 41), (53, 60), (68, 60))

    def detector(image):   # a: a face; b: degenerate landmarks (all points equal)
        return [Face(box=(0, 0, 10, 10), score=1.0, landmarks=good if image.shape[1] == 120 else np.zeros([68, 2]))]

    summary = align_folder(tmp_path / 'src', tmp_path / 'out', 32, detector=detector, transform_size=64,
                           progress=False)
    assert (summary['crops'], summary['skipped']) == (1, 1)
    skipped = json.loads((tmp_path / 'out' / 'skipped.json').read_text())
    assert skipped[0]['source'] == 'b.png' and skipped[0]['reason'].startswith('alignment failed: degenerate')
    record = read_alignment(tmp_path / 'out')['a']
    np.testing.assert_allclose(record['quad'], ffhq_quad(good), atol=1e-9)
    np.testing.assert_allclose(record['landmarks'], good)
    assert np.asarray(PIL.Image.open(tmp_path / 'out' / 'a.png')).shape == (32, 32, 3)
