"""The latent spaces of a generator, targeted by inversion and predicted by encoders: w, w+ (StyleGAN2) and W, W+
(Poirier-Ginter et al., "Overparameterization Improves StyleGAN Inversion", sec. 3.2 and 4.2).

One `LatentSpace` object describes how the optimised tensor `params` maps onto the synthesis
input `ws [N, num_ws, *G.w_shape]`:

    space   params (per batch)          meaning
    w       [N, w_dim]                  one vector shared by every layer
    w+      [N, num_ws, w_dim]          one vector per layer
    W       [N, R, w_dim]               one latent matrix shared by every layer
    W+      [N, num_ws, R, w_dim]       one latent matrix per layer

Vector networks (`G.latent_rows is None`) accept w and w+ only. Overparameterized (matrix)
networks accept all four: w and w+ are then "row-tied" restrictions of W and W+, the vector
repeated over the R rows (an expand view), which makes every output row use the same style,
i.e. StyleGAN2's modulation evaluated with the overparameterized network's weights. This is
also the point every W inversion starts from (all rows = the mean latent), so w/w+ on a
matrix network is a meaningful ablation rather than an error.
"""

import torch

#----------------------------------------------------------------------------

SPACES = ('w', 'w+', 'W', 'W+')
AUTO = 'auto'                   # The default space of a generator: W when it is overparameterized, else w+.


class LatentSpace:
    """Parametrisation of the synthesis input for one generator geometry.

    Args:
        name:         'w', 'w+', 'W' or 'W+'.
        num_ws:       number of per-layer latents of the synthesis network (`G.num_ws`).
        w_dim:        latent width per row (`G.w_dim`).
        latent_rows:  R of an overparameterized generator, None for StyleGAN2 vector latents.
    """

    def __init__(self, name, num_ws, w_dim, latent_rows=None):
        if name not in SPACES:
            raise ValueError(f'Unknown latent space {name!r}; choose one of {", ".join(SPACES)}')
        if name in ('W', 'W+') and latent_rows is None:
            raise ValueError(f'Space {name} needs an overparameterized generator (latent matrices); '
                             f'this network has latent vectors: use w or w+')
        self.name = name
        self.num_ws = int(num_ws)
        self.w_dim = int(w_dim)
        self.latent_rows = None if latent_rows is None else int(latent_rows)

    @classmethod
    def for_generator(cls, G, name=AUTO):
        """The space `name` of generator `G` (`G.num_ws`, `G.w_dim`, `G.latent_rows`); None or 'auto': W for an
        overparameterized generator, w+ otherwise. Raises ValueError for an invalid combination."""
        if name in (None, AUTO):
            name = 'W' if G.latent_rows is not None else 'w+'
        return cls(name, num_ws=G.num_ws, w_dim=G.w_dim, latent_rows=G.latent_rows)

    def __repr__(self):
        return f'LatentSpace({self.name!r}, num_ws={self.num_ws}, w_dim={self.w_dim}, latent_rows={self.latent_rows})'

    # ------------------------------------------------------------------
    # Shapes.

    @property
    def per_layer(self):
        """True for w+ and W+ (one latent per synthesis layer)."""
        return self.name.endswith('+')

    @property
    def is_matrix(self):
        """True for W and W+ (the optimised latent has R rows)."""
        return self.name in ('W', 'W+')

    @property
    def param_shape(self):
        """Per-image shape of `params`: (w_dim,), (num_ws, w_dim), (R, w_dim) or (num_ws, R, w_dim)."""
        shape = (self.latent_rows, self.w_dim) if self.is_matrix else (self.w_dim,)
        return ((self.num_ws,) + shape) if self.per_layer else shape

    @property
    def w_shape(self):
        """Per-image, per-layer shape the synthesis network expects: (w_dim,) or (R, w_dim)."""
        return (self.w_dim,) if self.latent_rows is None else (self.latent_rows, self.w_dim)

    def numel_per_image(self):
        """Number of free parameters per image."""
        n = 1
        for s in self.param_shape:
            n *= s
        return n

    # ------------------------------------------------------------------
    # Initialisation, mapping to ws, truncation.

    def init_from_w_avg(self, G, batch):
        """Start of the paper's optimisation: the mean latent repeated as the space needs.

        Args:
            G:      generator with `G.mapping.w_avg [w_dim]`.
            batch:  number of images N.
        Returns:
            A new contiguous float32 tensor `[N, *param_shape]` on `w_avg`'s device.
        """
        return self.init_from(G.mapping.w_avg, batch)

    def init_from(self, w_avg, batch):
        """Like `init_from_w_avg` with an explicit mean latent `w_avg [w_dim]`."""
        w_avg = w_avg.detach().to(torch.float32)
        assert w_avg.shape == (self.w_dim,), f'w_avg must be [{self.w_dim}], got {list(w_avg.shape)}'
        return w_avg.expand(int(batch), *self.param_shape).clone(memory_format=torch.contiguous_format)

    def to_ws(self, params):
        """`params [N, *param_shape]` -> `ws [N, num_ws, *w_shape]` for `G.synthesis`.

        Repeats over layers and rows are `expand` views (no copies); gradients flow back
        to `params` summed over the repeats.
        """
        assert tuple(params.shape[1:]) == self.param_shape, \
            f'{self.name} latents must be [N, {", ".join(map(str, self.param_shape))}], got {list(params.shape)}'
        n = params.shape[0]
        ws = params if self.per_layer else params.unsqueeze(1)                 # [N, L or 1, (R,) w_dim]
        if self.latent_rows is not None and not self.is_matrix:
            ws = ws.unsqueeze(2)                                               # [N, L or 1, 1, w_dim]
        return ws.expand(n, self.num_ws, *self.w_shape)                        # [N, L, *w_shape]

    @torch.no_grad()
    def truncate_(self, params, w_avg, psi):
        """Pull `params` toward the mean in place: `w <- w_avg + psi * (w - w_avg)`.

        Args:
            params: `[N, *param_shape]` (a leaf that may require grad; modified in place).
            w_avg:  `[w_dim]` mean latent, broadcast over images, layers and rows.
            psi:    truncation factor; 1 leaves `params` unchanged.
        Returns:
            `params`.
        """
        if psi == 1:
            return params
        w_avg = w_avg.to(device=params.device, dtype=params.dtype)
        return params.sub_(w_avg).mul_(psi).add_(w_avg)

#----------------------------------------------------------------------------
