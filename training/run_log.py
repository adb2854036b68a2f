"""Rank 0's run logs: `log.txt` (every progress line, also printed), `stats.jsonl` (one line of training_stats
per tick, as stylegan2-ada-pytorch) and TensorBoard events when `torch.utils.tensorboard` can be imported."""

import contextlib
import io
import json
import math
import os

import torch

import dnnlib
from torch_utils import misc, training_stats
from torch_utils.ops import self_check

#----------------------------------------------------------------------------

class RunLog:
    """Writes nothing on ranks other than 0; `log(msg)` prints and appends to log.txt on rank 0."""

    def __init__(self, run_dir, rank=0, echo=True, tensorboard=True):
        self.run_dir = run_dir
        self.enabled = (rank == 0)
        self.echo = echo
        self._log_file = None
        self._stats_file = None
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self._log_file = open(os.path.join(run_dir, 'log.txt'), 'a')
        self._stats_file = open(os.path.join(run_dir, 'stats.jsonl'), 'a')
        self_check.log_to(os.path.join(run_dir, 'log.txt'))   # CUDA kernel self-check verdicts
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(run_dir)
            except ImportError:
                self.log('TensorBoard is not installed: writing stats.jsonl only')

    def __call__(self, msg):
        self.log(msg)

    def log(self, msg):
        if not self.enabled:
            return
        if self.echo:
            print(msg, flush=True)
        self._log_file.write(msg + '\n')
        self._log_file.flush()

    def write_stats(self, stats, cur_nimg, timestamp):
        """stats: {name: {num, mean, std}} from `Collector.as_dict()`. Non-finite values become null."""
        if not self.enabled:
            return
        clean = {name: {key: _finite_or_none(value) for key, value in fields.items()} for name, fields in stats.items()}
        self._stats_file.write(json.dumps(dict(clean, timestamp=timestamp)) + '\n')
        self._stats_file.flush()
        if self._tb is not None:
            for name, fields in stats.items():
                if math.isfinite(fields['mean']):
                    self._tb.add_scalar(name, fields['mean'], global_step=cur_nimg // 1000, walltime=timestamp)
            self._tb.flush()

    def close(self):
        for f in (self._log_file, self._stats_file):
            if f is not None:
                f.close()
        if self._tb is not None:
            self._tb.close()
        self._log_file = self._stats_file = self._tb = None


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_tick(fields):
    """'tick 3     kimg 12.0  ...' from (label, value, format) triples, aligned like stylegan2-ada-pytorch."""
    return ' '.join(f'{label} {value:{fmt}}' for label, value, fmt in fields)


def cpu_mem_gb():
    """Peak resident memory of this process in GB (0 where the resource module is missing)."""
    try:
        import resource
    except ImportError:
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


GAN_LOSSES = (('G', 'Loss/G/loss'), ('D', 'Loss/D/loss'), ('r1', 'Loss/r1_penalty'), ('pl', 'Loss/pl_penalty'))


def report_tick(log, collector, progress, timing, augment_p, device, losses=GAN_LOSSES):
    """Progress stats into training_stats, then one tick line (log.txt) and one stats.jsonl line.

    timing: dict(start, tick_start, tick_end, tick_start_nimg, maintenance) in seconds (time.time()).
    augment_p: ADA's p, or None for a run without augmentation (no 'augment' field then).
    losses: (label, stat name) pairs shown on the tick line when reported.
    """
    tick_kimg = (progress.cur_nimg - timing['tick_start_nimg']) / 1000
    sec_per_tick = timing['tick_end'] - timing['tick_start']
    sec_per_kimg = sec_per_tick / max(tick_kimg, 1e-8)
    gpu_mem = 0.0
    if device.type == 'cuda':
        gpu_mem = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    elapsed = timing['tick_end'] - timing['start']
    values = {'Progress/tick': progress.cur_tick, 'Progress/kimg': progress.cur_nimg / 1000,
              'Progress/augment': augment_p, 'Progress/skipped_steps': progress.skipped_steps,
              'Timing/total_sec': elapsed, 'Timing/sec_per_tick': sec_per_tick, 'Timing/sec_per_kimg': sec_per_kimg,
              'Timing/maintenance_sec': timing['maintenance'], 'Resources/cpu_mem_gb': cpu_mem_gb(),
              'Resources/peak_gpu_mem_gb': gpu_mem}
    if augment_p is None:
        del values['Progress/augment']
    for name, value in values.items():
        training_stats.report0(name, value)
    collector.update()
    stats = collector.as_dict()
    fields = [('tick', progress.cur_tick, '<5d'), ('kimg', progress.cur_nimg / 1000, '<8.3f'),
              ('time', dnnlib.util.format_time(elapsed), '<12s'), ('sec/tick', sec_per_tick, '<7.1f'),
              ('sec/kimg', sec_per_kimg, '<7.2f'), ('maint', timing['maintenance'], '<5.1f'),
              ('cpumem', values['Resources/cpu_mem_gb'], '<5.2f'), ('gpumem', gpu_mem, '<5.2f')]
    if augment_p is not None:
        fields.append(('augment', augment_p, '.3f'))
    for label, name in losses:
        if name in stats:
            fields.append((label, stats[name].mean, '.4g'))
    if progress.skipped_steps:
        fields.append(('skipped', progress.skipped_steps, 'd'))
    log(format_tick(fields))
    log.write_stats(stats, progress.cur_nimg, timing['tick_end'])


def log_module_summaries(log, G, D, batch_gpu, device):
    """The layer tables of G and D (one forward pass of `batch_gpu` random latents) into the log."""
    z = G.sample_z(batch_gpu, device=device)
    c = torch.zeros([batch_gpu, G.c_dim], device=device)
    out = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(out):
        misc.print_module_summary(D, [misc.print_module_summary(G, [z, c]), c])
    log(out.getvalue().rstrip())

#----------------------------------------------------------------------------
