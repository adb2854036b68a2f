"""Fused bias + activation + gain + clamp: `clamp(act(x + b) * gain, -clamp, clamp)`.

`impl='ref'` is pure PyTorch; `impl='cuda'` runs the elementwise kernel in
`bias_act.cu` for the forward pass, the gradient and the second-order gradient.
"""

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from .. import custom_ops

#----------------------------------------------------------------------------

def _act(func, def_alpha, def_gain, cuda_idx, ref, has_2nd_grad):
    return SimpleNamespace(func=func, def_alpha=def_alpha, def_gain=def_gain, cuda_idx=cuda_idx,
                           ref=ref, has_2nd_grad=has_2nd_grad)

# ref: which saved tensor the CUDA gradient is computed from ('x' = input + bias,
# 'y' = output); has_2nd_grad: whether the derivative depends on x (f'' != 0).
activation_funcs = {
    'linear':   _act(lambda x, **_: x,                          0,   1,            1, '',  False),
    'relu':     _act(lambda x, **_: F.relu(x),                  0,   math.sqrt(2), 2, 'y', False),
    'lrelu':    _act(lambda x, alpha, **_: F.leaky_relu(x, alpha), 0.2, math.sqrt(2), 3, 'y', False),
    'tanh':     _act(lambda x, **_: torch.tanh(x),              0,   1,            4, 'y', True),
    'sigmoid':  _act(lambda x, **_: torch.sigmoid(x),           0,   1,            5, 'y', True),
    'elu':      _act(lambda x, **_: F.elu(x),                   0,   1,            6, 'y', True),
    'selu':     _act(lambda x, **_: F.selu(x),                  0,   1,            7, 'y', True),
    'softplus': _act(lambda x, **_: F.softplus(x),              0,   1,            8, 'y', True),
    'swish':    _act(lambda x, **_: torch.sigmoid(x) * x,       0,   math.sqrt(2), 9, 'x', True),
}

_plugin = custom_ops.LazyPlugin('bias_act_plugin', sources=['bias_act.cpp', 'bias_act.cu'],
                                headers=['bias_act.h'])

def _resolve(act, alpha, gain, clamp):
    if act not in activation_funcs:
        raise ValueError(f'bias_act: unknown activation {act!r}; one of {sorted(activation_funcs)}')
    spec = activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)
    return spec, alpha, gain, clamp

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
    assert isinstance(x, torch.Tensor)
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    if _plugin.use_cuda(x, impl):
        return _cuda_function(dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp).apply(x, b)
    return _bias_act_ref(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)

def _bias_act_ref(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None):
    """Pure-PyTorch bias_act."""
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    if b is not None:
        assert isinstance(b, torch.Tensor) and b.ndim == 1
        assert 0 <= dim < x.ndim and b.shape[0] == x.shape[dim]
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha=alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x

#----------------------------------------------------------------------------

def _init():
    """Build the CUDA plugin now; True on success, False (after one warning) otherwise."""
    return _plugin.try_load()

_cuda_functions = dict()
_empty = dict()  # device -> empty tensor standing for "not given" in the plugin calls

def _none(like):
    key = (like.device, like.dtype)
    if key not in _empty:
        _empty[key] = torch.empty([0], device=like.device, dtype=like.dtype)
    return _empty[key]

def _memory_format(x):
    if x.ndim > 2 and x.stride()[1] == 1 and x.shape[1] > 1:
        return torch.channels_last if x.ndim == 4 else torch.contiguous_format
    return torch.contiguous_format

def _cuda_function(dim=1, act='linear', alpha=0.0, gain=1.0, clamp=-1.0):
    """autograd.Function class (forward + backward + double backward) for one static config."""
    spec = activation_funcs[act]
    key = (dim, act, alpha, gain, clamp)
    if key in _cuda_functions:
        return _cuda_functions[key]
    trivial = (act == 'linear' and gain == 1 and clamp < 0)
    need_y = 'y' in spec.ref or clamp >= 0       # the clamp mask is read from y
    need_x = 'x' in spec.ref or spec.has_2nd_grad

    def run(x, b, xref, yref, dy, grad):
        # grad 0: y = act(x + b); 1: dx = x * act'(xref + b); 2: x * dy * act''(xref + b).
        return _plugin.load().bias_act(x, b, xref, yref, dy, grad, dim, spec.cuda_idx, alpha, gain, clamp)

    class BiasActCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b):
            ctx.memory_format = _memory_format(x)
            x = x.contiguous(memory_format=ctx.memory_format)
            b = b.contiguous() if b is not None else _none(x)
            y = x
            if not trivial or b.numel() > 0:
                y = run(x, b, _none(x), _none(x), _none(x), 0)
            ctx.save_for_backward(x if need_x else _none(x), b if need_x else _none(x),
                                  y if need_y else _none(x))
            ctx.has_bias = b.numel() > 0
            return y

        @staticmethod
        def backward(ctx, dy):
            dy = dy.contiguous(memory_format=ctx.memory_format)
            x, b, y = ctx.saved_tensors
            dx = db = None
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                dx = dy if trivial else BiasActCudaGrad.apply(dy, x, b, y)
            if ctx.needs_input_grad[1]:
                db = dx.sum([i for i in range(dx.ndim) if i != dim])
            return dx, db

    class BiasActCudaGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, dy, x, b, y):
            ctx.memory_format = _memory_format(dy)
            dy = dy.contiguous(memory_format=ctx.memory_format)
            dx = run(dy, b, x, y, _none(dy), 1)
            ctx.save_for_backward(dy if spec.has_2nd_grad else _none(dy), x, b, y)
            return dx

        @staticmethod
        def backward(ctx, d_dx):
            d_dx = d_dx.contiguous(memory_format=ctx.memory_format)
            dy, x, b, y = ctx.saved_tensors
            d_dy = d_x = d_b = None
            if ctx.needs_input_grad[0]:
                d_dy = BiasActCudaGrad.apply(d_dx, x, b, y)
            if spec.has_2nd_grad and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
                d_x = run(d_dx, b, x, y, dy, 2)
            if spec.has_2nd_grad and ctx.needs_input_grad[2]:
                d_b = d_x.sum([i for i in range(d_x.ndim) if i != dim])
            # y only carries the clamp mask / act'(x) already covered through x.
            return d_dy, d_x, d_b, None

    _cuda_functions[key] = BiasActCuda
    return BiasActCuda

#----------------------------------------------------------------------------
