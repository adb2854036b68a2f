"""Fused modulated convolution (`torch_utils/ops/modulated_conv2d_cuda.py` + .cu/.cpp/.h).

Three layers of checks:
- build: the CUDA plugin compiles with nvcc (explicit arch list, no GPU needed);
- emulated: the same kernel source, compiled for the host with -DOPS_EMULATE (one OS
  thread per CUDA thread, a barrier for __syncthreads), runs on CPU tensors against the
  reference path: forward, gradients wrt x / weight / styles / noise, every tile config
  and grid split, up = 2, second order;
- GPU: the real kernels against the reference path (skipped without CUDA).

Only a GPU checks what the emulator stands in for: the tensor-core path's WMMA fragments (the emulator
multiplies the tile itself, with TF32 rounding of its own, and stores it through its own code, not
`store_matrix_sync`'s layout), and the concurrency of split grids (the emulator runs blocks one after
another and serialises atomics under a mutex, so races and the order of atomic additions never show).
The same holds for bias_act.cu and upfirdn2d.cu (tests/test_ops.py), which use no shared memory or atomics.
"""

import itertools
import time
import warnings

import pytest
import torch

from conftest import OPS_DIR, emulated_plugin
from torch_utils import custom_ops
from torch_utils.ops import modulated_conv2d_cuda as mcc, upfirdn2d
from torch_utils.ops.modulated_conv2d import modulated_conv2d, modulated_conv2d_ref

SOURCES = ['modulated_conv2d.cpp', 'modulated_conv2d.cu']
HEADERS = ['modulated_conv2d.h']


#----------------------------------------------------------------------------
# Build

@pytest.mark.slow
def test_compile_cuda_plugin(needs_nvcc, plugin_build_dir):
    """nvcc build (about 2 minutes on 2 cores) into the shared, source-hash-keyed cache (see conftest)."""
    start = time.time()
    try:
        module = custom_ops.get_plugin('modulated_conv2d_plugin', SOURCES, headers=HEADERS, source_dir=OPS_DIR,
                                       build_dir=plugin_build_dir)
    except RuntimeError as exc:
        cause = exc.__cause__
        if (isinstance(cause, (ImportError, OSError))
                and ('cuda' in str(cause).lower() or 'driver' in str(cause).lower())):
            pytest.skip(f'compiled OK, load skipped (importing needs a CUDA driver): {cause}')
        raise
    print(f'modulated_conv2d CUDA plugin ready in {time.time() - start:.1f} s')
    assert module.emulated is False and module.max_taps == mcc.MAX_TAPS
    with pytest.raises(RuntimeError, match='CUDA tensor'):
        module.conv(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1), torch.zeros(1, 1, 1),
                    torch.zeros(1, 1), torch.zeros(0), [1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0], 0, -1, False)

#----------------------------------------------------------------------------
# Emulated kernels on the CPU

@pytest.fixture(scope='module')
def emu(plugin_build_dir):
    """The kernels compiled for the host, in the shared build cache (keyed by content hash)."""
    return emulated_plugin(plugin_build_dir, 'modulated_conv2d')

def _inputs(N, I, O, H, W, k, rows, dtype, device='cpu', seed=0):
    gen = torch.Generator().manual_seed(seed)
    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device)
    x = rnd(N, I, H, W).to(dtype).requires_grad_(True)
    weight = rnd(O, I, k, k).to(torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_(True)
    shape = [N, I] if rows is None else [N, rows, I]
    styles = (rnd(*shape) + 1).to(weight.dtype).requires_grad_(True)
    return x, weight, styles

def _run(fn, x, weight, styles, noise_strength=None, seed=1, **kw):
    """-> output and grads wrt (x, weight, styles[, noise_strength]) for a fixed random cotangent."""
    y = fn(x, weight, styles, **kw)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(y)
    params = [x, weight, styles] + ([noise_strength] if noise_strength is not None else [])
    return [y] + list(torch.autograd.grad((y.double() * g.double()).sum(), params))

def _compare(a, b, rtol, atol):
    """assert_close per tensor; `atol` is relative to the largest magnitude of the reference tensor
    (rounding errors of low-precision products scale with the terms summed, not with each output)."""
    for i, (u, v) in enumerate(zip(a, b)):
        scale = max(v.detach().abs().max().item(), 1.0)
        torch.testing.assert_close(u.double(), v.double(), rtol=rtol, atol=atol * scale,
                                   msg=lambda m: f'tensor {i}: {m}')

def _filter(up, device='cpu'):
    return upfirdn2d.setup_filter([1, 3, 3, 1], device=device) if up > 1 else None

CASES = [
    # N, I, O, H, k, rows, up, flip, demod, noise
    (2, 5, 6, 5, 3, 6, 1, True, True, None),          # R == O
    (2, 5, 6, 5, 3, 9, 1, True, False, 'pixel'),      # R > O, no demod, per-pixel noise
    (3, 4, 3, 4, 1, 3, 1, True, False, None),         # toRGB-like 1x1
    (2, 5, 6, 4, 3, 1, 1, False, True, 'const'),      # R == 1 broadcast, convolution (flip)
    (2, 5, 6, 4, 3, None, 1, True, True, None),       # baseline [N, I] styles
    (2, 5, 6, 4, 3, 7, 2, False, True, 'pixel'),      # synthesis conv0: up = 2, transposed path
    (2, 5, 6, 4, 3, 6, 2, True, True, None),          # up = 2 with flip_weight
    (2, 5, 6, 4, 1, 6, 2, True, False, None),         # 1x1 with up = 2: conv, then upfirdn2d
    (1, 3, 4, 3, 5, 4, 1, True, True, None),          # 5x5 kernel, image smaller than the kernel
]

def _noise(kind, N, O, H, up, dtype):
    res = H * up
    if kind is None:
        return None, None
    strength = torch.tensor(0.7, dtype=torch.float64).to(dtype).requires_grad_(True)
    base = torch.randn([N, 1, res, res] if kind == 'pixel' else [res, res], generator=torch.Generator().manual_seed(5))
    return base.to(dtype), strength

@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('dtype,tensor_cores', [(torch.float64, False), (torch.float32, False), (torch.float32, True)])
def test_emulated_matches_reference(emu, case, dtype, tensor_cores):
    """float64 / float32 FMA cores tightly; the TF32 tensor-core tiles (emulated rounding) loosely."""
    N, I, O, H, k, rows, up, flip, demod, noise_kind = case
    x, weight, styles = _inputs(N, I, O, H, H, k, rows, dtype)
    base, strength = _noise(noise_kind, N, O, H, up, dtype)
    kw = dict(up=up, padding=k // 2, resample_filter=_filter(up), demodulate=demod, flip_weight=flip)
    def fused(x, w, s, **kw):
        return mcc.fused_modulated_conv2d(x, w, s, noise=None if base is None else base * strength, backend=emu,
                                          max_pixels=None, tensor_cores=tensor_cores, **kw)
    def ref(x, w, s, **kw):
        return modulated_conv2d_ref(x, w, s, noise=None if base is None else base * strength, **kw)
    tol = 1e-9 if dtype == torch.float64 else (5e-3 if tensor_cores else 2e-4)
    _compare(_run(fused, x, weight, styles, strength, **kw), _run(ref, x, weight, styles, strength, **kw), tol, tol)

@pytest.mark.parametrize('up', [1, 2])
@pytest.mark.parametrize('dtype,tensor_cores', [(torch.float64, False), (torch.float16, True)])
def test_emulated_tile_configs_and_splits(emu, up, dtype, tensor_cores):
    """Every tile config of both kernels (FMA and tensor-core tiles), and the split (atomic)
    weight-gradient grids, give one result."""
    x, weight, styles = _inputs(3, 20, 18, 6, 6, 3, 24, torch.float64 if dtype == torch.float64 else torch.float32,
                                seed=3)
    kw = dict(up=up, padding=1, resample_filter=_filter(up), flip_weight=(up == 1))
    ref = _run(modulated_conv2d_ref, x, weight, styles, **kw)
    tol = 1e-9 if dtype == torch.float64 else 1e-2
    x = x.detach().to(dtype).requires_grad_(True)
    variants = [dict(conv_config=0, dgrad_config=1, wgrad_config=0, splits=(1, 1)),
                dict(conv_config=1, dgrad_config=2, wgrad_config=2, splits=(2, 1)),
                dict(conv_config=2, dgrad_config=0, wgrad_config=0, splits=(1, 3)),
                dict(conv_config=0, dgrad_config=0, wgrad_config=2, splits=(3, 2)),
                dict(num_sms=64)]   # automatic plan with a big GPU -> split over samples and pixels
    for variant in variants:
        def fused(x, w, s, **kw):
            return mcc.fused_modulated_conv2d(x, w, s, backend=emu, max_pixels=None, tensor_cores=tensor_cores,
                                              **variant, **kw)
        _compare(_run(fused, x, weight, styles, **kw), ref, tol, tol)

@pytest.mark.parametrize('geometry', [
    dict(H=5, W=7, k=3, padding=0),                    # valid conv, non-square
    dict(H=4, W=6, k=3, padding=[2, 1]),               # [x, y] padding
    dict(H=5, W=5, k=3, padding=[0, 2, 1, 0]),         # asymmetric [x0, x1, y0, y1]
    dict(H=6, W=6, k=2, padding=[1, 0, 0, 1]),         # even kernel
    dict(H=3, W=5, k=3, padding=0, up=2),              # up = 2 without padding (crop path)
    dict(H=3, W=4, k=3, padding=[2, 0, 1, 1], up=2),   # up = 2, asymmetric padding
    dict(H=3, W=3, k=4, padding=1, up=2),              # up = 2, even kernel
])
@pytest.mark.parametrize('flip', [True, False])
def test_emulated_geometry(emu, geometry, flip):
    g = dict(geometry)
    up = g.pop('up', 1)
    x, weight, styles = _inputs(2, 3, 4, g['H'], g['W'], g['k'], 4, torch.float64, seed=7)
    kw = dict(up=up, padding=g['padding'], resample_filter=_filter(up), flip_weight=flip)
    fused = lambda x, w, s, **kw: mcc.fused_modulated_conv2d(x, w, s, backend=emu, max_pixels=None, **kw)
    _compare(_run(fused, x, weight, styles, **kw), _run(modulated_conv2d_ref, x, weight, styles, **kw), 1e-9, 1e-9)

def test_emulated_low_precision(emu):
    """float16 / bfloat16 activations with float32 weight and styles (accumulation in float32)."""
    x, weight, styles = _inputs(2, 6, 5, 5, 5, 3, 7, torch.float32, seed=9)
    ref = _run(modulated_conv2d_ref, x, weight, styles, padding=1)
    for (dtype, tol), tensor_cores in itertools.product([(torch.float16, 1e-2), (torch.bfloat16, 5e-2)], [False, True]):
        xl = x.detach().to(dtype).requires_grad_(True)
        out = _run(lambda x, w, s, **kw: mcc.fused_modulated_conv2d(x, w, s, backend=emu, max_pixels=None,
                                                                    tensor_cores=tensor_cores, **kw),
                   xl, weight, styles, padding=1)
        assert out[0].dtype == dtype and out[1].dtype == dtype and out[2].dtype == torch.float32
        _compare(out, ref, tol, tol)

def test_emulated_strided_inputs(emu):
    """channels_last x, sliced styles rows and an expanded (stride-0) output gradient."""
    x, weight, styles = _inputs(2, 4, 5, 6, 6, 3, 8, torch.float64, seed=11)
    xc = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    y = mcc.fused_modulated_conv2d(xc, weight, styles, padding=1, backend=emu, max_pixels=None)
    grads = torch.autograd.grad(y.mean(), [xc, weight, styles])     # mean -> expanded gradient
    yr = modulated_conv2d_ref(x, weight, styles, padding=1)
    grads_ref = torch.autograd.grad(yr.mean(), [x, weight, styles])
    _compare([y] + list(grads), [yr] + list(grads_ref), 1e-9, 1e-9)

def test_emulated_saves_no_per_sample_weight(emu):
    """Forward saves x, W, S, d (and the small demodulation graph), never [N, O, I, k, k]."""
    N, I, O, k = 4, 8, 8, 3
    x, weight, styles = _inputs(N, I, O, 4, 4, k, O, torch.float32, seed=13)
    sizes = []
    def pack(t):
        sizes.append(t.numel())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = mcc.fused_modulated_conv2d(x, weight, styles, padding=1, backend=emu, max_pixels=None)
    assert max(sizes) < N * O * I * k * k, sizes
    y.sum().backward()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        modulated_conv2d_ref(x, weight, styles, padding=1)
    assert max(sizes) >= N * O * I * k * k   # the reference does

@pytest.mark.parametrize('up', [1, 2])
def test_emulated_second_order(emu, up):
    """gradgradcheck in float64, and path-length/R1-style double backward against the reference.

    gradgradcheck alone is not enough: it takes the first-order gradients through the same
    create_graph backward, so a wrong-but-consistent second-order formula would pass it.
    """
    x, weight, styles = _inputs(1, 2, 3, 3, 3, 3, 3, torch.float64, seed=17)
    kw = dict(up=up, padding=1, resample_filter=_filter(up), flip_weight=(up == 1))
    fused = lambda x, w, s, **kw: mcc.fused_modulated_conv2d(x, w, s, backend=emu, max_pixels=None, **kw)
    if up == 1:   # (~0.1 s per emulated launch: the up = 2 variant would take minutes; the GPU test runs it)
        assert torch.autograd.gradgradcheck(lambda x, w, s: fused(x, w, s, **kw), [x, weight, styles])

    x, weight, styles = _inputs(2, 3, 4, 3, 3, 3, 5, torch.float64, seed=18)
    def second_order(fn, first, demodulate, frozen=()):
        tensors = {'x': x, 'w': weight, 's': styles}
        args = {k: (v.detach() if k in frozen else v) for k, v in tensors.items()}
        y = fn(args['x'], args['w'], args['s'], demodulate=demodulate, **kw)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)
        grads = torch.autograd.grad((y * g).sum(), [args[k] for k in first], create_graph=True)
        loss = sum(gr.square().sum() for gr in grads)
        wrt = [k for k in 'xws' if k not in frozen]
        out = torch.autograd.grad(loss, [args[k] for k in wrt], allow_unused=True)   # dx^2 does not use x
        return [torch.zeros_like(args[k]) if o is None else o for k, o in zip(wrt, out)]
    for first, demodulate, frozen in [('s', True, ()), ('x', True, ()), ('xws', True, ()), ('w', False, ()),
                                      ('s', True, ('x',)), ('x', True, ('w', 's'))]:
        _compare(second_order(fused, first, demodulate, frozen),
                 second_order(modulated_conv2d_ref, first, demodulate, frozen), 1e-9, 1e-9)

def test_fallback_cases_match_reference(emu):
    """down = 2, up = 4 and too-large outputs take the reference path."""
    x, weight, styles = _inputs(2, 3, 4, 8, 8, 3, 4, torch.float64, seed=19)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    for kw in [dict(down=2, padding=1, resample_filter=f), dict(up=4, padding=1, resample_filter=f, flip_weight=False),
               dict(padding=1, max_pixels=16)]:
        ref_kw = {k: v for k, v in kw.items() if k != 'max_pixels'}
        out = mcc.fused_modulated_conv2d(x, weight, styles, backend=None, **kw)   # backend unused
        torch.testing.assert_close(out, modulated_conv2d_ref(x, weight, styles, **ref_kw))

class _FaultyBackend:
    """The emulated kernels with one injected fault: outputs of `conv` or `wgrad` scaled."""
    def __init__(self, emu, conv_scale=1.0, wgrad_scale=1.0):
        self.emu, self.conv_scale, self.wgrad_scale = emu, conv_scale, wgrad_scale

    def conv(self, out, *args):
        self.emu.conv(out, *args)
        out.mul_(self.conv_scale)

    def wgrad(self, dw, dsraw, *args):
        self.emu.wgrad(dw, dsraw, *args)
        dw.mul_(self.wgrad_scale)

@pytest.mark.parametrize('conv_scale,wgrad_scale,ok', [(1.0, 1.0, True), (1.0 + 1e-3, 1.0, False), (1.0, 0.99, False)])
def test_self_check_with_emulated_kernel(emu, monkeypatch, conv_scale, wgrad_scale, ok):
    """The kernel code itself (emulated) passes the first-use self-check; a fault in the forward/grad-x
    kernel or only in the weight-gradient kernel is caught and that configuration falls back."""
    from torch_utils.ops import self_check
    monkeypatch.setattr(self_check, '_enabled', True)
    monkeypatch.setattr(self_check, '_verdicts', {})
    monkeypatch.setattr(mcc, '_backend_for', lambda x: _FaultyBackend(emu, conv_scale, wgrad_scale))
    x, weight, styles = _inputs(2, 5, 6, 4, 4, 3, 6, torch.float32, seed=23)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        y = mcc.modulated_conv2d(x, weight, styles, padding=1)
    verdict, = self_check.results()
    assert verdict.ok == ok, verdict.line()
    assert len([w for w in caught if issubclass(w.category, self_check.KernelSelfCheckWarning)]) == (0 if ok else 1)
    ref = modulated_conv2d_ref(x, weight, styles, padding=1)
    if ok:
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(y, ref)

def test_geometry_covers_every_output_once():
    """Phases of the transposed conv tile its output exactly; every tap is in one phase."""
    for size, crop, K, flip in [(3, 0, 3, False), (4, 1, 3, True), (5, 0, 4, False), (2, 2, 5, True)]:
        out, phases, _ = mcc._tconv_axis(size, crop, K, 2, flip)
        covered = sorted(a.base + a.step * m for a in phases for m in range(a.count))
        assert covered == list(range(out))
        assert sorted(w for a in phases for _, w in a.taps) == list(range(K))

def test_unavailable_without_cuda():
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    assert mcc.is_available() == (False, 'no CUDA device')
    x, weight, styles = _inputs(1, 2, 2, 4, 4, 3, 2, torch.float32)
    with pytest.raises(RuntimeError, match='unavailable'):
        mcc.modulated_conv2d(x, weight, styles, padding=1)
    with pytest.raises(RuntimeError, match='unavailable'):
        modulated_conv2d(x, weight, styles, padding=1, impl='cuda')

#----------------------------------------------------------------------------
# GPU

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

@pytest.fixture
def strict_fp32():
    """Reference convolutions without TF32, so that float32 results compare tightly."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old

@cuda
def test_cuda_available():
    ok, reason = mcc.is_available()
    assert ok, reason

@pytest.fixture
def tf32(request):
    """Set cuDNN's TF32 flag (the fused kernel follows it for float32) for one test."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = request.param
    yield request.param
    torch.backends.cudnn.allow_tf32 = old

# (x dtype, cuDNN TF32 allowed, tolerance relative to the largest magnitude) against a float64 reference.
GPU_PRECISIONS = [(torch.float32, False, 1e-5), (torch.float32, True, 5e-3), (torch.float16, False, 1e-2),
                  (torch.bfloat16, False, 5e-2)]

@cuda
@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('dtype,tf32,tol', GPU_PRECISIONS, indirect=['tf32'])
def test_cuda_matches_reference(case, dtype, tf32, tol):
    """Through the dispatcher (impl='cuda'): forward and gradients wrt x, weight, styles, noise strength."""
    N, I, O, H, k, rows, up, flip, demod, noise_kind = case
    dev = torch.device('cuda')
    x, weight, styles = _inputs(N, I, O, H, H, k, rows, torch.float64, device=dev)
    base, strength = _noise(noise_kind, N, O, H, up, torch.float64)
    if base is not None:
        base, strength = base.to(dev), strength.detach().to(dev).requires_grad_(True)
    kw = dict(up=up, padding=k // 2, resample_filter=_filter(up, dev), demodulate=demod, flip_weight=flip)
    ref = _run(lambda x, w, s, **kw: modulated_conv2d_ref(x, w, s, noise=None if base is None else base * strength,
                                                          **kw),
               x, weight, styles, strength, **kw)
    xl, wl, sl = (t.detach().to(dt).requires_grad_(True) for t, dt in [(x, dtype), (weight, torch.float32),
                                                                       (styles, torch.float32)])
    sl32 = None if strength is None else strength.detach().float().requires_grad_(True)
    noise = lambda: None if base is None else base.to(dtype) * sl32.to(dtype)
    out = _run(lambda x, w, s, **kw: modulated_conv2d(x, w, s, noise=noise(), impl='cuda', **kw),
               xl, wl, sl, sl32, **kw)
    assert out[0].dtype == dtype
    _compare(out, ref, tol, tol)

@cuda
@pytest.mark.parametrize('res', [4, 8, 16, 32])
@pytest.mark.parametrize('dtype,tf32,tol', GPU_PRECISIONS, indirect=['tf32'])
def test_cuda_synthesis_sizes(res, dtype, tf32, tol):
    """512 -> 512 channels, rows = 512, batch 4, at the resolutions the fused path serves."""
    dev = torch.device('cuda')
    x, weight, styles = _inputs(4, 512, 512, res // 2, res // 2, 3, 512, torch.float64, device=dev, seed=23)
    x1, _, _ = _inputs(4, 512, 512, res, res, 3, 512, torch.float64, device=dev, seed=24)
    for xin, kw in [(x1, dict(padding=1)),
                    (x, dict(up=2, padding=1, resample_filter=_filter(2, dev), flip_weight=False))]:
        ref = _run(modulated_conv2d_ref, xin, weight, styles, **kw)
        xl = xin.detach().to(dtype).requires_grad_(True)
        wl, sl = (t.detach().float().requires_grad_(True) for t in (weight, styles))
        out = _run(lambda x, w, s, **kw: modulated_conv2d(x, w, s, impl='cuda', **kw), xl, wl, sl, **kw)
        _compare(out, ref, tol, tol)

@cuda
@pytest.mark.parametrize('up', [1, 2])
@pytest.mark.parametrize('dtype,tensor_cores,tol', [(torch.float64, False, 1e-9), (torch.float32, False, 1e-5),
                                                    (torch.float32, True, 5e-3), (torch.float16, True, 1e-2),
                                                    (torch.float16, False, 1e-2), (torch.bfloat16, True, 5e-2)])
def test_cuda_splits_and_configs(up, dtype, tensor_cores, tol):
    """Every tile config of both cores and split (atomic) weight-gradient grids, against float64."""
    dev = torch.device('cuda')
    x, weight, styles = _inputs(3, 40, 36, 8, 8, 3, 40, torch.float64, device=dev, seed=29)
    kw = dict(up=up, padding=1, resample_filter=_filter(up, dev), flip_weight=(up == 1))
    ref = _run(modulated_conv2d_ref, x, weight, styles, **kw)
    if dtype != torch.float64:
        x = x.detach().to(dtype).requires_grad_(True)
        weight, styles = (t.detach().float().requires_grad_(True) for t in (weight, styles))
    plugin = mcc._plugin.load()
    for c, w, sp in [(0, 0, (1, 1)), (1, 2, (3, 1)), (2, 0, (1, 4)), (0, 2, (2, 2)), (-1, -1, None)]:
        variant = dict(conv_config=c, dgrad_config=(c + 1) % 3 if c >= 0 else -1, wgrad_config=w, splits=sp)
        fused = lambda x, w, s, **kw: mcc.fused_modulated_conv2d(x, w, s, backend=plugin, max_pixels=None,
                                                                 tensor_cores=tensor_cores, **variant, **kw)
        _compare(_run(fused, x, weight, styles, **kw), ref, tol, tol)

@cuda
@pytest.mark.parametrize('up', [1, 2])
def test_cuda_second_order(up):
    dev = torch.device('cuda')
    x, weight, styles = _inputs(2, 3, 4, 4, 4, 3, 5, torch.float64, device=dev, seed=31)
    kw = dict(up=up, padding=1, resample_filter=_filter(up, dev), flip_weight=(up == 1))
    fused = lambda x, w, s: modulated_conv2d(x, w, s, impl='cuda', **kw)
    assert torch.autograd.gradgradcheck(fused, [x, weight, styles])

@cuda
def test_cuda_generator_matches_reference(strict_fp32, monkeypatch):
    """A tiny overparameterized generator: default dispatch (fused) vs the reference path."""
    from tests.conftest import tiny_generator_kwargs
    from training.networks import Generator
    torch.manual_seed(0)
    G = Generator(**tiny_generator_kwargs(latent_rows=32, resolution=32, dim=32, use_noise=True)).cuda()
    z = G.sample_z(2, device='cuda')
    def run():
        G.zero_grad(set_to_none=True)
        img = G(z, None, noise_mode='const')
        img.square().mean().backward()
        return [img.detach()] + [p.grad.clone() for p in G.parameters() if p.grad is not None]
    calls = []
    real = mcc.fused_modulated_conv2d
    monkeypatch.setattr(mcc, 'fused_modulated_conv2d', lambda *a, **k: calls.append(1) or real(*a, **k))
    fused = run()
    assert calls, 'the fused path was not used'
    monkeypatch.setattr(mcc, 'is_available', lambda: (False, 'disabled by the test'))
    monkeypatch.setattr('torch_utils.ops.modulated_conv2d._cuda_warned', True)
    ref = run()
    _compare(fused, ref, 1e-3, 1e-4)
