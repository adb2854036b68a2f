"""modulated_conv2d: eq. 2 against an independent einsum implementation, baseline equivalences,
folded demodulation, and the CUDA path against the reference (skipped without a GPU)."""

import pytest
import torch

from torch_utils.ops import conv2d_resample, upfirdn2d
from torch_utils.ops.modulated_conv2d import demodulation_coefficients, modulated_conv2d

pytestmark = pytest.mark.pins_numbers


def einsum_modconv(x, weight, styles, demodulate=True):
    """Independent eq. 2: unfold patches, per-sample weight `W[o,i] * S[n,o,i]`, demodulate, contract."""
    N, I, H, W = x.shape
    O, _, k, _ = weight.shape
    if styles.ndim == 2:
        styles = styles[:, None, :].expand(N, O, I)
    S = styles[:, :O]                                                     # rows 0..O-1
    w = torch.einsum('oikl,noi->noikl', weight, S)
    if demodulate:
        w = w / torch.sqrt(torch.einsum('noikl->no', w ** 2) + 1e-8)[:, :, None, None, None]
    patches = torch.nn.functional.unfold(x, k, padding=k // 2)           # [N, I*k*k, H*W]
    out = torch.einsum('nop,npl->nol', w.reshape(N, O, -1), patches)
    return out.reshape(N, O, H, W)


def rand(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


@pytest.mark.parametrize('demodulate', [True, False])
@pytest.mark.parametrize('rows', [6, 9])          # R == O, and R > O (extra rows dropped)
def test_per_row_matches_einsum(demodulate, rows):
    torch.manual_seed(0)
    x, weight, styles = rand(2, 5, 7, 7), rand(6, 5, 3, 3), rand(2, rows, 5)
    out = modulated_conv2d(x, weight, styles, padding=1, demodulate=demodulate, impl='ref')
    ref = einsum_modconv(x, weight, styles, demodulate=demodulate)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), [x, weight, styles])
    grads_ref = torch.autograd.grad((ref * g).sum(), [x, weight, styles])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)
    if rows > 6:
        assert grads[2][:, 6:].abs().max() == 0                          # unused rows get no gradient


def test_per_row_second_order():
    """Path-length regularization differentiates the gradient w.r.t. W: double backward must be right."""
    torch.manual_seed(1)
    x, weight, styles = rand(1, 3, 5, 5), rand(4, 3, 3, 3), rand(1, 4, 3)
    fn = lambda x, w, s: modulated_conv2d(x, w, s, padding=1, impl='ref')
    assert torch.autograd.gradgradcheck(fn, (x, weight, styles))


def test_baseline_styles_match_einsum_and_unfused():
    torch.manual_seed(2)
    x, weight, styles = rand(3, 4, 6, 6), rand(5, 4, 3, 3), rand(3, 4)
    fused = modulated_conv2d(x, weight, styles, padding=1, fused_modconv=True)
    unfused = modulated_conv2d(x, weight, styles, padding=1, fused_modconv=False)
    torch.testing.assert_close(fused, einsum_modconv(x, weight, styles))
    torch.testing.assert_close(unfused, fused)


def test_identical_rows_equal_vector_styles():
    """The baseline is the special case S[n, i, j] = s[n, j] (eq. 1 vs eq. 2), with up-sampling too."""
    torch.manual_seed(3)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x, weight, s = torch.randn(2, 4, 5, 5), torch.randn(6, 4, 3, 3), torch.randn(2, 4)
    for kw in (dict(padding=1), dict(padding=1, up=2, resample_filter=f, flip_weight=False)):
        vec = modulated_conv2d(x, weight, s, **kw)
        rows = modulated_conv2d(x, weight, s[:, None].expand(2, 6, 4), **kw)
        one = modulated_conv2d(x, weight, s[:, None], **kw)                # R == 1 broadcasts
        torch.testing.assert_close(rows, vec, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(one, vec, rtol=0, atol=0)


@pytest.mark.parametrize('rows', [None, 6])
@pytest.mark.parametrize('fused', [True, False])
def test_demodulation_epsilon_with_zero_and_tiny_styles(rows, fused):
    """Demodulation divides by sqrt(sum (W S)^2 + 1e-8): a style row (or vector) of zeros gives zeros, not 0/0, and
    a tiny one (1e-5: its sum of squares ~5e-9, of the order of the epsilon) is scaled by the formula's coefficient,
    not by the one without the epsilon (almost twice as large here). Forward and gradients, float64."""
    torch.manual_seed(4)
    x, weight = torch.randn(2, 5, 6, 6, dtype=torch.float64), torch.randn(6, 5, 3, 3, dtype=torch.float64)
    styles = torch.randn(2, 5, dtype=torch.float64) if rows is None else torch.randn(2, rows, 5, dtype=torch.float64)
    zeroed, tiny = ((0,), (1,)) if rows is None else ((0, 0), (1, 0))   # an image's style vector, or its row 0
    styles[zeroed] = 0
    styles[tiny] = 1e-5 * torch.randn(5, dtype=torch.float64)
    x, weight, styles = (t.requires_grad_(True) for t in (x, weight, styles))
    out = modulated_conv2d(x, weight, styles, padding=1, fused_modconv=fused, impl='ref')
    ref = einsum_modconv(x, weight, styles)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)
    assert (out[0] if rows is None else out[0, 0]).abs().max() == 0
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), [x, weight, styles])
    for got, expect in zip(grads, torch.autograd.grad((ref * g).sum(), [x, weight, styles])):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expect, rtol=1e-7, atol=1e-9)


def test_too_few_rows_is_a_clear_error():
    with pytest.raises(ValueError, match='need R >= O'):
        modulated_conv2d(torch.randn(1, 3, 4, 4), torch.randn(5, 3, 3, 3), torch.randn(1, 2, 3), padding=1)


def test_folded_demodulation_equals_direct():
    torch.manual_seed(4)
    weight = torch.randn(6, 5, 3, 3, dtype=torch.float64)
    for styles in (torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 6, 5, dtype=torch.float64)):
        S = styles if styles.ndim == 3 else styles[:, None].expand(2, 6, 5)
        direct = ((weight[None] * S[..., None, None]).square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
        torch.testing.assert_close(demodulation_coefficients(weight, styles), direct)


def row_by_row(x, weight, styles, **kw):
    """Independent eq. 2 for any resampling: output channel o of the per-row layer is output channel o
    of the shared-weight (eq. 1) layer modulated with that row's style vector S[:, o]."""
    O = weight.shape[0]
    return torch.cat([modulated_conv2d(x, weight, styles[:, o], fused_modconv=False, **kw)[:, o:o + 1]
                      for o in range(O)], dim=1)


@pytest.mark.parametrize('up', [1, 2])
def test_per_row_matches_row_by_row_with_noise(up):
    """Per-row styles with resampling and noise (the per-sample loop of the up path) against eq. 1 per row."""
    torch.manual_seed(7)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x, weight, styles = rand(3, 4, 5, 5), rand(6, 4, 3, 3), rand(3, 8, 4)
    noise = torch.randn(3, 1, 5 * up, 5 * up, dtype=torch.float64)
    kw = dict(padding=1, up=up, resample_filter=f, flip_weight=(up == 1))
    out = modulated_conv2d(x, weight, styles, noise=noise, impl='ref', **kw)
    ref = row_by_row(x, weight, styles[:, :6], **kw) + noise
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad((out * g).sum(), [x, weight, styles]),
                    torch.autograd.grad((ref * g).sum(), [x, weight, styles])):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('case', ['rows-up-noise', 'rows-1x1-nodemod', 'vector-fused-up', 'vector-shared-noise'])
def test_second_order_float64(case):
    """Path length (Greg) differentiates the gradients w.r.t. x and styles once more: gradgradcheck
    every path of the reference implementation (folded demodulation included) on tiny shapes."""
    torch.manual_seed(8)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    up = 2 if 'up' in case else 1
    k = 1 if '1x1' in case else 3
    x, weight = rand(2, 3, 3, 3), rand(4, 3, k, k)
    styles = rand(2, 5, 3) if case.startswith('rows') else rand(2, 3)
    noise = torch.randn(2, 1, 3 * up, 3 * up, dtype=torch.float64) if 'noise' in case else None
    kw = dict(padding=k // 2, up=up, resample_filter=f if up > 1 else None, flip_weight=(up == 1),
              demodulate='nodemod' not in case, fused_modconv='shared' not in case, noise=noise)
    fn = lambda x, w, s: modulated_conv2d(x, w, s, impl='ref', **kw)
    assert torch.autograd.gradcheck(fn, (x, weight, styles))
    assert torch.autograd.gradgradcheck(fn, (x, weight, styles))


@pytest.mark.parametrize('up', [1, 2])
def test_fp16_prenormalization_on_cpu(up):
    """FP16 inputs on the CPU (PyTorch runs FP16 convolutions there): the overflow guard rescales weight
    and styles, demodulation cancels it, and the result matches eq. 2 in float64 to FP16 precision.
    Magnitudes are chosen so that the unguarded FP16 convolution overflows (checked below)."""
    torch.manual_seed(5)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 4, 6, 6) * 4
    weight = torch.randn(5, 4, 3, 3) * 100
    styles = torch.randn(2, 5, 4) * 300
    kw = dict(padding=1, up=up, resample_filter=f if up > 1 else None, flip_weight=(up == 1))
    unguarded = torch.nn.functional.conv2d(x.half(), (weight[None] * styles[..., None, None]).half()[0], padding=1)
    assert not torch.isfinite(unguarded).all(), 'test magnitudes too small to overflow FP16'
    out = modulated_conv2d(x.half(), weight, styles, impl='ref', **kw)
    assert out.dtype == torch.float16
    ref = row_by_row(x.double(), weight.double(), styles.double(), **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())


def test_fp16_prenormalization_vector_styles_on_cpu():
    torch.manual_seed(9)
    x, weight, styles = torch.randn(2, 4, 6, 6) * 4, torch.randn(5, 4, 3, 3) * 100, torch.randn(2, 4) * 300
    ref = einsum_modconv(x.double(), weight.double(), styles.double())
    for fused in (True, False):
        out = modulated_conv2d(x.half(), weight, styles, padding=1, fused_modconv=fused, impl='ref')
        torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA path needs a GPU')
@pytest.mark.parametrize('up', [1, 2])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_cuda_matches_reference(up, dtype, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)     # strict FP32 reference and kernel
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    torch.manual_seed(6)
    dev = torch.device('cuda')
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=dev)
    x = torch.randn(3, 16, 8, 8, device=dev, dtype=dtype, requires_grad=True)
    weight = torch.randn(24, 16, 3, 3, device=dev, requires_grad=True)
    styles = torch.randn(3, 32, 16, device=dev, requires_grad=True)
    kw = dict(padding=1, up=up, resample_filter=f if up > 1 else None, flip_weight=(up == 1))
    out = modulated_conv2d(x, weight, styles, impl='cuda', **kw)
    ref = modulated_conv2d(x.float(), weight, styles, impl='ref', **kw)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((out.float() * g).sum(), [x, weight, styles])
    grads_ref = torch.autograd.grad((ref * g).sum(), [x, weight, styles])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a.float(), b.float(), rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize('up,down,k', [(1, 1, 3), (2, 1, 3), (2, 1, 1), (1, 2, 3), (2, 2, 3)])
def test_conv2d_resample_per_sample_equals_one_call_per_sample(up, down, k):
    """The per-sample-weight convolution (grouped, or transposed convs sample by sample with one filter
    pass over the batch) against `conv2d_resample` called once per sample, forward and gradients."""
    torch.manual_seed(10)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x, weights = rand(3, 4, 6, 6), rand(3, 5, 4, k, k)
    kw = dict(f=f, up=up, down=down, padding=k // 2, flip_weight=(up == 1))
    out = conv2d_resample.conv2d_resample_per_sample(x, weights, **kw)
    ref = torch.cat([conv2d_resample.conv2d_resample(x[n:n + 1], weights[n], **kw) for n in range(3)])
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad((out * g).sum(), [x, weights]),
                    torch.autograd.grad((ref * g).sum(), [x, weights])):
        torch.testing.assert_close(a, b)
