"""Metric registry: `calc_metric(name, ...)` computes a registered metric, `report_metric` appends
its result to `<run_dir>/metric-<name>.jsonl`. Names and settings follow stylegan2-ada-pytorch
(fid50k_full, kid50k_full, pr50k3_full, ppl2_wend, and the legacy fid50k, kid50k, pr50k3,
ppl_zfull, ppl_wfull, ppl_zend, ppl_wend); `recon` and `recon_pixel` evaluate an inversion run,
`encoder_recon` an image encoder (G(E(x)) against a set of images, and the encoder's speed).
"""

import json
import os
import time
from pathlib import Path

import torch

import dnnlib
from torch_utils.files import append_jsonl

from . import encoder_reconstruction, frechet, ppl, precision_recall, reconstruction
from .feature_stats import MetricOptions

#----------------------------------------------------------------------------

_REGISTRY = {}    # name -> (fn(opts) -> {result name: value}, dataset option overrides)

# Dataset options of the two families: the primary metrics read the whole dataset without
# x-flips; the legacy ones keep the x-flip setting the caller chose.
WHOLE_DATASET = dict(max_size=None, xflip=False)
LEGACY_DATASET = dict(max_size=None)
INVERSION_METRICS = ('recon', 'recon_pixel')


def register_metric(fn=None, *, dataset=None):
    """Decorator: register `fn(opts) -> {result_name: float}` under `fn.__name__`. `dataset`:
    options forced onto `opts.dataset_kwargs` before the call (e.g. WHOLE_DATASET)."""
    if fn is None:
        return lambda f: register_metric(f, dataset=dataset)
    if not callable(fn):
        raise TypeError('register_metric decorates a function')
    _REGISTRY[fn.__name__] = (fn, dict(dataset or {}))
    return fn


def is_valid_metric(name):
    return name in _REGISTRY


def list_valid_metrics():
    return [name for name in _REGISTRY]


def needs_generator(name):
    return name not in INVERSION_METRICS


def needs_dataset(name):
    """Whether the metric reads real images (PPL only for conditional generators, for labels)."""
    return name.startswith(('fid', 'kid', 'pr'))

#----------------------------------------------------------------------------

def _broadcast_results(results, opts):
    """Rank 0's result dict to every rank."""
    if opts.num_gpus <= 1:
        return results
    box = [results if opts.rank == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0, device=opts.device if opts.device.type == 'cuda' else None)
    return box[0]


def calc_metric(metric, G=None, dataset_kwargs=None, num_gpus=1, rank=0, device=None, **kwargs):
    """Compute one metric; every process of a multi-process run must call it.

    Positional order (metric, G, dataset_kwargs, num_gpus, rank, device) is the training loop's;
    other keyword arguments are `MetricOptions` fields (G_kwargs, detector_path, num_gen,
    max_real, seed, batch_size, num_workers, cache, progress, inversion_pairs, distance_fn, ...).
    Returns EasyDict(results=EasyDict({name: float}), metric, total_time, total_time_str,
    num_gpus, overrides) where overrides lists the non-standard settings used (or is empty).
    """
    if not is_valid_metric(metric):
        raise ValueError(f'unknown metric {metric!r}; valid metrics: {", ".join(list_valid_metrics())}')
    opts = MetricOptions(G=G, dataset_kwargs=dict(dataset_kwargs or {}), num_gpus=num_gpus, rank=rank, device=device,
                         **kwargs)
    if needs_generator(metric) and opts.G is None:
        raise ValueError(f'{metric} needs a generator')
    fn, dataset_overrides = _REGISTRY[metric]
    opts.dataset_kwargs.update(dataset_overrides)
    started = time.time()
    results = _broadcast_results(fn(opts), opts)
    seconds = time.time() - started
    out = dnnlib.EasyDict(results=dnnlib.EasyDict({k: float(v) if isinstance(v, float) else v
                                                   for k, v in results.items()}),
                          metric=metric, total_time=seconds, total_time_str=dnnlib.util.format_time(seconds),
                          num_gpus=num_gpus, overrides={k: opts[k] for k in ('num_gen', 'max_real', 'detector_path')
                                                        if opts[k] is not None})
    if opts.get('lpips_network') is not None:
        out.lpips_network = opts.lpips_network      # which LPIPS network the values come from
    return out


def report_metric(result, run_dir=None, snapshot_pkl=None):
    """Print `calc_metric`'s result as one JSON line, plus snapshot_pkl (relative to run_dir
    for local files) and a timestamp; with run_dir, also append it to metric-<name>.jsonl there."""
    snapshot = None if snapshot_pkl is None else str(snapshot_pkl)
    if snapshot is not None and run_dir is not None and not dnnlib.util.is_url(snapshot):
        snapshot = os.path.relpath(os.path.abspath(snapshot), os.path.abspath(run_dir))
    record = {**result, 'snapshot_pkl': snapshot, 'timestamp': time.time()}
    print(json.dumps(record))
    if run_dir is None:
        return record
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    append_jsonl(Path(run_dir) / f"metric-{result['metric']}.jsonl", record)
    return record

#----------------------------------------------------------------------------
# Primary metrics (stylegan2-ada-pytorch): whole dataset, no x-flips.

def _named_pair(name, precision_and_recall):
    """{'<name>_precision': p, '<name>_recall': r}: the result names of NVIDIA's PR metrics."""
    return {f'{name}_{part}': value for part, value in zip(('precision', 'recall'), precision_and_recall)}


@register_metric(dataset=WHOLE_DATASET)
def fid50k_full(opts):
    return dict(fid50k_full=frechet.compute_fid(opts, max_real=None, num_gen=50000))


@register_metric(dataset=WHOLE_DATASET)
def kid50k_full(opts):
    return dict(kid50k_full=frechet.compute_kid(opts, max_real=1000000, num_gen=50000))


@register_metric(dataset=WHOLE_DATASET)
def pr50k3_full(opts):
    return _named_pair('pr50k3_full', precision_recall.compute_pr(opts, max_real=200000, num_gen=50000, nhood_size=3))


@register_metric
def ppl2_wend(opts):
    return dict(ppl2_wend=ppl.compute_ppl(opts, num_samples=50000, epsilon=1e-4, space='w', sampling='end', crop=False))

#----------------------------------------------------------------------------
# Legacy metrics: the first 50k real images, x-flips as the dataset options say; PPL with the face crop.

@register_metric(dataset=LEGACY_DATASET)
def fid50k(opts):
    return dict(fid50k=frechet.compute_fid(opts, max_real=50000, num_gen=50000))


@register_metric(dataset=LEGACY_DATASET)
def kid50k(opts):
    return dict(kid50k=frechet.compute_kid(opts, max_real=50000, num_gen=50000))


@register_metric(dataset=LEGACY_DATASET)
def pr50k3(opts):
    return _named_pair('pr50k3', precision_recall.compute_pr(opts, max_real=50000, num_gen=50000, nhood_size=3))


def _legacy_ppl(opts, space, sampling):
    return ppl.compute_ppl(opts, num_samples=50000, epsilon=1e-4, space=space, sampling=sampling, crop=True)


@register_metric
def ppl_zfull(opts):
    return dict(ppl_zfull=_legacy_ppl(opts, 'z', 'full'))


@register_metric
def ppl_wfull(opts):
    return dict(ppl_wfull=_legacy_ppl(opts, 'w', 'full'))


@register_metric
def ppl_zend(opts):
    return dict(ppl_zend=_legacy_ppl(opts, 'z', 'end'))


@register_metric
def ppl_wend(opts):
    return dict(ppl_wend=_legacy_ppl(opts, 'w', 'end'))

#----------------------------------------------------------------------------
# Inversion runs (paper, table 2).

@register_metric
def recon(opts):
    return reconstruction.compute_recon(opts, with_detectors=True)


@register_metric
def recon_pixel(opts):
    return reconstruction.compute_recon(opts, with_detectors=False)

#----------------------------------------------------------------------------
# Image encoders (training/encoder.py): reconstructions G(E(x)) of the images of dataset_kwargs, no optimisation.

@register_metric
def encoder_recon(opts):
    return encoder_reconstruction.compute_encoder_recon(opts)

#----------------------------------------------------------------------------
