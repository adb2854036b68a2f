"""Tests of torch_utils.ops: reference paths against independent naive versions,
gradients (first and second order), and CUDA-vs-reference where a GPU exists."""

import math

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from conftest import emulated_plugin
from torch_utils.ops import bias_act, conv2d_gradfix, conv2d_resample, fma, upfirdn2d

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device on this machine')

@pytest.fixture(autouse=True)
def _no_tf32():
    """Full float32 precision for the reference path's convolutions/matmuls on GPUs."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

def _gen(seed):
    return torch.Generator().manual_seed(seed)

def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(tuple(shape), generator=_gen(seed), dtype=dtype)

#----------------------------------------------------------------------------
# upfirdn2d

def naive_upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Per-channel numpy/scipy version: zero insertion, pad/crop, convolve2d, decimate."""
    upx, upy = (up, up) if isinstance(up, int) else up
    downx, downy = (down, down) if isinstance(down, int) else down
    if isinstance(padding, int):
        padding = [padding] * 4
    elif len(padding) == 2:
        padding = [padding[0], padding[0], padding[1], padding[1]]
    x0, x1, y0, y1 = padding
    f = f.double().numpy()
    f2 = np.outer(f, f) if f.ndim == 1 else f
    f2 = f2 * gain
    xn = x.detach().double().numpy()
    n, c, h, w = xn.shape
    out = []
    for img in xn.reshape(n * c, h, w):
        u = np.zeros([h * upy, w * upx])
        u[::upy, ::upx] = img
        u = np.pad(u, [[max(y0, 0), max(y1, 0)], [max(x0, 0), max(x1, 0)]])
        u = u[max(-y0, 0): u.shape[0] - max(-y1, 0), max(-x0, 0): u.shape[1] - max(-x1, 0)]
        op = scipy.signal.correlate2d if flip_filter else scipy.signal.convolve2d
        z = op(u, f2, mode='valid')
        out.append(z[::downy, ::downx])
    out = np.stack(out)
    return torch.from_numpy(out.reshape(n, c, *out.shape[1:]))

UPFIRDN_CASES = [
    # up, down, padding, filter shape, flip, gain
    (1, 1, 0, (3, 3), False, 1),
    (2, 1, [2, 1, 1, 2], (4, 4), False, 1),
    ([2, 1], 1, [1, 2], (3, 4), True, 2.5),
    (1, 2, 1, (4,), False, 1),
    (1, [1, 3], [0, 1, 2, 1], (2, 3), False, 1),
    (3, 2, [-1, 3, 2, -2], (5,), True, 0.5),
    (2, 2, [1, 1, 1, 1], (8,), False, 1),
    (1, 1, [-2, -1, 0, -1], (1, 2), False, 1),
]

@pytest.mark.parametrize('up,down,padding,fshape,flip,gain', UPFIRDN_CASES)
def test_upfirdn2d_ref_matches_naive(up, down, padding, fshape, flip, gain):
    x = _randn(2, 3, 7, 6, seed=1)
    f = _randn(*fshape, seed=2).float()
    y = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain, impl='ref')
    ref = naive_upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)  # gain is applied to the float32 filter

def test_upfirdn2d_identity_filter_and_output_size():
    x = _randn(1, 2, 5, 4, seed=3)
    y = upfirdn2d.upfirdn2d(x, None, up=2, padding=[0, -1, 0, -1], impl='ref')
    assert y.shape == (1, 2, 9, 7)
    assert torch.equal(y[:, :, ::2, ::2], x)
    assert torch.count_nonzero(y[:, :, 1::2]) == 0

@pytest.mark.parametrize('fshape', [(3, 2), (4,)])
def test_upfirdn2d_ref_gradcheck(fshape):
    x = _randn(1, 2, 4, 5, seed=4).requires_grad_()
    f = _randn(*fshape, seed=5).float()
    fn = lambda t: upfirdn2d.upfirdn2d(t, f, up=2, down=[1, 2], padding=[1, 0, 2, -1], impl='ref')
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))

def test_setup_filter():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and f.dtype == torch.float32
    torch.testing.assert_close(f.sum(), torch.tensor(1.0))
    torch.testing.assert_close(f, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)
    g = upfirdn2d.setup_filter(list(range(1, 9)), gain=4)
    assert g.shape == (8,)
    torch.testing.assert_close(g.sum(), torch.tensor(2.0))   # sqrt(gain) per pass
    h = upfirdn2d.setup_filter([1., 2, 4], separable=False, flip_filter=True, normalize=False)
    assert h.shape == (3, 3) and h[0, 0] == 16 and h[2, 2] == 1
    assert upfirdn2d.setup_filter(None).shape == (1, 1)

def test_resample_shorthands():
    x = _randn(2, 3, 4, 6, seed=6)
    box = upfirdn2d.setup_filter([1, 1])
    up = upfirdn2d.upsample2d(x, box, impl='ref')
    torch.testing.assert_close(up, x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    down = upfirdn2d.downsample2d(x, box, impl='ref')
    torch.testing.assert_close(down, F.avg_pool2d(x, 2))
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert upfirdn2d.upsample2d(x, f, up=[3, 2], impl='ref').shape == (2, 3, 8, 18)
    assert upfirdn2d.downsample2d(x, f, padding=1, impl='ref').shape == (2, 3, 3, 4)
    # filter2d keeps the size and equals a centred 'same' convolution.
    k = _randn(3, 4, seed=7).float()
    y = upfirdn2d.filter2d(x, k, padding=[1, 0], impl='ref')
    assert y.shape == (2, 3, 4, 8)
    ref = naive_upfirdn2d(x, k, padding=[1 + 4 // 2, 1 + 3 // 2, 0 + 3 // 2, 0 + 2 // 2])
    torch.testing.assert_close(y, ref)

#----------------------------------------------------------------------------
# bias_act

SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717

def naive_act(name, v, alpha):
    if name == 'linear':
        return v
    if name == 'relu':
        return torch.where(v > 0, v, torch.zeros_like(v))
    if name == 'lrelu':
        return torch.where(v > 0, v, v * alpha)
    if name == 'tanh':
        return (torch.exp(2 * v) - 1) / (torch.exp(2 * v) + 1)
    if name == 'sigmoid':
        return 1 / (1 + torch.exp(-v))
    if name == 'elu':
        return torch.where(v > 0, v, torch.exp(v) - 1)
    if name == 'selu':
        return SELU_SCALE * torch.where(v > 0, v, SELU_ALPHA * (torch.exp(v) - 1))
    if name == 'softplus':
        return torch.log(1 + torch.exp(v))
    if name == 'swish':
        return v / (1 + torch.exp(-v))
    raise ValueError(name)

DEFAULT_GAINS = dict(linear=1, relu=math.sqrt(2), lrelu=math.sqrt(2), tanh=1, sigmoid=1, elu=1, selu=1,
                     softplus=1, swish=math.sqrt(2))
ACTS = sorted(DEFAULT_GAINS)

@pytest.mark.parametrize('act', ACTS)
def test_bias_act_defaults_match_naive(act):
    x = _randn(2, 5, 3, 3, seed=8) * 2
    b = _randn(5, seed=9)
    y = bias_act.bias_act(x, b, act=act, impl='ref')
    ref = naive_act(act, x + b.reshape(1, -1, 1, 1), 0.2) * DEFAULT_GAINS[act]
    torch.testing.assert_close(y, ref)
    assert bias_act.activation_funcs[act].def_gain == pytest.approx(DEFAULT_GAINS[act])

@pytest.mark.parametrize('act', ACTS)
def test_bias_act_options_and_grads(act):
    x = (_randn(4, 6, seed=10) * 3).requires_grad_()
    b = _randn(4, seed=11).requires_grad_()
    kw = dict(dim=0, act=act, alpha=0.3, gain=1.7, clamp=2.0)
    y = bias_act.bias_act(x, b, impl='ref', **kw)
    ref = (naive_act(act, x + b.reshape(-1, 1), 0.3) * 1.7).clamp(-2, 2)
    torch.testing.assert_close(y, ref)
    dy = _randn(4, 6, seed=12)
    gx, gb = torch.autograd.grad(y, [x, b], dy)
    rx, rb = torch.autograd.grad(ref, [x, b], dy)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gb, rb)

@pytest.mark.parametrize('act', ACTS)
def test_bias_act_ref_gradcheck(act):
    # Keep away from kinks (|v| small) and from the clamp boundary.
    x = (_randn(2, 3, 2, seed=13).abs() + 0.2) * torch.tensor([1., -1, 1]).reshape(1, 3, 1)
    x = x.double().requires_grad_()
    b = torch.tensor([0.05, -0.05, 0.02], dtype=torch.float64, requires_grad=True)
    fn = lambda t, u: bias_act.bias_act(t, u, act=act, clamp=100, impl='ref')
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))

def test_bias_act_no_bias_and_unknown_act():
    x = _randn(3, 4, seed=14)
    torch.testing.assert_close(bias_act.bias_act(x, act='lrelu', impl='ref'),
                               torch.where(x > 0, x, 0.2 * x) * math.sqrt(2))
    with pytest.raises(ValueError):
        bias_act.bias_act(x, act='gelu')
    with pytest.raises(ValueError):
        bias_act.bias_act(x, impl='fast')

#----------------------------------------------------------------------------
# conv2d_resample

def naive_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter):
    """upsample (naive upfirdn2d) -> conv2d -> downsample (naive upfirdn2d)."""
    fw, fh = (1, 1) if f is None else (f.shape[-1], f.shape[0])
    x0, x1, y0, y1 = padding
    if up > 1:
        x0, x1 = x0 + (fw + up - 1) // 2, x1 + (fw - up) // 2
        y0, y1 = y0 + (fh + up - 1) // 2, y1 + (fh - up) // 2
    if down > 1:
        x0, x1 = x0 + (fw - down + 1) // 2, x1 + (fw - down) // 2
        y0, y1 = y0 + (fh - down + 1) // 2, y1 + (fh - down) // 2
    fu = f if (up > 1 and f is not None) else torch.ones(1, 1)
    x = naive_upfirdn2d(x, fu, up=up, padding=[x0, x1, y0, y1], flip_filter=flip_filter, gain=up * up)
    x = F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1:
        x = naive_upfirdn2d(x, f if f is not None else torch.ones(1, 1), down=down, flip_filter=flip_filter)
    return x

CONV_CASES = [
    # up, down, k, padding, groups, flip_weight, flip_filter, filter taps
    (2, 1, 3, [1, 1, 1, 1], 1, True, False, [1, 3, 3, 1]),
    (2, 1, 3, [1, 1, 1, 1], 2, False, False, [1, 3, 3, 1]),
    (1, 2, 3, [1, 1, 1, 1], 1, True, False, [1, 3, 3, 1]),
    (1, 2, 3, [0, 1, 1, 0], 2, True, True, [1, 2, 1]),
    (2, 2, 3, [1, 1, 1, 1], 1, False, False, [1, 3, 3, 1]),
    (1, 2, 1, [0, 0, 0, 0], 1, True, False, [1, 3, 3, 1]),
    (2, 1, 1, [0, 0, 0, 0], 2, True, False, [1, 3, 3, 1]),
    (1, 1, 3, [1, 1, 1, 1], 1, True, False, None),
    (1, 1, 3, [2, 0, -1, 1], 2, False, False, None),
    (3, 1, 2, [0, 1, 1, 0], 1, True, False, [1, 2, 2, 1]),
]

@pytest.mark.parametrize('up,down,k,padding,groups,flip_w,flip_f,taps', CONV_CASES)
def test_conv2d_resample_matches_naive(up, down, k, padding, groups, flip_w, flip_f, taps):
    x = _randn(2, 4, 6, 5, seed=15).requires_grad_()
    w = _randn(6, 4 // groups, k, k, seed=16).requires_grad_()
    f = None if taps is None else upfirdn2d.setup_filter(taps)
    y = conv2d_resample.conv2d_resample(x, w, f=f, up=up, down=down, padding=padding, groups=groups,
                                        flip_weight=flip_w, flip_filter=flip_f)
    ref = naive_conv2d_resample(x, w.detach(), f, up, down, padding, groups, flip_w, flip_f)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)  # gain up**2 scales the float32 filter
    # Gradients against an autograd-able composition built from F.conv2d / F.conv_transpose2d-free ops.
    dy = _randn(*y.shape, seed=17)
    gx, gw = torch.autograd.grad(y, [x, w], dy)
    xx, ww = x.detach().requires_grad_(), w.detach().requires_grad_()
    fu = f if (up > 1 and f is not None) else None
    fw_, fh_ = (1, 1) if f is None else (f.shape[-1], f.shape[0])
    p = list(padding)
    if up > 1:
        p = [p[0] + (fw_ + up - 1) // 2, p[1] + (fw_ - up) // 2,
             p[2] + (fh_ + up - 1) // 2, p[3] + (fh_ - up) // 2]
    if down > 1:
        p = [p[0] + (fw_ - down + 1) // 2, p[1] + (fw_ - down) // 2,
             p[2] + (fh_ - down + 1) // 2, p[3] + (fh_ - down) // 2]
    t = upfirdn2d.upfirdn2d(xx, fu, up=up, padding=p, flip_filter=flip_f, gain=up * up, impl='ref')
    t = F.conv2d(t, ww if flip_w else ww.flip([2, 3]), groups=groups)
    if down > 1:
        t = upfirdn2d.upfirdn2d(t, f, down=down, flip_filter=flip_f, impl='ref')
    rx, rw = torch.autograd.grad(t, [xx, ww], dy)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)

def test_conv2d_resample_shapes_and_channels_last():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = _randn(2, 3, 8, 8, seed=18).float()
    w3 = _randn(5, 3, 3, 3, seed=19).float()
    assert conv2d_resample.conv2d_resample(x, w3, f=f, up=2, padding=1).shape == (2, 5, 16, 16)
    assert conv2d_resample.conv2d_resample(x, w3, f=f, down=2, padding=1).shape == (2, 5, 4, 4)
    assert conv2d_resample.conv2d_resample(x, w3, padding=1).shape == (2, 5, 8, 8)
    # 1x1 on a channels-last input: matmul path (<= 4 outputs) and contiguous path.
    xc = x.to(memory_format=torch.channels_last)
    for out in (2, 7):
        w1 = _randn(out, 3, 1, 1, seed=20).float()
        y = conv2d_resample.conv2d_resample(xc, w1)
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, F.conv2d(x, w1), rtol=1e-5, atol=1e-5)

def test_conv2d_resample_second_order():
    """R1-style gradient of a gradient through the up and down paths."""
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = _randn(1, 2, 4, 4, seed=21).requires_grad_()
    w = _randn(2, 2, 3, 3, seed=22).requires_grad_()
    for up, down in ((2, 1), (1, 2)):
        fn = lambda a, b: conv2d_resample.conv2d_resample(a, b, f=f, up=up, down=down, padding=1)
        assert torch.autograd.gradgradcheck(fn, (x, w))

def test_conv2d_gradfix_switch():
    assert not conv2d_gradfix.weight_gradients_disabled
    with conv2d_gradfix.no_weight_gradients():
        assert conv2d_gradfix.weight_gradients_disabled
        with conv2d_gradfix.no_weight_gradients(disable=False):
            assert conv2d_gradfix.weight_gradients_disabled
    assert not conv2d_gradfix.weight_gradients_disabled
    x, w = _randn(1, 2, 5, 5, seed=23), _randn(2, 3, 3, 3, seed=24)
    torch.testing.assert_close(conv2d_gradfix.conv_transpose2d(x, w, stride=2, padding=1),
                               F.conv_transpose2d(x, w, stride=2, padding=1))

#----------------------------------------------------------------------------
# fma

@pytest.mark.parametrize('shapes', [((2, 3), (2, 3), (2, 3)), ((4, 1, 3), (3,), (1,)),
                                    ((1, 5), (2, 1, 1), (2, 1, 5)), ((), (3, 2), (2,))])
def test_fma(shapes):
    a, b, c = (_randn(*s, seed=30 + i).requires_grad_() for i, s in enumerate(shapes))
    y = fma.fma(a, b, c)
    ref = a * b + c
    torch.testing.assert_close(y, ref)
    dy = _randn(*ref.shape, seed=40)
    got = torch.autograd.grad(y, [a, b, c], dy)
    exp = torch.autograd.grad(ref, [a, b, c], dy)
    for g, e, t in zip(got, exp, (a, b, c)):
        assert g.shape == t.shape
        torch.testing.assert_close(g, e)
    assert torch.autograd.gradcheck(fma.fma, (a, b, c))
    assert torch.autograd.gradgradcheck(fma.fma, (a, b, c))

#----------------------------------------------------------------------------
# The CUDA autograd Functions on CPU, to first and second order, with the plugin replaced by a
# torch mirror of the kernels (what the Functions save and pass) and by the kernels of bias_act.cu
# and upfirdn2d.cu compiled for the host (their arithmetic; conftest.emulated_plugin).

class _MirrorPlugin:
    """Elementwise formulas of bias_act.cu; upfirdn2d.cu via the reference op."""
    @staticmethod
    def bias_act(x, b, xref, yref, dy, grad, dim, act, alpha, gain, clamp):
        W, e = torch.where, torch.exp
        bb = b.reshape([-1 if i == dim else 1 for i in range(x.ndim)]) if b.numel() else 0
        if grad == 0:
            name = [k for k, v in bias_act.activation_funcs.items() if v.cuda_idx == act][0]
            out = naive_act(name, x + bb, alpha) * gain
            return out.clamp(-clamp, clamp) if clamp >= 0 else out
        v = (xref if xref.numel() else 0 * x) + bb
        yr = yref if yref.numel() else 0 * x
        yy, s, one = yr / gain, torch.sigmoid(v), torch.ones_like(x)
        if grad == 1:
            d = {1: one, 2: W(yy > 0, one, 0 * x), 3: W(yy > 0, one, alpha * one), 4: 1 - yy * yy,
                 5: yy * (1 - yy), 6: W(yy > 0, one, yy + 1),
                 7: W(yy > 0, SELU_SCALE * one, yy + SELU_SCALE * SELU_ALPHA),
                 8: 1 - e(-yy), 9: s * (1 + v * (1 - s))}[act]
            out = x * gain * d
        else:
            d = {4: -2 * yy * (1 - yy * yy), 5: yy * (1 - yy) * (1 - 2 * yy), 6: W(yy > 0, 0 * x, yy + 1),
                 7: W(yy > 0, 0 * x, yy + SELU_SCALE * SELU_ALPHA), 8: e(-yy) * (1 - e(-yy)),
                 9: s * (1 - s) * (2 + v * (1 - 2 * s))}.get(act, 0 * x)
            out = x * dy * gain * d
        return W((yr > -clamp) & (yr < clamp), out, 0 * out) if clamp >= 0 else out

    @staticmethod
    def upfirdn2d(x, f, upx, upy, downx, downy, x0, x1, y0, y1, flip, gain):
        assert f.ndim == 2
        y = upfirdn2d._upfirdn2d_ref(x, f, up=[upx, upy], down=[downx, downy], padding=[x0, x1, y0, y1],
                                     flip_filter=flip, gain=gain)
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return y.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)  # as the kernel

_PLUGIN_OPS = ((bias_act, 'bias_act'), (upfirdn2d, 'upfirdn2d'))

@pytest.fixture(params=['mirror', 'emulated'])
def kernel_plugins(request, monkeypatch):
    """The CUDA Functions' plugins replaced by the torch mirror above ('mirror': what the Functions save and pass)
    or by the CUDA kernels themselves compiled for the host ('emulated': their arithmetic, without a GPU)."""
    for mod, name in _PLUGIN_OPS:
        plugin = _MirrorPlugin if request.param == 'mirror' else \
            emulated_plugin(request.getfixturevalue('plugin_build_dir'), name)
        monkeypatch.setattr(mod._plugin, 'module', plugin)
    return request.param

def _close_or_zero(u, v, **tol):
    if u is None and v is None:
        return
    torch.testing.assert_close(torch.zeros_like(v) if u is None else u, torch.zeros_like(u) if v is None else v, **tol)

def _compare_orders(f_test, f_ref, inputs, **tol):
    """Forward, gradient, and gradient of a squared-gradient penalty (as R1 takes)."""
    out = []
    for fn in (f_test, f_ref):
        xs = [t.detach().clone().requires_grad_() for t in inputs]
        y = fn(*xs)
        g = torch.autograd.grad(y, xs, _randn(*y.shape, seed=90).to(y), create_graph=True)
        pen = sum((gi.square() * (i + 1)).sum() for i, gi in enumerate(g))
        h = torch.autograd.grad(pen, xs, allow_unused=True) if pen.requires_grad else [None] * len(xs)
        out.append([y, *g, *h])
    for u, v in zip(*out):
        _close_or_zero(u, v, **tol)

@pytest.mark.parametrize('act', ACTS)
@pytest.mark.parametrize('clamp', [-1.0, 0.8])
def test_bias_act_cuda_function_on_cpu(act, clamp, kernel_plugins):
    spec = bias_act.activation_funcs[act]
    fn = bias_act._cuda_function(dim=1, act=act, alpha=float(spec.def_alpha), gain=float(spec.def_gain), clamp=clamp)
    x = _randn(2, 3, 4, 4, seed=91).to(memory_format=torch.channels_last)
    b = _randn(3, seed=92)
    ref = lambda t, u: bias_act.bias_act(t, u, act=act, clamp=None if clamp < 0 else clamp, impl='ref')
    _compare_orders(fn.apply, ref, [x, b])

@pytest.mark.parametrize('up,down,padding,fshape,flip,gain', UPFIRDN_CASES)
def test_upfirdn2d_cuda_function_on_cpu(up, down, padding, fshape, flip, gain, kernel_plugins):
    f = _randn(*fshape, seed=93).float()
    fn = lambda t: upfirdn2d._cuda_function(up=up, down=down, padding=padding, flip_filter=flip, gain=gain).apply(t, f)
    ref = lambda t: upfirdn2d.upfirdn2d(t, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain,
                                        impl='ref')
    _compare_orders(fn, ref, [_randn(2, 3, 7, 6, seed=94)])

@pytest.fixture
def emulated_kernels(plugin_build_dir, monkeypatch):
    for mod, name in _PLUGIN_OPS:
        monkeypatch.setattr(mod._plugin, 'module', emulated_plugin(plugin_build_dir, name))

@pytest.mark.parametrize('act', ACTS)
def test_bias_act_emulated_kernel_float32_half_and_other_dim(act, emulated_kernels):
    """The kernel in float32 (channels-last, bias along dim 2, other alpha and gain) and float16 storage."""
    x = _randn(3, 5, 4, 4, seed=50).float().to(memory_format=torch.channels_last)
    b = _randn(4, seed=52).float()
    settings = dict(dim=2, act=act, alpha=0.1, gain=0.9)
    kernel = bias_act._cuda_function(**settings)
    _compare_orders(kernel.apply, lambda t, u: bias_act.bias_act(t, u, impl='ref', **settings), [x, b],
                    rtol=1e-5, atol=1e-5)
    assert kernel.apply(x, b).is_contiguous(memory_format=torch.channels_last)
    xh, bh = x.half(), b.half()
    torch.testing.assert_close(kernel.apply(xh, bh).float(),
                               bias_act.bias_act(xh.float(), bh.float(), impl='ref', **settings), rtol=1e-2, atol=1e-2)

@pytest.mark.parametrize('up,down,padding,fshape,flip,gain', UPFIRDN_CASES)
def test_upfirdn2d_emulated_kernel_float32_channels_last_and_half(up, down, padding, fshape, flip, gain,
                                                                  emulated_kernels):
    f = _randn(*fshape, seed=61).float()
    settings = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    kernel = lambda t: upfirdn2d._cuda_function(**settings).apply(t, f)
    ref = lambda t: upfirdn2d.upfirdn2d(t, f, impl='ref', **settings)
    x = _randn(2, 3, 7, 6, seed=60).float().to(memory_format=torch.channels_last)
    _compare_orders(kernel, ref, [x], rtol=1e-5, atol=1e-5)
    assert kernel(x).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(kernel(x.half()).float(), ref(x.half().float()), rtol=1e-2, atol=1e-2)

#----------------------------------------------------------------------------
# CUDA vs reference (skipped without a GPU)

@needs_cuda
@pytest.mark.parametrize('act', ACTS)
@pytest.mark.parametrize('clamp', [None, 0.7])
def test_bias_act_cuda_matches_ref(act, clamp):
    x = torch.randn(3, 5, 4, 4, generator=_gen(50), dtype=torch.float64)
    b = torch.randn(5, generator=_gen(51), dtype=torch.float64)
    fn = lambda impl: (lambda t, u: bias_act.bias_act(t, u, act=act, clamp=clamp, impl=impl))
    _compare_orders(fn('cuda'), fn('ref'), [x.cuda(), b.cuda()], rtol=1e-6, atol=1e-6)
    # float32 and channels-last, bias along a different dim.
    x32 = x.detach().float().cuda().to(memory_format=torch.channels_last)
    fn32 = lambda impl: (lambda t, u: bias_act.bias_act(t, u, dim=2, act=act, alpha=0.1, gain=0.9, impl=impl))
    _compare_orders(fn32('cuda'), fn32('ref'), [x32, torch.randn(4, generator=_gen(52)).cuda()], rtol=1e-4, atol=1e-4)

@needs_cuda
def test_bias_act_cuda_gradgradcheck():
    x = torch.randn(2, 3, 3, generator=_gen(53), dtype=torch.float64).cuda().requires_grad_()
    b = torch.randn(3, generator=_gen(54), dtype=torch.float64).cuda().requires_grad_()
    for act in ('tanh', 'softplus', 'swish', 'lrelu'):
        fn = lambda t, u: bias_act.bias_act(t, u, act=act, impl='cuda')
        assert torch.autograd.gradcheck(fn, (x, b))
        assert torch.autograd.gradgradcheck(fn, (x, b))

@needs_cuda
@pytest.mark.parametrize('up,down,padding,fshape,flip,gain', UPFIRDN_CASES)
def test_upfirdn2d_cuda_matches_ref(up, down, padding, fshape, flip, gain):
    x = torch.randn(2, 3, 7, 6, generator=_gen(60), dtype=torch.float64)
    f = torch.randn(*fshape, generator=_gen(61)).cuda()
    fn = lambda impl: (lambda t: upfirdn2d.upfirdn2d(t, f, up=up, down=down, padding=padding, flip_filter=flip,
                                                     gain=gain, impl=impl))
    _compare_orders(fn('cuda'), fn('ref'), [x.cuda()], rtol=1e-6, atol=1e-6)
    x32 = x.detach().float().cuda().to(memory_format=torch.channels_last)
    _compare_orders(fn('cuda'), fn('ref'), [x32], rtol=1e-4, atol=1e-4)
    assert fn('cuda')(x32).is_contiguous(memory_format=torch.channels_last)

@needs_cuda
def test_upfirdn2d_cuda_gradgradcheck_and_half():
    x = torch.randn(1, 2, 5, 4, generator=_gen(62), dtype=torch.float64).cuda().requires_grad_()
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=x.device)
    fn = lambda t: upfirdn2d.upfirdn2d(t, f, up=2, down=[1, 2], padding=[1, 2, 0, 1], impl='cuda')
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    xh = x.detach().half()
    torch.testing.assert_close(upfirdn2d.upsample2d(xh, f, impl='cuda').float(),
                               upfirdn2d.upsample2d(xh.float(), f, impl='ref'), rtol=1e-2, atol=1e-2)

@needs_cuda
@pytest.mark.parametrize('up,down,k,padding,groups,flip_w,flip_f,taps', CONV_CASES)
def test_conv2d_resample_cuda_matches_cpu(up, down, k, padding, groups, flip_w, flip_f, taps):
    x = torch.randn(2, 4, 6, 5, generator=_gen(70), dtype=torch.float64)
    w = torch.randn(6, 4 // groups, k, k, generator=_gen(71), dtype=torch.float64)
    f = None if taps is None else upfirdn2d.setup_filter(taps)
    kw = dict(up=up, down=down, padding=padding, groups=groups, flip_weight=flip_w, flip_filter=flip_f)
    cpu = conv2d_resample.conv2d_resample(x, w, f=f, **kw)
    gpu = conv2d_resample.conv2d_resample(x.cuda(), w.cuda(), f=None if f is None else f.cuda(), **kw)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-9)

#----------------------------------------------------------------------------
