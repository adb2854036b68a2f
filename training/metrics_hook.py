"""Metrics evaluated at network snapshots during training: one `metric-NAME.jsonl` line per evaluation."""

import os
import time

import numpy as np
import torch

import dnnlib
from torch_utils.files import append_jsonl

#----------------------------------------------------------------------------

def load_metric_fn(metrics, metric_fn, log):
    """The metric function (a callable, or its dotted name imported now); None when no metric is asked for or the
    import fails (one warning: e.g. a training machine without the metrics' dependencies)."""
    if not metrics:
        return None
    if callable(metric_fn):
        return metric_fn
    try:
        return dnnlib.util.get_obj_by_name(metric_fn)
    except (ImportError, AttributeError) as err:
        log(f'Warning: metrics {", ".join(metrics)} skipped: cannot import {metric_fn} ({err})')
        return None


def evaluate_metrics(run):
    """Evaluate `run.metrics` on G_ema; a metric that fails is reported once and dropped for the rest of the run."""
    if run.metric_fn is None:
        return
    kimg = run.progress.cur_nimg / 1000
    for name in list(run.metrics):
        try:
            result = run.metric_fn(name, run.G_ema, run.cfg.training_set_kwargs, run.world_size, run.rank, run.device)
        except Exception as err:   # E.g. detector weights missing offline: warn once, keep training.
            run.log(f'Warning: metric {name} failed ({type(err).__name__}: {err}); not computed again in this run')
            run.metrics.remove(name)
            continue
        if run.rank == 0:
            line = dict(result, metric=name, kimg=kimg, timestamp=time.time(),
                        snapshot_pkl=os.path.basename(run.last_snapshot or ''))
            append_jsonl(os.path.join(run.cfg.run_dir, f'metric-{name}.jsonl'), jsonable(line))
            run.log(f'Metric {name}: {jsonable(dict(result))}')


def jsonable(obj):
    """`obj` with numpy/torch scalars and arrays turned into plain Python values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    return obj

#----------------------------------------------------------------------------
