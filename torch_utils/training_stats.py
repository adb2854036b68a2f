"""Named scalar statistics: cheap `report()` calls anywhere, summed across devices/ranks by a `Collector`.

Each name keeps running moments [count, sum, sum of squares] per device. `Collector.update()` gathers
them (with torch.distributed all_reduce once `init_multiprocessing` was called) and exposes the
count, mean and standard deviation of everything reported since the previous update.
"""

import re

import numpy as np
import torch

from dnnlib import EasyDict

_counter_dtype = torch.float64
_rank = 0
_sync_device = None     # Device used for all_reduce; None = single process.
_sync_called = False
_counters = {}          # name -> {device: tensor [3]}, moments not yet collected
_cumulative = {}        # name -> cpu tensor [3], all moments collected so far

# ----------------------------------------------------------------------------


def init_multiprocessing(rank, sync_device):
    """Enable cross-process sums. Call once per process, before the first `Collector.update()`.

    sync_device: device of the all_reduce (torch.device('cuda', local_rank) for NCCL, 'cpu' for Gloo).
    """
    global _rank, _sync_device
    if _sync_called:
        raise RuntimeError('init_multiprocessing() must be called before the first Collector.update()')
    _rank = int(rank)
    _sync_device = None if sync_device is None else torch.device(sync_device)


def report(name, value):
    """Accumulate the elements of `value` (number, array or tensor) under `name`; returns `value` unchanged.

    Every rank should report the same names (an empty value still registers a name) so that
    the all_reduce of `Collector.update()` lines up; `report0` does this for rank-0-only stats.
    """
    per_device = _counters.setdefault(name, {})
    elems = torch.as_tensor(value)
    if elems.numel() == 0:
        return value
    elems = elems.detach().flatten().to(torch.float32)
    moments = torch.stack([torch.ones_like(elems).sum(), elems.sum(), elems.square().sum()]).to(_counter_dtype)
    device = moments.device
    if device not in per_device:
        per_device[device] = torch.zeros_like(moments)
    per_device[device].add_(moments)
    return value


def report0(name, value):
    """Like `report`, but only rank 0's values count (other ranks register the name with no data)."""
    report(name, value if _rank == 0 else [])
    return value


def _sync(names):
    """Move pending moments of `names` into the cumulative totals (summed over ranks); return the totals."""
    global _sync_called
    if not names:
        return []
    _sync_called = True
    device = torch.device('cpu') if _sync_device is None else _sync_device
    deltas = []
    for name in names:
        delta = torch.zeros(3, dtype=_counter_dtype, device=device)
        for counter in _counters[name].values():
            delta.add_(counter.to(device))
            counter.zero_()
        deltas.append(delta)
    deltas = torch.stack(deltas)
    if _sync_device is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(deltas)
    deltas = deltas.cpu()
    totals = []
    for idx, name in enumerate(names):
        total = _cumulative.setdefault(name, torch.zeros(3, dtype=_counter_dtype))
        total.add_(deltas[idx])
        totals.append((name, total))
    return totals


# ----------------------------------------------------------------------------


class Collector:
    """Gathers the stats whose names fully match `regex`, as of the last `update()`.

    keep_previous: keep the last known value of a stat that had no new reports since the previous update.
    """

    def __init__(self, regex='.*', keep_previous=True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._seen = {}      # name -> cumulative moments at the previous update
        self._moments = {}   # name -> moments between the two latest updates
        self.update()
        self._moments.clear()

    def names(self):
        """Names of all reported stats that match the regex (sorted, identical on every rank)."""
        return sorted(name for name in _counters if self._regex.fullmatch(name))

    def update(self):
        """Collect everything reported since the previous update (a collective call when distributed)."""
        if not self._keep_previous:
            self._moments.clear()
        for name, total in _sync(self.names()):
            previous = self._seen.setdefault(name, torch.zeros_like(total))
            delta = total - previous
            previous.copy_(total)
            if float(delta[0]) != 0:
                self._moments[name] = delta

    def num(self, name):
        """Number of scalars reported under `name` in the last interval."""
        moments = self._moments.get(name)
        return 0 if moments is None else int(moments[0])

    def mean(self, name):
        """Mean of the last interval (nan when nothing was reported)."""
        moments = self._moments.get(name)
        if moments is None or float(moments[0]) == 0:
            return float('nan')
        return float(moments[1] / moments[0])

    def std(self, name):
        """Population standard deviation of the last interval (nan when nothing was reported)."""
        moments = self._moments.get(name)
        if moments is None or float(moments[0]) == 0 or not np.isfinite(float(moments[1])):
            return float('nan')
        if float(moments[0]) == 1:
            return 0.0
        mean = float(moments[1] / moments[0])
        raw_var = float(moments[2] / moments[0])
        return float(np.sqrt(max(raw_var - mean * mean, 0.0)))

    def as_dict(self):
        """{name: EasyDict(num, mean, std)} for the stats of the last interval, e.g. for stats.jsonl."""
        return {name: EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
                for name in self.names() if name in self._moments}

    def __getitem__(self, name):
        return self.mean(name)
