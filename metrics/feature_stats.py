"""Shared machinery of the metrics: options, the feature accumulator, and detector features of a
dataset (cached on disk) or of a generator (sampled through its public API).

Multi-process runs (torch.distributed initialised, `num_gpus` > 1): each rank handles a
strided share of the dataset / its own generator samples, and features are all-gathered and
interleaved, so that every rank ends with the same statistics (as stylegan2-ada-pytorch).
"""

import copy
import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np
import torch

import dnnlib
from torch_utils import compiled

from . import detectors, lpips

#----------------------------------------------------------------------------

class MetricOptions(dnnlib.EasyDict):
    """What a metric needs. Every field can be passed to `metric_main.calc_metric`.

    G               generator (public API: z_shape, num_ws, c_dim, img_resolution, img_channels,
                    sample_z, mapping, synthesis), None for metrics that need none (`recon`).
    G_kwargs        truncation_psi, truncation_cutoff (mapping), noise_mode (synthesis).
    dataset_kwargs  dict with `class_name` (e.g. training.dataset.ImageFolderDataset) + its kwargs.
    num_gpus, rank, device   process layout (device None = cuda:rank if available, else cpu).
    detector_path   override for the detector files, see `detectors.resolve_detector`.
    num_gen, max_real  override the number of generated / real images (PPL: samples).
    seed            base seed of latents, labels and KID subsets (rank is added for sampling).
    batch_size      images per detector call; batch_gen: images per generator call.
    num_workers     DataLoader workers for real images; cache: reuse dataset stats on disk.
    progress        show tqdm bars (rank 0 only); inversion_pairs: the pairs of an inversion run, for `recon`.
    compile         (extra) 'auto', 'on' or 'off': the generator of the generated-image metrics compiled
                    (`image_function`).
    """

    def __init__(self, G=None, G_kwargs=None, dataset_kwargs=None, num_gpus=1, rank=0, device=None, detector_path=None,
                 num_gen=None, max_real=None, seed=0, batch_size=64, batch_gen=4, num_workers=3, cache=True,
                 progress=False, inversion_pairs=None, **extra):
        if not 0 <= rank < num_gpus:
            raise ValueError(f'rank {rank} outside [0, num_gpus={num_gpus})')
        if device is None:
            device = torch.device('cuda', rank) if torch.cuda.is_available() else torch.device('cpu')
        super().__init__(G=G, G_kwargs=dnnlib.EasyDict(G_kwargs or {}),
                         dataset_kwargs=dnnlib.EasyDict(dataset_kwargs or {}), num_gpus=int(num_gpus), rank=int(rank),
                         device=torch.device(device), detector_path=detector_path,
                         num_gen=num_gen, max_real=max_real, seed=int(seed), batch_size=int(batch_size),
                         batch_gen=int(batch_gen), num_workers=int(num_workers), cache=bool(cache),
                         progress=bool(progress), inversion_pairs=inversion_pairs, **extra)

    def counts(self, max_real, num_gen):
        """A metric's (real, generated) image counts after this run's overrides: `max_real`
        caps the real images (None = no cap), `num_gen` replaces the number generated."""
        if self.max_real is not None:
            max_real = self.max_real if max_real is None else min(max_real, self.max_real)
        return max_real, (num_gen if self.num_gen is None else self.num_gen)

    def detector(self, default_url):
        """The resolved detector spec for a metric whose standard detector is `default_url`."""
        return detectors.resolve_detector(default_url, self.detector_path)

    def lpips_distance(self):
        """The LPIPS `fn(img0, img1) -> [N]` of PPL and reconstruction metrics: `self.distance_fn`
        when given, else NVIDIA's VGG16 (`vgg16-nvlabs`) resolved through `detector_path`. The
        network used is recorded in `self.lpips_network` (calc_metric reports it)."""
        fn = self.get('distance_fn')
        if fn is not None:
            self.lpips_network = getattr(fn, 'lpips_network', 'distance_fn')
            return fn
        fn = lpips.lpips_distance_fn(lpips.spec_from_detector(self.detector(detectors.VGG16_URL)), device=self.device,
                                     num_gpus=self.num_gpus, rank=self.rank, verbose=self.progress)
        self.lpips_network = fn.lpips_network
        return fn

    def load_detector(self, spec):
        return detectors.get_detector(spec, device=self.device, num_gpus=self.num_gpus, rank=self.rank,
                                      verbose=self.progress)

    def make_dataset(self):
        if not self.dataset_kwargs.get('class_name'):
            raise ValueError('this metric needs real images: pass dataset_kwargs (calc_metrics.py --data)')
        return dnnlib.util.construct_class_by_name(**self.dataset_kwargs)

    def bar(self, total, desc):
        """A tqdm bar (a silent one unless progress and rank 0)."""
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit='img', leave=False, disable=not (self.progress and self.rank == 0),
                    dynamic_ncols=True)

#----------------------------------------------------------------------------

class FeatureStats:
    """A bounded pile of feature rows `[n, D]` and, on request, their first two moments.

    capture_all:       keep every row (KID and precision/recall need the rows themselves).
    capture_mean_cov:  keep the float64 column sums `[D]` and the Gram matrix sum of x x^T
                       `[D, D]`, one batch at a time (FID needs only these).
    max_items:         accept at most this many rows; rows past the limit are ignored.
    """

    def __init__(self, *, capture_all=False, capture_mean_cov=False, max_items=None):
        self.capture_all, self.capture_mean_cov = bool(capture_all), bool(capture_mean_cov)
        self.max_items = max_items if max_items is None else int(max_items)
        self.num_items = 0            # rows accepted so far
        self.num_features = None      # D, fixed by the first batch
        self._batches = []            # float32 [n_i, D] (capture_all)
        self._col_sum = None          # float64 [D]    sum over rows of x       (capture_mean_cov)
        self._gram_sum = None         # float64 [D, D] sum over rows of x x^T   (capture_mean_cov)

    def is_full(self):
        return self.max_items is not None and self.num_items >= self.max_items

    def _room(self):
        """How many more rows fit (None: unbounded)."""
        return None if self.max_items is None else max(0, self.max_items - self.num_items)

    def _fix_width(self, width):
        if self.num_features is None:
            self.num_features = width
            if self.capture_mean_cov:
                self._col_sum = np.zeros(width, dtype=np.float64)
                self._gram_sum = np.zeros((width, width), dtype=np.float64)
        elif width != self.num_features:
            raise ValueError(f'features changed width: {width} after {self.num_features}')

    def append(self, x):
        """Add rows: array-like `[n, D]` (stored as float32; moments accumulate in float64)."""
        rows = np.asarray(x, dtype=np.float32)
        if rows.ndim != 2:
            raise ValueError(f'features must be [n, D], got shape {list(rows.shape)}')
        room = self._room()
        if room is not None and rows.shape[0] > room:
            rows = rows[:room]
        self._fix_width(rows.shape[1])
        if len(rows) == 0:
            return
        if self.capture_all:
            self._batches.append(rows)
        if self.capture_mean_cov:
            wide = rows.astype(np.float64)
            np.add(self._col_sum, wide.sum(axis=0), out=self._col_sum)
            np.add(self._gram_sum, wide.T @ wide, out=self._gram_sum)
        self.num_items = self.num_items + len(rows)

    def append_torch(self, x, num_gpus=1):
        """Add this rank's rows, a tensor `[n, D]`. With num_gpus > 1 all ranks' rows are
        all-gathered first and interleaved by row: (rank 0, row 0), (rank 1, row 0), ..."""
        if x.ndim != 2:
            raise ValueError(f'features must be [n, D], got shape {list(x.shape)}')
        rows = x.detach()
        if num_gpus > 1:
            gathered = [torch.empty_like(rows) for _ in range(num_gpus)]
            torch.distributed.all_gather(gathered, rows.contiguous())
            rows = torch.stack(gathered, dim=1).flatten(0, 1)
        self.append(rows.to(torch.float32).cpu().numpy())

    def get_all(self):
        """Every accepted row: float32 `[num_items, D]`."""
        if not self.capture_all:
            raise ValueError('FeatureStats was created without capture_all')
        if len(self._batches) == 0:
            return np.zeros((0, self.num_features or 0), dtype=np.float32)
        return np.concatenate(self._batches, axis=0)

    def get_mean_cov(self):
        """(mean `[D]`, covariance `[D, D]`) in float64: E[x] and E[x x^T] - E[x] E[x]^T, i.e. the
        biased (divide by N) covariance, which is what FID is defined with."""
        if not self.capture_mean_cov:
            raise ValueError('FeatureStats was created without capture_mean_cov')
        if self.num_items == 0:
            raise ValueError('no features were accumulated')
        n = self.num_items
        mean = self._col_sum / n
        return mean, np.subtract(self._gram_sum / n, np.outer(mean, mean))

    # The .npz layout (keys meta, all_features, raw_mean, raw_cov) is the on-disk cache format.
    def save(self, path):
        """Write to `path` as .npz (no pickle), through a temporary file and a rename."""
        meta = dict(capture_all=self.capture_all, capture_mean_cov=self.capture_mean_cov, max_items=self.max_items,
                    num_items=self.num_items, num_features=self.num_features)
        arrays = {'meta': np.array(json.dumps(meta))}
        if self.capture_all:
            arrays['all_features'] = self.get_all()
        if self.capture_mean_cov and self._col_sum is not None:
            arrays['raw_mean'], arrays['raw_cov'] = self._col_sum, self._gram_sum
        partial = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
        try:
            with open(partial, 'wb') as f:
                np.savez(f, **arrays)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)

    @classmethod
    def load(cls, path):
        """Read a file written by `save`."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data['meta']))
            out = cls(capture_all=meta['capture_all'], capture_mean_cov=meta['capture_mean_cov'],
                      max_items=meta['max_items'])
            out.num_items, out.num_features = meta['num_items'], meta['num_features']
            if 'all_features' in data.files:
                out._batches = [data['all_features'].astype(np.float32)]
            if 'raw_mean' in data.files:
                out._col_sum, out._gram_sum = data['raw_mean'], data['raw_cov']
        return out

#----------------------------------------------------------------------------
# Dataset features, cached under a hash of what determines them.

def path_fingerprint(path):
    """'abs path|size|mtime_ns' of a file; for a folder, its file count, total size and newest mtime."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isfile(path):
        st = os.stat(path)
        return f'{path}|{st.st_size}|{st.st_mtime_ns}'
    count = size = newest = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            count, size, newest = count + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return f'{path}|dir|{count}|{size}|{newest}'


def dataset_cache_file(opts, detector_spec, detector_kwargs, stats_kwargs, dataset_name='dataset'):
    """`<cache>/gan-metrics/<dataset>-<detector>-<md5>.npz`, the md5 over the dataset kwargs, the
    data's path fingerprint, the detector fingerprint, detector kwargs and stats options."""
    kwargs = dict(opts.dataset_kwargs)
    key = dict(dataset_kwargs=sorted((k, repr(v)) for k, v in kwargs.items()),
               data=path_fingerprint(kwargs['path']) if kwargs.get('path') else None,
               detector=detectors.detector_fingerprint(detector_spec),
               detector_kwargs=sorted(detector_kwargs.items()), stats_kwargs=sorted(stats_kwargs.items()))
    md5 = hashlib.md5(repr(sorted(key.items())).encode('utf-8')).hexdigest()
    tag = f'{dataset_name}-{detector_name_safe(detector_spec)}-{md5}'
    return dnnlib.util.make_cache_dir_path('gan-metrics', tag + '.npz')


def detector_name_safe(spec):
    return ''.join(ch if ch.isalnum() or ch in '-_.' else '_' for ch in detectors.detector_name(spec))


def _broadcast_flag(flag, opts):
    if opts.num_gpus <= 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=opts.device)
    torch.distributed.broadcast(t, src=0)
    return bool(t.item() != 0)


def _to_rgb(images):
    """Grey `[N, 1, H, W]` -> `[N, 3, H, W]` by repeating the channel; RGB passes through."""
    return images.repeat([1, 3, 1, 1]) if images.shape[1] == 1 else images


def frozen_copy(G, device):
    """An evaluation copy of G on `device` without gradients (metrics never change the caller's G)."""
    twin = copy.deepcopy(G)
    return twin.eval().requires_grad_(False).to(device)


def _strided_share(num_items, world, rank):
    """Dataset indices of one rank: rank, rank + world, ... wrapping around so that every rank
    gets ceil(num_items / world) of them (the gather then restores the dataset order)."""
    per_rank = -(-num_items // world)
    return [(rank + world * k) % num_items for k in range(per_rank)]


def _features_of_dataset(opts, dataset, num_items, detector_spec, detector_kwargs, stats_kwargs):
    detector = opts.load_detector(detector_spec)
    stats = FeatureStats(capture_all=stats_kwargs.get('capture_all', False),
                         capture_mean_cov=stats_kwargs.get('capture_mean_cov', False), max_items=num_items)
    loader = torch.utils.data.DataLoader(dataset, sampler=_strided_share(num_items, opts.num_gpus, opts.rank),
                                         batch_size=opts.batch_size, num_workers=opts.num_workers,
                                         pin_memory=opts.device.type == 'cuda')
    with opts.bar(num_items, 'dataset features') as bar, torch.no_grad():
        for images, _labels in loader:
            seen = stats.num_items
            stats.append_torch(detector(_to_rgb(images.to(opts.device)), **detector_kwargs), num_gpus=opts.num_gpus)
            bar.update(stats.num_items - seen)
    return stats


def compute_feature_stats_for_dataset(opts, detector_spec, detector_kwargs, max_items=None, **stats_kwargs):
    """Detector features of the real images (fed as uint8 `[n, 3, H, W]`) -> FeatureStats.

    max_items: use only the first `max_items` images of the dataset (None = all). With
    `opts.cache`, the result is read from / written to `dataset_cache_file(...)` (rank 0 writes;
    all ranks read when rank 0 finds it).
    """
    dataset = opts.make_dataset()
    try:
        num_items = len(dataset) if max_items is None else min(len(dataset), int(max_items))
        stats_kwargs = dict(stats_kwargs, max_items=num_items)
        cached = None
        if opts.cache:
            cached = Path(dataset_cache_file(opts, detector_spec, detector_kwargs, stats_kwargs,
                                             dataset_name=dataset.name))
            if _broadcast_flag(opts.rank == 0 and cached.is_file(), opts):
                return FeatureStats.load(cached)
        stats = _features_of_dataset(opts, dataset, num_items, detector_spec, detector_kwargs, stats_kwargs)
    finally:
        dataset.close()
    if cached and opts.rank == 0:                     # only rank 0 writes the cache
        cached.parent.mkdir(parents=True, exist_ok=True)
        stats.save(cached)
    return stats

#----------------------------------------------------------------------------
# Generator features.

def rank_generator(opts, offset=0):
    """A CPU `torch.Generator` seeded from (opts.seed, offset, rank): reproducible sampling."""
    return torch.Generator().manual_seed(int(opts.seed) * 1000003 + int(offset) * 1009 + opts.rank)


def label_sampler(opts, G, offset=0):
    """`fn(n) -> c [n, c_dim]` on opts.device: labels of random real images (conditional G), or
    zeros `[n, 0]` without building the dataset (unconditional G)."""
    if G.c_dim == 0:
        return lambda n: torch.zeros([n, 0], device=opts.device)
    dataset = opts.make_dataset()
    rnd = np.random.RandomState((opts.seed * 7919 + offset * 31 + opts.rank) % (1 << 31))

    def sample(n):
        return torch.from_numpy(np.stack([dataset.get_label(rnd.randint(len(dataset)))
                                          for _ in range(n)])).to(opts.device)
    return sample


def generate_images(G, z, c, G_kwargs):
    """z `[n, *G.z_shape]`, c `[n, c_dim]` -> uint8 `[n, C, H, W]`: x in [-1, 1] becomes
    x * 127.5 + 128, clamped to [0, 255] and truncated (NVIDIA's conversion for detectors)."""
    mapping_kwargs = {k: v for k, v in G_kwargs.items() if k in ('truncation_psi', 'truncation_cutoff')}
    synthesis_kwargs = {k: v for k, v in G_kwargs.items() if k not in mapping_kwargs}
    img = G.synthesis(G.mapping(z, c, **mapping_kwargs), **synthesis_kwargs)
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


# `compile='auto'` (calc_metrics.py --compile): the generator calls below which it stays eager, and the device types
# where the compiled forward was measured faster (none yet: eager everywhere until measured; 'on' compiles).
AUTO_COMPILE = dict(min_calls=2000, devices=())


def image_function(opts, G, calls):
    """`fn(z, c) -> uint8 images` (`generate_images` with `opts.G_kwargs`), compiled with torch.compile when
    `opts.compile` says so for `calls` generator calls (`torch_utils.compiled`; one graph per batch shape)."""
    kwargs = dict(opts.G_kwargs)

    def images(z, c):
        return generate_images(G, z, c, kwargs)
    mode = compiled.check_mode(opts.get('compile', 'off'))
    if mode == 'off' or (mode == 'auto' and (opts.device.type not in AUTO_COMPILE['devices']
                                             or calls < AUTO_COMPILE['min_calls'])):
        return images
    return compiled.Compiler('on').function(('generate', G), lambda: images, name='generator (metrics)')


def _generated_batches(opts, G, num_calls, per_call, batch_gen):
    """Yield `num_calls` uint8 batches of `per_call` images, `batch_gen` per generator call."""
    gen, sample_c = rank_generator(opts), label_sampler(opts, G)
    make = image_function(opts, G, num_calls * (per_call // batch_gen))
    for _ in range(num_calls):
        parts = []
        for _ in range(per_call // batch_gen):
            z = G.sample_z(batch_gen, gen, opts.device)
            parts.append(make(z, sample_c(batch_gen)))
        yield torch.cat(parts)


def compute_feature_stats_for_generator(opts, detector_spec, detector_kwargs, max_items, **stats_kwargs):
    """Detector features of `max_items` generated images -> FeatureStats.

    Latents: `G.sample_z(batch_gen, rank_generator(opts))` (rows of latent matrices correlated as
    in the paper); labels: `label_sampler`. Each rank generates a multiple of `batch_gen` images
    close to `batch_size` per detector call, until `max_items` rows (all ranks) are collected.
    """
    if max_items is None or max_items < 1:
        raise ValueError('the number of generated images must be >= 1')
    batch_gen = max(1, min(opts.batch_gen, opts.batch_size))
    per_call = max(batch_gen, opts.batch_size - opts.batch_size % batch_gen)   # images per detector call
    num_calls = -(-max_items // (per_call * opts.num_gpus))
    G = frozen_copy(opts.G, opts.device)
    detector = opts.load_detector(detector_spec)
    stats = FeatureStats(max_items=max_items, **stats_kwargs)
    with opts.bar(max_items, 'generator features') as bar, torch.no_grad():
        for images in _generated_batches(opts, G, num_calls, per_call, batch_gen):
            seen = stats.num_items
            stats.append_torch(detector(_to_rgb(images), **detector_kwargs), num_gpus=opts.num_gpus)
            bar.update(stats.num_items - seen)
    return stats

#----------------------------------------------------------------------------
