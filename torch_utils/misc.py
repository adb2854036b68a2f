"""Small PyTorch helpers: shape checks, cached constants, a resumable data sampler, copying weights between modules,
multi-process consistency checks and a module summary table."""

import contextlib
import re
import warnings
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Sampler

# ----------------------------------------------------------------------------
# Cached constant tensors (filters and scalars that every forward pass needs).

_constants = {}


def constant(value, shape=None, dtype=None,
             device=None, memory_format=None):
    """A cached tensor holding `value` (broadcast to `shape`). Shared between callers: never modify it in place."""
    array = np.asarray(value)
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    device = torch.device(device if device is not None else 'cpu')
    layout = memory_format if memory_format is not None else torch.contiguous_format
    target_shape = None if shape is None else tuple(shape)
    key = (array.dtype.str, array.shape, array.tobytes(), target_shape, dtype, device, layout)
    if key not in _constants:
        made = torch.as_tensor(array.copy(), dtype=dtype, device=device)
        if target_shape is not None:
            made = made.expand(target_shape)
        _constants[key] = made.contiguous(memory_format=layout)
    return _constants[key]

# ----------------------------------------------------------------------------
# Shape checks.


@contextmanager
def suppress_tracer_warnings():
    """Silence torch.jit.TracerWarning inside the block (shape checks are fine to bake into a trace)."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        yield


def assert_shape(tensor, ref_shape) -> None:
    """Raise AssertionError unless `tensor.shape` matches `ref_shape`; None entries match any size."""
    actual, wanted = list(tensor.shape), list(ref_shape)
    if len(actual) != len(wanted):
        raise AssertionError(f'Wrong number of dimensions: got {len(actual)} (shape {actual}), '
                             f'expected {len(wanted)} {wanted}')
    for dim, (got, want) in enumerate(zip(actual, wanted)):
        if want is None:
            continue
        if torch.jit.is_tracing():                  # a traced size is a tensor: its int() warns
            with suppress_tracer_warnings():
                same = int(got) == int(want)
        else:                                        # eager, or torch.compile (no warnings filter in a graph)
            same = int(got) == int(want)
        if not same:
            raise AssertionError(f'Wrong size for dimension {dim}: got {int(got)}, expected {int(want)} '
                                 f'(shape {actual}, expected {wanted})')

# ----------------------------------------------------------------------------
# Endless, rank-sharded, resumable sampling.


class InfiniteSampler(Sampler):
    """Endless stream of dataset indices, sharded over ranks and resumable at any position.

    The stream is a sequence of passes; pass `e` visits every item once in the order of a permutation drawn from
    `(seed, e)` alone (identity with shuffle=False). Global step `k` is position `k % len(dataset)` of pass
    `k // len(dataset)`; rank `r` of `num_replicas` takes the steps with `k % num_replicas == r`, so the ranks
    draw disjoint items and together visit each item once per pass. `start` is the first global step: a run that
    has consumed `n` images resumes with `start=n` and sees exactly the items an uninterrupted run would.
    """

    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, start=0):
        if len(dataset) <= 0:
            raise ValueError('InfiniteSampler needs a non-empty dataset')
        if num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f'Need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}')
        if start < 0:
            raise ValueError(f'start must be >= 0, got {start}')
        super().__init__()
        self.dataset, self.rank, self.num_replicas = dataset, int(rank), int(num_replicas)
        self.shuffle, self.seed, self.start = bool(shuffle), int(seed), int(start)

    def pass_order(self, epoch):
        """Item order of pass `epoch`: int64 `[len(dataset)]`."""
        size = len(self.dataset)
        if not self.shuffle:
            return np.arange(size, dtype=np.int64)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed % (1 << 63), int(epoch)])))
        return rng.permutation(size).astype(np.int64)

    def __iter__(self):
        size = len(self.dataset)
        step = self.start
        while True:
            epoch, first = divmod(step, size)
            order = self.pass_order(epoch)
            for pos in range(first, size):
                if (step + pos - first) % self.num_replicas == self.rank:
                    yield int(order[pos])
            step += size - first

# ----------------------------------------------------------------------------
# Parameters and buffers.


def params_and_buffers(module) -> list:
    """All parameters followed by all buffers of `module` (recursively)."""
    return [tensor for _, tensor in named_params_and_buffers(module)]


def named_params_and_buffers(module) -> list:
    """(dotted name, tensor) for all parameters followed by all buffers of `module`."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f'expected a torch.nn.Module, got {type(module).__name__}')
    return [*module.named_parameters(), *module.named_buffers()]


@torch.no_grad()
def copy_params_and_buffers(src_module, dst_module,
                            require_all=False):
    """Copy same-named parameters/buffers from `src_module` into `dst_module` in place (keeps requires_grad)."""
    available = dict(named_params_and_buffers(src_module))
    for name, dst in named_params_and_buffers(dst_module):
        src = available.get(name)
        if src is None:
            if require_all:
                raise KeyError(f'{name!r} missing from the source module {type(src_module).__name__}')
            continue
        if src.shape != dst.shape:
            raise ValueError(f'{name!r}: source shape {list(src.shape)} does not match destination {list(dst.shape)}')
        dst.copy_(src.detach())

# ----------------------------------------------------------------------------
# Multi-process helpers.


@contextmanager
def ddp_sync(module, sync: bool):
    """Inside the block, a DistributedDataParallel `module` skips its gradient all-reduce unless `sync`."""
    skip = not sync and isinstance(module, torch.nn.parallel.DistributedDataParallel)
    with module.no_sync() if skip else contextlib.nullcontext():
        yield


def check_ddp_consistency(module,
                          ignore_regex=None):
    """Raise if any parameter/buffer differs from rank 0's copy (NaNs compare equal); no-op in one process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    skip = re.compile(ignore_regex) if ignore_regex is not None else None
    for key, tensor in named_params_and_buffers(module):
        qualified = f'{type(module).__name__}.{key}'
        if skip is not None and skip.fullmatch(qualified):
            continue
        mine = tensor.detach()
        mine = torch.nan_to_num(mine) if mine.is_floating_point() else mine
        reference = mine.clone()
        torch.distributed.broadcast(reference, src=0)
        if not torch.equal(mine, reference):
            raise RuntimeError(f'{qualified} differs from rank 0 (rank {torch.distributed.get_rank()})')

# ----------------------------------------------------------------------------
# Module summary table.


def _tensors_in(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (tuple, list)) else ()
    return [t for item in items for t in _tensors_in(item)]


def _record_calls(module, inputs, max_nesting):
    """Run `module(*inputs)`; returns (outputs, [(submodule, output tensors)] in completion order, children first)."""
    calls, depth = [], [0]

    def enter(_mod, _args):
        depth[0] += 1

    def leave(mod, _args, outputs):
        depth[0] -= 1
        if depth[0] <= max_nesting:
            calls.append((mod, _tensors_in(outputs)))
    handles = [m.register_forward_pre_hook(enter) for m in module.modules()]
    handles += [m.register_forward_hook(leave) for m in module.modules()]
    try:
        outputs = module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, calls


def print_module_summary(module, inputs,
                         max_nesting=3, skip_redundant=True):
    """Run `module(*inputs)` once and print a table of submodules: parameters, buffers, output shapes, dtypes.

    Each parameter/buffer is counted once, at the innermost module that owns it and ran. Returns the outputs.
    """
    if not isinstance(module, torch.nn.Module) or isinstance(module, torch.jit.ScriptModule):
        raise TypeError('print_module_summary needs an eager torch.nn.Module')
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    outputs, calls = _record_calls(module, inputs, max_nesting)
    names = {id(m): n for n, m in module.named_modules(remove_duplicate=False)}

    counted, rows, previous = set(), [], None
    for mod, outs in calls:
        params = [t for t in mod.parameters() if id(t) not in counted]
        buffers = [t for t in mod.buffers() if id(t) not in counted]
        counted.update(id(t) for t in params + buffers)
        passthrough = (not params and not buffers and previous is not None and len(outs) == len(previous)
                       and all(a is b for a, b in zip(outs, previous)))
        previous = outs
        if skip_redundant and passthrough and mod is not module:
            continue
        label = names.get(id(mod), '?') or '<top-level>'
        for k, out in enumerate(outs or [None]):
            rows.append([label if k == 0 else f'{label}:{k}',
                         str(sum(t.numel() for t in params)) if k == 0 and params else '-',
                         str(sum(t.numel() for t in buffers)) if k == 0 and buffers else '-',
                         '-' if out is None else str(list(out.shape)),
                         '-' if out is None else str(out.dtype).split('.')[-1]])
    header = ['Module', 'Parameters', 'Buffers', 'Output shape', 'Datatype']
    rule = ['---'] * len(header)
    totals = ['Total', str(sum(t.numel() for t in module.parameters())), str(sum(t.numel() for t in module.buffers())),
              '-', '-']
    table = [header, rule, *rows, rule, totals]
    widths = [max(len(row[col]) for row in table) for col in range(len(header))]
    print()
    for row in table:
        print('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print()
    return outputs
