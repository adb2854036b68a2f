"""Fused multiply-add `a * b + c` whose gradients are summed back to each input's shape."""

import torch

#----------------------------------------------------------------------------

def fma(a, b, c):
    """`a * b + c` for broadcast-compatible tensors; same result as `torch.addcmul(c, a, b)`."""
    return _FusedMultiplyAdd.apply(a, b, c)

#----------------------------------------------------------------------------

class _FusedMultiplyAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, c):
        ctx.save_for_backward(a, b)
        ctx.c_shape = c.shape
        return torch.addcmul(c, a, b)

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved_tensors
        da = db = dc = None
        if ctx.needs_input_grad[0]:
            da = _sum_to_shape(dout * b, a.shape)
        if ctx.needs_input_grad[1]:
            db = _sum_to_shape(dout * a, b.shape)
        if ctx.needs_input_grad[2]:
            dc = _sum_to_shape(dout, ctx.c_shape)
        return da, db, dc

def _sum_to_shape(x, shape):
    """Sum a broadcast result `x` down to `shape` (the inverse of broadcasting)."""
    shape = torch.Size(shape)
    lead = x.ndim - len(shape)
    dims = [i for i in range(x.ndim) if i < lead or (shape[i - lead] == 1 and x.shape[i] != 1)]
    if dims:
        x = x.sum(dim=dims, keepdim=True)
    if lead:
        x = x.reshape(shape)
    assert x.shape == shape, (x.shape, shape)
    return x

#----------------------------------------------------------------------------
