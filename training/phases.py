"""Optimisation phases of StyleGAN2 training and the running averages updated after each step.

A phase is one loss term optimised on its own schedule ('Gmain' every step, 'Greg' every G_reg_interval steps,
...). Lazy regularization (Karras et al. 2020, appendix B) runs a regularizer every k steps with gain k and gives the
network's Adam `lr * k/(k+1)` and `beta ** (k/(k+1))`, so that the main and the regularization steps together move
as one un-lazy optimizer would. The generator average G_ema has a half-life in images; ADA (Karras et al. 2020,
"Training GANs with Limited Data") steers the augmentation probability p from the sign of D's real logits.
"""

import dataclasses
from contextlib import contextmanager

import numpy as np
import torch

import dnnlib

#----------------------------------------------------------------------------

@dataclasses.dataclass
class Phase:
    name: str                       # Phase name passed to `loss.accumulate_gradients`.
    module: torch.nn.Module         # The network it trains (G or D).
    opt: torch.optim.Optimizer      # Shared by the main and the reg phase of one network.
    interval: int                   # Runs when batch_idx % interval == 0.


def _adam_for(module, opt_kwargs, ratio):
    """The optimizer of `opt_kwargs` (class_name + arguments) with lr and betas rescaled for lazy regularization."""
    kwargs = dict(opt_kwargs)
    if ratio != 1:
        kwargs['lr'] = kwargs['lr'] * ratio
        kwargs['betas'] = [b ** ratio for b in kwargs['betas']]
    return dnnlib.util.construct_class_by_name(module.parameters(), **kwargs)


def setup_phases(G, D, G_opt_kwargs, D_opt_kwargs, G_reg_interval=4, D_reg_interval=16):
    """[Gmain, Greg, Dmain, Dreg] with lazy regularization, or [Gboth, Dboth] for a network whose interval is None."""
    phases = []
    for letter, module, opt_kwargs, every in (('G', G, G_opt_kwargs, G_reg_interval),
                                              ('D', D, D_opt_kwargs, D_reg_interval)):
        if every is None:
            phases.append(Phase(f'{letter}both', module, _adam_for(module, opt_kwargs, 1), 1))
        else:
            opt = _adam_for(module, opt_kwargs, every / (every + 1))
            phases.extend([Phase(f'{letter}main', module, opt, 1), Phase(f'{letter}reg', module, opt, every)])
    return phases


def optimizers(phases):
    """{'G': opt, 'D': opt}: each distinct optimizer once, keyed by the network letter of its phases."""
    found = {}
    for phase in phases:
        found.setdefault(phase.name[0], phase.opt)
    return found

#----------------------------------------------------------------------------
# One optimizer step of one phase.

def all_finite(tensors):
    """True when no element of any tensor is NaN or Inf (one host synchronisation)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def reduce_gradients_(module, world_size):
    """Average the gradients of `module` over ranks (one flat all_reduce, no DDP) and check them.

    Returns False if any gradient element is NaN or Inf (identical on every rank after the all_reduce),
    in which case the caller must skip the optimizer step.
    """
    with_grad = [t for t in module.parameters() if t.grad is not None]
    if not with_grad:
        return True
    flat = torch.cat([t.grad.reshape(-1) for t in with_grad])
    if world_size > 1:
        torch.distributed.all_reduce(flat)
        flat /= world_size
        offset = 0
        for t in with_grad:
            t.grad.copy_(flat[offset:offset + t.numel()].view_as(t.grad))
            offset += t.numel()
    return bool(torch.isfinite(flat).all())


def _set_trainable(module, flag):
    module.requires_grad_(flag)


@contextmanager
def _training(module):
    """Let gradients reach `module` inside the block only (both networks are frozen between phases)."""
    _set_trainable(module, True)
    try:
        yield
    finally:
        _set_trainable(module, False)


def _drop_grads(opt):
    for group in opt.param_groups:
        for tensor in group['params']:
            tensor.grad = None


def run_phase(phase, loss, real_img, real_c, gen_z, gen_c, cur_nimg, world_size=1):
    """Accumulate `phase` over rounds (lists of per-round tensors), average over ranks, then step.

    Each round's gain is interval / num_rounds, so the gradient is the mean over this rank's batch whatever
    `batch_gpu` is, and after the all_reduce the mean over the global batch. (stylegan2-ada-pytorch sums the
    rounds instead; with Adam this only rescales epsilon.) Returns False when the step was skipped because a
    gradient was not finite: the weights and the optimizer state are then left untouched.
    """
    rounds = list(zip(real_img, real_c, gen_z, gen_c))
    gain = phase.interval / len(rounds)
    _drop_grads(phase.opt)
    with _training(phase.module):
        for img, c, z, zc in rounds:
            loss.accumulate_gradients(phase=phase.name, real_img=img, real_c=c, gen_z=z, gen_c=zc, gain=gain,
                                      cur_nimg=cur_nimg)
    finite = reduce_gradients_(phase.module, world_size)
    if finite:
        phase.opt.step()
    _drop_grads(phase.opt)
    return finite

#----------------------------------------------------------------------------
# The generator's moving average.

def ema_beta(cur_nimg, batch_size, ema_kimg, ema_rampup):
    """Per-step decay of G_ema: half-life `ema_kimg` thousand images, so `beta = 0.5 ** (batch_size / half_life)`.

    With ema_rampup the half-life is at most `ema_rampup * cur_nimg` images (a short memory early in training).
    """
    full = ema_kimg * 1000
    half_life = full if ema_rampup is None else min(full, ema_rampup * cur_nimg)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(G_ema, G, beta):
    """G_ema <- G + beta * (G_ema - G) for parameters; buffers (e.g. w_avg) are copied.

    Returns False, leaving G_ema untouched, when a parameter or buffer of G is not finite: one bad step would
    otherwise stay in G_ema (and its snapshots) for many half-lives.
    """
    sources = list(G.parameters()) + [b for b in G.buffers() if b.is_floating_point()]
    if not all_finite(sources):
        return False
    for avg, current in zip(G_ema.parameters(), G.parameters()):
        avg.copy_(current.lerp(avg, beta))
    for avg, current in zip(G_ema.buffers(), G.buffers()):
        avg.copy_(current)
    return True

#----------------------------------------------------------------------------
# Adaptive discriminator augmentation.

def ada_step(rt, ada_target, batch_size, ada_interval, ada_kimg):
    """Signed change of p after `ada_interval` steps:
    `sign(rt - target) * batch_size * ada_interval / (ada_kimg * 1000)`.

    rt: mean of sign(D(real logits)) over those steps, ADA's overfitting gauge; p moves from 0 to 1 in ada_kimg
    thousand images while rt stays above the target, and back down as fast below it.
    """
    return float(np.sign(rt - ada_target)) * (batch_size * ada_interval) / (ada_kimg * 1000)


@torch.no_grad()
def adjust_augment_p(augment_pipe, rt, ada_target, batch_size, ada_interval, ada_kimg):
    """p <- max(p + ada_step(...), 0). Returns False (p unchanged) when the new p is not finite (rt NaN or Inf)."""
    new_p = (augment_pipe.p + ada_step(rt, ada_target, batch_size, ada_interval, ada_kimg)).clamp(min=0)
    if not bool(torch.isfinite(new_p)):
        return False
    augment_pipe.p.copy_(new_p)
    return True

#----------------------------------------------------------------------------
