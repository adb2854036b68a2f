"""Fused CUDA modulated convolution (StyleGAN2 eq. 1 and the per-row styles of eq. 2).

What is fused (kernels in `modulated_conv2d.cu`, maths in `modulated_conv2d.h`):

- Forward, an implicit GEMM per sample: output tile `[rows O x pixels]`, reduction over
  `I * kh * kw`; the tile of `W[o,i,t] * S[n,o,i] * d[n,o]` is formed in shared memory
  from `W [O,I,kh,kw]`, `S [N,O,I]` and `d [N,O]`, so the per-sample weight
  `[N,O,I,kh,kw]` never exists in memory. Optional noise is added in the epilogue.
  Demodulation `d[n,o] = rsqrt(sum_i S^2 Q[o,i] + 1e-8)`, `Q = sum_k W^2` (the folded
  form, O(N*O*I)) is computed with torch ops, so autograd differentiates it.
- Gradient wrt x: the same kernel on `gy` with the transposed geometry.
- Gradients wrt weight and styles: one kernel computes, per sample and tile,
  `G[n,o,i,t] = sum_pixels gy * x_patch` and reduces it in the block to
  `dW[o,i,t] = sum_n d S G` and `dSraw[n,o,i] = sum_t W G`; then
  `dS = d * dSraw` and `dd = sum_i S * dSraw` (torch). Memory: `[N,O,I]` + `[O,I,k,k]`,
  never `[N,O,I,k,k]`. With one block per (o, i) tile it is deterministic; when the
  grid is split over samples/pixels to fill the GPU (few channels) it uses atomics.
- up = 2 (the synthesis conv0): the kernels compute the stride-2 transposed conv of
  the reference path directly (4 output phases, one per parity, no zero-insertion),
  then the FIR filter runs through `upfirdn2d` with the same padding arithmetic as
  `conv2d_resample`; noise is added after it. 1x1 kernels with up = 2: conv, then
  `upfirdn2d` (as the reference).
- Second order (create_graph=True, e.g. path-length regularisation): the backward
  then recomputes the layer with differentiable torch ops (grouped conv with the
  materialised per-sample weight) and differentiates that, so double backward is exact
  but has the reference path's memory for that pass.

Precision: inner products on tensor cores (WMMA, sm_80+) where the reference conv would
use them too: FP16/BF16 products for fp16/bf16 x, TF32 for float32 x when
`torch.backends.cudnn.allow_tf32` is set (PyTorch's default); FP32 FMA for float32 x
otherwise (strict FP32, e.g. the paper's `--fp32 True`), FP64 FMA for float64 x.
Accumulation is always in FP32 (FP64). `use_tensor_cores = False` forces FMA.

Falls back to the reference path (`modulated_conv2d_ref`) for down != 1, up > 2, kernels
with more than 32 taps or smaller than `up`, and outputs larger than `max_fused_pixels`
(32x32 by default: an estimate, not a measurement, of where cuDNN's grouped conv catches
up: the weight traffic the fusion saves is independent of resolution, the FLOPs are not;
measure it with `python -m benchmarks.gpu_acceptance` (part modconv_layers) or
`benchmarks/bench_modconv.py` on the target GPU).
"""

import functools
import math
from collections import namedtuple

import torch
import torch.nn.functional as F

from .. import custom_ops
from . import self_check, upfirdn2d
from .modulated_conv2d import _row_styles, demodulation_coefficients, modulated_conv2d_ref
from .upfirdn2d import filter_extent, padding_edges

#----------------------------------------------------------------------------

_plugin = custom_ops.LazyPlugin('modulated_conv2d_plugin', sources=['modulated_conv2d.cpp', 'modulated_conv2d.cu'],
                                headers=['modulated_conv2d.h'])

max_fused_pixels = 32 * 32   # Larger outputs (per channel, after upsampling) take the reference path; None = no limit.
use_tensor_cores = True      # WMMA tiles on sm_80+ for fp16/bf16 x, and for fp32 x when cuDNN may use TF32.
MAX_TAPS = 32                # mc::kMaxTaps
_WGRAD_TILES = {0: (64, 64), 2: (16, 128)}   # wgrad config -> (rows, columns)
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_status = None   # (ok, reason) of the build, once tried

def is_available():
    """`(True, '')` if the fused kernel can run here; else `(False, reason)`. Builds the plugin once."""
    global _status
    if not torch.cuda.is_available():
        return False, 'no CUDA device'
    if _status is None:
        try:
            _plugin.load()
            _status = (True, '')
        except Exception as exc:  # a failed build or import must never crash the caller
            _status = (False, f'{type(exc).__name__}: {exc}')
    return _status

#----------------------------------------------------------------------------
# Geometry: output grids ("phases") and taps, flattened for the kernels (see the .h).

_Axis = namedtuple('_Axis', 'base step count in_step taps')   # taps: [(input offset, weight index)]

def _tap(k, K, flip):
    return K - 1 - k if flip else k

def _conv_axis(size, p0, p1, K, flip):
    """Stride-1 correlation with padding (p0, p1); `flip` = convolution. -> (out, fwd phases, grad-x axis)."""
    out = size + p0 + p1 - K + 1
    fwd = [_Axis(0, 1, out, 1, [(k - p0, _tap(k, K, flip)) for k in range(K)])]
    bwd = _Axis(0, 1, size, 1, [(p0 - k, _tap(k, K, flip)) for k in range(K)])
    return out, fwd, bwd

def _tconv_axis(size, crop, K, stride, flip):
    """Transposed conv (`conv_transpose2d(stride, padding=crop)`): output Y = stride*yy + k - crop.

    Phase r holds the outputs with (Y + crop) % stride == r; they use taps k = r + stride*j
    and read input yy = m - j for Y = stride*m + r - crop.
    """
    out = (size - 1) * stride + K - 2 * crop
    fwd = []
    for r in range(stride):
        m0 = -((r - crop) // stride)           # ceil((crop - r) / stride): first m with Y >= 0
        m1 = -((r - crop - out) // stride)     # ceil((out + crop - r) / stride): first m with Y >= out
        taps = [(m0 - (k - r) // stride, _tap(k, K, flip)) for k in range(r, K, stride)]
        fwd.append(_Axis(stride * m0 + r - crop, stride, max(m1 - m0, 0), 1, taps))
    bwd = _Axis(0, 1, size, stride, [(k - crop, _tap(k, K, flip)) for k in range(K)])
    return out, fwd, bwd

def _flatten(axes_y, axes_x, kw):
    """Product of y and x axes -> flat int list `[phases, (yb ys my xb xs mx isy isx T dy.. dx.. tw..)...]`."""
    flat = [len(axes_y) * len(axes_x)]
    for ay in axes_y:
        for ax in axes_x:
            taps = [(dy, dx, wy * kw + wx) for dy, wy in ay.taps for dx, wx in ax.taps]
            assert 1 <= len(taps) <= MAX_TAPS
            flat += [ay.base, ay.step, ay.count, ax.base, ax.step, ax.count, ay.in_step, ax.in_step, len(taps)]
            flat += [t[0] for t in taps] + [t[1] for t in taps] + [t[2] for t in taps]
    return flat

def _phase_stats(flat):
    """-> (max taps of a phase, max pixels of a phase) of a flat geometry."""
    pos, tmax, pmax = 1, 0, 0
    for _ in range(flat[0]):
        my, mx, taps = flat[pos + 2], flat[pos + 5], flat[pos + 8]
        tmax, pmax = max(tmax, taps), max(pmax, my * mx)
        pos += 9 + 3 * taps
    return tmax, pmax

@functools.lru_cache(maxsize=1024)
def _conv_geometry(H, W, kh, kw, pad, flip):
    """Stride-1 layer: pad = (x0, x1, y0, y1) -> (out_h, out_w, forward geometry, grad-x geometry)."""
    out_h, fy, by = _conv_axis(H, pad[2], pad[3], kh, flip)
    out_w, fx, bx = _conv_axis(W, pad[0], pad[1], kw, flip)
    return out_h, out_w, _flatten(fy, fx, kw), _flatten([by], [bx], kw)

@functools.lru_cache(maxsize=1024)
def _tconv_geometry(H, W, kh, kw, stride, crop, flip):
    """Transposed layer: crop = (y, x) -> (out_h, out_w, forward geometry, grad-x geometry)."""
    out_h, fy, by = _tconv_axis(H, crop[0], kh, stride, flip)
    out_w, fx, bx = _tconv_axis(W, crop[1], kw, stride, flip)
    return out_h, out_w, _flatten(fy, fx, kw), _flatten([by], [bx], kw)

@functools.lru_cache(maxsize=None)
def _num_sms(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count

class _Spec:
    """Everything `_FusedModConv` needs besides tensors (hashable by identity)."""
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

#----------------------------------------------------------------------------

def _wgrad_plan(spec, N, O, I, device):
    """Tile config and (nsplit, psplit) of the weight-gradient grid: >= 2 blocks per SM if possible."""
    cfg = spec.wgrad_config if spec.wgrad_config >= 0 else (2 if O <= 16 else 0)
    if spec.splits is not None:
        return cfg, spec.splits
    rows, cols = _WGRAD_TILES[cfg]
    tmax, pmax = _phase_stats(spec.fwd)
    base = math.ceil(I / (cols // tmax)) * math.ceil(O / rows)
    num_sms = spec.num_sms or (_num_sms(device.index if device.index is not None else torch.cuda.current_device())
                               if device.type == 'cuda' else 8)
    target = 2 * num_sms
    nsplit = max(1, min(N, math.ceil(target / base)))
    nsplit = math.ceil(N / math.ceil(N / nsplit))                # no empty sample ranges
    psplit = 1
    if base * nsplit < target:
        psplit = max(1, min(math.ceil(target / (base * nsplit)), pmax // 64))
    return cfg, (nsplit, psplit)

def _torch_conv(x, wp, spec):
    """The layer with the materialised per-sample weight `wp [N,O,I,kh,kw]` (torch ops; for second order)."""
    N, I, H, W = x.shape
    O, kh, kw = wp.shape[1], wp.shape[3], wp.shape[4]
    wp = wp.to(x.dtype)
    if spec.flip:
        wp = wp.flip([3, 4])
    if spec.kind == 'conv':
        xp = F.pad(x, list(spec.pad)) if any(spec.pad) else x
        y = F.conv2d(xp.reshape(1, N * I, *xp.shape[2:]), wp.reshape(N * O, I, kh, kw), groups=N)
    else:
        y = F.conv_transpose2d(x.reshape(1, N * I, H, W), wp.transpose(1, 2).reshape(N * I, O, kh, kw),
                               stride=spec.stride, padding=spec.crop, groups=N)
    return y.reshape(N, O, *y.shape[2:])

def _differentiable_backward(x, w, s, d, gy, spec, needs):
    """Partial derivatives wrt (x, w, s, d) as differentiable torch ops (create_graph=True).

    `d` is a function of `w` and `s` in the caller's graph, so the partials are taken through
    the intermediate per-sample weight `wp = w * s * d`, never by differentiating wrt `w`/`s`
    themselves (that would also follow the path through `d` and count it twice).
    """
    need_x, need_w, need_s, need_d = needs
    with torch.enable_grad():
        scale = s if d is None else s * d.unsqueeze(2)                              # [NOI]
        wp = w.unsqueeze(0) * scale.unsqueeze(-1).unsqueeze(-1)                     # [NOIkk]
        y = _torch_conv(x, wp, spec)
        inputs = ([x] if need_x else []) + ([wp] if (need_w or need_s or need_d) else [])
        grads = list(torch.autograd.grad(y, inputs, gy, create_graph=True))
        gx = grads.pop(0) if need_x else None
        gw = gs = gd = None
        if need_w or need_s or need_d:
            gwp = grads.pop(0)                                                      # [NOIkk]
            if need_w:
                gw = (gwp * scale.unsqueeze(-1).unsqueeze(-1)).sum(dim=0)
            if need_s or need_d:
                gsraw = (gwp * w.unsqueeze(0)).sum(dim=[3, 4])                      # [NOI]
                if need_s:
                    gs = gsraw * d.unsqueeze(2) if d is not None else gsraw
                if need_d:
                    gd = (gsraw * s).sum(dim=2)
    return gx, gw, gs, gd

class _FusedModConv(torch.autograd.Function):
    """y = conv(x, W * S * d) (+ noise). x `[N,I,H,W]`, w `[O,I,kh,kw]` (acc dtype, contiguous),
    s `[N,O,I]` (any strides), d `[N,O]` or None, noise None or broadcast view `[N,O,Ho,Wo]`."""

    @staticmethod
    def forward(ctx, x, w, s, d, noise, spec):
        N, O, I = x.shape[0], w.shape[0], w.shape[1]
        y = torch.empty([N, O, spec.out_h, spec.out_w], dtype=x.dtype, device=x.device)
        dd = d if d is not None else w.new_ones([1, 1]).expand(N, O)
        empty = x.new_empty([0])
        spec.mod.conv(y, x, w.reshape(O, I, -1), s, dd, noise if noise is not None else empty,
                      spec.fwd, 0, spec.conv_config, spec.tensor_cores)
        ctx.save_for_backward(x, w, s, d)
        ctx.spec = spec
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w, s, d = ctx.saved_tensors
        spec = ctx.spec
        need_x, need_w, need_s, need_d, need_noise = ctx.needs_input_grad[:5]
        gnoise = gy if need_noise else None
        needs = (need_x, need_w, need_s, need_d and d is not None)

        if torch.is_grad_enabled():   # create_graph=True: torch ops that autograd can differentiate again
            gx, gw, gs, gd = _differentiable_backward(x, w, s, d, gy, spec, needs)
            return gx, gw, gs, gd, gnoise, None

        N, O, I = x.shape[0], w.shape[0], w.shape[1]
        w3 = w.reshape(O, I, -1)
        dd = d if d is not None else w.new_ones([1, 1]).expand(N, O)
        empty = x.new_empty([0])
        gx = gw = gs = gd = None
        if need_x:
            gx = torch.empty_like(x)
            spec.mod.conv(gx, gy, w3, s, dd, empty, spec.bwd, 1, spec.dgrad_config, spec.tensor_cores)
        if need_w or need_s or needs[3]:
            dw = torch.zeros_like(w3, memory_format=torch.contiguous_format)
            dsraw = torch.zeros([N, O, I], dtype=w.dtype, device=w.device)
            cfg, (nsplit, psplit) = _wgrad_plan(spec, N, O, I, x.device)
            spec.mod.wgrad(dw, dsraw, gy, x, w3, s, dd, spec.fwd, nsplit, psplit, cfg, spec.tensor_cores)
            gw = dw.reshape(w.shape) if need_w else None
            if need_s:
                gs = dsraw * d.unsqueeze(2) if d is not None else dsraw
            if needs[3]:
                gd = (dsraw * s).sum(dim=2)
        return gx, gw, gs, gd, gnoise, None

#----------------------------------------------------------------------------

def _tf32_allowed():
    """Whether the reference convolution may use TF32 (then so do we, for float32 inputs)."""
    conv = getattr(torch.backends.cudnn, 'conv', None)
    if conv is not None and getattr(conv, 'fp32_precision', None) == 'ieee':
        return False
    return bool(torch.backends.cudnn.allow_tf32)

def _tensor_cores_for(x):
    if not use_tensor_cores or x.dtype == torch.float64 or x.device.type != 'cuda':
        return False
    if torch.cuda.get_device_capability(x.device) < (8, 0):
        return False
    return x.dtype != torch.float32 or _tf32_allowed()

def _fallback_reason(x, weight, styles, up, down):
    if x.ndim != 4 or weight.ndim != 4:
        return 'not a 2-D convolution'
    if x.dtype not in _SUPPORTED_DTYPES:
        return f'dtype {x.dtype}'
    if down != 1 or up not in (1, 2):
        return f'up={up}, down={down}'
    kh, kw = weight.shape[2:]
    if kh * kw > MAX_TAPS:
        return f'{kh}x{kw} kernel'
    if up > 1 and (kh, kw) != (1, 1) and (kh < up or kw < up):
        return f'{kh}x{kw} kernel with up={up}'
    if x.shape[0] >= 16384:
        return 'batch too large'
    return None

def fused_modulated_conv2d(x, weight, styles, noise=None, up=1, down=1, padding=0, resample_filter=None,
                           demodulate=True, flip_weight=True, backend=None, conv_config=-1, dgrad_config=-1,
                           wgrad_config=-1, splits=None, num_sms=None, max_pixels='default', tensor_cores=None):
    """`modulated_conv2d` through the fused kernels of `backend` (the loaded plugin, or the CPU
    emulator in tests). The tile configs, (nsplit, psplit) of the weight gradient,
    `max_pixels` (default: module-level `max_fused_pixels`) and `tensor_cores` (None = WMMA
    where the reference conv would use tensor cores, see `_tensor_cores_for`) are tuning/test knobs.
    Unsupported cases run `modulated_conv2d_ref`. Returns `[N, O, H', W']` in `x.dtype`."""
    max_pixels = max_fused_pixels if max_pixels == 'default' else max_pixels
    reason = _fallback_reason(x, weight, styles, up, down)
    if reason is None and max_pixels is not None and x.shape[2] * x.shape[3] * up * up > max_pixels:
        reason = 'large output'
    if reason is not None:
        return modulated_conv2d_ref(x=x, weight=weight, styles=styles, noise=noise, up=up, down=down, padding=padding,
                                    resample_filter=resample_filter, demodulate=demodulate, flip_weight=flip_weight,
                                    fused_modconv=True)
    N, I, H, W = x.shape
    O, _, kh, kw = weight.shape
    assert weight.shape[1] == I and styles.shape[0] == N and styles.shape[-1] == I
    S = _row_styles(styles, O) if styles.ndim == 3 else styles                     # [NOI] or [NI]

    # Same FP16 overflow guard as the reference path (demodulation cancels it).
    if demodulate and x.dtype == torch.float16:
        weight = weight * (1 / math.sqrt(I * kh * kw) / weight.norm(float('inf'), dim=[1, 2, 3], keepdim=True))
        S = S / S.norm(float('inf'), dim=-1, keepdim=True)
    if S.ndim == 2:
        S = S.unsqueeze(1).expand(N, O, I)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = weight.to(acc).contiguous()
    S = S.to(acc)
    d = demodulation_coefficients(w, S) if demodulate else None                     # [NO]

    tensor_cores = _tensor_cores_for(x) if tensor_cores is None else bool(tensor_cores and x.dtype != torch.float64)
    common = dict(mod=backend, conv_config=conv_config, dgrad_config=dgrad_config, wgrad_config=wgrad_config,
                  splits=splits, num_sms=num_sms, tensor_cores=tensor_cores)
    px0, px1, py0, py1 = padding_edges(padding)
    if up == 1 or (kh, kw) == (1, 1):
        if up > 1:   # 1x1 kernel: conv first, the filter pads afterwards
            cx0, cx1, cy0, cy1 = 0, 0, 0, 0
        else:
            cx0, cx1, cy0, cy1 = px0, px1, py0, py1
        if H + cy0 + cy1 < kh or W + cx0 + cx1 < kw:
            raise ValueError(f'modulated_conv2d: empty output for a {H}x{W} input and padding {padding}')
        out_h, out_w, fwd, bwd = _conv_geometry(H, W, kh, kw, (cx0, cx1, cy0, cy1), not flip_weight)
        spec = _Spec(kind='conv', pad=(cx0, cx1, cy0, cy1), flip=not flip_weight, out_h=out_h, out_w=out_w,
                     fwd=fwd, bwd=bwd, **common)
        fused_noise = noise is not None and up == 1
        nv = noise.to(x.dtype).expand(N, O, out_h, out_w) if fused_noise else None
        y = _FusedModConv.apply(x, w, S, d, nv, spec)
        if up > 1:
            fw, fh = filter_extent(resample_filter)
            pad = [px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2, py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2]
            y = upfirdn2d.upfirdn2d(y, resample_filter, up=up, padding=pad, gain=up ** 2)
        if noise is not None and not fused_noise:
            y = y + noise.to(y.dtype)
        return y

    # up > 1, kernel > 1: the reference path's transposed conv, then the FIR filter.
    fw, fh = filter_extent(resample_filter)
    px0 += (fw + up - 1) // 2 - (kw - 1)
    px1 += (fw - up) // 2 - (kw - up)
    py0 += (fh + up - 1) // 2 - (kh - 1)
    py1 += (fh - up) // 2 - (kh - up)
    tx = max(min(-px0, -px1), 0)
    ty = max(min(-py0, -py1), 0)
    out_h, out_w, fwd, bwd = _tconv_geometry(H, W, kh, kw, up, (ty, tx), flip_weight)
    spec = _Spec(kind='tconv', stride=up, crop=(ty, tx), flip=flip_weight, out_h=out_h, out_w=out_w,
                 fwd=fwd, bwd=bwd, **common)
    y = _FusedModConv.apply(x, w, S, d, None, spec)
    y = upfirdn2d.upfirdn2d(y, resample_filter, padding=[px0 + tx, px1 + tx, py0 + ty, py1 + ty], gain=up ** 2)
    if noise is not None:
        y = y + noise.to(y.dtype)
    return y

#----------------------------------------------------------------------------

def modulated_conv2d(x, weight, styles, noise=None, up=1, down=1, padding=0, resample_filter=None,
                     demodulate=True, flip_weight=True):
    """The CUDA implementation behind `modulated_conv2d(impl='cuda')`; same arguments and result.

    The first call for a configuration class runs the self-check (`torch_utils.ops.self_check`);
    a configuration whose kernel disagreed with the reference runs `modulated_conv2d_ref`.
    Raises RuntimeError when the plugin is unavailable (no CUDA device, or the build failed).
    """
    backend = _backend_for(x)
    args = dict(noise=noise, up=up, down=down, padding=padding, resample_filter=resample_filter,
                demodulate=demodulate, flip_weight=flip_weight)
    if _takes_kernel(x, weight, styles, up, down) and not _kernel_trusted(x, weight, styles, backend, args):
        return modulated_conv2d_ref(x=x, weight=weight, styles=styles, fused_modconv=True, **args)
    return fused_modulated_conv2d(x, weight, styles, backend=backend, **args)

def _backend_for(x):
    """The loaded plugin for CUDA tensor `x`, or raise with the reason."""
    ok, reason = is_available()
    if not ok:
        raise RuntimeError(f'modulated_conv2d: fused CUDA kernel unavailable: {reason}')
    if x.device.type != 'cuda':
        raise ValueError(f'modulated_conv2d(impl="cuda") needs CUDA tensors, got {x.device}')
    return _plugin.load()

def _takes_kernel(x, weight, styles, up, down):
    """Whether `fused_modulated_conv2d` runs the kernel (and not its reference fallback) for these inputs."""
    if _fallback_reason(x, weight, styles, up, down) is not None:
        return False
    return max_fused_pixels is None or x.shape[2] * x.shape[3] * up * up <= max_fused_pixels

#----------------------------------------------------------------------------
# First-use self-check.

# Tolerance relative to the largest magnitude of the float64 reference, per (dtype, tensor cores):
# those of the GPU parity tests, float32 FMA loosened to 1e-4 for up to 64 x 64 channels x 3 x 3 taps.
_SELF_CHECK_TOLERANCE = {(torch.float32, False): 1e-4, (torch.float32, True): 5e-3,
                         (torch.float16, True): 1e-2, (torch.float16, False): 1e-2,
                         (torch.bfloat16, True): 5e-2, (torch.bfloat16, False): 5e-2,
                         (torch.float64, False): 1e-9}
_PROBE_CHANNELS = 64

def _kernel_trusted(x, weight, styles, backend, args):
    O, I, kh, kw = weight.shape
    rows = 'none' if styles.ndim == 2 else ('1' if styles.shape[1] == 1 else ('O' if styles.shape[1] == O else '>O'))
    tensor_cores = _tensor_cores_for(x)
    config = dict(up=args['up'], kernel=f'{kh}x{kw}', padding=args['padding'], demodulate=bool(args['demodulate']),
                  flip_weight=bool(args['flip_weight']), noise=args['noise'] is not None, style_rows=rows,
                  few_out_channels=O <= 16, tensor_cores=tensor_cores)
    return self_check.trusted('modulated_conv2d', x.dtype, config,
                              lambda: _self_check_case(x, weight, styles, backend, args, rows, tensor_cores))

def _self_check_case(x, weight, styles, backend, args, rows, tensor_cores):
    """A random layer like this one: 2 samples, at most 64 in/out channels, the same image size."""
    O, I, kh, kw = weight.shape
    N, H, W = min(x.shape[0], 2), x.shape[2], x.shape[3]
    O2, I2 = min(O, _PROBE_CHANNELS), min(I, _PROBE_CHANNELS)
    gen = torch.Generator(device=x.device).manual_seed(0)
    def rnd(*shape, dtype=torch.float32, shift=0.0):
        return (torch.randn(shape, generator=gen, device=x.device) + shift).to(dtype)
    style_shape = {'none': [N, I2], '1': [N, 1, I2], 'O': [N, O2, I2], '>O': [N, O2 + 1, I2]}[rows]
    inputs = [rnd(N, I2, H, W, dtype=x.dtype), rnd(O2, I2, kh, kw, dtype=weight.dtype),
              rnd(*style_shape, dtype=styles.dtype, shift=1.0)]
    static = dict(args)
    with_noise = static.pop('noise') is not None
    if with_noise:
        out = fused_modulated_conv2d(inputs[0].detach(), inputs[1].detach(), inputs[2].detach(), backend=backend,
                                     **static)
        inputs.append(rnd(N, 1, out.shape[2], out.shape[3], dtype=x.dtype))
    def kernel(xx, ww, ss, *noise):
        return fused_modulated_conv2d(xx, ww, ss, noise=noise[0] if noise else None, backend=backend, **static)
    def reference(xx, ww, ss, *noise):
        return modulated_conv2d_ref(x=xx, weight=ww, styles=ss, noise=noise[0] if noise else None,
                                    fused_modconv=True, **static)
    tolerance = _SELF_CHECK_TOLERANCE.get((x.dtype, tensor_cores), 1e-2)
    return self_check.Case(inputs=inputs, kernel=kernel, reference=reference, tolerance=tolerance)

#----------------------------------------------------------------------------
