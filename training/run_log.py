"""Rank 0's run logs: `log.txt` (every progress line, also printed), `stats.jsonl` (one line of training_stats
per tick, as stylegan2-ada-pytorch) and TensorBoard events when `torch.utils.tensorboard` can be imported."""

import json
import math
import os

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
            global_step = int(cur_nimg / 1e3)
            walltime = timestamp
            for name, fields in stats.items():
                if math.isfinite(fields['mean']):
                    self._tb.add_scalar(name, fields['mean'], global_step=global_step, walltime=walltime)
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

#----------------------------------------------------------------------------
