"""Arithmetic of whatever runs under a context, counted from tensor shapes, by class of operation.

    with FlopCounter() as count:
        loss.backward()
    count.flops          # {'conv forward': 3.2e10, 'conv grad weight': ..., 'matmul': ...}, FLOPs

A FLOP here is half a multiply-add (2 per product, `torch.utils.flop_counter`'s convention), counted for
every tap of every kernel position as if the borders were not padded. Counted:

  conv forward       `aten.convolution`, also where autograd's double backward of a convolution calls it;
                     `2 * N * prod(weight.shape) * P`, P = output positions (input positions when transposed),
                     which holds for grouped convolutions too (weight `[O, I / groups, k, k]`).
  conv grad input    the two halves of `aten.convolution_backward`: each is the forward's product set in
  conv grad weight   another order, so each costs what the forward costs. (torch's own formula counts a
                     grouped convolution's weight gradient `groups` times over.)
  matmul             mm, addmm, bmm, baddbmm (dense layers, the affine styles, the mapping network).
  other              anything else `torch.utils.flop_counter` has a formula for.

The reference upfirdn2d runs its FIR filters as depthwise convolutions, so they count as convolutions
(a few percent of a StyleGAN2 layer). Not counted: elementwise work, reductions and copies, i.e. what is
limited by memory traffic rather than arithmetic, which is why a time ratio can lie on either side of
the FLOP ratio.
"""

import collections
import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten
MATMUL_OPS = (aten.mm, aten.addmm, aten.bmm, aten.baddbmm)
CLASSES = ('conv forward', 'conv grad input', 'conv grad weight', 'matmul', 'other')


def conv_flops(weight_shape, batch, positions):
    """FLOPs of one convolution: every weight element meets `batch * positions` inputs once (2 FLOPs each)."""
    return 2 * math.prod(weight_shape) * batch * positions


class FlopCounter(TorchDispatchMode):
    """Dispatch mode that adds up the FLOPs of the operations below autograd, `flops[class]`."""

    def __init__(self):
        super().__init__()
        self.flops = collections.Counter()

    @property
    def total(self):
        return sum(self.flops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet is aten.convolution:
            x, weight, transposed = args[0], args[1], args[6]
            spatial = (x.shape if transposed else out.shape)[2:]
            self.flops['conv forward'] += conv_flops(weight.shape, x.shape[0], math.prod(spatial))
        elif packet is aten.convolution_backward:
            grad_out, x, weight, transposed, mask = args[0], args[1], args[2], args[7], args[10]
            spatial = (x.shape if transposed else grad_out.shape)[2:]
            one = conv_flops(weight.shape, x.shape[0], math.prod(spatial))
            self.flops['conv grad input'] += one if mask[0] else 0
            self.flops['conv grad weight'] += one if mask[1] else 0
        elif packet in flop_registry:
            key = 'matmul' if packet in MATMUL_OPS else 'other'
            self.flops[key] += flop_registry[packet](*args, **kwargs, out_val=out)
        return out
