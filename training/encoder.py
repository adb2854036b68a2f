"""An image encoder into the generator's own latent space: w, w+ (StyleGAN2) or W, W+ (Poirier-Ginter
et al., "Overparameterization Improves StyleGAN Inversion"; the paper leaves the encoder as future work).
A pyramid of discriminator blocks reads the image as tokens, one cross-attention with a query per predicted latent
row and layer reads them, and a zero-initialised head adds the offset to `w_avg` (design: docs/encoder.md).

Shapes (N = batch, L = `num_ws`, R = `latent_rows`, D = `w_dim`): img `[N, C, H, W]` in [-1, 1];
params `[N, *LatentSpace.param_shape]`, so a prediction is an inversion start.

Parameters (`parameter_count()` computes them; a test compares it with the module), with
`ch(r) = min(channel_base // r, channel_max)` and blocks at r = res, res/2, ..., 2t (tmp = ch(r), out = ch(r/2)):

    pyramid   = (C + 1) * ch(res) + sum over blocks of  9 tmp^2 + tmp  +  9 tmp out + out  +  tmp out
    tokens    = t^2 * ch(t)                                          (position embedding)
    attention = 2 * (ch(t) * d + d)  +  (L' + R') * d                (keys, values; query embeddings)
    head      = d * D + D                                            (zero-initialised output layer)

with L' = L for per-layer spaces (else 1), R' = R for matrix spaces (else 1); defaults channel_base = 32 D,
channel_max = D, d = D, t = min(16, res // 4), 4 heads.
"""

import math
import os

import torch
from torch import nn

import dnnlib
from torch_utils import checkpoint, misc
from torch_utils.persistence import persistent_class
from training.discriminator import DiscriminatorBlock
from training.latent_spaces import LatentSpace
from training.layers import FullyConnectedLayer, channels_at, normalize_2nd_moment, remember

#----------------------------------------------------------------------------
# Geometry shared by the module and the parameter-count formula.


def _design(img_resolution, w_dim, channel_base=None, channel_max=None, token_resolution=None, attn_dim=None,
            num_heads=4):
    """The design settings with their defaults filled in (see the module docstring)."""
    d = dict(channel_base=32 * w_dim if channel_base is None else int(channel_base),
             channel_max=w_dim if channel_max is None else int(channel_max),
             token_resolution=min(16, img_resolution // 4) if token_resolution is None else int(token_resolution),
             attn_dim=w_dim if attn_dim is None else int(attn_dim), num_heads=int(num_heads))
    t = d['token_resolution']
    if img_resolution < 8 or img_resolution & (img_resolution - 1):
        raise ValueError(f'img_resolution must be a power of two >= 8, got {img_resolution}')
    if t < 1 or t & (t - 1) or t >= img_resolution:
        raise ValueError(f'token_resolution must be a power of two below img_resolution, got {t}')
    if d['attn_dim'] % d['num_heads']:
        raise ValueError(f'attn_dim={d["attn_dim"]} must be divisible by num_heads={d["num_heads"]}')
    return d


def _query_grid(space, num_ws, latent_rows):
    """(L', R'): query groups (layers) and rows per group."""
    return (num_ws if space.endswith('+') else 1), (latent_rows if space in ('W', 'W+') else 1)


def parameter_count(img_resolution, img_channels, space, num_ws, w_dim, latent_rows=None, **design_kwargs):
    """Trainable parameters of `Encoder(...)` with these arguments, from the docstring's formula."""
    LatentSpace(space, num_ws, w_dim, latent_rows).param_shape
    d = _design(img_resolution, w_dim, **design_kwargs)
    ch = lambda r: channels_at(r, d['channel_base'], d['channel_max'])  # noqa: E731
    t, a = d['token_resolution'], d['attn_dim']
    total = (img_channels + 1) * ch(img_resolution)
    r = img_resolution
    while r > t:
        tmp, out = ch(r), ch(r // 2)
        total += 9 * tmp * tmp + tmp + 9 * tmp * out + out + tmp * out
        r //= 2
    layers, rows = _query_grid(space, num_ws, latent_rows)
    total += t * t * ch(t) + 2 * (ch(t) * a + a) + (layers + rows) * a + a * w_dim + w_dim
    return total

#----------------------------------------------------------------------------


@persistent_class
class Encoder(nn.Module):
    """Image `[N, C, H, W]` in [-1, 1] -> latent `[N, *param_shape]` = `w_avg` + predicted offset."""

    def __init__(self,
        img_resolution,             # Input size in px (a power of two), the generator's.
        img_channels,               # Colour channels of the input.
        space,                      # Target latent space: 'w', 'w+', 'W' or 'W+'.
        num_ws,                     # Per-layer latents of the generator's synthesis network (L).
        w_dim,                      # Width of one latent row (D).
        latent_rows     = None,     # R of an overparameterized generator; None = StyleGAN2 vectors.
        **design_kwargs,            # channel_base, channel_max, token_resolution, attn_dim, num_heads.
    ):
        super().__init__()
        shape = LatentSpace(space, num_ws, w_dim, latent_rows).param_shape
        design = _design(img_resolution, w_dim, **design_kwargs)
        remember(self, img_resolution=int(img_resolution), img_channels=int(img_channels), space=space,
                 num_ws=int(num_ws), w_dim=int(w_dim), latent_rows=None if latent_rows is None else int(latent_rows),
                 param_shape=shape)
        self._design = design
        t, a = design['token_resolution'], design['attn_dim']
        ch = lambda r: channels_at(r, design['channel_base'], design['channel_max'])  # noqa: E731

        self.block_resolutions = []
        r, layer_idx = self.img_resolution, 0
        while r > t:
            block = DiscriminatorBlock(0 if r == self.img_resolution else ch(r), ch(r), ch(r // 2), resolution=r,
                                       img_channels=self.img_channels, first_layer_idx=layer_idx, architecture='resnet')
            self.add_module(f'b{r}', block)
            self.block_resolutions.append(r)
            layer_idx += block.num_layers
            r //= 2
        self.token_channels = ch(t)
        self.pos_embed = nn.Parameter(torch.randn([t * t, self.token_channels]))
        self.key = FullyConnectedLayer(self.token_channels, a)
        self.value = FullyConnectedLayer(self.token_channels, a)
        layers, rows = _query_grid(space, self.num_ws, self.latent_rows)
        self.layer_embed = nn.Parameter(torch.randn([layers, a]) * math.sqrt(0.5))   # sum of two: unit variance
        self.row_embed = nn.Parameter(torch.randn([rows, a]) * math.sqrt(0.5))
        self.head = FullyConnectedLayer(a, self.w_dim)
        with torch.no_grad():
            self.head.weight.zero_()                          # offset 0 at the start: prediction = w_avg
        self.register_buffer('w_avg', torch.zeros([self.w_dim]))

    @classmethod
    def from_generator(cls, G, space, **design_kwargs):
        """An encoder for generator `G` (its resolution, channels, num_ws, w_dim, R), `G.mapping.w_avg` copied in."""
        E = cls(G.img_resolution, G.img_channels, space, G.num_ws, G.w_dim, G.latent_rows, **design_kwargs)
        with torch.no_grad():
            E.w_avg.copy_(G.mapping.w_avg.detach().to(E.w_avg))
        return E

    @property
    def design(self):
        """Design settings, defaults filled in: channel_base, channel_max, token_resolution, attn_dim, num_heads."""
        return dict(self._design)

    def queries(self):
        """`[Q, d]` with Q = L' * R', layer-major (query l * R' + r predicts row r of layer l)."""
        return (self.layer_embed.unsqueeze(1) + self.row_embed.unsqueeze(0)).reshape(-1, self.layer_embed.shape[1])

    def tokens(self, img):
        """img `[N, C, H, W]` -> tokens `[N, T, c_t]` (unit second moment per token, plus position embedding)."""
        misc.assert_shape(img, [None, self.img_channels, self.img_resolution, self.img_resolution])
        x, image = None, img.to(torch.float32)
        for block in (getattr(self, f'b{r}') for r in self.block_resolutions):
            x, image = block(x, image)
        x = x.flatten(2).transpose(1, 2)                      # [N, T, c_t]
        return normalize_2nd_moment(x, dim=2) + self.pos_embed.to(x.dtype)

    def offsets(self, img):
        """img `[N, C, H, W]` -> offsets from `w_avg`, `[N, Q, D]`."""
        tokens = self.tokens(img)
        n, heads = tokens.shape[0], self._design['num_heads']
        q = self.queries()                                    # [Q, d]
        def split(x):                                         # [..., M, d] -> [..., h, M, d/h]
            return x.reshape(*x.shape[:-2], x.shape[-2], heads, -1).transpose(-3, -2)
        k, v = split(self.key(tokens)), split(self.value(tokens))                          # [N, h, T, d/h]
        qh = split(q).unsqueeze(0).expand(n, -1, -1, -1)                                    # [N, h, Q, d/h]
        attended = torch.nn.functional.scaled_dot_product_attention(qh, k, v)              # [N, h, Q, d/h]
        attended = attended.transpose(1, 2).reshape(n, q.shape[0], q.shape[1])             # [N, Q, d]
        return self.head(attended + q)

    def forward(self, img):
        """img `[N, C, H, W]` in [-1, 1] -> params `[N, *param_shape]`, `w_avg` broadcast plus the predicted offset."""
        offset = self.offsets(img).reshape(img.shape[0], *self.param_shape)
        return offset + self.w_avg.to(offset.dtype)

    def to_ws(self, params):
        """params `[N, *param_shape]` -> ws `[N, num_ws, *w_shape]` for `G.synthesis` (expand views, no copies)
        with w_shape (D,) or (R, D); vector spaces on an overparameterized generator repeat the vector over rows."""
        misc.assert_shape(params, [None, *self.param_shape])
        return LatentSpace(self.space, self.num_ws, self.w_dim, self.latent_rows).to_ws(params)

    def extra_repr(self):
        return (f'space={self.space}, param_shape={self.param_shape}, img_resolution={self.img_resolution}, '
                f'design={self._design}')

#----------------------------------------------------------------------------
# Pickles.


def save_encoder_pickle(path, E, **extra):
    """Write {'E': E, **extra} (plain metadata such as generator_pkl) to `path` atomically."""
    if not isinstance(E, Encoder):
        raise TypeError(f'save_encoder_pickle expects an Encoder, got {type(E).__name__}')
    if 'E' in extra:
        raise TypeError("save_encoder_pickle: 'E' is the encoder's key; name the extra entry differently")
    checkpoint.save_network_pkl(os.fspath(path), dict(E=E, **extra))


def load_encoder_pkl(path, device=None, trust_pickle=False):
    """The whole encoder pickle as a dict ('E' plus metadata); raises CheckpointError (one line) otherwise."""
    try:
        local = dnnlib.util.open_url(path, return_filename=True)
    except OSError as err:
        reason = dnnlib.util.one_line(err)
        raise checkpoint.CheckpointError(f'Cannot load {path}: {reason}', path=path, reason=reason) from err
    data = checkpoint.load_network_pkl(local, trust=trust_pickle, device=device)
    if not isinstance(data.get('E'), Encoder):
        held = ', '.join(sorted(map(str, data))) or 'nothing'
        reason = (f'it is not an encoder pickle (it holds {held}); '
                  f'pass an encoder-snapshot-*.pkl from train_encoder.py')
        raise checkpoint.CheckpointError(f'Cannot load {path}: {reason}', path=path, reason=reason)
    return data


def generator_mismatch(E, G, generator='the generator'):
    """Why encoder `E` cannot serve `G` (one clause naming G as `generator`), or None: E must read G's images
    (resolution, channels) and predict latents of G's geometry (num_ws, w_dim, R)."""
    if (E.img_resolution, E.img_channels) != (G.img_resolution, G.img_channels):
        return (f'the encoder reads {E.img_resolution} px {E.img_channels}-channel images, but {generator} makes '
                f'{G.img_resolution} px {G.img_channels}-channel ones')
    mine, theirs = (E.num_ws, E.w_dim, E.latent_rows), (G.num_ws, G.w_dim, G.latent_rows)
    if mine != theirs:
        return f'the encoder predicts latents for num_ws, w_dim, R = {mine}, but {generator} has {theirs}'
    return None


def load_encoder(path, device=None, trust_pickle=False):
    """The Encoder of an encoder pickle (path or URL), safely by default; raises CheckpointError (one line)."""
    return load_encoder_pkl(path, device=device, trust_pickle=trust_pickle)['E']

#----------------------------------------------------------------------------
