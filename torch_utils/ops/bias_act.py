"""Bias, activation, gain and clamp in one op: `y = clamp(act(x + b) * gain, -clamp, clamp)`.

The bias `b [C]` runs along dimension `dim` of `x`. The CUDA kernel (`bias_act.cu`) computes
the forward pass in one elementwise sweep, and its derivatives with two more modes:

- mode 1, first derivative:  `dx = dy * gain * act'(v)` with `v = x + b`, zero where the
  output was clamped;
- mode 2, second derivative: `dy * ddx * gain * act''(v)`, for the gradient of a gradient
  (R1 regularisation differentiates the discriminator's gradient).

`act'` and `act''` are evaluated from whichever is cheaper to keep: the output `y` (for
activations whose derivative is a function of the output, e.g. `tanh' = 1 - tanh^2`) or the
pre-activation `v` (swish). `impl='ref'` is plain PyTorch; `impl=None` picks the kernel for
CUDA tensors when it builds and, unless disabled, after it has passed its first-use
self-check (`torch_utils.ops.self_check`) for the configuration.
"""

import dataclasses
import math
from typing import Callable

import torch
import torch.nn.functional as F

from .. import custom_ops
from . import self_check

#----------------------------------------------------------------------------
# The activations. `kernel_id` is the activation code of bias_act.h.

@dataclasses.dataclass(frozen=True)
class Activation:
    """One activation: `func(v, alpha)`, its defaults and how the kernel differentiates it.

    grad_from: what the kernel's derivative reads, '' (constant derivative), 'y' (the output)
               or 'x' (the pre-activation).
    curved:    True when `act''` is not identically zero (second-order mode needed).
    """
    name: str
    func: Callable
    kernel_id: int
    def_alpha: float
    def_gain: float
    grad_from: str
    curved: bool

    # Field names of the table that callers (and the kernel tests) read.
    @property
    def cuda_idx(self):
        return self.kernel_id

    @property
    def ref(self):
        return self.grad_from

    @property
    def has_2nd_grad(self):
        return self.curved

def _identity(v, alpha):
    return v

def _swish(v, alpha):
    return torch.sigmoid(v) * v

_SQRT2 = math.sqrt(2)
activation_funcs = {a.name: a for a in [
    Activation('linear',   _identity,                             1, 0,   1,      '',  False),
    Activation('relu',     lambda v, alpha: F.relu(v),            2, 0,   _SQRT2, 'y', False),
    Activation('lrelu',    lambda v, alpha: F.leaky_relu(v, alpha), 3, 0.2, _SQRT2, 'y', False),
    Activation('tanh',     lambda v, alpha: torch.tanh(v),        4, 0,   1,      'y', True),
    Activation('sigmoid',  lambda v, alpha: torch.sigmoid(v),     5, 0,   1,      'y', True),
    Activation('elu',      lambda v, alpha: F.elu(v),             6, 0,   1,      'y', True),
    Activation('selu',     lambda v, alpha: F.selu(v),            7, 0,   1,      'y', True),
    Activation('softplus', lambda v, alpha: F.softplus(v),        8, 0,   1,      'y', True),
    Activation('swish',    _swish,                                9, 0,   _SQRT2, 'x', True),
]}

def _settings(act, alpha, gain, clamp):
    """-> (Activation, alpha, gain, clamp) as floats, None replaced by the defaults (clamp -1 = off)."""
    spec = activation_funcs.get(act)
    if spec is None:
        raise ValueError(f'bias_act: unknown activation {act!r}; one of {sorted(activation_funcs)}')
    alpha = spec.def_alpha if alpha is None else alpha
    gain = spec.def_gain if gain is None else gain
    clamp = -1 if clamp is None else clamp
    return spec, float(alpha), float(gain), float(clamp)

#----------------------------------------------------------------------------

def bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None, impl=None):
    """Add a bias along `dim`, apply an activation, scale by `gain`, clamp.

    Args:
        x:     Input of any shape, e.g. `[N, C, H, W]` or `[N, C]`.
        b:     Bias `[x.shape[dim]]`, or None.
        dim:   Dimension of `x` the bias runs along.
        act:   'linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu', 'selu', 'softplus' or 'swish'.
        alpha: Shape parameter (negative slope of lrelu); None = the activation's default.
        gain:  Output scale; None = the activation's default (sqrt(2) for relu/lrelu/swish).
        clamp: Clamp the output to [-clamp, clamp] after the gain; None = no clamping.
        impl:  None (CUDA if possible), 'ref' or 'cuda'.

    Returns a tensor of the shape and dtype of `x`.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError('bias_act: x must be a tensor')
    spec, alpha, gain, clamp = _settings(act, alpha, gain, clamp)
    if _plugin.use_cuda(x, impl):
        kernel = _cuda_function(dim=dim, act=spec.name, alpha=alpha, gain=gain, clamp=clamp)
        if impl == 'cuda' or _kernel_trusted(x, b, kernel):
            return kernel.apply(x, b)
    return _bias_act_ref(x, b, dim=dim, act=spec.name, alpha=alpha, gain=gain, clamp=clamp)

def _bias_act_ref(x, b=None, dim=1, act='linear',
                  alpha=None, gain=None, clamp=None):
    """bias_act from PyTorch ops (differentiable to any order by autograd)."""
    spec, alpha, gain, clamp = _settings(act, alpha, gain, clamp)
    if b is not None:
        if not isinstance(b, torch.Tensor) or b.ndim != 1 or not 0 <= dim < x.ndim or len(b) != x.shape[dim]:
            raise ValueError(f'bias_act: b must be a tensor [{x.shape[dim] if 0 <= dim < x.ndim else "?"}] '
                             f'along dim {dim} of x {list(x.shape)}')
        along_dim = [1] * x.ndim
        along_dim[dim] = -1
        x = x + b.reshape(along_dim)
    y = spec.func(x, alpha)
    if gain != 1:
        y = y * gain
    if clamp >= 0:
        y = y.clamp(-clamp, clamp)
    return y

#----------------------------------------------------------------------------
# CUDA implementation.

_plugin = custom_ops.LazyPlugin('bias_act_plugin', sources=['bias_act.cpp', 'bias_act.cu'],
                                headers=['bias_act.h'])

def _init():
    """Build the CUDA plugin now; True on success, False (after one warning) otherwise."""
    return _plugin.try_load()

_placeholders = {}   # (device, dtype) -> empty tensor, the kernel's "not given"

def _absent(like):
    key = (like.device, like.dtype)
    if key not in _placeholders:
        _placeholders[key] = like.new_empty([0])
    return _placeholders[key]

def _layout(t):
    """The memory format the kernel works in: channels-last for such 4-D tensors, else contiguous."""
    if t.ndim == 4 and t.shape[1] > 1 and t.stride(1) == 1:
        return torch.channels_last
    return torch.contiguous_format

def _sum_except(t, dim):
    return t.sum([d for d in range(t.ndim) if d != dim])

class _KernelConfig:
    """Static arguments of the kernel: dim, activation, alpha, gain, clamp (-1 = off)."""

    def __init__(self, dim, spec, alpha, gain, clamp):
        self.dim, self.spec, self.alpha, self.gain, self.clamp = dim, spec, alpha, gain, clamp
        # linear, gain 1, no clamp: the op is `x + b`, and the identity without a bias.
        self.identity = (spec.name == 'linear' and gain == 1 and clamp < 0)
        self.keep_y = spec.grad_from == 'y' or clamp >= 0   # the clamp mask is read from y
        self.keep_x = spec.grad_from == 'x' or spec.curved

    def run(self, mode, values, b, x, y, dy):
        """Kernel call: mode 0 act(values + b); 1 values * act'; 2 values * dy * act'' (see module doc)."""
        return _plugin.load().bias_act(values, b, x, y, dy, mode, self.dim, self.spec.kernel_id,
                                       self.alpha, self.gain, self.clamp)

    def apply(self, x, b):
        return _BiasActCuda.apply(x, b, self)

class _BiasActCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, cfg):
        ctx.layout = _layout(x)
        x = x.contiguous(memory_format=ctx.layout)
        none = _absent(x)
        b = none if b is None else b.contiguous()
        y = x if (cfg.identity and b.numel() == 0) else cfg.run(0, x, b, none, none, none)
        ctx.cfg = cfg
        ctx.save_for_backward(x if cfg.keep_x else none, b if cfg.keep_x else none, y if cfg.keep_y else none)
        return y

    @staticmethod
    def backward(ctx, dy):
        cfg = ctx.cfg
        x, b, y = ctx.saved_tensors   # x, b: when keep_x; y: when keep_y
        need_x, need_b = ctx.needs_input_grad[:2]
        dx = db = None
        if need_x or need_b:
            dy = dy.contiguous(memory_format=ctx.layout)
            dx = dy if cfg.identity else _BiasActGradCuda.apply(dy, x, b, y, cfg)
        if need_b:
            db = _sum_except(dx, cfg.dim)
        return dx, db, None

class _BiasActGradCuda(torch.autograd.Function):
    """`dx = dy * gain * act'(v)` (masked by the clamp) as a differentiable op of dy, x and b."""

    @staticmethod
    def forward(ctx, dy, x, b, y, cfg):
        ctx.layout = _layout(dy)
        dy = dy.contiguous(memory_format=ctx.layout)
        dx = cfg.run(1, dy, b, x, y, _absent(dy))
        ctx.cfg = cfg
        ctx.save_for_backward(dy if cfg.spec.curved else _absent(dy), x, b, y)
        return dx

    @staticmethod
    def backward(ctx, ddx):
        cfg = ctx.cfg
        dy, x, b, y = ctx.saved_tensors   # dy only for curved activations
        ddx = ddx.contiguous(memory_format=ctx.layout)
        need_dy, need_x, need_b = ctx.needs_input_grad[:3]
        # dx is linear in dy, so its derivative wrt dy is the same op applied to ddx.
        d_dy = _BiasActGradCuda.apply(ddx, x, b, y, cfg) if need_dy else None
        d_x = d_b = None
        if cfg.spec.curved and (need_x or need_b):
            # wrt v = x + b: dy * ddx * gain * act''(v). y only carries the clamp mask.
            d_x = cfg.run(2, ddx, b, x, y, dy)
            d_b = _sum_except(d_x, cfg.dim) if need_b else None
        return d_dy, d_x, d_b, None, None

def _cuda_function(dim=1, act='linear', alpha=0.0, gain=1.0, clamp=-1.0):
    """The CUDA op for one configuration: `.apply(x, b)` -> bias_act(x, b, ...)."""
    spec, alpha, gain, clamp = _settings(act, alpha, gain, clamp)
    return _KernelConfig(dim, spec, alpha, gain, clamp)

#----------------------------------------------------------------------------
# First-use self-check of the kernel.

def _kernel_trusted(x, b, cfg):
    config = dict(act=cfg.spec.name, dim=cfg.dim, ndim=x.ndim, alpha=cfg.alpha, gain=cfg.gain, clamp=cfg.clamp,
                  bias=b is not None, channels_last=_layout(x) == torch.channels_last)
    return self_check.trusted('bias_act', x.dtype, config, lambda: _self_check_case(x, b, cfg, config))

def _self_check_case(x, b, cfg, config):
    """Random `x` (each dimension at most 8 long, values ~ N(0, 2^2)) and bias, in the layout of `x`."""
    gen = torch.Generator(device=x.device).manual_seed(0)
    shape = [min(s, 8) for s in x.shape]
    probe = (torch.randn(shape, generator=gen, device=x.device) * 2).to(x.dtype)
    if config['channels_last']:
        probe = probe.contiguous(memory_format=torch.channels_last)
    inputs = [probe]
    if b is not None:
        inputs.append(torch.randn([shape[cfg.dim]], generator=gen, device=x.device).to(b.dtype))
    settings = dict(dim=cfg.dim, act=cfg.spec.name, alpha=cfg.alpha, gain=cfg.gain, clamp=cfg.clamp)
    return self_check.Case(inputs=inputs,
                           kernel=lambda t, *bias: cfg.apply(t, bias[0] if bias else None),
                           reference=lambda t, *bias: _bias_act_ref(t, bias[0] if bias else None, **settings))

#----------------------------------------------------------------------------
