"""Named scalar statistics: cheap `report()` calls anywhere, summed over devices and ranks by a `Collector`.

For each name the module keeps three running sums per device, `[count, sum(x), sum(x^2)]` in float64, with no host
synchronisation at report time. A `Collector.update()` moves them to the CPU (one all_reduce over ranks once
`init_multiprocessing` was called) and hands them to every live Collector whose regex matches; each gives the count,
mean and standard deviation of what arrived since its previous `update()`. Intervals are kept apart (no cumulative
totals), so a NaN reported once shows in that interval only. The names are
stylegan2-ada-pytorch's ('Loss/G/loss', 'Progress/kimg', ...).
"""

import re
import weakref

import numpy as np
import torch

from dnnlib import EasyDict

_SUM_DTYPE = torch.float64

_state = EasyDict(
    rank=0,             # This process's rank: `report0` keeps only rank 0's values.
    sync_device=None,   # Device of the cross-rank all_reduce; None = single process.
    synced=False,       # A Collector has synchronised (init_multiprocessing is too late after that).
)
_pending = {}           # name -> {device: float64 [3]} reported but not yet collected
_collectors = weakref.WeakSet()   # live Collectors: each receives every collected sum its regex matches

# ----------------------------------------------------------------------------


def init_multiprocessing(rank, sync_device) -> None:
    """Enable cross-process sums. Call once per process, before the first `Collector.update()`.

    sync_device: device of the all_reduce (torch.device('cuda', local_rank) for NCCL, 'cpu' for Gloo).
    """
    if _state.synced:
        raise RuntimeError('init_multiprocessing() must be called before the first Collector.update()')
    _state.rank = int(rank)
    _state.sync_device = torch.device(sync_device) if sync_device is not None else None


def report(name, value):
    """Add the elements of `value` (number, array or tensor) to the sums of `name`; returns `value` unchanged.

    Every rank should report the same names (an empty value still registers a name) so that the all_reduce of
    `Collector.update()` lines up; `report0` does this for rank-0-only stats.
    """
    sums_by_device = _pending.setdefault(name, {})
    x = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value, dtype=np.float32))
    if x.numel() == 0:
        return value
    x = x.detach().reshape(-1).float()
    sums = torch.stack([x.new_tensor(float(x.numel())), x.sum(), (x * x).sum()]).to(_SUM_DTYPE)
    if x.device in sums_by_device:
        sums_by_device[x.device] += sums
    else:
        sums_by_device[x.device] = sums
    return value


def report0(name, value):
    """Like `report`, but only rank 0's values count (other ranks register the name with no data)."""
    report(name, [] if _state.rank != 0 else value)
    return value


def _collect(names):
    """Move what was reported under `names` (all ranks together) into the inbox of every matching Collector."""
    if not names:
        return
    _state.synced = True
    device = _state.sync_device or torch.device('cpu')
    fresh = torch.zeros([len(names), 3], dtype=_SUM_DTYPE, device=device)
    for row, name in enumerate(names):
        for sums in _pending[name].values():
            fresh[row] += sums.to(device)
            sums.zero_()
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if _state.sync_device is not None and distributed:
        torch.distributed.all_reduce(fresh)
    fresh = fresh.cpu()
    for collector in list(_collectors):
        for row, name in enumerate(names):
            collector._receive(name, fresh[row])


# ----------------------------------------------------------------------------


class Collector:
    """Statistics whose names fully match `regex`, over the interval between its last two `update()` calls.

    keep_previous: keep the last known value of a stat that had no new reports since the previous update.
    """

    def __init__(self, regex='.*',
                 keep_previous=True):
        self._pattern = re.compile(regex)
        self.keep_previous = bool(keep_previous)
        self._inbox = {}      # name -> sums received since the last update
        self._interval = {}   # name -> sums of the last interval
        _collect(self.names())   # What was reported before this Collector existed is not its business.
        _collectors.add(self)

    def _receive(self, name, sums):
        if self._pattern.fullmatch(name):
            self._inbox[name] = self._inbox[name] + sums if name in self._inbox else sums.clone()

    def names(self):
        """Names of all reported stats that match the regex (sorted, identical on every rank)."""
        return sorted(n for n in _pending if self._pattern.fullmatch(n))

    def update(self):
        """Collect everything reported since the previous update (a collective call when distributed)."""
        _collect(self.names())
        if not self.keep_previous:
            self._interval = {}
        self._interval.update({name: sums for name, sums in self._inbox.items() if sums[0] != 0})
        self._inbox = {}

    def sums(self, name):
        """(count, sum, sum of squares) of the last interval, as floats ((0, 0, 0) when nothing was reported)."""
        delta = self._interval.get(name)
        return (0.0, 0.0, 0.0) if delta is None else tuple(float(v) for v in delta)

    def num(self, name):
        """Number of scalars reported under `name` in the last interval."""
        return int(self.sums(name)[0])

    def mean(self, name):
        """Mean of the last interval (nan when nothing was reported)."""
        count, total, _ = self.sums(name)
        return total / count if count else float('nan')

    def std(self, name):
        """Population standard deviation of the last interval (nan when nothing was reported)."""
        count, total, squares = self.sums(name)
        if not count or not np.isfinite(total):
            return float('nan')
        if count == 1:
            return 0.0
        mean = total / count
        return float(np.sqrt(max(squares / count - mean * mean, 0.0)))

    def as_dict(self):
        """{name: EasyDict(num, mean, std)} for the stats of the last interval, e.g. for stats.jsonl."""
        return {n: EasyDict(num=self.num(n), mean=self.mean(n), std=self.std(n)) for n in self.names()
                if n in self._interval}

    __getitem__ = mean
