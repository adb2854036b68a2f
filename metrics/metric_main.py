"""Metric registry: `calc_metric(name, ...)` computes a registered metric, `report_metric` appends
its result to `<run_dir>/metric-<name>.jsonl`. Names and settings follow stylegan2-ada-pytorch
(fid50k_full, kid50k_full, pr50k3_full, ppl2_wend, and the legacy fid50k, kid50k, pr50k3,
ppl_zfull, ppl_wfull, ppl_zend, ppl_wend); `recon` and `recon_pixel` evaluate an inversion run.
"""

import json
import os
import time

import torch

import dnnlib
from torch_utils.image_io import append_jsonl
from . import frechet, ppl, precision_recall, reconstruction
from .feature_stats import MetricOptions

#----------------------------------------------------------------------------

_metric_dict = {}   # name -> fn(opts) -> dict of results


def register_metric(fn):
    """Decorator: register `fn(opts) -> {result_name: float}` under `fn.__name__`."""
    if not callable(fn):
        raise TypeError('register_metric decorates a function')
    _metric_dict[fn.__name__] = fn
    return fn


def is_valid_metric(metric):
    return metric in _metric_dict


def list_valid_metrics():
    return list(_metric_dict)


def needs_generator(metric):
    return metric not in ('recon', 'recon_pixel')


def needs_dataset(metric):
    """Whether the metric reads real images (PPL only for conditional generators, for labels)."""
    return metric.startswith(('fid', 'kid', 'pr'))

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
    max_real, seed, batch_size, num_workers, cache, progress, inversion_run, distance_fn, ...).
    Returns EasyDict(results=EasyDict({name: float}), metric, total_time, total_time_str,
    num_gpus, overrides) where overrides lists the non-standard settings used (or is empty).
    """
    if not is_valid_metric(metric):
        raise ValueError(f'unknown metric {metric!r}; valid metrics: {", ".join(list_valid_metrics())}')
    opts = MetricOptions(G=G, dataset_kwargs=dict(dataset_kwargs or {}), num_gpus=num_gpus, rank=rank, device=device,
                         **kwargs)
    if needs_generator(metric) and opts.G is None:
        raise ValueError(f'{metric} needs a generator')
    start = time.time()
    results = _broadcast_results(_metric_dict[metric](opts), opts)
    total_time = time.time() - start
    overrides = {k: opts[k] for k in ('num_gen', 'max_real', 'detector_path') if opts[k] is not None}
    return dnnlib.EasyDict(results=dnnlib.EasyDict({k: float(v) if isinstance(v, float) else v for k, v in results.items()}),
                           metric=metric, total_time=total_time, total_time_str=dnnlib.util.format_time(total_time),
                           num_gpus=num_gpus, overrides=overrides)


def report_metric(result_dict, run_dir=None, snapshot_pkl=None):
    """Print the result as one JSON line and append it to `<run_dir>/metric-<metric>.jsonl`
    (run_dir None: print only). snapshot_pkl is recorded relative to run_dir."""
    metric = result_dict['metric']
    if run_dir is not None and snapshot_pkl is not None and not dnnlib.util.is_url(str(snapshot_pkl)):
        snapshot_pkl = os.path.relpath(os.path.abspath(snapshot_pkl), os.path.abspath(run_dir))
    line = dict(result_dict, snapshot_pkl=None if snapshot_pkl is None else str(snapshot_pkl), timestamp=time.time())
    print(json.dumps(line))
    if run_dir is not None:
        os.makedirs(run_dir, exist_ok=True)
        append_jsonl(os.path.join(run_dir, f'metric-{metric}.jsonl'), line)
    return line

#----------------------------------------------------------------------------
# Primary metrics (stylegan2-ada-pytorch): whole dataset, no x-flips.

@register_metric
def fid50k_full(opts):
    opts.dataset_kwargs.update(max_size=None, xflip=False)
    return dict(fid50k_full=frechet.compute_fid(opts, max_real=None, num_gen=50000))


@register_metric
def kid50k_full(opts):
    opts.dataset_kwargs.update(max_size=None, xflip=False)
    return dict(kid50k_full=frechet.compute_kid(opts, max_real=1000000, num_gen=50000, num_subsets=100, max_subset_size=1000))


@register_metric
def pr50k3_full(opts):
    opts.dataset_kwargs.update(max_size=None, xflip=False)
    p, r = precision_recall.compute_pr(opts, max_real=200000, num_gen=50000, nhood_size=3)
    return dict(pr50k3_full_precision=p, pr50k3_full_recall=r)


@register_metric
def ppl2_wend(opts):
    return dict(ppl2_wend=ppl.compute_ppl(opts, num_samples=50000, epsilon=1e-4, space='w', sampling='end', crop=False))

#----------------------------------------------------------------------------
# Legacy metrics: the first 50k real images, x-flips as the dataset options say; PPL with the face crop.

@register_metric
def fid50k(opts):
    opts.dataset_kwargs.update(max_size=None)
    return dict(fid50k=frechet.compute_fid(opts, max_real=50000, num_gen=50000))


@register_metric
def kid50k(opts):
    opts.dataset_kwargs.update(max_size=None)
    return dict(kid50k=frechet.compute_kid(opts, max_real=50000, num_gen=50000, num_subsets=100, max_subset_size=1000))


@register_metric
def pr50k3(opts):
    opts.dataset_kwargs.update(max_size=None)
    p, r = precision_recall.compute_pr(opts, max_real=50000, num_gen=50000, nhood_size=3)
    return dict(pr50k3_precision=p, pr50k3_recall=r)


@register_metric
def ppl_zfull(opts):
    return dict(ppl_zfull=ppl.compute_ppl(opts, num_samples=50000, epsilon=1e-4, space='z', sampling='full', crop=True))


@register_metric
def ppl_wfull(opts):
    return dict(ppl_wfull=ppl.compute_ppl(opts, num_samples=50000, epsilon=1e-4, space='w', sampling='full', crop=True))


@register_metric
def ppl_zend(opts):
    return dict(ppl_zend=ppl.compute_ppl(opts, num_samples=50000, epsilon=1e-4, space='z', sampling='end', crop=True))


@register_metric
def ppl_wend(opts):
    return dict(ppl_wend=ppl.compute_ppl(opts, num_samples=50000, epsilon=1e-4, space='w', sampling='end', crop=True))

#----------------------------------------------------------------------------
# Inversion runs (paper, table 2).

@register_metric
def recon(opts):
    return reconstruction.compute_recon(opts, with_detectors=True)


@register_metric
def recon_pixel(opts):
    return reconstruction.compute_recon(opts, with_detectors=False)

#----------------------------------------------------------------------------
