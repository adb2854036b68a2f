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

import numpy as np
import torch

import dnnlib
from . import detectors

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
    progress        show tqdm bars (rank 0 only); inversion_run: folder read by `recon`.
    """

    def __init__(self, G=None, G_kwargs=None, dataset_kwargs=None, num_gpus=1, rank=0, device=None, detector_path=None,
                 num_gen=None, max_real=None, seed=0, batch_size=64, batch_gen=4, num_workers=3, cache=True,
                 progress=False, inversion_run=None, **extra):
        if not 0 <= rank < num_gpus:
            raise ValueError(f'rank {rank} outside [0, num_gpus={num_gpus})')
        if device is None:
            device = torch.device('cuda', rank) if torch.cuda.is_available() else torch.device('cpu')
        super().__init__(G=G, G_kwargs=dnnlib.EasyDict(G_kwargs or {}), dataset_kwargs=dnnlib.EasyDict(dataset_kwargs or {}),
                         num_gpus=int(num_gpus), rank=int(rank), device=torch.device(device), detector_path=detector_path,
                         num_gen=num_gen, max_real=max_real, seed=int(seed), batch_size=int(batch_size),
                         batch_gen=int(batch_gen), num_workers=int(num_workers), cache=bool(cache),
                         progress=bool(progress), inversion_run=inversion_run, **extra)

    def detector(self, default_url):
        """The resolved detector spec for a metric whose standard detector is `default_url`."""
        return detectors.resolve_detector(default_url, self.detector_path)

    def load_detector(self, spec):
        return detectors.get_detector(spec, device=self.device, num_gpus=self.num_gpus, rank=self.rank, verbose=self.progress)

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
    """Accumulates feature rows `[n, D]`: all of them (`capture_all`) and/or their float64 sum
    and Gram matrix (`capture_mean_cov`), up to `max_items` rows (later rows are dropped)."""

    def __init__(self, capture_all=False, capture_mean_cov=False, max_items=None):
        self.capture_all = bool(capture_all)
        self.capture_mean_cov = bool(capture_mean_cov)
        self.max_items = None if max_items is None else int(max_items)
        self.num_items = 0
        self.num_features = None
        self._all = []
        self.raw_mean = None          # [D] float64: sum of rows
        self.raw_cov = None           # [D, D] float64: sum of outer products

    def is_full(self):
        return self.max_items is not None and self.num_items >= self.max_items

    def append(self, x):
        """x: array-like `[n, D]`."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f'features must be [n, D], got shape {list(x.shape)}')
        if self.max_items is not None:
            x = x[:max(self.max_items - self.num_items, 0)]
        if self.num_features is None:
            self.num_features = x.shape[1]
            if self.capture_mean_cov:
                self.raw_mean = np.zeros([self.num_features], dtype=np.float64)
                self.raw_cov = np.zeros([self.num_features, self.num_features], dtype=np.float64)
        elif x.shape[1] != self.num_features:
            raise ValueError(f'features changed width: {x.shape[1]} after {self.num_features}')
        if x.shape[0] == 0:
            return
        self.num_items += x.shape[0]
        if self.capture_all:
            self._all.append(x)
        if self.capture_mean_cov:
            x64 = x.astype(np.float64)
            self.raw_mean += x64.sum(axis=0)
            self.raw_cov += x64.T @ x64

    def append_torch(self, x, num_gpus=1):
        """x: tensor `[n, D]` of this rank; with num_gpus > 1, rows of all ranks are gathered and
        interleaved (rank 0 row 0, rank 1 row 0, ...) before appending."""
        if x.ndim != 2:
            raise ValueError(f'features must be [n, D], got shape {list(x.shape)}')
        x = x.detach()
        if num_gpus > 1:
            parts = [torch.empty_like(x) for _ in range(num_gpus)]
            torch.distributed.all_gather(parts, x.contiguous())
            x = torch.stack(parts, dim=1).flatten(0, 1)
        self.append(x.to(torch.float32).cpu().numpy())

    def get_all(self):
        """`[num_items, D]` float32."""
        if not self.capture_all:
            raise ValueError('FeatureStats was created without capture_all')
        if not self._all:
            return np.zeros([0, self.num_features or 0], dtype=np.float32)
        return np.concatenate(self._all, axis=0)

    def get_mean_cov(self):
        """(mean `[D]`, covariance `[D, D]`), float64; the covariance divides by N (biased), as NVIDIA's."""
        if not self.capture_mean_cov:
            raise ValueError('FeatureStats was created without capture_mean_cov')
        if self.num_items == 0:
            raise ValueError('no features were accumulated')
        mean = self.raw_mean / self.num_items
        cov = self.raw_cov / self.num_items - np.outer(mean, mean)
        return mean, cov

    def save(self, path):
        """Write as .npz (no pickle), atomically."""
        arrays = dict(meta=np.array(json.dumps(dict(capture_all=self.capture_all, capture_mean_cov=self.capture_mean_cov,
                                                    max_items=self.max_items, num_items=self.num_items,
                                                    num_features=self.num_features))))
        if self.capture_all:
            arrays['all_features'] = self.get_all()
        if self.capture_mean_cov and self.raw_mean is not None:
            arrays.update(raw_mean=self.raw_mean, raw_cov=self.raw_cov)
        tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
        try:
            with open(tmp, 'wb') as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @staticmethod
    def load(path):
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data['meta']))
            stats = FeatureStats(meta['capture_all'], meta['capture_mean_cov'], meta['max_items'])
            stats.num_items, stats.num_features = meta['num_items'], meta['num_features']
            if 'all_features' in data:
                stats._all = [data['all_features'].astype(np.float32)]
            if 'raw_mean' in data:
                stats.raw_mean, stats.raw_cov = data['raw_mean'], data['raw_cov']
        return stats

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
    return images.repeat([1, 3, 1, 1]) if images.shape[1] == 1 else images


def compute_feature_stats_for_dataset(opts, detector_spec, detector_kwargs, max_items=None, **stats_kwargs):
    """Detector features of the real images (uint8 `[N, 3, H, W]` batches) -> FeatureStats.

    max_items: use only the first `max_items` images of the dataset (None = all). With
    `opts.cache`, the result is stored in / read from `dataset_cache_file(...)`.
    """
    dataset = opts.make_dataset()
    num_items = len(dataset) if max_items is None else min(len(dataset), int(max_items))
    stats_kwargs = dict(stats_kwargs, max_items=num_items)
    cache_file = None
    if opts.cache:
        cache_file = dataset_cache_file(opts, detector_spec, detector_kwargs, stats_kwargs, dataset_name=dataset.name)
        if _broadcast_flag(opts.rank == 0 and os.path.isfile(cache_file), opts):
            dataset.close()
            return FeatureStats.load(cache_file)

    stats = FeatureStats(**stats_kwargs)
    detector = opts.load_detector(detector_spec)
    world, rank = opts.num_gpus, opts.rank
    subset = [(i * world + rank) % num_items for i in range((num_items - 1) // world + 1)]
    loader = torch.utils.data.DataLoader(dataset, sampler=subset, batch_size=opts.batch_size, num_workers=opts.num_workers,
                                         pin_memory=opts.device.type == 'cuda')
    with opts.bar(num_items, 'dataset features') as bar, torch.no_grad():
        for images, _labels in loader:
            features = detector(_to_rgb(images.to(opts.device)), **detector_kwargs)
            before = stats.num_items
            stats.append_torch(features, num_gpus=world)
            bar.update(stats.num_items - before)
    dataset.close()

    if cache_file is not None and rank == 0:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        stats.save(cache_file)
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
        return torch.from_numpy(np.stack([dataset.get_label(rnd.randint(len(dataset))) for _ in range(n)])).to(opts.device)
    return sample


def generate_images(G, z, c, G_kwargs):
    """z `[n, *G.z_shape]`, c `[n, c_dim]` -> uint8 `[n, C, H, W]` (as NVIDIA: x * 127.5 + 128, clamped, truncated)."""
    mapping_kwargs = {k: G_kwargs[k] for k in ('truncation_psi', 'truncation_cutoff') if k in G_kwargs}
    synthesis_kwargs = {k: v for k, v in G_kwargs.items() if k not in mapping_kwargs}
    ws = G.mapping(z, c, **mapping_kwargs)
    img = G.synthesis(ws, **synthesis_kwargs)
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def compute_feature_stats_for_generator(opts, detector_spec, detector_kwargs, max_items, **stats_kwargs):
    """Detector features of `max_items` generated images -> FeatureStats.

    Latents: `G.sample_z(batch_gen, rank_generator(opts))` (rows of latent matrices correlated as
    in the paper); labels: `label_sampler`. Images are generated `opts.batch_gen` at a time and
    fed to the detector `opts.batch_size` at a time.
    """
    if max_items is None or max_items < 1:
        raise ValueError('the number of generated images must be >= 1')
    G = copy.deepcopy(opts.G).eval().requires_grad_(False).to(opts.device)
    stats = FeatureStats(max_items=max_items, **stats_kwargs)
    detector = opts.load_detector(detector_spec)
    gen = rank_generator(opts)
    sample_c = label_sampler(opts, G)
    batch_gen = max(1, min(opts.batch_gen, opts.batch_size))
    per_call = max(batch_gen, opts.batch_size // batch_gen * batch_gen)
    with opts.bar(max_items, 'generator features') as bar, torch.no_grad():
        while not stats.is_full():
            images = []
            for _ in range(per_call // batch_gen):
                z = G.sample_z(batch_gen, gen, opts.device)
                images.append(generate_images(G, z, sample_c(batch_gen), opts.G_kwargs))
            features = detector(_to_rgb(torch.cat(images)), **detector_kwargs)
            before = stats.num_items
            stats.append_torch(features, num_gpus=opts.num_gpus)
            bar.update(stats.num_items - before)
    return stats

#----------------------------------------------------------------------------
