"""StyleGAN2 training loss (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN",
with the lazy regularization schedule of stylegan2-ada-pytorch) for latent vectors and for the latent
matrices of Poirier-Ginter et al., "Overparameterization Improves StyleGAN Inversion".

Terms:
    G main   non-saturating logistic loss       softplus(-D(G(z)))
    G reg    path-length regularization         pl_weight * (|J_w^T y| - a)^2, `a` an EMA of the lengths
    D main   logistic loss                      softplus(D(G(z))) + softplus(-D(x))
    D reg    R1 on reals                        r1_gamma / 2 * |grad_x D(x)|^2

Per-layer latents are `ws [N, L, *w_shape]` with `w_shape = (w_dim,)` (w+) or `(R, w_dim)` (W+), so
style mixing and the path length treat a latent matrix as one unit per layer.
"""

import numpy as np
import torch

from torch_utils import training_stats
from torch_utils.ops import conv2d_gradfix

PHASES = ('Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg', 'Dboth')

#----------------------------------------------------------------------------
# Style mixing by per-layer selection.

def mixing_cutoff(batch_size, num_ws, prob, per_image=False, device=None):
    """Random style-mixing crossover layer: int64 `[N]` (`per_image`) or `[1]` (one for the minibatch).

    With probability `prob` the cutoff is uniform in `[1, num_ws - 1]`, otherwise `num_ws` (no mixing).
    Drawn on `device` without host synchronisation.
    """
    n = batch_size if per_image else 1
    if num_ws < 2 or prob <= 0:
        return torch.full([n], num_ws, dtype=torch.int64, device=device)
    cutoff = torch.randint(1, num_ws, [n], device=device)
    mix = torch.rand([n], device=device) < prob
    return torch.where(mix, cutoff, torch.full_like(cutoff, num_ws))


def mix_styles(ws, ws_mix, cutoff):
    """Layers `>= cutoff` from `ws_mix`, layers `< cutoff` from `ws`.

    ws, ws_mix: `[N, L, *w_shape]` (expand views are fine: neither is written to).
    cutoff: int tensor `[N]` or `[1]`. Returns a new `[N, L, *w_shape]` tensor; for latent matrices
    whole per-layer matrices are swapped. This is the one materialisation the synthesis input needs.
    """
    num_ws = ws.shape[1]
    layer = torch.arange(num_ws, device=ws.device)
    take_mix = layer.unsqueeze(0) >= cutoff.to(ws.device).reshape(-1, 1)            # [N or 1, L]
    take_mix = take_mix.reshape(*take_mix.shape, *([1] * (ws.ndim - 2)))            # [N or 1, L, 1, ...]
    return torch.where(take_mix, ws_mix, ws)

#----------------------------------------------------------------------------
# Path length of the generator, for latent vectors and latent matrices.

def path_lengths_from_grads(pl_grads, row_reduction='mean'):
    """Per-image path length from `pl_grads = d(sum(img * y)) / d ws`.

    pl_grads: `[N, L, w_dim]` or `[N, L, R, w_dim]` -> `[N]`.
    Vectors: `sqrt(mean_layers sum_{w_dim} grad^2)`, stylegan2-ada-pytorch's `sum(2).mean(1).sqrt()`.
    Matrices, row_reduction='mean' (default): `sqrt(mean_{layers, rows} sum_{w_dim} grad^2)`, i.e. every
    row counts as one more per-layer latent vector. This is what the paper's runs computed: the
    authors' fork feeds `ws [N, L*R, w_dim]` to the unchanged stylegan2-ada-pytorch formula (rows a
    layer does not use count as zeros); the paper only says the regularizer is kept. It keeps the
    baseline's per-vector normalisation, not its scale: the rows of a layer drive disjoint output
    channels, so their squared gradients add up to about the baseline's, and the mean is about
    `1/sqrt(R)` of the baseline length (measured at init: 5.7x smaller for R=32, 7.9x for R=64), the
    penalty about `1/R` of it for the same pl_weight. pl_mean is an EMA of the lengths, so the target
    adapts either way. row_reduction='sum' sums over rows instead, which keeps the baseline's scale.
    """
    if row_reduction not in ('mean', 'sum'):
        raise ValueError(f"row_reduction must be 'mean' or 'sum', got {row_reduction!r}")
    sq = pl_grads.square().sum(dim=-1)                                          # [N, L] or [N, L, R]
    if sq.ndim == 3 and row_reduction == 'sum':
        sq = sq.sum(dim=2)
    return sq.flatten(1).mean(dim=1).sqrt()

#----------------------------------------------------------------------------
# StyleGAN2 loss with lazy R1 and path-length regularization (stylegan2-ada-pytorch semantics).

class StyleGAN2Loss:
    def __init__(self,
        device,                             # Device of the pl_mean buffer and of the random draws.
        G,                                  # Generator: G.mapping, G.synthesis, G.sample_z, G.w_shape.
        D,                                  # Discriminator: D(img, c) -> logits [N, 1].
        augment_pipe            = None,     # Differentiable augmentation applied before D, None = none.
        r1_gamma                = 10,       # R1 weight, 0 = disable (the 'Dreg' phase then does nothing).
        style_mixing_prob       = 0.9,      # Probability of mixing two latents, 0 = disable.
        pl_weight               = 2,        # Path-length regularization weight, 0 = disable.
        pl_batch_shrink         = 2,        # Path length on batch // pl_batch_shrink images.
        pl_decay                = 0.01,     # EMA decay of the path-length target pl_mean.
        pl_no_weight_grad       = False,    # Skip conv weight gradients in the PPL pass (vectors only, see below).
        style_mixing_per_image  = False,    # One cutoff per image; False = one per minibatch (stylegan2-ada-pytorch).
        pl_row_reduction        = 'mean',   # Latent matrices: 'mean' over rows (authors' fork) or 'sum' (baseline scale).
    ):
        self.device = torch.device(device)
        self.G = G
        self.D = D
        self.augment_pipe = augment_pipe
        self.r1_gamma = float(r1_gamma)
        self.style_mixing_prob = float(style_mixing_prob)
        self.pl_weight = float(pl_weight)
        self.pl_batch_shrink = int(pl_batch_shrink)
        self.pl_decay = float(pl_decay)
        # With latent matrices the styles reach the image only through the per-sample (grouped-conv)
        # weights, so dropping weight gradients would drop d img / d W: the flag applies to vectors only
        # (and, as in stylegan2-ada-pytorch, is only right with non-fused modulation, the training default).
        self.pl_no_weight_grad = bool(pl_no_weight_grad) and len(G.w_shape) == 1
        self.style_mixing_per_image = bool(style_mixing_per_image)
        self.pl_row_reduction = pl_row_reduction
        if pl_row_reduction not in ('mean', 'sum'):
            raise ValueError(f"pl_row_reduction must be 'mean' or 'sum', got {pl_row_reduction!r}")
        self.pl_mean = torch.zeros([], device=self.device)

    def state_dict(self):
        """Resumable state: `{'pl_mean': tensor []}`."""
        return {'pl_mean': self.pl_mean.detach().clone()}

    def load_state_dict(self, state):
        self.pl_mean.copy_(torch.as_tensor(state['pl_mean']))

    def run_G(self, z, c):
        """z `[N, *G.z_shape]`, c `[N, c_dim]` -> (img `[N, C, H, W]`, ws `[N, L, *G.w_shape]`).

        One mapping call updates w_avg (train mode); the mixing latent (sampled with `G.sample_z`, so
        matrices get the paper's correlated rows) is mapped with `skip_w_avg_update=True`.
        """
        ws = self.G.mapping(z, c)
        if self.style_mixing_prob > 0:
            cutoff = mixing_cutoff(z.shape[0], ws.shape[1], self.style_mixing_prob,
                                   per_image=self.style_mixing_per_image, device=z.device)
            z_mix = self.G.sample_z(z.shape[0], device=z.device).to(z.dtype)
            ws = mix_styles(ws, self.G.mapping(z_mix, c, skip_w_avg_update=True), cutoff)
        img = self.G.synthesis(ws)
        return img, ws

    def run_D(self, img, c):
        """img `[N, C, H, W]` (augmented here when a pipe is set) -> logits `[N, 1]`."""
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c)

    def path_lengths(self, z, c):
        """Path lengths of `n = len(z)` images -> (img `[n, C, H, W]`, pl_grads `[n, L, *w_shape]`, lengths `[n]`).

        The images are perturbed with `y ~ N(0, I) / sqrt(H * W)`; `pl_grads = d sum(img * y) / d ws` is
        taken with `create_graph=True` so that the penalty can be back-propagated.
        """
        img, ws = self.run_G(z, c)
        pl_noise = torch.randn_like(img) / np.sqrt(img.shape[2] * img.shape[3])
        with conv2d_gradfix.no_weight_gradients(self.pl_no_weight_grad):
            pl_grads, = torch.autograd.grad(outputs=[(img * pl_noise).sum()], inputs=[ws], create_graph=True)
        return img, pl_grads, path_lengths_from_grads(pl_grads, self.pl_row_reduction)

    def r1_penalty(self, real_img, real_c):
        """real_img `[N, C, H, W]` -> (logits `[N, 1]`, `|grad_x D(x)|^2` `[N]`, differentiable)."""
        real_img = real_img.detach().requires_grad_(True)
        logits = self.run_D(real_img, real_c)
        with conv2d_gradfix.no_weight_gradients():
            grads, = torch.autograd.grad(outputs=[logits.sum()], inputs=[real_img], create_graph=True)
        return logits, grads.square().sum(dim=[1, 2, 3])

    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain, cur_nimg=None):
        """Back-propagate one phase's loss (times `gain`) into the `.grad` of G and D parameters.

        phase: one of PHASES. 'G*' phases update G, 'D*' phases D; 'main' is the adversarial loss,
        'reg' the lazy regularizer (the caller passes gain = the lazy interval), 'both' does both.
        real_img `[N, C, H, W]` in [-1, 1]; real_c, gen_c `[N, c_dim]` (None when unconditional); gen_z `[N, *G.z_shape]`.
        Returns nothing; the caller zeroes the gradients before and steps the optimizer after.
        Which parameters receive gradients is the caller's choice (requires_grad), as in stylegan2-ada-pytorch;
        the G forward of the D phases runs without a graph. cur_nimg is accepted for interface
        compatibility (stylegan3's blur fade-in) and unused.
        """
        del cur_nimg
        if phase not in PHASES:
            raise ValueError(f'Unknown phase {phase!r}; expected one of {PHASES}')
        do_Gmain = phase in ('Gmain', 'Gboth')
        do_Dmain = phase in ('Dmain', 'Dboth')
        do_Gpl = phase in ('Greg', 'Gboth') and self.pl_weight != 0
        do_Dr1 = phase in ('Dreg', 'Dboth') and self.r1_gamma != 0

        # Gmain: maximize the logits of generated images.
        if do_Gmain:
            gen_img, _ = self.run_G(gen_z, gen_c)
            gen_logits = self.run_D(gen_img, gen_c)
            training_stats.report('Loss/scores/fake', gen_logits)
            training_stats.report('Loss/signs/fake', gen_logits.sign())
            loss_Gmain = torch.nn.functional.softplus(-gen_logits)             # -log(sigmoid(logits))
            training_stats.report('Loss/G/loss', loss_Gmain)
            loss_Gmain.mean().mul(gain).backward()

        # Gpl: path-length regularization on a shrunk batch.
        if do_Gpl:
            n = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
            gen_img, _, pl_lengths = self.path_lengths(gen_z[:n], None if gen_c is None else gen_c[:n])
            pl_mean = self.pl_mean.lerp(pl_lengths.mean(), self.pl_decay)
            self.pl_mean.copy_(pl_mean.detach())
            pl_penalty = (pl_lengths - pl_mean).square()
            training_stats.report('Loss/pl_penalty', pl_penalty)
            loss_Gpl = pl_penalty * self.pl_weight
            training_stats.report('Loss/G/reg', loss_Gpl)
            # The zero term keeps every synthesis parameter in the graph (DDP expects all of them).
            (gen_img[:, 0, 0, 0] * 0 + loss_Gpl).mean().mul(gain).backward()

        # Dmain: minimize the logits of generated images.
        loss_Dgen = 0
        if do_Dmain:
            with torch.no_grad():
                gen_img, _ = self.run_G(gen_z, gen_c)
            gen_logits = self.run_D(gen_img, gen_c)
            training_stats.report('Loss/scores/fake', gen_logits)
            training_stats.report('Loss/signs/fake', gen_logits.sign())
            loss_Dgen = torch.nn.functional.softplus(gen_logits)               # -log(1 - sigmoid(logits))
            loss_Dgen.mean().mul(gain).backward()

        # Dmain: maximize the logits of real images. Dr1: R1 penalty on them.
        if do_Dmain or do_Dr1:
            if do_Dr1:
                real_logits, r1_penalty = self.r1_penalty(real_img, real_c)
            else:
                real_logits = self.run_D(real_img.detach(), real_c)
            training_stats.report('Loss/scores/real', real_logits)
            training_stats.report('Loss/signs/real', real_logits.sign())

            loss_Dreal = 0
            if do_Dmain:
                loss_Dreal = torch.nn.functional.softplus(-real_logits)        # -log(sigmoid(logits))
                training_stats.report('Loss/D/loss', loss_Dgen + loss_Dreal)

            loss_Dr1 = 0
            if do_Dr1:
                loss_Dr1 = (r1_penalty * (self.r1_gamma / 2)).unsqueeze(1)     # [N, 1] like the logits
                training_stats.report('Loss/r1_penalty', r1_penalty)
                training_stats.report('Loss/D/reg', loss_Dr1)
            (real_logits * 0 + loss_Dreal + loss_Dr1).mean().mul(gain).backward()

#----------------------------------------------------------------------------
