"""conv2d / conv_transpose2d with the `no_weight_gradients` switch of StyleGAN2-ADA.

PyTorch 2.x differentiates convolutions to any order natively and computes the
weight gradient only when something asks for it, so these are thin wrappers over
`torch.nn.functional`. `no_weight_gradients()` is kept as a plain switch for code
that toggles it (e.g. around the R1 / path-length gradient computations).
"""

import contextlib

import torch
import torch.nn.functional as F

#----------------------------------------------------------------------------

enabled = True                      # Kept for API compatibility; no effect.
weight_gradients_disabled = False   # True inside `no_weight_gradients()`.

@contextlib.contextmanager
def no_weight_gradients(disable=True):
    """Context in which `weight_gradients_disabled` is set (when `disable`)."""
    global weight_gradients_disabled
    old = weight_gradients_disabled
    if disable:
        weight_gradients_disabled = True
    try:
        yield
    finally:
        weight_gradients_disabled = old

#----------------------------------------------------------------------------

def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """`[N, I, H, W]` * `[O, I/groups, kh, kw]` -> `[N, O, H', W']` (cross-correlation)."""
    return F.conv2d(input, weight, bias=bias, stride=stride, padding=padding, dilation=dilation, groups=groups)

def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """`[N, I, H, W]` with weight `[I, O/groups, kh, kw]` -> `[N, O, H', W']`."""
    return F.conv_transpose2d(input, weight, bias=bias, stride=stride, padding=padding,
                              output_padding=output_padding, groups=groups, dilation=dilation)

#----------------------------------------------------------------------------
