"""AugmentPipe (ADA's 'bgc' and friends): identity at p = 0, the geometry of every transform on synthetic
images against closed-form positions, colour maps against independently built matrices, how often each
transform fires, gradients (first and second order, R1-style), NVIDIA-argument and pickle round trips."""

import math
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch

from torch_utils import checkpoint, persistence
from training.augment import AUGPIPE_SPECS, AugmentPipe, blit_affine, resample_affine

NVIDIA_SPECS = {                                     # stylegan2-ada-pytorch train.py (the ones implemented here)
    'blit': dict(xflip=1, rotate90=1, xint=1),
    'geom': dict(scale=1, rotate=1, aniso=1, xfrac=1),
    'color': dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
    'noise': dict(noise=1),
    'cutout': dict(cutout=1),
    'bg': dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1),
    'bgc': dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
}


def images(n=6, c=3, size=16, dtype=torch.float32):
    return (torch.rand([n, c, size, size], generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64) * 2 - 1).to(dtype)


def pipe(p=1.0, **kwargs):
    aug = AugmentPipe(**kwargs)
    aug.p.fill_(p)
    return aug


def blob(size, x0, y0, sigma=1.5):
    """[1, 1, size, size] Gaussian at centred coordinates (x0, y0) (x right, y down, pixels)."""
    c = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(c, c, indexing='ij')
    return torch.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma ** 2)).reshape(1, 1, size, size)


def centroid(img):
    """Centred (x, y) centroid of a [1, 1, H, W] non-negative image."""
    size = img.shape[-1]
    c = torch.arange(size, dtype=img.dtype) - (size - 1) / 2
    w = img[0, 0].clamp(min=0)
    return (w.sum(0) * c).sum().item() / w.sum().item(), (w.sum(1) * c).sum().item() / w.sum().item()


def rotate(theta, x, y):
    return x * math.cos(theta) - y * math.sin(theta), x * math.sin(theta) + y * math.cos(theta)


def one(v):
    return torch.tensor([v], dtype=torch.float32)

# ---------------------------------------------------------------------------- specs, identity, filter

def test_specs_are_nvidias():
    for name, spec in NVIDIA_SPECS.items():
        assert AUGPIPE_SPECS[name] == spec, name


@pytest.mark.parametrize('spec', sorted(AUGPIPE_SPECS))
def test_p_zero_is_exact_identity(spec):
    x = images()
    assert torch.equal(pipe(0.0, **AUGPIPE_SPECS[spec])(x), x)


def test_p_starts_at_one_and_disabled_pipe_is_identity():
    assert AugmentPipe(xflip=1).p.item() == 1.0
    x = images()
    assert torch.equal(AugmentPipe()(x), x)


def test_geometry_filter_is_orthonormal_sym6():
    h = AugmentPipe().Hz_geom.double() * math.sqrt(2)                 # buffer is normalised to sum 1
    assert h.numel() == 12 and h.sum().item() == pytest.approx(math.sqrt(2), abs=1e-7)
    for k in range(6):                                               # orthogonal to its even shifts
        assert (h[2 * k:] * h[:12 - 2 * k]).sum().item() == pytest.approx(float(k == 0), abs=1e-7)
    g = h.flip(0) * torch.tensor([(-1.0) ** i for i in range(12)], dtype=torch.float64)   # high-pass
    n = torch.arange(12, dtype=torch.float64)
    for moment in range(6):                                          # six vanishing moments
        assert abs((g * n ** moment).sum().item()) < 1e-6 * 12 ** moment


def test_resampler_identity_and_integer_shift_are_exact():
    x = images(n=3, size=16, dtype=torch.float64)
    taps = AugmentPipe().Hz_geom
    eye = torch.eye(3, dtype=torch.float64).repeat(3, 1, 1)
    torch.testing.assert_close(resample_affine(x, eye, taps), x, atol=2e-6, rtol=0)
    shift = eye.clone()
    shift[:, 0, 2], shift[:, 1, 2] = -3, 2                           # content moves by (+3, -2)
    expected = torch.nn.functional.pad(x, [3, 3, 3, 3], mode='reflect')[:, :, 5:21, 0:16]
    torch.testing.assert_close(resample_affine(x, shift, taps), expected, atol=2e-6, rtol=0)
    torch.testing.assert_close(blit_affine(x, shift), expected, atol=0, rtol=0)

@pytest.mark.parametrize('impl', ['dense', 'blocked'])
def test_fast_filter_paths_match_the_convolution_reference(impl):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn([3, 2, 10, 14], generator=gen, dtype=torch.float64)
    aug = pipe(**AUGPIPE_SPECS['bg'])
    inverse, _ = aug.geometry(dict(FULL_DRAW, **{k: torch.cat([v, v[:1]]) for k, v in FULL_DRAW.items()}), 3, 'cpu')
    grads = []
    for path in ('conv', impl):
        xi = x.clone().requires_grad_(True)
        y = resample_affine(xi, inverse, aug.Hz_geom, impl=path)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
        grads.append((y.detach(), xi.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-12, rtol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-12, rtol=0)
    assert grads[0][0].abs().max() > 0.1
    small = x[:1, :1, :6, :6].clone().requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda t: resample_affine(t, inverse[:1], aug.Hz_geom, impl=impl), (small,))


# ---------------------------------------------------------------------------- geometry of each transform

def test_xflip_mirrors_exactly():
    x = images(n=2)
    y = pipe().apply(x, dict(xflip=torch.tensor([0.0, 1.0])))
    assert torch.equal(y[0], x[0]) and torch.equal(y[1], x[1].flip(-1))


def test_rotate90_moves_a_pixel_by_quarter_turns():
    x = torch.zeros([4, 1, 8, 8])
    x[:, 0, 1, 6] = 1                                                # row 1, col 6: centred (2.5, -2.5)
    y = pipe().apply(x, dict(rotate90=torch.tensor([0.0, 1.0, 2.0, 3.0])))
    for k in range(4):
        px, py = rotate(k * math.pi / 2, 2.5, -2.5)                 # content: (x, y) -> R(k * 90 deg) (x, y)
        row, col = round(py + 3.5), round(px + 3.5)
        assert y[k, 0, row, col] == 1 and y[k].sum() == 1, k
    assert torch.equal(y[1, 0], torch.rot90(x[1, 0], -1))            # i.e. clockwise on screen
    with pytest.raises(ValueError, match='square'):
        pipe().apply(torch.zeros([1, 3, 8, 16]), dict(rotate90=one(1)))


def test_integer_translation_moves_content_with_reflected_border():
    x = images(n=1)
    y = pipe().apply(x, dict(xint=torch.tensor([[2.0, -1.0]])))
    expected = torch.nn.functional.pad(x, [2, 2, 2, 2], mode='reflect')[:, :, 3:19, 0:16]
    assert torch.equal(y, expected)


def test_integer_translation_draw_range():
    torch.manual_seed(0)
    d = pipe(xint=1, xint_max=0.125).draw(4000, 16, 32, 'cpu')
    t = d['xint']
    assert torch.equal(t, t.round()) and t[:, 0].abs().max() == 4 and t[:, 1].abs().max() == 2
    assert set(t[:, 1].tolist()) == {-2, -1, 0, 1, 2}


@pytest.mark.parametrize('key, value, where', [
    ('scale', 1.5, lambda x, y: (1.5 * x, 1.5 * y)),
    ('scale', 0.7, lambda x, y: (0.7 * x, 0.7 * y)),
    ('rotate_pre', 0.6, lambda x, y: rotate(0.6, x, y)),
    ('rotate_post', -2.0, lambda x, y: rotate(-2.0, x, y)),
    ('aniso', 1.4, lambda x, y: (1.4 * x, y / 1.4)),
    ('xfrac', (1.3, -0.6), lambda x, y: (x + 1.3, y - 0.6)),
])
def test_general_transform_moves_a_blob_where_the_formula_says(key, value, where):
    x0, y0 = 3.0, -2.0
    img = blob(40, x0, y0, sigma=2.0)                                 # mirror copies stay out of view
    v = torch.tensor([value], dtype=torch.float32)
    out = pipe().apply(img, {key: v})
    ex, ey = where(x0, y0)
    cx, cy = centroid(out)
    assert cx == pytest.approx(ex, abs=0.02) and cy == pytest.approx(ey, abs=0.02)
    # ...and the whole image is the blob seen through the inverse of the formula: out(q) = in(F^-1(q)).
    o = np.array(where(0.0, 0.0))
    lin = np.stack([np.array(where(1.0, 0.0)) - o, np.array(where(0.0, 1.0)) - o], axis=1)
    c = np.arange(40) - 19.5
    q = np.stack(np.meshgrid(c, c, indexing='xy'), axis=-1) - o                       # [y, x, 2] as (x, y)
    src = q @ np.linalg.inv(lin).T
    expected = np.exp(-((src[..., 0] - x0) ** 2 + (src[..., 1] - y0) ** 2) / (2 * 2.0 ** 2))
    np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=0.02)      # bilinear on the 2x grid: error ~ h^2 f"/8


def test_composed_geometry_applies_transforms_in_adas_order():
    # Flip, quarter turn, integer shift, scale, rotate, stretch, rotate, fractional shift: in that order.
    x0, y0 = 2.0, 1.0
    d = dict(xflip=one(1), rotate90=one(1), xint=torch.tensor([[3.0, 1.0]]), scale=one(1.2), rotate_pre=one(0.3),
             aniso=one(1.25), rotate_post=one(-0.5), xfrac=torch.tensor([[0.4, -0.7]]))
    px, py = -x0, y0
    px, py = rotate(math.pi / 2, px, py)
    px, py = px + 3, py + 1
    px, py = 1.2 * px, 1.2 * py
    px, py = rotate(0.3, px, py)
    px, py = 1.25 * px, py / 1.25
    px, py = rotate(-0.5, px, py)
    px, py = px + 0.4, py - 0.7
    assert math.hypot(px, py) > 2                                     # far from the pivot of the later ops
    cx, cy = centroid(pipe().apply(blob(40, x0, y0, sigma=2.0), d))
    assert cx == pytest.approx(px, abs=0.03) and cy == pytest.approx(py, abs=0.03)


def test_border_is_mirrored_not_zero():
    x = torch.ones([1, 1, 16, 16])
    y = pipe().apply(x, dict(scale=one(0.5), rotate_pre=one(0.7)))   # shrinks: the source reaches far outside
    torch.testing.assert_close(y, x, atol=2e-5, rtol=0)


def test_mixed_batch_keeps_order_and_blits_unresampled_images_exactly():
    x = images(n=4)
    d = dict(xflip=torch.tensor([1.0, 0.0, 1.0, 0.0]), scale=torch.tensor([1.0, 1.3, 1.0, 1.0]))
    y = pipe().apply(x, d)
    assert torch.equal(y[0], x[0].flip(-1)) and torch.equal(y[2], x[2].flip(-1)) and torch.equal(y[3], x[3])
    torch.testing.assert_close(y[1:2], pipe().apply(x[1:2], dict(scale=one(1.3))), atol=0, rtol=0)
    assert not torch.allclose(y[1], x[1], atol=1e-2)

# ---------------------------------------------------------------------------- colour

def _expected_colour(x, b, c, flip, theta, s):
    """Per-pixel colour ops with numpy, independent of the pipe's matrices: [3, P] -> [3, P]."""
    v = np.full([3, 1], 1 / np.sqrt(3))
    y = (x + b) * c
    y = y - 2 * flip * v * (v.T @ y)
    skew = np.array([[0, -v[2, 0], v[1, 0]], [v[2, 0], 0, -v[0, 0]], [-v[1, 0], v[0, 0], 0]])
    y = scipy.linalg.expm(theta * skew) @ y                           # rotation by theta around v (right hand)
    grey = v * (v.T @ y)
    return grey + s * (y - grey)


def test_colour_transforms_match_independent_per_pixel_formulas():
    x = images(n=1)
    params = dict(brightness=0.3, contrast=1.7, lumaflip=1.0, hue=2.1, saturation=0.4)
    d = {k: one(v) for k, v in params.items()}
    y = pipe().apply(x, d)
    expected = _expected_colour(x[0].reshape(3, -1).double().numpy(), *params.values()).reshape(3, 16, 16)
    np.testing.assert_allclose(y[0].numpy(), expected, atol=2e-5)
    for key, value in params.items():                                # each op on its own
        identity = dict(brightness=0.0, contrast=1.0, lumaflip=0.0, hue=0.0, saturation=1.0)
        identity[key] = value
        y = pipe().apply(x, {key: one(value)})
        expected = _expected_colour(x[0].reshape(3, -1).double().numpy(), *identity.values()).reshape(3, 16, 16)
        np.testing.assert_allclose(y[0].numpy(), expected, atol=2e-5, err_msg=key)


def test_hue_rotates_right_handed_around_grey():
    red = torch.tensor([1.0, 0, 0]).reshape(1, 3, 1, 1)
    y = pipe().apply(red, dict(hue=one(2 * math.pi / 3)))              # a third of a turn: red -> green
    torch.testing.assert_close(y.flatten(), torch.tensor([0.0, 1, 0]), atol=1e-6, rtol=0)


def test_grey_images_get_the_mean_rgb_response_and_skip_hue_saturation():
    x = images(n=2, c=1)
    y = pipe().apply(x, dict(brightness=torch.tensor([0.2, 0.0]), contrast=torch.tensor([2.0, 1.0]),
                             lumaflip=torch.tensor([0.0, 1.0])))
    torch.testing.assert_close(y[0], (x[0] + 0.2) * 2, atol=1e-6, rtol=0)
    torch.testing.assert_close(y[1], -x[1], atol=1e-6, rtol=0)
    torch.manual_seed(0)
    assert torch.equal(pipe(hue=1, saturation=1)(x), x)
    with pytest.raises(ValueError, match='RGB'):
        pipe().apply(torch.zeros([1, 2, 8, 8]), dict(contrast=one(2)))

# ---------------------------------------------------------------------------- corruptions

def test_cutout_zeroes_the_drawn_square_and_noise_has_the_drawn_level():
    x = torch.ones([1, 3, 16, 16])
    y = pipe().apply(x, dict(cutout=torch.tensor([[0.25, 0.5, 0.5]])))   # centre x 1/4, y 1/2, side 1/2
    expected = torch.ones([16, 16])
    expected[4:12, 0:8] = 0
    assert torch.equal(y[0, 0], expected) and torch.equal(y[0, 1], expected)
    torch.manual_seed(0)
    x = torch.zeros([2, 3, 64, 64])
    y = pipe().apply(x, dict(noise=torch.tensor([0.3, 0.0])))
    assert y[0].std().item() == pytest.approx(0.3, rel=0.03) and torch.equal(y[1], x[1])

# ---------------------------------------------------------------------------- probabilities and strengths

def test_each_transform_fires_with_probability_multiplier_times_p():
    torch.manual_seed(0)
    n, p = 40000, 0.3
    aug = pipe(p, **AUGPIPE_SPECS['bgc'], noise=1, cutout=0.5)
    d = aug.draw(n, 16, 16, 'cpu')
    tol = 0.012
    rate = lambda mask: mask.double().mean().item()
    assert rate(d['xflip'] == 1) == pytest.approx(p / 2, abs=tol)                 # chosen, then a fair bit
    assert rate(d['rotate90'] != 0) == pytest.approx(p * 3 / 4, abs=tol)
    assert rate(d['scale'] != 1) == pytest.approx(p, abs=tol)
    assert rate(d['aniso'] != 1) == pytest.approx(p, abs=tol)
    assert rate((d['xfrac'] != 0).any(1)) == pytest.approx(p, abs=tol)
    p_each = 1 - math.sqrt(1 - p)
    assert rate(d['rotate_pre'] != 0) == pytest.approx(p_each, abs=tol)
    assert rate(d['rotate_post'] != 0) == pytest.approx(p_each, abs=tol)
    assert rate((d['rotate_pre'] != 0) | (d['rotate_post'] != 0)) == pytest.approx(p, abs=tol)
    assert rate(d['brightness'] != 0) == pytest.approx(p, abs=tol)
    assert rate(d['contrast'] != 1) == pytest.approx(p, abs=tol)
    assert rate(d['lumaflip'] == 1) == pytest.approx(p / 2, abs=tol)
    assert rate(d['hue'] != 0) == pytest.approx(p, abs=tol)
    assert rate(d['saturation'] != 1) == pytest.approx(p, abs=tol)
    assert rate(d['noise'] != 0) == pytest.approx(p, abs=tol)
    assert rate(d['cutout'][:, 2] != 0) == pytest.approx(p / 2, abs=tol)
    # Strengths: ADA's defaults.
    std = lambda t: t[t != 0].std().item()
    assert std(torch.log2(d['scale'])) == pytest.approx(0.2, rel=0.05)
    assert std(torch.log2(d['aniso'])) == pytest.approx(0.2, rel=0.05)
    assert std(d['xfrac'] / 16) == pytest.approx(0.125, rel=0.05)
    assert std(d['brightness']) == pytest.approx(0.2, rel=0.05)
    assert std(torch.log2(d['contrast'])) == pytest.approx(0.5, rel=0.05)
    assert std(torch.log2(d['saturation'])) == pytest.approx(1.0, rel=0.05)
    for key in ('rotate_pre', 'rotate_post', 'hue'):                              # uniform on (-pi, pi)
        t = d[key][d[key] != 0]
        assert t.abs().max() <= math.pi and t.abs().mean().item() == pytest.approx(math.pi / 2, rel=0.05)
    assert (d['noise'][d['noise'] != 0] / 0.1).mean().item() == pytest.approx(math.sqrt(2 / math.pi), rel=0.05)


def test_forward_changes_the_drawn_fraction_of_images():
    torch.manual_seed(0)
    x = images(n=600, size=8)
    for p in (0.0, 0.25, 1.0):
        y = pipe(p, scale=1)(x)
        changed = (y - x).abs().flatten(1).amax(1) > 1e-3
        assert changed.double().mean().item() == pytest.approx(p, abs=0.06), p


def test_randomness_comes_from_torchs_global_generator():
    x = images()
    aug = pipe(0.5, **AUGPIPE_SPECS['bgc'])
    np.random.seed(0)
    torch.manual_seed(5)
    a = aug(x)
    np.random.seed(1)
    torch.manual_seed(5)
    b = aug(x)
    assert torch.equal(a, b) and not torch.equal(aug(x), a)

# ---------------------------------------------------------------------------- gradients

FULL_DRAW = dict(xflip=torch.tensor([1.0, 0.0]), rotate90=torch.tensor([1.0, 3.0]),
                 xint=torch.tensor([[1.0, 0], [0, -1]]), scale=torch.tensor([1.1, 0.8]),
                 rotate_pre=torch.tensor([0.4, -1.0]), aniso=torch.tensor([0.9, 1.2]),
                 rotate_post=torch.tensor([2.0, 0.1]), xfrac=torch.tensor([[0.3, -0.2], [0.6, 0.4]]),
                 brightness=torch.tensor([0.1, -0.2]), contrast=torch.tensor([1.3, 0.7]),
                 lumaflip=torch.tensor([1.0, 0]), hue=torch.tensor([0.5, -2.0]), saturation=torch.tensor([1.5, 0.5]))


def test_gradcheck_and_second_order_through_the_geometric_path():
    x = images(n=2, size=6, dtype=torch.float64).requires_grad_(True)
    aug = pipe(**AUGPIPE_SPECS['bgc'])
    f = lambda t: aug.apply(t, FULL_DRAW)
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))
    g = lambda t: aug.apply(t, dict(xflip=torch.tensor([1.0, 0.0]), xint=torch.tensor([[1.0, 0], [0, -1]])))
    assert torch.autograd.gradcheck(g, (x,))                                      # blit path


def test_r1_through_the_pipe_matches_finite_differences():
    # R1 = |d sum D(aug(x)) / dx|^2; its gradient with respect to D's weights needs double backward.
    torch.manual_seed(0)
    x = images(n=2, size=8, dtype=torch.float64).requires_grad_(True)
    aug = pipe(**AUGPIPE_SPECS['bgc'])
    conv = torch.nn.Conv2d(3, 4, 3).double()
    head = torch.randn(4 * 36, dtype=torch.float64)

    def r1(weight):
        feats = torch.nn.functional.softplus(torch.nn.functional.conv2d(aug.apply(x, FULL_DRAW), weight, conv.bias))
        grad, = torch.autograd.grad((feats.flatten(1) @ head).sum(), x, create_graph=True)
        return grad.square().sum()

    weight = conv.weight.detach().clone().requires_grad_(True)
    r1(weight).backward()
    direction = torch.randn_like(weight)
    eps = 1e-5
    with torch.enable_grad():
        numeric = (r1(weight.detach() + eps * direction) - r1(weight.detach() - eps * direction)).item() / (2 * eps)
    assert (weight.grad * direction).sum().item() == pytest.approx(numeric, rel=1e-5)
    assert abs(numeric) > 1e-3

# ---------------------------------------------------------------------------- construction, pickles, p update

def test_nvidia_record_rebuilds_our_class_with_its_state():
    kwargs = dict(NVIDIA_SPECS['bgc'], xint_max=0.125, scale_std=0.2, rotate_max=1, aniso_std=0.2, xfrac_std=0.125,
                  brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1, imgfilter=0,
                  imgfilter_bands=[1, 1, 1, 1], imgfilter_std=1, noise=0, cutout=0, noise_std=0.1, cutout_size=0.5)
    buffers = dict(p=torch.tensor(0.37), Hz_geom=AugmentPipe().Hz_geom.clone(), Hz_fbank=torch.zeros([4, 43]))
    record = persistence.PersistentRecord('AugmentPipe', dict(_init_args=(), _init_kwargs=kwargs, _buffers=buffers,
                                                               _parameters={}, _modules={}))
    aug = checkpoint.module_from_record(record, key='augment_pipe')
    assert type(aug) is AugmentPipe and aug.p.item() == pytest.approx(0.37)
    assert aug.scale == 1 and aug.saturation == 1 and aug.rotate_max == 1 and aug.noise == 0
    assert set(aug.state_dict()) == {'p', 'Hz_geom'}
    old = {'p': torch.tensor(0.5)}                                                # our earlier pipe's state
    aug.load_state_dict(old, strict=True)
    assert aug.p.item() == 0.5 and torch.equal(aug.Hz_geom, AugmentPipe().Hz_geom)


def test_bad_arguments_raise_clearly():
    with pytest.raises(ValueError, match='imgfilter'):
        AugmentPipe(imgfilter=1)
    with pytest.raises(TypeError):
        AugmentPipe(xflp=1)


def test_pickle_round_trip_keeps_p_settings_and_draws():
    aug = pipe(p=0.3, **AUGPIPE_SPECS['bgc'], xint_max=0.25)
    aug2 = pickle.loads(pickle.dumps(aug))
    assert aug2.p.item() == pytest.approx(0.3) and aug2.xint_max == 0.25 and aug2.rotate == 1
    assert aug2._init_kwargs == dict(AUGPIPE_SPECS['bgc'], xint_max=0.25)
    torch.manual_seed(4)
    a = aug(images())
    torch.manual_seed(4)
    assert torch.equal(a, aug2(images()))


def test_adjust_p_moves_towards_target():
    aug = pipe(p=0.0, xflip=1)
    aug.adjust_p(0.9, batch=64 * 4)                                        # D overfits -> more augmentation
    assert aug.p.item() == pytest.approx(256 / 500_000)
    aug.adjust_p(torch.tensor(0.7), batch=64 * 4, speed_kimg=100)
    assert aug.p.item() == pytest.approx(256 / 500_000 + 256 / 100_000)
    aug.adjust_p(0.1, batch=10_000_000)                                    # never below 0
    assert aug.p.item() == 0.0
