"""AugmentPipe: identity at p=0, exact pixel blitting, colour transforms, gradients, the ADA p heuristic."""

import pickle

import numpy as np
import pytest
import torch

from training.augment import AUGPIPE_SPECS, AugmentPipe


def images(n=6, c=3, size=16):
    return torch.rand([n, c, size, size], generator=torch.Generator().manual_seed(0)) * 2 - 1


def pipe(p=1.0, **kwargs):
    aug = AugmentPipe(**kwargs)
    aug.p.fill_(p)
    return aug


@pytest.mark.parametrize('spec', sorted(AUGPIPE_SPECS))
def test_p_zero_is_identity(spec):
    x = images()
    assert torch.equal(pipe(0.0, **AUGPIPE_SPECS[spec])(x), x)


def test_p_starts_at_one_like_ada_and_disabled_ops_are_identity():
    aug = AugmentPipe(xflip=1)
    assert aug.p.item() == 1.0
    x = images()
    assert torch.equal(AugmentPipe()(x), x)


def test_xflip_flips_or_keeps_each_image():
    # As in ADA, a chosen image gets a random flip (i in {0, 1}): with p=1 about half are mirrored.
    torch.manual_seed(0)
    x = images(n=64)
    y = pipe(xflip=1)(x)
    flipped = torch.tensor([torch.equal(y[i], x[i].flip(-1)) for i in range(len(x))])
    kept = torch.tensor([torch.equal(y[i], x[i]) for i in range(len(x))])
    assert (flipped | kept).all()
    assert 16 < flipped.sum() < 48


def test_rotate90_gives_quarter_turns():
    torch.manual_seed(0)
    x = images(n=48)
    y = pipe(rotate90=1)(x)
    turns = [[k for k in range(4) if torch.equal(y[i], torch.rot90(x[i], k, dims=(1, 2)))] for i in range(len(x))]
    assert all(len(t) == 1 for t in turns)
    assert {t[0] for t in turns} == {0, 1, 2, 3}
    with pytest.raises(ValueError, match='square'):
        pipe(rotate90=1)(torch.zeros([1, 3, 8, 16]))


def test_translation_is_integer_shift_with_reflect_border():
    torch.manual_seed(0)
    size, max_shift = 16, 2                                                # round(0.125 * 16)
    x = images(n=32, size=size)
    y = pipe(xint=1)(x)
    shifts = set()
    for i in range(len(x)):
        padded = torch.nn.functional.pad(x[i:i + 1], [max_shift] * 4, mode='reflect')[0]
        found = [(dx, dy) for dx in range(-max_shift, max_shift + 1) for dy in range(-max_shift, max_shift + 1)
                 if torch.equal(y[i], padded[:, max_shift - dy:max_shift - dy + size, max_shift - dx:max_shift - dx + size])]
        assert len(found) == 1, f'image {i} is not an integer shift'
        shifts.add(found[0])
    assert len(shifts) > 5


def test_translation_content_moves_by_t():
    x = torch.zeros([1, 1, 16, 16])
    x[0, 0, 8, 5] = 1
    aug = pipe(xint=1, xint_max=0.125)
    torch.manual_seed(3)
    t = (torch.rand([1, 2]) * 2 - 1) * 0.125
    torch.manual_seed(3)
    y = aug(x)
    tx, ty = torch.round(t[0] * 16).long().tolist()
    assert y[0, 0, 8 + ty, 5 + tx] == 1 and y.sum() == 1


def test_colour_ops_are_affine_and_preserve_grey_axis_where_expected():
    torch.manual_seed(0)
    x = images(n=8)
    for kwargs in (dict(hue=1), dict(saturation=1)):
        y = pipe(**kwargs)(x)
        assert not torch.allclose(y, x)
        torch.testing.assert_close(y.mean(dim=1), x.mean(dim=1), rtol=1e-5, atol=1e-5)  # luma kept
    grey = x.mean(dim=1, keepdim=True).expand_as(x)
    torch.testing.assert_close(pipe(hue=1, saturation=1)(grey), grey, rtol=1e-5, atol=1e-5)
    y = pipe(lumaflip=1)(x)                                                # luma flip: keep or negate luma
    for i in range(len(x)):
        dm = y[i].mean(0) - x[i].mean(0)
        assert torch.allclose(dm, torch.zeros_like(dm), atol=1e-5) or torch.allclose(y[i].mean(0), -x[i].mean(0), atol=1e-5)
    y = pipe(brightness=1, contrast=1)(x)                                  # y = c * (x + b) per image
    xc = x - x.mean(dim=[1, 2, 3], keepdim=True)
    yc = y - y.mean(dim=[1, 2, 3], keepdim=True)
    c = (xc * yc).sum(dim=[1, 2, 3], keepdim=True) / xc.square().sum(dim=[1, 2, 3], keepdim=True)
    torch.testing.assert_close(yc, c * xc, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(c, torch.ones_like(c)) and not torch.allclose(y.mean(dim=[1, 2, 3]), x.mean(dim=[1, 2, 3]))


def test_grey_images_and_channel_check():
    torch.manual_seed(0)
    x = images(c=1)
    y = pipe(**AUGPIPE_SPECS['bc'])(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    with pytest.raises(ValueError, match='RGB'):
        pipe(contrast=1)(torch.zeros([1, 2, 8, 8]))


def test_gradients_flow_to_images():
    torch.manual_seed(0)
    x = images(n=4).requires_grad_(True)
    y = pipe(**AUGPIPE_SPECS['bc'])(x)
    weight = torch.randn_like(y)
    (y * weight).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # The pipe is linear in the images for fixed random draws: autograd agrees with a finite difference.
    x0 = x.detach()
    dx = torch.randn_like(x0) * 1e-2
    torch.manual_seed(1)
    y0 = pipe(**AUGPIPE_SPECS['bc'])(x0)
    torch.manual_seed(1)
    y1 = pipe(**AUGPIPE_SPECS['bc'])(x0 + dx)
    x0 = x0.clone().requires_grad_(True)
    torch.manual_seed(1)
    out = pipe(**AUGPIPE_SPECS['bc'])(x0)
    jvp = torch.autograd.grad((out * (y1 - y0)).sum(), x0)[0]
    assert (jvp * dx).sum().item() == pytest.approx((y1 - y0).square().sum().item(), rel=1e-3)


def test_adjust_p_moves_towards_target():
    aug = pipe(p=0.0, xflip=1)
    aug.adjust_p(0.9, batch=64 * 4)                                        # D overfits -> more augmentation
    assert aug.p.item() == pytest.approx(256 / 500_000)
    aug.adjust_p(torch.tensor(0.7), batch=64 * 4, speed_kimg=100)
    assert aug.p.item() == pytest.approx(256 / 500_000 + 256 / 100_000)
    aug.adjust_p(0.1, batch=10_000_000)                                    # never below 0
    assert aug.p.item() == 0.0


def test_unsupported_groups_raise_and_ada_state_loads():
    with pytest.raises(ValueError, match='not implemented'):
        AugmentPipe(xflip=1, scale=1, rotate=1)
    with pytest.raises(TypeError, match='unknown'):
        AugmentPipe(xflp=1)
    aug = AugmentPipe(xflip=1, scale=0, noise_std=0.1)                    # disabled ADA groups are fine
    state = dict(aug.state_dict(), Hz_geom=torch.zeros(12), Hz_fbank=torch.zeros(4, 11))
    state['p'] = torch.tensor(0.25)
    aug.load_state_dict(state, strict=True)
    assert aug.p.item() == 0.25


def test_pickle_round_trip_keeps_p_and_settings():
    aug = pipe(p=0.3, **AUGPIPE_SPECS['bc'], xint_max=0.25)
    aug2 = pickle.loads(pickle.dumps(aug))
    assert aug2.p.item() == pytest.approx(0.3) and aug2.xint_max == 0.25 and aug2.saturation == 1
    torch.manual_seed(4)
    a = aug(images())
    torch.manual_seed(4)
    np.testing.assert_array_equal(a.numpy(), aug2(images()).numpy())
