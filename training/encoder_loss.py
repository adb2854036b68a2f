"""The encoder's training objective against a frozen generator G.

Two kinds of images, both `[N, C, H, W]` in [-1, 1]:

* G's own samples (the latent is known): z -> ws = G.mapping(z) -> x = G.synthesis(ws). The encoder predicts
  latents `P = E(x)` `[N, *E.param_shape]`; the per-image loss is

      latent_weight * mean((P - P_true)^2)  +  LPIPS(G(P), x)  +  mse_weight * mean(((G(P) - x) / 2)^2)

  where `P_true` is `ws` read in E's space (w: layer 0; w+: all layers; W: layer 0's matrix; W+: all).
* Real images (optional dataset): reconstruction terms only (no latent is known).

The reconstruction terms are `recon_loss(img, recon_loss.prepare_target(target))['loss']` of an
`inversion.losses.InversionLoss` (LPIPS + mse_weight * MSE on [0, 1] pixels), the loss the optimisation uses;
the training loop builds it by name (`dnnlib.util.call_func_by_name`), so `training/` does not import
`inversion/`. Gradients reach E only: G is frozen, and its synthesis runs in float32 with constant noise.
"""

import torch

from torch_utils import training_stats

#----------------------------------------------------------------------------

VECTOR_SPACES = ('w', 'w+')


def true_params(ws, space):
    """ws `[N, L, *w_shape]` of G.mapping (every layer the same latent) -> the latent of `space`."""
    return ws if space.endswith('+') else ws[:, 0]


class EncoderLoss:
    """Per-image losses of an encoder E (`forward`, `to_ws`) against frozen G (a plain object: no training state).

    Args:
        G:             frozen generator (mapping with w_avg, synthesis, sample_z, num_ws, latent_rows).
        space:         'w', 'w+', 'W' or 'W+' (E.space).
        recon_loss:    InversionLoss-like: `prepare_target(img) -> state`, `(img, state) -> dict(loss, lpips) [N]`.
        latent_weight: weight of the latent MSE on G's samples (0 = reconstruction only).
        sample_psi:    truncation of G's samples toward w_avg (1 = the full distribution).
    """

    def __init__(self, G, space, recon_loss, latent_weight=1.0, sample_psi=1.0):
        if space in VECTOR_SPACES and G.latent_rows is not None and latent_weight != 0:
            raise ValueError(f'space {space} on an overparameterized generator has no known latent for G\'s samples '
                             f'(their rows differ); use --space W/W+, or --latent-weight 0')
        self.G, self.space, self.recon_loss = G, space, recon_loss
        self.latent_weight, self.sample_psi = float(latent_weight), float(sample_psi)
        self.compiled = None    # `training.compiled_phases.PhaseCompiler`: `terms` compiled

    @torch.no_grad()
    def sample(self, n, device):
        """n samples of G: (images `[n, C, H, W]`, their latents `[n, *param_shape]`). Draws z from the global RNG
        of `device` (G.sample_z), nothing else."""
        z = self.G.sample_z(n, device=device)
        ws = self.G.mapping(z, None, truncation_psi=self.sample_psi)
        return self.synthesize(ws), true_params(ws, self.space)

    def synthesize(self, ws):
        return self.G.synthesis(ws, noise_mode='const', force_fp32=True)

    def reconstruct(self, E, params):
        """Differentiable images of E's latents `[N, *param_shape]` (E.to_ws lays them out for the synthesis)."""
        return self.synthesize(E.to_ws(params.to(torch.float32)))

    def __call__(self, E, images, latents=None, kind='fake'):
        """Per-image loss `[N]` of E on `images`; `latents` = the true ones (G's samples) or None (real images).

        Reports Loss/E/loss, Loss/E/lpips_{kind}, Loss/E/pixel_{kind} and, with latents, Loss/E/latent.
        """
        out = self.terms(E, images, latents) if self.compiled is None else self.compiled.run_terms(self, E, images,
                                                                                                   latents)
        training_stats.report(f'Loss/E/lpips_{kind}', out['lpips'])
        training_stats.report(f'Loss/E/pixel_{kind}', out['pixel'])
        if latents is not None:
            training_stats.report('Loss/E/latent', out['latent'])
        training_stats.report('Loss/E/loss', out['loss'])
        return out['loss']

    def terms(self, E, images, latents=None):
        """The per-image terms `[N]` of `__call__` without the reports: dict(loss, lpips, pixel[, latent])."""
        pred = E(images)
        recon = self.reconstruct(E, pred)
        out = self.recon_loss(recon, self.recon_loss.prepare_target(images))
        loss = out['loss']
        terms = dict(lpips=out['lpips'], pixel=((recon.detach() - images) / 2).square().mean(dim=(1, 2, 3)))
        if latents is not None:
            latent = (pred.to(torch.float32) - latents).square().flatten(1).mean(dim=1)
            terms['latent'] = latent
            if self.latent_weight != 0:
                loss = loss + self.latent_weight * latent
        terms['loss'] = loss
        return terms

#----------------------------------------------------------------------------
