"""Convolutions with the `no_weight_gradients()` switch that StyleGAN2-ADA's loss code toggles.

stylegan2-ada-pytorch needed its own convolution ops for second-order gradients and for
skipping the weight gradient in the R1 / path-length passes. PyTorch 2 does both by itself:
it differentiates convolutions to any order and computes a weight gradient only when
something asks for it. So `conv2d` and `conv_transpose2d` are `torch.nn.functional`'s, with
the same positional and keyword arguments, and `no_weight_gradients()` only records that it
is active (`weight_gradients_disabled`), for code that reads it.
"""

from contextlib import contextmanager

import torch.nn.functional as F

#----------------------------------------------------------------------------

enabled = True   # Kept for callers that set it; no effect.

# conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
#   `[N, I, H, W]` correlated with `[O, I / groups, kh, kw]` -> `[N, O, H', W']`.
conv2d = F.conv2d

# conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
#   `[N, I, H, W]` with weight `[I, O / groups, kh, kw]` -> `[N, O, H', W']`.
conv_transpose2d = F.conv_transpose2d

#----------------------------------------------------------------------------

_depth = [0]   # number of active `no_weight_gradients()` contexts that disable

def __getattr__(name):
    if name == 'weight_gradients_disabled':
        return _depth[0] > 0
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

@contextmanager
def no_weight_gradients(disable=True):
    """While active (and `disable` is true), `weight_gradients_disabled` reads True. Nests."""
    step = 1 if disable else 0
    _depth[0] += step
    try:
        yield
    finally:
        _depth[0] -= step

#----------------------------------------------------------------------------
