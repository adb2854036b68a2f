"""Feature detectors for the metrics: NVIDIA's TorchScript Inception-v3 and VGG16 (LPIPS), or a
seeded random network with the same calling convention (tests, offline smoke runs).

Calling convention (that of the TorchScript files of stylegan2-ada-pytorch):
    detector(images, return_features=True)                      -> features `[N, D]`
    detector(images, resize_images=False, return_lpips=True)    -> LPIPS features `[N, F]` (VGG16)
where `images` is `[N, 3, H, W]` with values in [0, 255] (uint8, or float for LPIPS).
For LPIPS features, `(f0 - f1).square().sum(1)` is the LPIPS distance (`metrics.lpips`).

Detector specs (strings):
    an http(s) URL        downloaded once into the dnnlib download cache, then read from there;
    a local path          a TorchScript archive (e.g. a manual download of the URL's file);
    'random:<dim>:<seed>' `RandomDetector(dim, seed)`: deterministic, no file needed.
"""

import dataclasses
import os
import threading
import warnings

import numpy as np
import torch

import dnnlib

#----------------------------------------------------------------------------

INCEPTION_URL = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt'
VGG16_URL = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt'


DETECTOR_PATH_ENV = 'METRICS_DETECTOR_PATH'     # Default for detector_path when none is given.


class DetectorUnavailableError(OSError):
    """A detector could not be loaded (offline and not cached, missing file, wrong format). One-line message."""

#----------------------------------------------------------------------------
# Seeded random detector.

class RandomDetector(torch.nn.Module):
    """Small random conv net (3 stride-2 3x3 convs + a random linear head) with the detector
    calling convention. Weights are drawn from `torch.Generator().manual_seed(seed)`, so the
    same spec gives the same features on every machine. Not a perceptual model: for tests.

    Features: the pooled activations of all three convs, projected to `dim`. LPIPS features: at
    each conv, unit-normalised channel vectors per pixel, flattened and scaled by
    1/sqrt(H*W), so the squared L2 difference is the spatial mean, summed over layers (LPIPS
    without the learned channel weights).
    """

    def __init__(self, dim=64, seed=0, resize=64, channels=(16, 32, 64)):
        super().__init__()
        self.dim, self.seed, self.resize = int(dim), int(seed), int(resize)
        gen = torch.Generator().manual_seed(self.seed)
        in_ch = 3
        for idx, out_ch in enumerate(channels):
            weight = torch.randn([out_ch, in_ch, 3, 3], generator=gen) * np.sqrt(2 / (in_ch * 9))
            self.register_buffer(f'conv{idx}_weight', weight)
            self.register_buffer(f'conv{idx}_bias', torch.randn([out_ch], generator=gen) * 0.1)
            in_ch = out_ch
        self.num_convs = len(channels)
        self.register_buffer('head', torch.randn([self.dim, sum(channels)], generator=gen) / np.sqrt(sum(channels)))

    def forward(self, images, return_features=False, return_lpips=False, resize_images=True, **_unused):
        """images `[N, C, H, W]` in [0, 255] (C = 1 or 3) -> `[N, dim]` features, `[N, F]` LPIPS
        features, or `[N, dim]` softmax "probabilities" (neither flag)."""
        x = images.to(self.head.dtype)           # float32; float64 for a `.double()` copy (exact test references)
        if x.shape[1] == 1:
            x = x.repeat([1, 3, 1, 1])
        x = x / 127.5 - 1
        if resize_images and tuple(x.shape[2:]) != (self.resize, self.resize):
            x = torch.nn.functional.interpolate(x, size=(self.resize, self.resize), mode='bilinear',
                                                align_corners=False)
        acts = []
        for idx in range(self.num_convs):
            w, b = getattr(self, f'conv{idx}_weight'), getattr(self, f'conv{idx}_bias')
            x = torch.nn.functional.leaky_relu(torch.nn.functional.conv2d(x, w, b, stride=2, padding=1), 0.2)
            acts.append(x)
        if return_lpips:
            parts = [(a / a.norm(dim=1, keepdim=True).clamp_min(1e-10)).flatten(1) / np.sqrt(a.shape[2] * a.shape[3])
                     for a in acts]
            return torch.cat(parts, dim=1)
        features = torch.cat([a.mean(dim=[2, 3]) for a in acts], dim=1) @ self.head.t()     # [N, dim]
        return features if return_features else features.softmax(dim=1)

#----------------------------------------------------------------------------
# Spec handling.

def parse_random_spec(spec):
    """'random:<dim>:<seed>' -> (dim, seed); None for other specs. Raises ValueError if malformed."""
    if not (isinstance(spec, str) and spec.startswith('random:')):
        return None
    parts = spec.split(':')
    try:
        dim, seed = (int(parts[1]), int(parts[2])) if len(parts) == 3 else (int(parts[1]), 0)
    except (ValueError, IndexError):
        dim = seed = None
    if dim is None or len(parts) > 3 or dim < 1:
        raise ValueError(f"bad detector spec {spec!r}: expected 'random:<dim>:<seed>', e.g. 'random:64:0'")
    return dim, seed


def detector_name(spec):
    """Short name for cache file names and reports: 'inception-2015-12-05', 'vgg16', 'random-64-0'."""
    if parse_random_spec(spec) is not None:
        return spec.replace(':', '-')
    return os.path.splitext(os.path.basename(str(spec).split('?')[0].rstrip('/')))[0] or 'detector'


def resolve_detector(default_url, detector_path=None):
    """The spec to load for a metric whose standard detector is `default_url`.

    detector_path: None (use $METRICS_DETECTOR_PATH if set, else the URL); 'random:<dim>:<seed>';
    a TorchScript file (used for every detector); a folder holding the URL's file name (e.g.
    both inception-2015-12-05.pt and vgg16.pt); or 'inception=PATH,vgg16=PATH' (a name prefix
    of the URL's file, '=' and a spec). The environment variable lets runs that cannot pass
    options (the training loop's metrics) use local files.
    """
    if detector_path is None or detector_path == '':
        detector_path = os.environ.get(DETECTOR_PATH_ENV) or None
    if detector_path is None:
        return default_url
    detector_path = os.fspath(detector_path)
    if parse_random_spec(detector_path) is not None:
        return detector_path
    base = os.path.basename(default_url)
    if '=' in detector_path and not os.path.exists(detector_path):
        for item in detector_path.split(','):
            key, _, value = item.partition('=')
            if key.strip() and base.startswith(key.strip()):
                return resolve_detector(default_url, value.strip())
        return default_url
    if os.path.isdir(detector_path):
        return os.path.join(detector_path, base)
    return detector_path


def detector_fingerprint(spec):
    """Hashable description of what a spec loads (for stats cache keys): the spec, plus size
    and mtime for a local file."""
    if parse_random_spec(spec) is not None or dnnlib.util.is_url(spec):
        return str(spec)
    try:
        st = os.stat(spec)
        return f'{os.path.abspath(spec)}|{st.st_size}|{st.st_mtime_ns}'
    except OSError:
        return str(spec)

#----------------------------------------------------------------------------
# Loading, with one instance per (spec, device) and process.

_detector_cache = {}
_detector_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class SourceHint:
    """How a user passes a local copy of a network file and a stand-in, for one-line errors."""
    local: str = (f'--detector-path PATH (a file, or its folder; detector_path=PATH in Python, or '
                  f'${DETECTOR_PATH_ENV})')
    stand_in: str = '--detector-path random:64:0'
    error: type = DetectorUnavailableError


def _load_torchscript(path, device, spec, hint):
    if not os.path.isfile(path):
        raise hint.error(f'{detector_name(spec)} file {path} not found; pass an existing file with {hint.local}')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)   # torch.jit is deprecated; NVIDIA's files are TorchScript.
            return torch.jit.load(path, map_location=device).eval()
    except (RuntimeError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise hint.error(f'{spec} is not a TorchScript network archive such as {os.path.basename(INCEPTION_URL)} '
                         f'or {os.path.basename(VGG16_URL)} ({first}); fix {hint.local.split(" (")[0]}') from None


def load_detector(spec, device=None, verbose=False, hint=SourceHint()):
    """Load the detector named by `spec` (see module docstring) onto `device`, uncached. `hint`: what the one-line
    errors tell the user to pass instead (the metrics' --detector-path by default)."""
    device = torch.device('cpu') if device is None else torch.device(device)
    rand = parse_random_spec(spec)
    if rand is not None:
        return RandomDetector(dim=rand[0], seed=rand[1]).eval().requires_grad_(False).to(device)
    spec = os.fspath(spec)
    if dnnlib.util.is_url(spec) and spec.split(':', 1)[0].lower() in ('http', 'https'):
        try:
            path = dnnlib.util.open_url(spec, num_attempts=2, verbose=verbose, return_filename=True)
        except OSError:
            cached = dnnlib.util.url_cache_path(spec)
            raise hint.error(
                f'{detector_name(spec)} unavailable: {spec} could not be downloaded (offline?) and is not cached as '
                f'{cached}; download it elsewhere and pass it with {hint.local}, or use the seeded random stand-in '
                f'{hint.stand_in} (not comparable to published numbers)') from None
    elif dnnlib.util.is_url(spec):
        path = dnnlib.util.open_url(spec, return_filename=True)
    else:
        path = os.path.expanduser(spec)
    return _load_torchscript(path, device, spec, hint)


def get_detector(spec, device=None, num_gpus=1, rank=0, verbose=False):
    """Cached `load_detector`: one instance per (spec, device). With several processes, rank 0
    loads (downloads) first while the others wait at a barrier, then they read the cache."""
    device = torch.device('cpu') if device is None else torch.device(device)
    key = (str(spec), str(device))
    with _detector_lock:
        if key in _detector_cache:
            return _detector_cache[key]
    distributed = num_gpus > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and rank != 0:
        torch.distributed.barrier()
    try:
        detector = load_detector(spec, device=device, verbose=verbose and rank == 0)
    finally:
        if distributed and rank == 0:
            torch.distributed.barrier()
    with _detector_lock:
        _detector_cache[key] = detector
    return detector


def clear_cache():
    """Forget loaded detectors (tests)."""
    with _detector_lock:
        _detector_cache.clear()
