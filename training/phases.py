"""Optimisation phases of StyleGAN2 training (Karras et al. 2020, stylegan2-ada-pytorch's phase list): lazy
regularization, gradients averaged over accumulation rounds and ranks, a non-finite gradient guard, the
generator EMA and the ADA probability update."""

import dataclasses

import numpy as np
import torch

import dnnlib

#----------------------------------------------------------------------------
# One optimizer step of one loss term ('Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg' or 'Dboth').

@dataclasses.dataclass
class Phase:
    name: str                       # Phase name passed to `loss.accumulate_gradients`.
    module: torch.nn.Module         # The network it trains (G or D).
    opt: torch.optim.Optimizer      # Shared by the main and the reg phase of one network.
    interval: int                   # Runs when batch_idx % interval == 0.


def setup_phases(G, D, G_opt_kwargs, D_opt_kwargs, G_reg_interval=4, D_reg_interval=16):
    """[Gmain, Greg, Dmain, Dreg] with lazy regularization, or [Gboth, Dboth] where an interval is None.

    Lazy regularization runs the regularizer every `interval` minibatches; the optimizer's learning rate and
    betas are rescaled by mb_ratio = interval / (interval + 1) (StyleGAN2 appendix B, as stylegan2-ada-pytorch).
    """
    phases = []
    for name, module, opt_kwargs, reg_interval in [('G', G, G_opt_kwargs, G_reg_interval),
                                                   ('D', D, D_opt_kwargs, D_reg_interval)]:
        opt_kwargs = dnnlib.EasyDict(opt_kwargs)
        if reg_interval is None:
            opt = dnnlib.util.construct_class_by_name(module.parameters(), **opt_kwargs)
            phases.append(Phase(name + 'both', module, opt, 1))
            continue
        mb_ratio = reg_interval / (reg_interval + 1)
        opt_kwargs.lr = opt_kwargs.lr * mb_ratio
        opt_kwargs.betas = [beta ** mb_ratio for beta in opt_kwargs.betas]
        opt = dnnlib.util.construct_class_by_name(module.parameters(), **opt_kwargs)
        phases += [Phase(name + 'main', module, opt, 1), Phase(name + 'reg', module, opt, reg_interval)]
    return phases


def optimizers(phases):
    """{'G': opt, 'D': opt}: each distinct optimizer once, keyed by the network letter of its phases."""
    opts = {}
    for phase in phases:
        opts.setdefault(phase.name[0], phase.opt)
    return opts

#----------------------------------------------------------------------------

def reduce_gradients_(module, world_size):
    """Average the gradients of `module` over ranks (one flat all_reduce, no DDP) and check them.

    Returns False if any gradient element is NaN or Inf (identical on every rank after the all_reduce),
    in which case the caller must skip the optimizer step.
    """
    params = [param for param in module.parameters() if param.grad is not None]
    if not params:
        return True
    flat = torch.cat([param.grad.flatten() for param in params])
    if world_size > 1:
        torch.distributed.all_reduce(flat)
        flat /= world_size
        for param, grad in zip(params, flat.split([param.numel() for param in params])):
            param.grad.copy_(grad.reshape(param.shape))
    return bool(torch.isfinite(flat).all())


def run_phase(phase, loss, real_img, real_c, gen_z, gen_c, cur_nimg, world_size=1):
    """Accumulate `phase` over rounds (lists of per-round tensors), average over ranks, then step.

    Each round's gain is interval / num_rounds, so the gradient is the mean over this rank's batch whatever
    `batch_gpu` is, and after the all_reduce the mean over the global batch. (stylegan2-ada-pytorch sums the
    rounds instead; with Adam this only rescales epsilon.) Returns False when the step was skipped because a
    gradient was not finite: the weights and the optimizer state are then left untouched.
    """
    num_rounds = len(real_img)
    phase.module.requires_grad_(True)
    phase.opt.zero_grad(set_to_none=True)
    for round_img, round_c, round_z, round_gen_c in zip(real_img, real_c, gen_z, gen_c):
        loss.accumulate_gradients(phase=phase.name, real_img=round_img, real_c=round_c, gen_z=round_z,
                                  gen_c=round_gen_c, gain=phase.interval / num_rounds, cur_nimg=cur_nimg)
    phase.module.requires_grad_(False)
    finite = reduce_gradients_(phase.module, world_size)
    if finite:
        phase.opt.step()
    phase.opt.zero_grad(set_to_none=True)
    return finite

#----------------------------------------------------------------------------

def ema_beta(cur_nimg, batch_size, ema_kimg, ema_rampup):
    """Per-step decay for an EMA half-life of `ema_kimg` (ramped up as ema_rampup * cur_nimg early on)."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema, G, beta):
    """G_ema <- beta * G_ema + (1 - beta) * G for parameters; buffers (e.g. w_avg) are copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b.detach())


def adjust_augment_p(augment_pipe, rt, ada_target, batch_size, ada_interval, ada_kimg):
    """ADA (Karras et al. 2020): move p by +-batch*interval/(ada_kimg*1000) toward the target of r_t.

    rt: mean sign of D's real logits since the last adjustment (nan = nothing reported: no change).
    """
    if np.isfinite(rt):
        augment_pipe.adjust_p(rt, batch=batch_size * ada_interval, target=ada_target, speed_kimg=ada_kimg)

#----------------------------------------------------------------------------
