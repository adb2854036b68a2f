"""Fused multiply-add `a * b + c` for broadcast-compatible tensors.

`torch.addcmul` computes it in one pass without the intermediate `a * b`, and its autograd
formula reduces each gradient over the broadcast dimensions back to its input's shape
(`dL/da = sum(dL/dy * b)`, `dL/db = sum(dL/dy * a)`, `dL/dc = sum(dL/dy)`), to any order.
"""

import torch

#----------------------------------------------------------------------------

def fma(a, b, c):
    """`a * b + c`; the result has the broadcast shape of the three inputs."""
    return torch.addcmul(c, a, b)

#----------------------------------------------------------------------------
