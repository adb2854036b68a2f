"""Reconstruction losses for inversion: LPIPS (VGG16) plus optional pixel terms.

Two LPIPS implementations sit behind one interface (`features(x)` once per image,
`distance(fa, fb) -> [N]`), so the target's features are computed once per inversion:

* `vgg16-nvlabs[:PATH]` (the default): NVIDIA's TorchScript `vgg16.pt` used by
  stylegan2-ada-pytorch's projector and PPL metric ("the LPIPS loss from StyleGAN2" of the
  paper, sec. 4.2), the network of the metrics too. It takes images in [0, 255] and returns
  unit-normalised features `[N, F]`; the distance is the squared L2 norm of their difference.
  Read from a local path, or from the URL through `dnnlib.util.open_url`'s download cache;
  offline and not cached, loading fails with `LpipsUnavailableError` (one line: how to pass the
  file, or to choose `vgg-random`).
* `vgg`: the `lpips` package (Zhang et al. 2018, v0.1, VGG16 trunk, learned linear layers).
  Its linear weights ship with the package; the VGG16 trunk's ImageNet weights come from
  torchvision's download cache. Inputs in [-1, 1].
* `vgg-random`: the `lpips` package path with a seeded random VGG16 trunk (`pnet_rand=True`).
  For tests and offline smoke runs only: its values are not a perceptual metric.

Images larger than `resolution` (256) are downsampled with area averaging before the VGG,
as NVIDIA's projector does; smaller images are evaluated at their own size.

Masks (`prepare_target(target, mask)`, `mask` `[N, 1, H, W]` in [0, 1], 1 = keep): LPIPS is taken on its
spatial map. Each backend's `spatial_weights(features, mask)` resizes the mask (area average) to every
VGG layer's resolution and divides it by its mean, so the distance becomes the mean over the kept positions
of each layer's map; pixel terms are weighted the same way. The pixels with mask 0 are set to grey in both
the target and the generated image before the VGG, so that nothing under the mask reaches the loss through
the receptive fields of the kept positions either. A mask of ones gives bitwise the unmasked loss.
* `vgg`/`vgg-random`: the map is the lpips package's per-layer `lin((fa - fb)^2)` `[N, 1, H_k, W_k]`.
* `vgg16-nvlabs`: the flat features `[N, F]` are the five layers' `[C_k, H_k, W_k]` blocks one after the
  other, so the squared difference is weighted block by block. That layout is checked on the loaded file
  once (`NvlabsVGG16.check_spatial_layout`): a file that does not follow it refuses masks in one line.
"""

import contextlib
import copy
import os
import warnings

import torch
import torch.nn.functional as F

import dnnlib

#----------------------------------------------------------------------------

NVLABS_VGG16_URL = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt'
LPIPS_KINDS = ('vgg', 'vgg16-nvlabs', 'vgg-random')
_LPIPS_CACHE = {}   # (random_backbone, seed) -> CPU lpips.LPIPS: building VGG16 (with its classifier) takes seconds.


DEFAULT_LPIPS = 'vgg16-nvlabs'     # StyleGAN2's LPIPS, as in the paper and the metrics


VGG16_LPIPS_CHANNELS = (64, 128, 256, 512, 512)   # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


class LpipsUnavailableError(FileNotFoundError):
    """The LPIPS network file could not be read or downloaded. One-line message with the fix."""


class MaskUnsupportedError(ValueError):
    """The chosen LPIPS network gives no spatial map, so it cannot take a mask. One-line message with the fix."""


def _normalised(weights):
    """`[N, ...]` non-negative weights divided by their per-image mean (all-zero rows stay zero)."""
    mean = weights.mean(dim=tuple(range(1, weights.ndim)), keepdim=True)
    return weights / mean.clamp_min(1e-8)


def parse_lpips_spec(spec):
    """'vgg16-nvlabs' | 'vgg16-nvlabs:PATH_OR_URL' | 'vgg' | 'vgg-random' -> (kind, path_or_url or None)."""
    spec = str(spec)
    kind, sep, path = spec.partition(':')
    if kind == 'vgg16-nvlabs':
        return kind, (path if sep and path else NVLABS_VGG16_URL)
    if kind in ('vgg', 'vgg-random') and not sep:
        return kind, None
    raise ValueError(f'Unknown --lpips {spec!r}: use vgg16-nvlabs, vgg16-nvlabs:PATH, vgg or vgg-random')


def lpips_network_name(spec):
    """The name outputs record for an --lpips spec: 'vgg16-nvlabs' (NVIDIA's vgg16.pt from its URL),
    'vgg16-nvlabs:PATH' (another copy of it), 'vgg' (lpips package) or 'vgg-random' (random stand-in)."""
    kind, path = parse_lpips_spec(spec)
    return kind if path in (None, NVLABS_VGG16_URL) else f'{kind}:{path}'

#----------------------------------------------------------------------------
# The lpips package's VGG16 LPIPS, split into features + distance.

class LpipsPackageVGG(torch.nn.Module):
    """LPIPS v0.1 with a VGG16 trunk from the `lpips` package.

    Args:
        random_backbone: use a randomly initialised trunk (`pnet_rand=True`), no download.
        seed:            seed of that random trunk (the global RNG is left untouched).
    """

    input_range = (-1, 1)

    def __init__(self, random_backbone=False, seed=0):
        super().__init__()
        import lpips  # Imported on use: the package prints and warns on import of torchvision models.
        self._lpips = lpips
        key = (bool(random_backbone), int(seed) if random_backbone else None)
        if key not in _LPIPS_CACHE:
            _LPIPS_CACHE[key] = self._build(lpips, random_backbone, seed)
        self.model = copy.deepcopy(_LPIPS_CACHE[key])

    @staticmethod
    def _build(lpips, random_backbone, seed):
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.filterwarnings('ignore', category=UserWarning, module=r'torchvision\..*')
            torch.manual_seed(seed)
            try:
                model = lpips.LPIPS(net='vgg', pretrained=True, pnet_rand=random_backbone, verbose=False)
            except Exception as err:  # torchvision's weight download failed (offline machine).
                raise RuntimeError(
                    f'Could not load the VGG16 ImageNet weights for LPIPS ({type(err).__name__}: {err}). '
                    f'Put torchvision\'s vgg16-397923af.pth into {torch.hub.get_dir()}/checkpoints, or use '
                    f'--lpips vgg16-nvlabs:PATH with NVIDIA\'s vgg16.pt') from err
        return model.eval().requires_grad_(False)

    def features(self, x):
        """x `[N, 3, H, W]` in [-1, 1] -> list of 5 channel-normalised feature maps `[N, C_k, H_k, W_k]` (float32)."""
        outs = self.model.net.forward(self.model.scaling_layer(x))
        return [self._lpips.normalize_tensor(f.float()) for f in outs]

    def distance(self, fa, fb, weights=None):
        """Feature lists of two batches -> LPIPS `[N]` (equals `lpips.LPIPS.forward`, flattened).

        weights: None, or `spatial_weights(fa, mask)`: each layer's spatial map `[N, 1, H_k, W_k]` is
        multiplied by its weights before the spatial mean.
        """
        total = 0
        for k, (lin, a, b) in enumerate(zip(self.model.lins, fa, fb)):
            layer_map = lin((a - b).square()).float()                       # [N, 1, H_k, W_k]
            if weights is not None:
                layer_map = layer_map * weights[k]
            total = total + layer_map.mean(dim=(1, 2, 3))
        return total

    def spatial_weights(self, features, mask):
        """mask `[N, 1, H, W]` (VGG input size) -> per layer `[N, 1, H_k, W_k]`: area-resized, mean 1 per image."""
        return [_normalised(F.adaptive_avg_pool2d(mask, f.shape[-2:])) for f in features]

#----------------------------------------------------------------------------
# NVIDIA's TorchScript VGG16 LPIPS (stylegan2-ada-pytorch metrics/vgg16.pt).

class NvlabsVGG16(torch.nn.Module):
    """NVIDIA's `vgg16.pt` (TorchScript). `path_or_url`: local file or URL (cached download)."""

    input_range = (0, 255)

    def __init__(self, path_or_url=NVLABS_VGG16_URL, device=None):
        super().__init__()
        self.net = self._load(str(path_or_url), device)
        self._layout_checked = set()                                        # input sizes whose layout was checked
        for p in self.net.parameters():
            p.requires_grad_(False)

    @staticmethod
    def _load(path_or_url, device):
        """The TorchScript module, or LpipsUnavailableError with a one-line fix."""
        is_url = dnnlib.util.is_url(path_or_url)
        local = os.path.expanduser(path_or_url)
        if not is_url and not os.path.isfile(local):
            raise LpipsUnavailableError(f'{path_or_url} not found: pass NVIDIA\'s vgg16.pt as --lpips vgg16-nvlabs:PATH')
        try:
            source = dnnlib.util.open_url(path_or_url, verbose=False) if is_url else open(local, 'rb')
        except OSError:
            cached = dnnlib.util.url_cache_path(path_or_url) if path_or_url.startswith(('http:', 'https:')) else None
            where = f' (or save it as {cached})' if cached else ''
            raise LpipsUnavailableError(
                f'NVIDIA\'s LPIPS network vgg16.pt could not be downloaded from {path_or_url} (offline?): download it '
                f'elsewhere and pass --lpips vgg16-nvlabs:PATH{where}, or use the random stand-in --lpips vgg-random '
                f'(not a perceptual metric)') from None
        with source as f, warnings.catch_warnings():
            warnings.filterwarnings('ignore', category=FutureWarning, message='.*torch.jit')   # NVIDIA ships TorchScript.
            try:
                return torch.jit.load(f, map_location=device).eval()
            except (RuntimeError, ValueError) as err:
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise LpipsUnavailableError(f'{path_or_url} is not NVIDIA\'s TorchScript vgg16.pt ({first}); '
                                            f'fix --lpips vgg16-nvlabs:PATH') from None

    def features(self, x):
        """x `[N, 3, H, W]` in [-1, 1] -> unit-normalised features `[N, F]` (float32)."""
        x = (x + 1) * (255 / 2)
        return self.net(x, resize_images=False, return_lpips=True).float()

    def distance(self, fa, fb, weights=None):
        """Features `[N, F]` of two batches -> squared L2 distance `[N]`; weights: None or `spatial_weights`."""
        sq = (fa - fb).square()
        if weights is not None:
            sq = sq * weights
        return sq.sum(dim=1)

    @staticmethod
    def layer_shapes(height, width):
        """[(C_k, H_k, W_k)] of the five LPIPS layers of VGG16 (relu1_2 ... relu5_3) for an input of that size."""
        shapes, h, w = [], int(height), int(width)
        for k, c in enumerate(VGG16_LPIPS_CHANNELS):
            if k:
                h, w = h // 2, w // 2                                       # max-pool, floor
            shapes.append((c, h, w))
        return shapes

    def spatial_weights(self, features, mask):
        """mask `[N, 1, H, W]` (VGG input size) -> flat weights `[N, F]`: each layer's block is the mask
        area-resized to `[H_k, W_k]`, divided by its mean, repeated over the C_k channels."""
        n, f = features.shape
        shapes = self.layer_shapes(*mask.shape[-2:])
        if sum(c * h * w for c, h, w in shapes) != f:
            raise MaskUnsupportedError(f'--mask: this vgg16-nvlabs file gives {f} features for {mask.shape[-1]} px, '
                                       f'not five VGG16 layer maps; use --lpips vgg')
        self.check_spatial_layout(mask.shape[-2:], mask.device)
        blocks = []
        for c, h, w in shapes:
            m = _normalised(F.adaptive_avg_pool2d(mask, (h, w)))            # [N, 1, h, w]
            blocks.append(m.expand(n, c, h, w).reshape(n, -1))
        return torch.cat(blocks, dim=1)

    @torch.no_grad()
    def check_spatial_layout(self, size, device):
        """Raise MaskUnsupportedError unless the first layer's block of the features is a `[C, H, W]` map:
        two images that differ only in their right quarter must differ only in that block's right columns."""
        key = tuple(int(v) for v in size)
        if key in self._layout_checked:
            return
        h, w = key
        a = torch.linspace(-1, 1, 3 * h * w, device=device).reshape(1, 3, h, w).sin()
        b = a.clone()
        b[:, :, :, w - w // 4:] = -b[:, :, :, w - w // 4:]
        c0, h0, w0 = self.layer_shapes(h, w)[0]
        fa, fb = (self.features(x)[:, :c0 * h0 * w0].reshape(c0, h0, w0) for x in (a, b))
        changed = (fa != fb).any(dim=(0, 1))                                # [w0]
        reach = w - w // 4 - 4                                              # relu1_2 sees 2 px on each side
        if not changed.any() or changed[:max(reach, 0)].any():
            raise MaskUnsupportedError('--mask: the features of this vgg16-nvlabs file are not laid out as '
                                       'per-layer [C, H, W] maps, so LPIPS has no spatial map to mask; use --lpips vgg')
        self._layout_checked.add(key)

#----------------------------------------------------------------------------

class InversionLoss(torch.nn.Module):
    """Per-image reconstruction loss `[N]`: LPIPS + mse_weight * MSE + l1_weight * L1.

    MSE and L1 are means over pixels and channels with images scaled to [0, 1].

    Args:
        perceptual:   an `LpipsPackageVGG` or `NvlabsVGG16`.
        resolution:   images larger than this are area-downsampled before the VGG; None = never.
        mse_weight:   weight of the pixel MSE term (0 = off, the paper's setting).
        l1_weight:    weight of the pixel L1 term (0 = off).
        vgg_autocast: dtype of autocast around the VGG forward (e.g. torch.bfloat16), None = off.
    """

    def __init__(self, perceptual, resolution=256, mse_weight=0.0, l1_weight=0.0, vgg_autocast=None):
        super().__init__()
        self.perceptual = perceptual
        self.resolution = None if resolution is None else int(resolution)   # px; larger images are shrunk
        self.mse_weight = float(mse_weight)
        self.l1_weight = float(l1_weight)
        self.vgg_autocast = vgg_autocast

    def _vgg_input(self, img):
        """`[N, C, H, W]` in [-1, 1] -> `[N, 3, h, w]`: grey repeated to RGB, area-downsampled to `resolution`."""
        if img.shape[1] == 1:
            img = img.expand(-1, 3, -1, -1)
        if self.resolution is not None and img.shape[2] > self.resolution:
            img = F.interpolate(img, size=(self.resolution, self.resolution), mode='area')
        return img

    def _autocast(self, device):
        if self.vgg_autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.vgg_autocast)

    def features(self, img):
        """VGG features of images `[N, C, H, W]` in [-1, 1] (opaque: pass them to `prepare_target` users)."""
        with self._autocast(img.device):
            return self.perceptual.features(self._vgg_input(img.to(torch.float32)))

    @torch.no_grad()
    def prepare_target(self, target, mask=None):
        """target `[N, C, H, W]` in [-1, 1], mask None or `[N, 1, H, W]` in [0, 1] (1 = keep) -> dict reused at
        every step: image, features, and for a mask that is not all ones: keep (`[N, 1, H, W]` bool, mask > 0),
        pixel_weights (mask over its mean), lpips_weights (`spatial_weights` of the perceptual network)."""
        target = target.to(torch.float32)
        if mask is None or bool((mask == 1).all()):
            return dict(image=target, features=self.features(target))
        mask = mask.to(device=target.device, dtype=torch.float32).clamp(0, 1)
        if tuple(mask.shape) != (target.shape[0], 1, *target.shape[2:]):
            raise ValueError(f'mask shape {list(mask.shape)} does not fit targets {list(target.shape)}')
        keep = mask > 0
        features = self.features(torch.where(keep, target, 0.0))
        vgg_mask = mask
        if self.resolution is not None and mask.shape[2] > self.resolution:
            vgg_mask = F.interpolate(mask, size=(self.resolution, self.resolution), mode='area')
        return dict(image=target, features=features, keep=keep, pixel_weights=_normalised(mask),
                    lpips_weights=self.perceptual.spatial_weights(features, vgg_mask))

    def forward(self, img, target_state):
        """img `[N, C, H, W]` (generator output, about [-1, 1]) -> dict(loss `[N]`, lpips `[N]`)."""
        keep = target_state.get('keep')
        vgg_img = img if keep is None else torch.where(keep, img.to(torch.float32), 0.0)
        lpips = self.perceptual.distance(self.features(vgg_img), target_state['features'],
                                         target_state.get('lpips_weights'))
        loss = lpips
        diff = (img.to(torch.float32) - target_state['image']) / 2
        weights = target_state.get('pixel_weights')
        if self.mse_weight != 0:
            sq = diff.square()
            loss = loss + self.mse_weight * (sq if weights is None else sq * weights).mean(dim=(1, 2, 3))
        if self.l1_weight != 0:
            ab = diff.abs()
            loss = loss + self.l1_weight * (ab if weights is None else ab * weights).mean(dim=(1, 2, 3))
        return dict(loss=loss, lpips=lpips)


class MaskedLoss(torch.nn.Module):
    """An `InversionLoss` bound to the masks of one batch (`[N, 1, H, W]` in [0, 1], or None), for
    `optimize.Inverter`, which calls `prepare_target(targets)`."""

    def __init__(self, loss, mask):
        super().__init__()
        self.loss, self.mask = loss, mask

    def prepare_target(self, target):
        return self.loss.prepare_target(target, self.mask)

    def forward(self, img, target_state):
        return self.loss(img, target_state)

    def __getattr__(self, name):                     # resolution, lpips_network, ... of the wrapped loss
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.loss, name)


def build_loss(spec=DEFAULT_LPIPS, device=None, resolution=256, mse_weight=0.0, l1_weight=0.0, precision='fp32', seed=0):
    """`InversionLoss` from an `--lpips` spec (see `parse_lpips_spec`), on `device`.

    precision: 'bf16' runs the VGG under bfloat16 autocast; 'fp32'/'tf32' leave it in float32.
    seed:      seed of the random trunk of 'vgg-random' (ignored otherwise).
    """
    kind, path = parse_lpips_spec(spec)
    if kind == 'vgg16-nvlabs':
        perceptual = NvlabsVGG16(path, device=device)
    else:
        perceptual = LpipsPackageVGG(random_backbone=(kind == 'vgg-random'), seed=seed)
    autocast = torch.bfloat16 if precision == 'bf16' else None
    loss = InversionLoss(perceptual, resolution=resolution, mse_weight=mse_weight, l1_weight=l1_weight,
                         vgg_autocast=autocast)
    loss.lpips_network = lpips_network_name(spec)     # what outputs record as the LPIPS used
    return loss.to(device) if device is not None else loss

#----------------------------------------------------------------------------

@torch.no_grad()
def pixel_metrics(img, target, mask=None):
    """Images `[N, C, H, W]` in [-1, 1] -> dict(mse `[N]`, psnr `[N]` in dB), in [0, 1] units, img clamped.

    mask: None, or `[N, 1, H, W]` in [0, 1]: the mean is taken over the masked pixels (weighted)."""
    diff = (img.to(torch.float32).clamp(-1, 1) - target.to(torch.float32)) / 2
    sq = diff.square()
    if mask is not None:
        sq = sq * _normalised(mask.to(device=sq.device, dtype=torch.float32))
    mse = sq.mean(dim=(1, 2, 3))
    psnr = -10 * torch.log10(mse.clamp_min(1e-12))
    return dict(mse=mse, psnr=psnr)

#----------------------------------------------------------------------------
