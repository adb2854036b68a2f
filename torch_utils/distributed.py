"""Minimal torch.distributed setup for torchrun or SLURM launches; every helper works in a single process."""

import datetime
import os

import torch

from . import training_stats


def _env_config(environ=None):
    """Rank layout from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID)."""
    env = os.environ if environ is None else environ
    if 'RANK' in env or 'WORLD_SIZE' in env:
        rank, world_size, local_rank = env.get('RANK', '0'), env.get('WORLD_SIZE', '1'), env.get('LOCAL_RANK', '0')
    elif 'SLURM_PROCID' in env:
        rank, world_size, local_rank = env['SLURM_PROCID'], env.get('SLURM_NTASKS', '1'), env.get('SLURM_LOCALID', '0')
    else:
        rank, world_size, local_rank = '0', '1', '0'
    return dict(rank=int(rank), world_size=int(world_size), local_rank=int(local_rank),
                master_addr=env.get('MASTER_ADDR', 'localhost'), master_port=int(env.get('MASTER_PORT', '29500')))


def init(timeout_s=None, backend=None):
    """Join the process group described by the environment; a no-op for a single process.

    Backend: NCCL when CUDA is available (and the process uses GPU LOCAL_RANK), Gloo otherwise
    (or `backend`). Multi-node SLURM jobs must export MASTER_ADDR (the first node's host name).
    timeout_s: how long a collective (barrier, gather) may wait for the slowest rank; None = torch's
    default (30 min). Sharded inversion passes hours: ranks finish their shares at different times.
    """
    if is_initialized():
        return
    cfg = _env_config()
    if cfg['world_size'] <= 1:
        return
    use_cuda = torch.cuda.is_available() and backend in (None, 'nccl')
    if use_cuda:
        torch.cuda.set_device(cfg['local_rank'])
    addr = cfg['master_addr']
    host = f'[{addr}]' if ':' in addr and not addr.startswith('[') else addr
    extra = {} if timeout_s is None else dict(timeout=datetime.timedelta(seconds=float(timeout_s)))
    torch.distributed.init_process_group(backend='nccl' if use_cuda else 'gloo', init_method=f'tcp://{host}:{cfg["master_port"]}',
                                         rank=cfg['rank'], world_size=cfg['world_size'], **extra)
    sync_device = torch.device('cuda', cfg['local_rank']) if use_cuda else torch.device('cpu')
    training_stats.init_multiprocessing(rank=get_rank(), sync_device=sync_device)


def is_initialized():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def get_rank():
    return torch.distributed.get_rank() if is_initialized() else 0


def get_world_size():
    return torch.distributed.get_world_size() if is_initialized() else 1


def barrier():
    """Wait for all ranks (no-op in a single process)."""
    if is_initialized():
        torch.distributed.barrier()


def shutdown():
    """End of a successful sharded command: wait for every rank, then leave the process group.

    Without it the rank that hosts the rendezvous store (rank 0) may exit while another rank's Gloo
    threads still use it, which kills that rank with SIGABRT after its work is done. Call it only on
    the success path: after an error the other ranks may never reach the barrier. No-op for one process.
    """
    if is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def print0(*args, **kwargs):
    """print() on rank 0 only."""
    if get_rank() == 0:
        print(*args, **kwargs)


def split_by_rank(items, rank=None, world_size=None):
    """This rank's share of `items`: every `world_size`-th item from index `rank` (order kept).

    Deterministic (depends only on the list, rank and world size); the shares are disjoint, their
    union is `items`, and their sizes differ by at most one. Defaults: this process's rank/world size.
    """
    rank = get_rank() if rank is None else int(rank)
    world_size = get_world_size() if world_size is None else int(world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f'rank {rank} outside 0..{world_size - 1}')
    return list(items)[rank::world_size]


def broadcast_object(obj, src=0):
    """`obj` of rank `src` on every rank (picklable objects; returns `obj` itself in a single process)."""
    if not is_initialized():
        return obj
    box = [obj if get_rank() == src else None]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects); `[obj]` in a single process."""
    if not is_initialized():
        return [obj]
    out = [None] * get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def map_in_order(fn, num_items):
    """[fn(0), ..., fn(num_items - 1)] on every rank, item k computed on rank k mod world size.

    The results (picklable; keep tensors on the CPU) are gathered to all ranks in item order, so
    whatever is reduced from them afterwards is the same as in a single process computing every item.
    """
    mine = {k: fn(k) for k in split_by_rank(range(int(num_items)))}
    merged = {}
    for part in all_gather_objects(mine):
        merged.update(part)
    return [merged[k] for k in range(int(num_items))]


def resolve_device(device=None):
    """torch.device of a device option: None = cuda when available (this rank's GPU in a sharded run), else cpu.
    ValueError (one line) for a malformed name or CUDA on a machine without it."""
    try:
        device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    except RuntimeError as err:
        raise ValueError(f'--device {device}: {err}') from err
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device: CUDA is not available on this machine')
    if device.type == 'cuda' and device.index is None and get_world_size() > 1:
        device = torch.device('cuda', torch.cuda.current_device())          # This rank's GPU (LOCAL_RANK).
    return device
