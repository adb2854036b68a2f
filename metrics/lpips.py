"""LPIPS (Zhang et al. 2018) for inversion and the metrics: the networks, and the one grammar that names them.

An LPIPS spec (invert.py's --lpips, interpolate.py's --lpips, `metrics.lpips_distance_fn`):

* `vgg16-nvlabs[:PATH_OR_URL]` (the default): NVIDIA's TorchScript `vgg16.pt`, the LPIPS of
  stylegan2-ada-pytorch's projector and PPL ("the LPIPS loss from StyleGAN2" of the paper, sec. 4.2). It takes
  images in [0, 255] and returns unit-normalised features `[N, F]`; the distance is the squared L2 norm of their
  difference. Read from a local path, or from the URL through `dnnlib.util.open_url`'s download cache.
* `vgg`: the `lpips` package (v0.1, VGG16 trunk, learned linear layers); the trunk's ImageNet weights come from
  torchvision's download cache. Inputs in [-1, 1].
* `vgg-random`: the `lpips` package with a seeded random VGG16 trunk (`pnet_rand=True`).
* `random:<dim>:<seed>`: the LPIPS features of the metrics' seeded random detector (`metrics.detectors`).
The last two are stand-ins for tests and offline smoke runs: their values are not a perceptual metric.

Inversion uses a network's `features(x)` (x in [-1, 1]) once per image and `distance(fa, fb) -> [N]` per step,
so the target's features are computed once. Masks (`spatial_weights(features, mask)`): LPIPS is taken on its
spatial map. The mask (`[N, 1, H, W]` in [0, 1], 1 = keep) is resized (area average) to every VGG layer's
resolution and divided by its mean, so the distance becomes the mean over the kept positions of each layer's map.
* `vgg`/`vgg-random`: the map is the lpips package's per-layer `lin((fa - fb)^2)` `[N, 1, H_k, W_k]`.
* `vgg16-nvlabs`: the flat features `[N, F]` are the five layers' `[C_k, H_k, W_k]` blocks one after the
  other, so the squared difference is weighted block by block. That layout is checked on the loaded file
  once (`DetectorLpips.check_spatial_layout`): a file that does not follow it refuses masks in one line.
The metrics (PPL, reconstruction LPIPS) call `lpips_distance_fn(spec)` on images in [0, 255], exactly as
NVIDIA's metrics call their vgg16.pt.
"""

import copy
import warnings

import torch
import torch.nn.functional as F

from . import detectors

#----------------------------------------------------------------------------
# The grammar.

VGG16_URL = detectors.VGG16_URL   # NVIDIA's vgg16.pt
DEFAULT_LPIPS = 'vgg16-nvlabs'     # StyleGAN2's LPIPS, as in the paper and the metrics
LPIPS_KINDS = ('vgg16-nvlabs', 'vgg', 'vgg-random', 'random')
VGG16_LPIPS_CHANNELS = (64, 128, 256, 512, 512)   # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_LPIPS_CACHE = {}   # (random_backbone, seed) -> CPU lpips.LPIPS: building VGG16 (with its classifier) takes seconds.


class LpipsUnavailableError(detectors.DetectorUnavailableError):
    """The LPIPS network file could not be read or downloaded. One-line message with the fix."""


class MaskUnsupportedError(ValueError):
    """The chosen LPIPS network gives no spatial map, so it cannot take a mask. One-line message with the fix."""


def normalised_weights(weights):
    """`[N, ...]` non-negative weights divided by their per-image mean (all-zero rows stay zero)."""
    mean = weights.mean(dim=tuple(range(1, weights.ndim)), keepdim=True)
    return weights / mean.clamp_min(1e-8)


def parse_lpips_spec(spec):
    """An LPIPS spec -> (kind, argument): ('vgg16-nvlabs', path or URL), ('vgg', None), ('vgg-random', None) or
    ('random', (dim, seed)). Raises ValueError (one line naming the accepted forms) for anything else."""
    spec = str(spec)
    kind, sep, arg = spec.partition(':')
    if kind == 'vgg16-nvlabs':
        return kind, (arg if sep and arg else VGG16_URL)
    if kind in ('vgg', 'vgg-random') and not sep:
        return kind, None
    if kind == 'random':
        try:
            return kind, detectors.parse_random_spec(spec)
        except ValueError:
            pass
    raise ValueError(f'Unknown --lpips {spec!r}: use vgg16-nvlabs, vgg16-nvlabs:PATH, vgg or vgg-random '
                     f'(or random:DIM:SEED)')


def lpips_network_name(spec):
    """The name outputs record for an LPIPS spec: 'vgg16-nvlabs' (NVIDIA's vgg16.pt from its URL),
    'vgg16-nvlabs:PATH' (another copy of it), 'vgg' (lpips package), 'vgg-random' or 'random:<dim>:<seed>'."""
    kind, arg = parse_lpips_spec(spec)
    if kind == 'random':
        return f'random:{arg[0]}:{arg[1]}'
    return kind if arg in (None, VGG16_URL) else f'{kind}:{arg}'


def spec_from_detector(detector_spec):
    """The LPIPS spec of a resolved detector spec of NVIDIA's vgg16.pt (`detectors.resolve_detector(VGG16_URL,
    detector_path)`): its URL -> 'vgg16-nvlabs', another path or URL -> 'vgg16-nvlabs:PATH', 'random:D:S' as is."""
    detector_spec = str(detector_spec)
    if detectors.parse_random_spec(detector_spec) is not None:
        return detector_spec
    return 'vgg16-nvlabs' if detector_spec == VGG16_URL else f'vgg16-nvlabs:{detector_spec}'

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
        return [normalised_weights(F.adaptive_avg_pool2d(mask, f.shape[-2:])) for f in features]

#----------------------------------------------------------------------------
# NVIDIA's TorchScript VGG16 LPIPS (stylegan2-ada-pytorch metrics/vgg16.pt).

class DetectorLpips(torch.nn.Module):
    """LPIPS through a network of the detector convention (`net(images in [0, 255], resize_images=False,
    return_lpips=True) -> [N, F]`): NVIDIA's vgg16.pt, or the seeded random detector."""

    input_range = (0, 255)

    def __init__(self, net):
        super().__init__()
        self.net = net.eval()
        self._layout_checked = set()                                        # input sizes whose layout was checked
        self._traceable = {}                                                # input shape -> FX twin (torch.compile)
        for p in self.net.parameters():
            p.requires_grad_(False)

    def features(self, x):
        """x `[N, 3, H, W]` in [-1, 1] -> unit-normalised features `[N, F]` (float32)."""
        x = (x + 1) * (255 / 2)
        if torch.compiler.is_compiling():                                   # TorchDynamo cannot trace TorchScript
            twin = self._traceable.get(tuple(x.shape))
            if twin is not None:
                out = twin(x, False, True)
                return (out[0] if isinstance(out, (tuple, list)) else out).float()
        return self.net(x, resize_images=False, return_lpips=True).float()

    def make_traceable(self, shape, device):
        """Before torch.compile traces `features` for inputs of `shape` `[N, 3, H, W]`: a TorchScript network is
        converted into an FX graph (`torch_utils.compiled.traceable_script`, checked against the TorchScript output);
        a plain module (the seeded random detector) is traceable as it is. Raises RuntimeError (one line) when the
        conversion is not possible; the compiled step then compiles the synthesis alone."""
        if not isinstance(self.net, torch.jit.ScriptModule):
            return
        from torch_utils.compiled import traceable_script
        key = tuple(int(v) for v in shape)
        if key not in self._traceable:
            probe = torch.linspace(0, 255, key[0] * 3 * key[2] * key[3], device=device).reshape(key)
            self._traceable[key] = traceable_script(self.net, (probe, False, True))

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
            m = normalised_weights(F.adaptive_avg_pool2d(mask, (h, w)))            # [N, 1, h, w]
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

#----------------------------------------------------------------------------
# Loading by spec.

LPIPS_HINT = detectors.SourceHint(local='--lpips vgg16-nvlabs:PATH', stand_in='--lpips vgg-random',
                                  error=LpipsUnavailableError)


def load_lpips(spec=DEFAULT_LPIPS, device=None, seed=0):
    """The network of an LPIPS spec, with `features` / `distance` / `spatial_weights` (inversion's loss); a file
    that cannot be had raises LpipsUnavailableError (one line: how to pass it, or a stand-in).
    seed: of the random trunk of 'vgg-random' (ignored otherwise)."""
    kind, arg = parse_lpips_spec(spec)
    if kind == 'vgg16-nvlabs':
        return DetectorLpips(detectors.load_detector(arg, device=device, hint=LPIPS_HINT))
    if kind == 'random':
        return DetectorLpips(detectors.load_detector(spec, device=device))
    return LpipsPackageVGG(random_backbone=(kind == 'vgg-random'), seed=seed)


def lpips_distance_fn(spec=DEFAULT_LPIPS, device=None, num_gpus=1, rank=0, verbose=False, seed=0):
    """`fn(img0, img1) -> [N]`: the LPIPS distance of images `[N, 3, H, W]` float in [0, 255], already at the
    resolution to compare (no resizing inside, as `resize_images=False` in NVIDIA's PPL). NVIDIA's vgg16.pt and
    the random detector are loaded once per process (`detectors.get_detector`) and their features compared in
    float32 (float64 for a float64 copy), as NVIDIA's metrics do; `fn.lpips_network` names the network."""
    kind, arg = parse_lpips_spec(spec)
    if kind in ('vgg16-nvlabs', 'random'):
        source = arg if kind == 'vgg16-nvlabs' else spec
        fn = lpips_distance(detectors.get_detector(source, device=device, num_gpus=num_gpus, rank=rank,
                                                   verbose=verbose))
    else:
        net = load_lpips(spec, seed=seed).to(device if device is not None else 'cpu')

        @torch.no_grad()
        def fn(img0, img1):
            return net.distance(net.features(img0 / 127.5 - 1), net.features(img1 / 127.5 - 1))
    fn.lpips_network = lpips_network_name(spec)
    return fn


def lpips_distance(detector):
    """`fn(img0, img1) -> [N]`: squared distance of `detector`'s LPIPS features (see `lpips_distance_fn`), in float32,
    or in float64 for a detector that computes in float64."""
    def distance(img0, img1):
        feats = detector(torch.cat([img0, img1]), resize_images=False, return_lpips=True)
        f0, f1 = feats.to(torch.promote_types(feats.dtype, torch.float32)).chunk(2)
        return (f0 - f1).square().sum(dim=1)
    distance.detector = detector
    return distance
