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


class LpipsUnavailableError(FileNotFoundError):
    """The LPIPS network file could not be read or downloaded. One-line message with the fix."""


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

    def distance(self, fa, fb):
        """Feature lists of two batches -> LPIPS `[N]` (equals `lpips.LPIPS.forward`, flattened)."""
        total = 0
        for lin, a, b in zip(self.model.lins, fa, fb):
            total = total + lin((a - b).square()).float().mean(dim=(1, 2, 3))
        return total

#----------------------------------------------------------------------------
# NVIDIA's TorchScript VGG16 LPIPS (stylegan2-ada-pytorch metrics/vgg16.pt).

class NvlabsVGG16(torch.nn.Module):
    """NVIDIA's `vgg16.pt` (TorchScript). `path_or_url`: local file or URL (cached download)."""

    input_range = (0, 255)

    def __init__(self, path_or_url=NVLABS_VGG16_URL, device=None):
        super().__init__()
        self.net = self._load(str(path_or_url), device)
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

    def distance(self, fa, fb):
        """Features `[N, F]` of two batches -> squared L2 distance `[N]`."""
        return (fa - fb).square().sum(dim=1)

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
    def prepare_target(self, target):
        """target `[N, C, H, W]` in [-1, 1] -> dict(image, features) reused at every step."""
        target = target.to(torch.float32)
        return dict(image=target, features=self.features(target))

    def forward(self, img, target_state):
        """img `[N, C, H, W]` (generator output, about [-1, 1]) -> dict(loss `[N]`, lpips `[N]`)."""
        lpips = self.perceptual.distance(self.features(img), target_state['features'])
        loss = lpips
        diff = (img.to(torch.float32) - target_state['image']) / 2
        if self.mse_weight != 0:
            loss = loss + self.mse_weight * diff.square().mean(dim=(1, 2, 3))
        if self.l1_weight != 0:
            loss = loss + self.l1_weight * diff.abs().mean(dim=(1, 2, 3))
        return dict(loss=loss, lpips=lpips)


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
def pixel_metrics(img, target):
    """Images `[N, C, H, W]` in [-1, 1] -> dict(mse `[N]`, psnr `[N]` in dB), in [0, 1] units, img clamped."""
    diff = (img.to(torch.float32).clamp(-1, 1) - target.to(torch.float32)) / 2
    mse = diff.square().mean(dim=(1, 2, 3))
    psnr = -10 * torch.log10(mse.clamp_min(1e-12))
    return dict(mse=mse, psnr=psnr)

#----------------------------------------------------------------------------
