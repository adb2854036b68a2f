"""Starting training runs: numbered run directories, `--resume auto`, and one process per GPU.

Three ways to get several processes, all ending in `training_loop(rank=..., world_size=...)`:
  * `train.py --gpus=N` on one machine: N processes via torch.multiprocessing.spawn (TCP rendezvous on a free
    local port; NCCL on GPUs, Gloo on CPU);
  * `torchrun --nproc_per_node=N train.py ...`: every process reads RANK / WORLD_SIZE / LOCAL_RANK;
  * SLURM (`srun`): SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, with MASTER_ADDR exported by the job script.
"""

import copy
import json
import os
import re
import socket

import torch

from torch_utils import distributed
from torch_utils.files import OutdirError, check_outdir  # noqa: F401 (train.py reports them)
from training import finetune, snapshot
from training.training_loop import training_loop

_RUN_RE = re.compile(r'^(\d+)-(.*)$')

#----------------------------------------------------------------------------
# Run directories.

def next_run_dir(outdir, desc):
    """'{outdir}/{index:05d}-{desc}' with the next free index."""
    indices = [int(m.group(1)) for m in map(_RUN_RE.match, _listdir(outdir)) if m]
    return os.path.join(outdir, f'{max(indices, default=-1) + 1:05d}-{desc}')


def find_auto_resume(outdir, desc):
    """(run_dir, newest training state) of the newest run in `outdir` named '*-{desc}' that has one, else None."""
    runs = sorted(((int(m.group(1)), name) for name in _listdir(outdir)
                   for m in [_RUN_RE.match(name)] if m and m.group(2) == desc), reverse=True)
    for _, name in runs:
        run_dir = os.path.join(outdir, name)
        states = snapshot.list_states(run_dir)
        if states:
            return run_dir, states[-1]
    return None


def dry_run_report(o, c, outdir, desc, loop_title):
    """What `--dry-run` prints: the resolved options `o`, the loop's kwargs `c` (titled `loop_title`) and the run
    directory the run would use (the one `--resume=auto` continues, else the next new one)."""
    where = find_auto_resume(outdir, desc) if c.resume_pkl == 'auto' else None
    if where is not None:   # What the run would continue: a fine-tuning run's recorded networks and row start.
        c = copy.deepcopy(c)
        finetune.adopt_newest_readable_state(c, snapshot.list_states(where[0])[::-1])
    return '\n'.join([f'Preset {o.cfg}; options:', json.dumps({k: o[k] for k in sorted(o)}, indent=2),
                      f'{loop_title}:', json.dumps(c, indent=2),
                      f'Run directory: {where[0] if where else next_run_dir(outdir, desc)}', 'Dry run: exiting.'])


def prepare_run_dir(outdir, desc, c, options=None):
    """Pick the run directory (resolving `c.resume_pkl == 'auto'` in place) and write training_options.json.

    'auto' continues the newest run of the same description in `outdir` from its newest training state, in
    that directory (the older states are fallbacks should it be unreadable), with the networks and row start a
    fine-tuning run recorded there (training.finetune); without one it starts a new run.
    """
    run_dir = None
    if c.resume_pkl == 'auto':
        found = find_auto_resume(outdir, desc)
        c.resume_pkl = None
        if found is not None:
            run_dir, c.resume_pkl = found
            c.resume_fallbacks = snapshot.list_states(run_dir)[-2::-1]
            finetune.adopt_newest_readable_state(c, [c.resume_pkl, *c.resume_fallbacks])
    if run_dir is None:
        run_dir = next_run_dir(outdir, desc)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, 'training_options.json'), 'w') as f:
        json.dump(dict(c, **(options or {})), f, indent=2)
    return run_dir


def _listdir(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []

#----------------------------------------------------------------------------
# Processes.

def env_world_size():
    """World size announced by torchrun or SLURM, or None when this process was started directly."""
    for key in ('WORLD_SIZE', 'SLURM_NTASKS'):
        if key in os.environ and ('RANK' in os.environ or 'SLURM_PROCID' in os.environ):
            return int(os.environ[key])
    return None


def _local_rank():
    return int(os.environ.get('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0')))


def rank_device(local_rank, device_type=None):
    """cuda:local_rank when CUDA is available (or requested), else cpu."""
    device_type = device_type or ('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device('cuda', local_rank) if device_type == 'cuda' else torch.device(device_type)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch_training(c, outdir, desc, gpus=1, device_type=None, options=None, loop=training_loop, **loop_kwargs):
    """Run training with `gpus` processes (or as one rank of a torchrun/SLURM job); returns the run directory.

    c: `configs.presets.setup_training_config(...)` output. options: extra keys for training_options.json.
    loop: the loop function, called as `loop(run_dir=, rank=, world_size=, device=, **c)` in every process
    (`training_loop`, or `training.encoder_loop.encoder_loop`; a module-level function, so spawn can pickle it).
    loop_kwargs: more `loop` arguments (e.g. verbose, abort_fn) for single-process runs.
    """
    if env_world_size() is not None:
        distributed.init()
        rank, world_size = distributed.get_rank(), distributed.get_world_size()
        holder = [prepare_run_dir(outdir, desc, c, options) if rank == 0 else None, dict(c)]
        if world_size > 1:   # Rank 0 resolved 'auto' (and the networks it continues): every rank takes its kwargs.
            torch.distributed.broadcast_object_list(holder, src=0)
        run_dir = holder[0]
        c.update(holder[1])
        device = rank_device(_local_rank(), device_type)
        loop(run_dir=run_dir, rank=rank, world_size=world_size, device=device, **c, **loop_kwargs)
        return run_dir

    run_dir = prepare_run_dir(outdir, desc, c, options)
    if gpus == 1:
        loop(run_dir=run_dir, rank=0, world_size=1, device=rank_device(0, device_type), **c, **loop_kwargs)
    else:
        torch.multiprocessing.spawn(_spawn_worker, args=(dict(c), run_dir, gpus, free_port(), device_type, loop),
                                    nprocs=gpus, join=True)
    return run_dir


def _spawn_worker(rank, c, run_dir, world_size, port, device_type, loop=training_loop):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    device = rank_device(rank, device_type)
    if device.type == 'cpu':   # Share the cores instead of oversubscribing them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    distributed.init()
    try:
        loop(run_dir=run_dir, rank=rank, world_size=world_size, device=device, **c)
    finally:
        torch.distributed.destroy_process_group()

#----------------------------------------------------------------------------
