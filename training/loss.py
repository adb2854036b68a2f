"""StyleGAN2 training objective for latent vectors and for the latent matrices of Poirier-Ginter et al.,
"Overparameterization Improves StyleGAN Inversion", with lazy regularization (Karras et al. 2020, "Analyzing and
Improving the Image Quality of StyleGAN", appendix B).

With logits f = D(x, c) of real images x and of fakes G(z, c), and s(t) = log(1 + e^t) (softplus):

    G adversarial   E_z  s(-f(G(z)))                             non-saturating logistic loss
    G regularizer   pl_weight * E_z (|J_w^T y| - a)^2             path length; a = EMA of |J_w^T y|
    D adversarial   E_z  s(f(G(z))) + E_x s(-f(x))               logistic loss
    D regularizer   r1_gamma / 2 * E_x |grad_x f(x)|^2            R1 on reals

Latents per layer are `ws [N, L, *w_shape]` with `w_shape = (w_dim,)` (w+) or `(R, w_dim)` (W+): style mixing
and the path length treat a latent matrix as one unit per layer. Stats names ('Loss/G/loss', 'Loss/scores/fake',
'Loss/signs/real', 'Loss/pl_penalty', 'Loss/r1_penalty', ...) are stylegan2-ada-pytorch's, so stats.jsonl readers
work on either.
"""

import numpy as np
import torch

from torch_utils import training_stats
from torch_utils.ops import conv2d_gradfix
from training import row_start

PHASES = ('Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg', 'Dboth')

# How a latent matrix's rows enter the path length (the authors' fork: `R ** ppl_power`, see below).
PL_ROW_REDUCTIONS = {
    'sum':  0.5,    # ppl_power 0.5, the fork's default: norm over rows and w_dim, averaged over layers.
    'mean': 0.0,    # ppl_power 0: every row counts as one more latent vector ("adaconv_normal_ppl").
}

_softplus = torch.nn.functional.softplus

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

def path_lengths_from_grads(pl_grads, row_reduction='sum'):
    """Per-image path length from `pl_grads = d(sum(img * y)) / d ws`: `[N, L, w_dim]` or `[N, L, R, w_dim]` -> `[N]`.

    Vectors: `sqrt(mean_L sum_{w_dim} g^2)`, StyleGAN2's length. Matrices: the authors' fork feeds the `L*R` rows
    to that formula as `L*R` vectors and multiplies the result by `R ** ppl_power`:

        length = sqrt(mean_{L*R} sum_{w_dim} g^2) * R ** ppl_power

    row_reduction='sum' is ppl_power 0.5, the fork's default (and the paper presets'): `sqrt(mean_L sum_{R, w_dim}
    g^2)`, the norm of each layer's whole matrix gradient, on the baseline's scale (the rows of a layer drive
    disjoint output channels, so their squared gradients add up to about the baseline's). row_reduction='mean' is
    ppl_power 0, tried in the authors' launch scripts: about `1/sqrt(R)` of that length and `1/R` of the penalty for
    the same pl_weight (R = 512: ~512x weaker). Rows a layer does not use count as zeros either way.
    """
    if row_reduction not in PL_ROW_REDUCTIONS:
        raise ValueError(f"row_reduction must be one of {sorted(PL_ROW_REDUCTIONS)}, got {row_reduction!r}")
    per_vector = pl_grads.square().sum(dim=-1)                                 # [N, L] or [N, L, R]
    if per_vector.ndim == 3 and row_reduction == 'sum':
        per_vector = per_vector.sum(dim=2)                                     # [N, L]
    return per_vector.flatten(1).mean(dim=1).sqrt()

#----------------------------------------------------------------------------

def _report_logits(kind, logits):
    """D's raw scores and their signs under 'Loss/scores/{kind}' and 'Loss/signs/{kind}' (ADA reads the real signs)."""
    training_stats.report(f'Loss/scores/{kind}', logits)
    training_stats.report(f'Loss/signs/{kind}', logits.sign())


def _backward_mean(per_image, gain):
    """Back-propagate `gain * mean(per_image)`; the mean is taken first, as the parity with NVIDIA's numbers needs."""
    per_image.mean().mul(gain).backward()


class StyleGAN2Loss:
    """The four terms above, one `accumulate_gradients(phase, ...)` call per phase and accumulation round.

    State: `pl_mean` (the path-length target a, a scalar EMA) and `pl_mean_skips` (updates refused because the
    batch's mean length was not finite: the target keeps its value, see `_update_pl_mean`).
    """

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
        pl_row_reduction        = 'sum',    # Latent matrices: 'sum' (fork default, ppl_power 0.5) or 'mean' (power 0).
        row_spread_kimg         = 0,        # Fine-tuning into rows: rows spread from identical over this many kimg
                                            # (training.row_start); 0 = the paper's sampling throughout.
        row_spread_start_kimg   = 0,        # ... counted from this kimg (the fine-tuning's first image).
    ):
        if pl_row_reduction not in PL_ROW_REDUCTIONS:
            raise ValueError(f"pl_row_reduction must be one of {sorted(PL_ROW_REDUCTIONS)}, got {pl_row_reduction!r}")
        self.device = torch.device(device)
        self.G, self.D, self.augment_pipe = G, D, augment_pipe
        self.r1_gamma = float(r1_gamma)
        self.style_mixing_prob = float(style_mixing_prob)
        self.style_mixing_per_image = bool(style_mixing_per_image)
        self.pl_weight = float(pl_weight)
        self.pl_batch_shrink = int(pl_batch_shrink)
        self.pl_decay = float(pl_decay)
        self.pl_row_reduction = pl_row_reduction
        self.row_spread_kimg = float(row_spread_kimg)
        self.row_spread_start_kimg = float(row_spread_start_kimg)
        # Latent matrices reach the image only through the per-sample (grouped-conv) weights, so dropping weight
        # gradients would drop d img / d W: the flag is honoured for vectors only (and, as in stylegan2-ada-pytorch,
        # is only right with non-fused modulation, the training default).
        self.pl_no_weight_grad = bool(pl_no_weight_grad) and len(G.w_shape) == 1
        self.pl_mean = torch.zeros([], device=self.device)
        self._pl_skips = torch.zeros([], dtype=torch.int64, device=self.device)
        self.compiled = None    # `training.compiled_phases.PhaseCompiler`: G and D of the first-order terms compiled

    @property
    def pl_mean_skips(self):
        """Path-length target updates refused so far because the batch's mean length was not finite."""
        return int(self._pl_skips)

    def state_dict(self):
        """Resumable state: `{'pl_mean': tensor [], 'pl_mean_skips': int}`."""
        return {'pl_mean': self.pl_mean.detach().clone(), 'pl_mean_skips': int(self.pl_mean_skips)}

    def load_state_dict(self, state):
        self.pl_mean.copy_(torch.as_tensor(state['pl_mean']))
        self._pl_skips.fill_(int(state.get('pl_mean_skips', 0)))

    #------------------------------------------------------------------------
    # Forward passes.

    def row_spread(self, cur_nimg):
        """`a` of `G.sample_z` at image `cur_nimg` (training.row_start; 1 = the paper's sampling, also when None)."""
        return 1.0 if cur_nimg is None else row_start.row_spread(cur_nimg, self.row_spread_kimg,
                                                                 self.row_spread_start_kimg)

    def run_G(self, z, c, spread=1.0, first_order=False):
        """z `[N, *G.z_shape]`, c `[N, c_dim]` -> (img `[N, C, H, W]`, ws `[N, L, *G.w_shape]`).

        Only the first mapping call moves w_avg (train mode). The second latent of style mixing comes from
        `G.sample_z` with row spread `spread`, so latent matrices get the rows of `z`'s distribution there too.
        first_order: no gradient of a gradient will be taken (Gmain, Dmain), so the compiled G may run
        (`self.compiled`, when set; it returns ws None). A row spread below 1 (the first kimg of `--row-start
        spread`) runs eagerly: a graph would be specialised to each value of it.
        """
        if first_order and self.compiled is not None and spread == 1.0:
            return self.compiled.run_G(self, z, c)
        return self.generate(z, c, spread)

    def generate(self, z, c, spread=1.0):
        """`run_G`'s eager body (what the compiled G traces, with spread 1)."""
        ws = self.G.mapping(z, c)
        if self.style_mixing_prob != 0:
            ws = self._mix_with_second_latent(ws, z, c, spread)
        return self.G.synthesis(ws), ws

    def _mix_with_second_latent(self, ws, z, c, spread=1.0):
        n = z.shape[0]
        cutoff = mixing_cutoff(n, ws.shape[1], self.style_mixing_prob, per_image=self.style_mixing_per_image,
                               device=z.device)
        second = self.G.sample_z(n, device=z.device, row_spread=spread).to(z.dtype)
        return mix_styles(ws, self.G.mapping(second, c, skip_w_avg_update=True), cutoff)

    def run_D(self, img, c, first_order=False):
        """img `[N, C, H, W]` (augmented here when a pipe is set) -> logits `[N, 1]`. first_order: as in `run_G`
        (the augmentation stays eager: its geometry reads values on the host)."""
        seen = img if self.augment_pipe is None else self.augment_pipe(img)
        if first_order and self.compiled is not None:
            return self.compiled.run_D(self, seen, c)
        return self.D(seen, c)

    def path_lengths(self, z, c, spread=1.0):
        """Path lengths of `n = len(z)` images -> (img `[n, C, H, W]`, pl_grads `[n, L, *w_shape]`, lengths `[n]`).

        y ~ N(0, I) / sqrt(H * W) projects the image onto a random direction; `pl_grads = d <img, y> / d ws` keeps
        its graph (create_graph) so that the penalty on the lengths can be back-propagated.
        """
        img, ws = self.run_G(z, c, spread)
        height, width = img.shape[2], img.shape[3]
        y = torch.randn_like(img) / np.sqrt(height * width)
        with conv2d_gradfix.no_weight_gradients(self.pl_no_weight_grad):
            pl_grads = torch.autograd.grad(outputs=[(img * y).sum()], inputs=[ws], create_graph=True)[0]
        return img, pl_grads, path_lengths_from_grads(pl_grads, self.pl_row_reduction)

    def r1_penalty(self, real_img, real_c):
        """real_img `[N, C, H, W]` -> (logits `[N, 1]`, `|grad_x D(x)|^2` `[N]`, differentiable)."""
        x = real_img.detach().requires_grad_(True)
        logits = self.run_D(x, real_c)
        with conv2d_gradfix.no_weight_gradients():
            grad_x = torch.autograd.grad(outputs=[logits.sum()], inputs=[x], create_graph=True)[0]
        return logits, grad_x.square().sum(dim=[1, 2, 3])

    #------------------------------------------------------------------------
    # The four terms.

    def _generator_adversarial(self, gen_z, gen_c, gain, spread):
        # ws not kept alive through the backward (W+: [N, L, R, w_dim])
        img = self.run_G(gen_z, gen_c, spread, first_order=True)[0]
        logits = self.run_D(img, gen_c, first_order=True)
        _report_logits('fake', logits)
        per_image = training_stats.report('Loss/G/loss', _softplus(-logits))      # -log sigmoid(f)
        _backward_mean(per_image, gain)

    def _update_pl_mean(self, lengths):
        """a <- a + pl_decay * (mean(lengths) - a), differentiable in `lengths`. A non-finite mean leaves `a` as it
        was and is counted in `pl_mean_skips` (one bad batch would otherwise poison every later Greg step); no host
        synchronisation: the count lives on the device until read."""
        target = self.pl_mean.lerp(lengths.mean(), self.pl_decay)
        finite = torch.isfinite(target)
        self.pl_mean.copy_(torch.where(finite, target.detach(), self.pl_mean))
        self._pl_skips += (~finite).to(self._pl_skips.dtype)
        return target

    def _path_length_regularizer(self, gen_z, gen_c, gain, spread):
        n = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
        img, _, lengths = self.path_lengths(gen_z[:n], None if gen_c is None else gen_c[:n], spread)
        target = self._update_pl_mean(lengths)
        penalty = training_stats.report('Loss/pl_penalty', (lengths - target).square())
        weighted = training_stats.report('Loss/G/reg', penalty * self.pl_weight)
        # 0 * img keeps every synthesis parameter in the graph (a DDP requirement in NVIDIA's loop).
        _backward_mean(img[:, 0, 0, 0] * 0 + weighted, gain)

    def _discriminator_fake(self, gen_z, gen_c, gain, spread):
        with torch.no_grad():
            img = self.run_G(gen_z, gen_c, spread, first_order=True)[0]
        logits = self.run_D(img, gen_c, first_order=True)
        _report_logits('fake', logits)
        per_image = _softplus(logits)                                              # -log(1 - sigmoid(f))
        _backward_mean(per_image, gain)
        return per_image

    def _discriminator_real(self, real_img, real_c, gain, adversarial, r1, fake_term):
        if r1:
            logits, r1_sq = self.r1_penalty(real_img, real_c)
        else:
            logits = self.run_D(real_img.detach(), real_c, first_order=True)
        _report_logits('real', logits)
        total = logits * 0                                                          # [N, 1]; keeps D in the graph
        if adversarial:
            real_term = _softplus(-logits)                                          # -log sigmoid(f)
            training_stats.report('Loss/D/loss', fake_term + real_term)
            total = total + real_term
        if r1:
            training_stats.report('Loss/r1_penalty', r1_sq)
            total = total + training_stats.report('Loss/D/reg', (r1_sq * (self.r1_gamma / 2)).unsqueeze(1))
        _backward_mean(total, gain)

    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain, cur_nimg=None):
        """Back-propagate one phase's loss (times `gain`) into the `.grad` of G and D parameters.

        phase: one of PHASES. 'G*' phases train G, 'D*' phases D; 'main' is the adversarial term, 'reg' the lazy
        regularizer (the caller passes gain = its interval), 'both' does both. real_img `[N, C, H, W]` in [-1, 1];
        real_c, gen_c `[N, c_dim]` (None when unconditional); gen_z `[N, *G.z_shape]`. The caller zeroes the
        gradients before, steps the optimizer after, and chooses which networks receive gradients
        (requires_grad); D phases run G without a graph. cur_nimg: the image counter before this step, which sets
        the row spread of the style-mixing latents (`row_spread`; None = the paper's sampling), as the loop's
        `gen_z` were drawn.
        """
        spread = self.row_spread(cur_nimg)
        if phase not in PHASES:
            raise ValueError(f'Unknown phase {phase!r}; expected one of {PHASES}')
        network, part = phase[0], phase[1:]
        main, reg = part in ('main', 'both'), part in ('reg', 'both')
        if network == 'G':
            if main:
                self._generator_adversarial(gen_z, gen_c, gain, spread)
            if reg and self.pl_weight != 0:
                self._path_length_regularizer(gen_z, gen_c, gain, spread)
            return
        r1 = reg and self.r1_gamma != 0
        fake_term = self._discriminator_fake(gen_z, gen_c, gain, spread) if main else 0
        if main or r1:
            self._discriminator_real(real_img, real_c, gain, adversarial=main, r1=r1, fake_term=fake_term)

#----------------------------------------------------------------------------
