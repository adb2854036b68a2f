"""Batched latent optimisation: the inversion of "Overparameterization Improves StyleGAN
Inversion" (Poirier-Ginter et al., sec. 4.2).

Defaults are the paper's: Adam (lr 0.05, betas 0.9/0.999), 1000 steps, start at the mean
latent, LPIPS loss, and before each of the first half of the steps a truncation
`w <- w_avg + 0.9 (w - w_avg)` toward the mean.

Many targets are optimised together: one forward/backward per step for the whole batch. The
loss that is back-propagated is the SUM of the per-image losses, so image i's gradient does
not depend on the other images or on the batch size; Adam's state is elementwise, so each
image follows exactly the trajectory of a run on its own (up to float rounding of batched
kernels). `Inverter.run()` is a generator that yields after every step, which makes progress
bars, snapshots and resumable state (`state_dict`/`load_state_dict`) easy for the caller.
"""

import contextlib
import math

import numpy as np
import torch

from metrics.reconstruction import pixel_metrics
from torch_utils.image_io import to_uint8

#----------------------------------------------------------------------------

PRECISIONS = ('fp32', 'tf32', 'bf16')


def truncation_steps(steps, until):
    """Number of initial steps that are truncated: steps 0..k-1 are, k..steps-1 are not.

    `until` is the fraction of `steps` (0.5 = the paper's "disabled halfway"): k = floor(until * steps).
    """
    if not 0 <= until <= 1:
        raise ValueError(f'truncation_until must be in [0, 1], got {until}')
    return min(int(math.floor(until * steps + 1e-9)), int(steps))


@contextlib.contextmanager
def precision_context(precision):
    """Set TF32 for matmuls and convolutions ('tf32' and 'bf16': on; 'fp32': off) and restore afterwards.

    'bf16' additionally autocasts the VGG (see `losses.build_loss`); the generator stays in
    float32 storage (TF32 math) because its custom CUDA ops support float32/float16 only.
    """
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = precision != 'fp32'
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old

#----------------------------------------------------------------------------

class Inverter:
    """Optimise one latent per target image, all targets in one batch.

    Args:
        G:                generator (public API: num_ws, w_dim, latent_rows, mapping.w_avg, synthesis).
                          It is put in eval mode with requires_grad False on its parameters.
        loss:             `losses.InversionLoss` (per-image losses `[N]`), on the targets' device.
        targets:          `[N, C, H, W]` float in [-1, 1], on the device to run on.
        space:            `training.latent_spaces.LatentSpace` for G.
        steps:            number of Adam steps; 0 = just evaluate the start (`init`).
        lr, betas, eps:   Adam settings (paper: 0.05, (0.9, 0.999), 1e-8).
        truncation_psi:   pull toward the mean before each early step; 1 = never.
        truncation_until: fraction of the steps with truncation (steps 0..floor(until*steps)-1).
        precision:        'fp32' (strict), 'tf32' or 'bf16' (see `precision_context`).
        w_avg:            mean latent `[w_dim]`; None = `G.mapping.w_avg`.
        init:             initial latents `[N, *space.param_shape]` (e.g. an encoder's prediction); None = the
                          mean latent. Copied: the first step's latents equal it exactly.
        compiler:         None (eager), or an `InversionCompiler` (`inversion.compiled_step`): each step's forward
                          (synthesis + loss, masks included) and backward then run through one compiled graph per
                          (network, loss, space, batch shape), and Adam's update is one fused kernel.
    """

    def __init__(self, G, loss, targets, space, *, steps=1000, lr=0.05, betas=(0.9, 0.999), eps=1e-8,
                 truncation_psi=0.9, truncation_until=0.5, precision='fp32', w_avg=None, init=None, compiler=None):
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        self.G = G.eval().requires_grad_(False)
        self.loss = loss
        self.space = space
        self.steps = int(steps)
        if self.steps < 0:
            raise ValueError(f'steps must be >= 0, got {steps}')
        self.truncation_psi = float(truncation_psi)
        self.num_truncated = truncation_steps(self.steps, truncation_until) if self.truncation_psi != 1 else 0
        self.precision = precision
        self.device = targets.device
        self.w_avg = (G.mapping.w_avg if w_avg is None else w_avg).detach().to(self.device, torch.float32)
        with precision_context(precision):
            self.target_state = loss.prepare_target(targets)
        n = targets.shape[0]
        params = (space.init_from(self.w_avg, n) if init is None
                  else init.detach().to(self.device, torch.float32).clone())
        assert tuple(params.shape) == (n, *space.param_shape)
        self.params = params.requires_grad_(True)                           # [N, *param_shape]
        self.compiler = compiler                    # fuses Adam's update when it compiles the step
        self.optimizer = torch.optim.Adam([self.params], lr=lr, betas=tuple(betas), eps=eps)
        self.step = 0                                                       # Completed steps.
        self.history = torch.full([self.steps, n], float('nan'), device=self.device)  # LPIPS per step [steps, N]

    @property
    def num_images(self):
        return self.params.shape[0]

    @property
    def done(self):
        return self.step >= self.steps

    def is_truncated(self, step):
        """Whether step `step` (0-based) starts with a truncation."""
        return step < self.num_truncated

    def synthesize(self, params=None):
        """Images `[N, C, H, W]` of `params` (default: the current latents); differentiable."""
        params = self.params if params is None else params
        return self.G.synthesis(self.space.to_ws(params), noise_mode='const', force_fp32=True)

    def forward(self, params, target_state):
        """The step's forward, eager: (per-image loss `[N]`, lpips `[N]`, images `[N, C, H, W]`) of `params`."""
        images = self.synthesize(params)
        out = self.loss(images, target_state)
        return out['loss'], out['lpips'], images

    def _forward_backward(self):
        """This step's forward and its backward into `params.grad` (compiled when the compiler says so)."""
        def backward(out):
            out[0].sum().backward()         # Sum: per-image gradients independent of the batch.
        step = None if self.compiler is None else self.compiler.step_function(self)
        if step is None:
            out = self.forward(self.params, self.target_state)
            backward(out)
            return out
        return step(self.params, self.target_state, after=backward, undo=lambda: setattr(self.params, 'grad', None))

    def run(self, max_steps=None):
        """Generator: run the remaining steps (at most `max_steps`), yielding after each one.

        Yields a dict: step (completed steps, 1-based), truncated (bool), loss and lpips `[N]`
        (detached device tensors, evaluated before this step's update), images `[N, C, H, W]`
        (detached, the images that loss was computed on). Reading them with `.item()` or
        `.cpu()` synchronises the device: do it only every few steps.
        """
        end = self.steps if max_steps is None else min(self.steps, self.step + int(max_steps))
        while self.step < end:
            t = self.step
            truncated = self.is_truncated(t)
            with precision_context(self.precision):
                if truncated:
                    self.space.truncate_(self.params, self.w_avg, self.truncation_psi)
                self.optimizer.zero_grad(set_to_none=True)
                loss, lpips, images = self._forward_backward()
                self.optimizer.step()
            lpips = lpips.detach()
            self.history[t] = lpips
            self.step = t + 1
            yield dict(step=self.step, truncated=truncated, loss=loss.detach(), lpips=lpips, images=images.detach())

    @torch.no_grad()
    def evaluate(self):
        """Final images and metrics of the current latents: dict(images, lpips, mse, psnr), all `[N]` but images."""
        with precision_context(self.precision):
            images = self.synthesize()
            lpips = self.loss(images, self.target_state)['lpips']
        pixels = pixel_metrics(images, self.target_state['image'], drange=(-1, 1), with_ssim=False, dtype=torch.float32)
        return dict(images=images, lpips=lpips, **pixels)

    # ------------------------------------------------------------------
    # Resumable state.

    def state_dict(self):
        """CPU copies of everything needed to continue exactly: step, params, Adam state, LPIPS history."""
        opt = self.optimizer.state_dict()
        opt_state = {k: {n: (v.detach().cpu() if torch.is_tensor(v) else v) for n, v in s.items()}
                     for k, s in opt['state'].items()}
        return dict(step=self.step, params=self.params.detach().cpu(),
                    optimizer=dict(state=opt_state, param_groups=opt['param_groups']),
                    history=self.history[:self.step].cpu())

    def load_state_dict(self, state):
        """Continue from `state_dict()` output (the same images, in the same order)."""
        params = state['params']
        if tuple(params.shape) != tuple(self.params.shape):
            raise ValueError(f'Saved latents have shape {list(params.shape)}, expected {list(self.params.shape)}')
        step = int(state['step'])
        if not 0 <= step <= self.steps:
            raise ValueError(f'Saved step {step} is outside 0..{self.steps}')
        with torch.no_grad():
            self.params.copy_(params)
        flags = [(g.get('fused'), g.get('foreach')) for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state['optimizer'])
        for group, (fused, foreach) in zip(self.optimizer.param_groups, flags):
            group['fused'], group['foreach'] = fused, foreach    # this run's Adam kernel, not the saved run's
        self.history.fill_(float('nan'))
        self.history[:step] = state['history'].to(self.device)
        self.step = step

#----------------------------------------------------------------------------

def invert(G, loss, targets, space, **kwargs):
    """Run a whole inversion; returns (final latents `[N, *space.param_shape]`, `Inverter.evaluate()` dict)."""
    inverter = Inverter(G, loss, targets, space, **kwargs)
    for _ in inverter.run():
        pass
    return inverter.params.detach(), inverter.evaluate()

#----------------------------------------------------------------------------

@torch.no_grad()
def render(G, space, latents, batch_size=8, device=None):
    """Latents `[N, *param_shape]` -> uint8 images `[N, H, W, C]`, `batch_size` at a time: the final rendering of an
    inversion (`G.synthesis(space.to_ws(latents), noise_mode='const', force_fp32=True)` in strict fp32), so the
    images equal a run's `<name>-recon.png` when the batches are the same."""
    device = torch.device(device) if device is not None else G.mapping.w_avg.device
    out = []
    with precision_context('fp32'):
        for i in range(0, latents.shape[0], int(batch_size)):
            params = latents[i:i + int(batch_size)].to(device)
            out.append(to_uint8(G.synthesis(space.to_ws(params), noise_mode='const', force_fp32=True)))
    return np.concatenate(out) if out else np.zeros([0, G.img_resolution, G.img_resolution, G.img_channels], np.uint8)


AUTO_BATCH_MAX = 64        # `batch='auto'` never goes above this.


def auto_batch_size(G, loss, space, device, precision='fp32', limit=AUTO_BATCH_MAX, headroom=0.8):
    """Largest batch whose optimisation step fits in `headroom` of free CUDA memory (measured with
    1 and 2 images), at most `limit`. Off CUDA: min(limit, 8)."""
    device = torch.device(device)
    if device.type != 'cuda':
        return max(1, min(limit, 8))

    def peak_bytes(n):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        targets = torch.zeros([n, G.img_channels, G.img_resolution, G.img_resolution], device=device)
        inverter = Inverter(G, loss, targets, space, steps=1, precision=precision)
        for _ in inverter.run():
            pass
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base

    one, two = peak_bytes(1), peak_bytes(2)
    per_image = max(two - one, 1)
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info(device)
    n = int((free * headroom - max(one - per_image, 0)) // per_image)
    return max(1, min(limit, n))
