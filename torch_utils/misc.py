"""Small PyTorch helpers: shape checks, cached constants, samplers, parameter copying, DDP and summaries."""

import contextlib
import re
import warnings

import numpy as np
import torch

# ----------------------------------------------------------------------------
# Cached constant tensors (e.g. filters and scalars used in every forward pass).

_constant_cache = {}


def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    """Return a cached tensor holding `value` (broadcast to `shape`); do not modify it in place."""
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    device = torch.device('cpu') if device is None else torch.device(device)
    memory_format = torch.contiguous_format if memory_format is None else memory_format
    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    tensor = _constant_cache.get(key)
    if tensor is None:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor = torch.broadcast_tensors(tensor, torch.empty(shape))[0]
        tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor


# ----------------------------------------------------------------------------
# Shape checks.


@contextlib.contextmanager
def suppress_tracer_warnings():
    """Silence torch.jit.TracerWarning inside the block (shape checks are fine to bake into a trace)."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        yield


def assert_shape(tensor, ref_shape):
    """Raise AssertionError unless `tensor.shape` matches `ref_shape`; None entries match any size."""
    shape = list(tensor.shape)
    ref_shape = list(ref_shape)
    if len(shape) != len(ref_shape):
        raise AssertionError(f'Wrong number of dimensions: got {len(shape)} (shape {shape}), '
                             f'expected {len(ref_shape)} {ref_shape}')
    for idx, (size, ref_size) in enumerate(zip(shape, ref_shape)):
        if ref_size is None:
            continue
        with suppress_tracer_warnings():
            size, ref_size = int(size), int(ref_size)
        if size != ref_size:
            raise AssertionError(f'Wrong size for dimension {idx}: got {size}, expected {ref_size} '
                                 f'(shape {shape}, expected {ref_shape})')


# ----------------------------------------------------------------------------
# Endless, rank-sharded sampling (stylegan2-ada-pytorch's shuffled window scheme).


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless stream of dataset indices; rank `r` of `num_replicas` takes global steps k with k % num_replicas == r.

    All ranks follow the same seeded permutation, so they draw disjoint items at each step and one pass of
    len(dataset) global steps visits every item once. After each step the current item is swapped with a random
    item visited in the last `window_size * len(dataset)` steps, so the order drifts slowly between passes.
    """

    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, window_size=0.5):
        if len(dataset) <= 0:
            raise ValueError('InfiniteSampler needs a non-empty dataset')
        if num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f'Need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}')
        if not 0 <= window_size <= 1:
            raise ValueError(f'window_size must be in [0, 1], got {window_size}')
        super().__init__()
        self.dataset = dataset
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.window_size = window_size

    def __iter__(self):
        size = len(self.dataset)
        order = np.arange(size)
        rng = np.random.RandomState(self.seed % (1 << 31))
        window = 0
        if self.shuffle:
            rng.shuffle(order)
            window = int(np.rint(size * self.window_size))
        step = 0
        while True:
            pos = step % size
            if step % self.num_replicas == self.rank:
                yield int(order[pos])
            if window >= 2:
                other = pos - rng.randint(min(window, pos + 1))  # Only already-visited positions of this pass.
                order[pos], order[other] = order[other], order[pos]
            step += 1


# ----------------------------------------------------------------------------
# Parameters and buffers.


def params_and_buffers(module):
    """All parameters followed by all buffers of `module` (recursively)."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError('expected a torch.nn.Module')
    return list(module.parameters()) + list(module.buffers())


def named_params_and_buffers(module):
    """(dotted name, tensor) for all parameters followed by all buffers of `module`."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError('expected a torch.nn.Module')
    return list(module.named_parameters()) + list(module.named_buffers())


@torch.no_grad()
def copy_params_and_buffers(src_module, dst_module, require_all=False):
    """Copy same-named parameters/buffers from `src_module` into `dst_module` in place (keeps requires_grad)."""
    src_tensors = dict(named_params_and_buffers(src_module))
    for name, tensor in named_params_and_buffers(dst_module):
        if name not in src_tensors:
            if require_all:
                raise KeyError(f'{name!r} missing from the source module {type(src_module).__name__}')
            continue
        src = src_tensors[name]
        if src.shape != tensor.shape:
            raise ValueError(f'{name!r}: source shape {list(src.shape)} does not match destination {list(tensor.shape)}')
        tensor.copy_(src.detach())


# ----------------------------------------------------------------------------
# DistributedDataParallel helpers.


@contextlib.contextmanager
def ddp_sync(module, sync):
    """Skip DDP's gradient all-reduce inside the block when `sync` is False (gradient accumulation)."""
    if not sync and isinstance(module, torch.nn.parallel.DistributedDataParallel):
        with module.no_sync():
            yield
    else:
        yield


def check_ddp_consistency(module, ignore_regex=None):
    """Raise if any parameter/buffer differs from rank 0's copy; no-op without torch.distributed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for name, tensor in named_params_and_buffers(module):
        fullname = f'{type(module).__name__}.{name}'
        if ignore_regex is not None and re.fullmatch(ignore_regex, fullname):
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = torch.nan_to_num(tensor)
        other = tensor.clone()
        torch.distributed.broadcast(tensor=other, src=0)
        if not torch.equal(tensor, other):
            raise RuntimeError(f'{fullname} differs from rank 0 (rank {torch.distributed.get_rank()})')


# ----------------------------------------------------------------------------
# Module summary table.


def _tensors_in(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors_in(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors_in(item)]
    return []


def print_module_summary(module, inputs, max_nesting=3, skip_redundant=True):
    """Run `module(*inputs)` once and print a table of submodules: parameters, buffers, output shapes, dtypes.

    Each parameter/buffer is counted once, at the innermost module that owns it and ran. Returns the outputs.
    """
    if not isinstance(module, torch.nn.Module) or isinstance(module, torch.jit.ScriptModule):
        raise TypeError('print_module_summary needs an eager torch.nn.Module')
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    names = {id(mod): name for name, mod in module.named_modules(remove_duplicate=False)}
    entries = []  # (submodule, output tensors), children before parents
    depth = [0]

    def pre_hook(_mod, _args):
        depth[0] += 1

    def post_hook(mod, _args, outputs):
        depth[0] -= 1
        if depth[0] <= max_nesting:
            entries.append((mod, _tensors_in(outputs)))

    hooks = [m.register_forward_pre_hook(pre_hook) for m in module.modules()]
    hooks += [m.register_forward_hook(post_hook) for m in module.modules()]
    try:
        outputs = module(*inputs)
    finally:
        for hook in hooks:
            hook.remove()

    seen = set()
    rows = []
    prev_outputs = None
    for mod, outs in entries:
        own_params = [t for t in mod.parameters() if id(t) not in seen]
        own_buffers = [t for t in mod.buffers() if id(t) not in seen]
        seen.update(id(t) for t in own_params + own_buffers)
        redundant = not own_params and not own_buffers and prev_outputs is not None and \
            len(outs) == len(prev_outputs) and all(a is b for a, b in zip(outs, prev_outputs))
        prev_outputs = outs
        if skip_redundant and redundant and mod is not module:
            continue
        name = names.get(id(mod), '?') or '<top-level>'
        out_rows = outs if outs else [None]
        for idx, out in enumerate(out_rows):
            rows.append([
                name if idx == 0 else f'{name}:{idx}',
                str(sum(t.numel() for t in own_params)) if idx == 0 and own_params else '-',
                str(sum(t.numel() for t in own_buffers)) if idx == 0 and own_buffers else '-',
                str(list(out.shape)) if out is not None else '-',
                str(out.dtype).split('.')[-1] if out is not None else '-',
            ])
    total_params = sum(t.numel() for t in module.parameters())
    total_buffers = sum(t.numel() for t in module.buffers())
    header = ['Module', 'Parameters', 'Buffers', 'Output shape', 'Datatype']
    rule = ['---'] * len(header)
    table = [header, rule] + rows + [rule, ['Total', str(total_params), str(total_buffers), '-', '-']]
    widths = [max(len(row[col]) for row in table) for col in range(len(header))]
    print()
    for row in table:
        print('  '.join(cell + ' ' * (width - len(cell)) for cell, width in zip(row, widths)).rstrip())
    print()
    return outputs
