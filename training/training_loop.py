"""StyleGAN2 training loop (phases, ticks, snapshots) for the baseline and the overparameterized generator of
"Overparameterization Improves StyleGAN Inversion" (sec. 4), and the run scaffolding the encoder loop shares.

Distributed training does not use DDP: every rank starts from rank 0's weights, accumulates gradients on its shard
of the batch, and each phase averages them with one flat all_reduce before the optimizer step, so all ranks take
identical steps. Launch one process per GPU (train.py spawns them, or use torchrun/SLURM) and call `training_loop`
in each with its rank; only rank 0 writes files. Every random draw of a training step comes from the global torch
RNG of the rank's device; grids, summaries and metrics run on a forked RNG, so a resumed run is exact.
"""

import os
import re
import time

import numpy as np
import torch

import dnnlib
from torch_utils import training_stats
from torch_utils.files import append_jsonl
from training import finetune as finetune_lib, phases as phase_lib, resume as resume_lib, run_setup, snapshot
from training.compiled_phases import PhaseCompiler
from training.run_log import RunLog, log_module_summaries, report_tick

#----------------------------------------------------------------------------
# What the GAN loop and the encoder loop share.

class Loop:
    """A run of a training loop: its options (`cfg`), counters (`progress`), log and the tick cadence.

    A subclass names its loop function (`loop_function`: its keyword arguments are the options) and defines
    `_setup()` (data, networks, loss, phases; ends with `_start()`), `step()` (one minibatch, advancing
    `progress.cur_nimg`), `tick(done) -> abort` (report, snapshots; calls `_abort()` and `_finish_tick()`) and
    `train()`. Ticks end every `kimg_per_tick` thousand images, after the first step (tick 0 is one minibatch
    long, so the first report comes at once) and at the end.
    """

    loop_function = None

    @classmethod
    def from_kwargs(cls, **kwargs):
        """Like the loop function called with `kwargs`, but returns the set-up run (for tests and notebooks)."""
        return cls(run_setup.bind_config(cls.loop_function, kwargs))

    def __init__(self, cfg, **more_progress):
        self.cfg = c = cfg
        self.device, self.rank, self.world_size = torch.device(c.device), c.rank, c.world_size
        self.batch_rank = run_setup.batch_per_rank(c.batch_size, c.batch_gpu, c.world_size)
        self.progress = dnnlib.EasyDict(cur_nimg=0, cur_tick=0, batch_idx=0, skipped_steps=0, skipped={},
                                        **more_progress)
        self.last_snapshot = self.last_state = self.training_set = self.data_iter = None
        self.networks, self.phases, self.loss = {}, [], None
        self.log = RunLog(c.run_dir, rank=c.rank, echo=c.verbose)
        try:
            if self.rank == 0:
                snapshot.remove_stale_temporaries(c.run_dir, self.log)
            self._setup()
        except BaseException:
            self.close()
            raise

    @property
    def run_state(self):
        """What a training state holds of this run (`run_setup.RunState`)."""
        return run_setup.RunState(self.networks, self.phases, self.loss, self.progress, self.rank, self.world_size,
                                  self.device, self.log)

    def _start(self, weights_only=None):
        """Seed, resume from `cfg.resume_pkl` (weights_only: see `resume.seed_and_resume`), and broadcast rank 0's
        networks; `self.fresh` says whether nothing was resumed from a full training state."""
        c = self.cfg
        self.fresh = resume_lib.seed_and_resume(self.run_state, c.random_seed, c.resume_pkl, c.resume_fallbacks,
                                                c.resume_kimg, weights_only=weights_only)

    def _attach_phase_compiler(self):
        """--compile: a `PhaseCompiler` for `self.loss`'s first-order calls, decided from the configuration only
        (the steps the run plans), so that a resumed run decides as the uninterrupted one did."""
        c = self.cfg
        self.phase_compiler = PhaseCompiler(c.compile, log=self.log)
        self.phase_compiler.attach(self.loss, self.device, int(c.total_kimg * 1000) // max(c.batch_size, 1))

    def count_skip(self, what, detail):
        """Count one non-finite event (`progress.skipped_steps`, `progress.skipped[what]`) and log it: a gradient
        (the step is skipped) or a running statistic's update (that update is)."""
        p = self.progress
        p.skipped_steps += 1
        p.skipped[what] = p.skipped.get(what, 0) + 1
        self.log(f'Warning: non-finite {detail} at kimg {p.cur_nimg / 1000:.3f}: skipped ({p.skipped_steps} so far)')

    def run_ticks(self, total_nimg, on_step=None):
        """Step until `total_nimg` images (or an abort at a tick); returns `summary(...)`.
        on_step: None or fn(images) called after every step with the number of images it used."""
        c, p = self.cfg, self.progress
        now = time.time()
        self.timing = dict(start=now, tick_start=now, tick_start_nimg=p.cur_nimg, maintenance=0.0)
        self.log(f'Training for {c.total_kimg} kimg from kimg {p.cur_nimg / 1000:.3f}...')
        while True:
            before = p.cur_nimg
            self.step()
            if on_step is not None:
                on_step(p.cur_nimg - before)
            done = p.cur_nimg >= total_nimg
            tick_end_nimg = self.timing['tick_start_nimg'] + c.kimg_per_tick * 1000
            if not done and p.cur_tick != 0 and p.cur_nimg < tick_end_nimg:
                continue
            done = self.tick(done) or done
            if c.progress_fn is not None:
                c.progress_fn(p.cur_nimg, total_nimg)
            if done:
                break
        self.log('Exiting...')
        return self.summary(time.time() - self.timing['start'], aborted=p.cur_nimg < total_nimg)

    def _abort(self):
        """Whether to stop after this tick: `cfg.abort_fn()` on rank 0, the same answer on every rank."""
        abort = self.cfg.abort_fn is not None and bool(self.cfg.abort_fn())
        if self.world_size > 1:   # Rank 0 decides, so that every rank leaves the loop together.
            abort = run_setup.broadcast_flag(abort, self.device)
        if abort:
            self.log('Aborting...')
        return abort

    def _finish_tick(self):
        """Start the next tick: count it and mark its start (the time since `tick_end` was maintenance)."""
        self.progress.cur_tick += 1
        self.timing.update(tick_start_nimg=self.progress.cur_nimg, tick_start=time.time())
        self.timing['maintenance'] = self.timing['tick_start'] - self.timing['tick_end']

    def _nothing_to_do(self, total_nimg):
        """True (after saying so) when the run already has `total_nimg` images."""
        if self.progress.cur_nimg < total_nimg:
            return False
        self.log(f'Nothing to do: kimg {self.progress.cur_nimg / 1000:.3f} >= total_kimg {self.cfg.total_kimg}')
        return True

    def summary(self, seconds, aborted):
        p = self.progress
        return dict(run_dir=self.cfg.run_dir, cur_nimg=int(p.cur_nimg), kimg=p.cur_nimg / 1000,
                    cur_tick=int(p.cur_tick), batch_idx=int(p.batch_idx), skipped_steps=int(p.skipped_steps),
                    skipped=dict(p.skipped), seconds=seconds, aborted=aborted, snapshot_pkl=self.last_snapshot,
                    training_state=self.last_state)

    def close(self):
        """Release the data loader and files (safe to call twice)."""
        self.data_iter = None
        if self.training_set is not None:
            self.training_set.close()
        self.log.close()

#----------------------------------------------------------------------------
# Keeping running statistics finite: one NaN latent would otherwise make w_avg NaN for the rest of the run (and
# every truncated image of G_ema with it, snapshots included).

class RunningStatGuard:
    """Remembers buffers of `module` whose names match `pattern` (G's w_avg) before a step and puts back the
    remembered value of any that the step made non-finite."""

    def __init__(self, module, pattern=r'(.*\.)?w_avg'):
        matcher = re.compile(pattern)
        self.buffers = [(name, b) for name, b in module.named_buffers() if matcher.fullmatch(name)]
        self.saved = [b.detach().clone() for _, b in self.buffers]

    @torch.no_grad()
    def remember(self):
        for kept, (_, current) in zip(self.saved, self.buffers):
            kept.copy_(current)

    @torch.no_grad()
    def restore_if_nonfinite(self):
        """Names of the buffers restored (one host synchronisation for all of them)."""
        if not self.buffers:
            return []
        finite = torch.stack([torch.isfinite(b).all() for _, b in self.buffers]).tolist()
        restored = []
        for ok, kept, (name, current) in zip(finite, self.saved, self.buffers):
            if not ok:
                current.copy_(kept)
                restored.append(name)
        return restored

#----------------------------------------------------------------------------
# The GAN loop.

def training_loop(
    run_dir                 = '.',      # Output directory; only rank 0 writes.
    training_set_kwargs     = {},       # Dataset class_name and arguments.
    data_loader_kwargs      = {},       # Arguments for torch.utils.data.DataLoader.
    G_kwargs                = {},       # Generator class_name and arguments (c_dim, resolution, channels: from data).
    D_kwargs                = {},       # Discriminator class_name and arguments.
    G_opt_kwargs            = {},       # Generator optimizer class_name and arguments.
    D_opt_kwargs            = {},       # Discriminator optimizer class_name and arguments.
    augment_kwargs          = None,     # Augmentation pipe class_name and arguments, None = no augmentation.
    loss_kwargs             = {},       # Loss class_name and arguments.
    metrics                 = [],       # Metric names evaluated at each network snapshot.
    metric_fn               = 'metrics.metric_main.calc_metric',  # fn(name, G, dataset_kwargs, num_gpus, rank, device).
    random_seed             = 0,        # Seed of network init, latents, labels and data order.
    rank                    = 0,        # Rank of this process in [0, world_size).
    world_size              = 1,        # Number of processes (GPUs).
    batch_size              = 4,        # Total batch size over all ranks for one training step.
    batch_gpu               = 4,        # Images per rank per accumulation round.
    ema_kimg                = 10,       # Half-life of the generator EMA in kimg.
    ema_rampup              = 0.05,     # EMA half-life ramp-up as a fraction of cur_nimg, None = no ramp-up.
    G_reg_interval          = 4,        # Lazy regularization interval of G, None = regularize every step.
    D_reg_interval          = 16,       # Lazy regularization interval of D, None = regularize every step.
    augment_p               = 0,        # Initial augmentation probability.
    ada_target              = None,     # ADA target for sign(D(real)), None = fixed p.
    ada_interval            = 4,        # Steps between ADA adjustments.
    ada_kimg                = 500,      # ADA speed: kimg for p to move from 0 to 1.
    total_kimg              = 25000,    # Training length in thousands of real images.
    kimg_per_tick           = 4,        # Progress report interval in kimg.
    image_snapshot_ticks    = 50,       # Ticks between image grids, None = never.
    network_snapshot_ticks  = 50,       # Ticks between snapshots (pkl + training state), None = never.
    image_grid              = None,     # (columns, rows) of image grids, None = about 7680x4320 pixels.
    keep_states             = 2,        # Newest training states kept on disk, None = all.
    resume_pkl              = None,     # Snapshot .pkl (ours or NVIDIA's) or training-state .pt to resume,
                                        # None = fresh.
    resume_fallbacks        = (),       # Older training states to try (newest first) if resume_pkl is unreadable.
    resume_kimg             = 0,        # kimg counter after a weights-only resume (pickle without training state).
    finetune                = None,     # Record of a start from a pretrained StyleGAN2 (training.finetune),
                                        # None = none.
    precision               = 'fp32',   # 'fp32', 'tf32' or 'mixed' (FP16 where num_fp16_res > 0).
    cudnn_benchmark         = True,     # torch.backends.cudnn.benchmark.
    compile                 = 'auto',   # torch.compile of G and D in Gmain/Dmain: auto, on, off (compiled_phases).
    abort_fn                = None,     # Callable -> True to stop after the current tick.
    progress_fn             = None,     # Callable(cur_nimg, total_nimg) after each tick.
    verbose                 = True,     # Print log lines on rank 0 (log.txt is always written).
    device                  = torch.device('cpu'),  # Device of this rank.
):
    """Train; returns a summary dict (cur_nimg, kimg, ticks, skipped steps, last snapshot, seconds)."""
    run = TrainingRun(dnnlib.EasyDict(locals()))
    try:
        return run.train()
    finally:
        run.close()


class TrainingRun(Loop):
    """Data, networks, loss, phases and resume state from `training_loop`'s arguments; `train()` runs them."""

    loop_function = training_loop

    def __init__(self, cfg):
        self._old_backends = run_setup.setup_backends(cfg.precision, cfg.cudnn_benchmark, cfg.G_kwargs, cfg.D_kwargs)
        super().__init__(cfg, ada_num=0.0, ada_sum=0.0)

    def _setup(self):
        c = self.cfg
        self.training_set = dnnlib.util.construct_class_by_name(**c.training_set_kwargs)
        self.networks = run_setup.build_networks(c, self.training_set, self.device)
        self.G, self.D, self.G_ema, self.augment_pipe = (self.networks[k] for k in ('G', 'D', 'G_ema', 'augment_pipe'))
        self.loss = dnnlib.util.construct_class_by_name(device=self.device, G=self.G, D=self.D,
                                                        augment_pipe=self.augment_pipe, **c.loss_kwargs)
        self.phases = phase_lib.setup_phases(self.G, self.D, c.G_opt_kwargs, c.D_opt_kwargs, c.G_reg_interval,
                                             c.D_reg_interval)
        run_setup.log_setup(self.log, self.training_set, self.G, self.D, self.phases)
        self._attach_phase_compiler()
        for line in finetune_lib.describe(c.finetune) if c.finetune else []:
            self.log(line)
        self._start(weights_only=(c.finetune or {}).get('source'))
        self.data_iter = run_setup.data_iterator(self.training_set, c, self.rank, self.world_size, self.batch_rank,
                                                 self.progress.cur_nimg, self.device)
        self.metric_fn, self.metrics = _metric_function(c.metrics, c.metric_fn, self.log), list(c.metrics)
        self.stats = training_stats.Collector(regex='.*')
        self.ada_stats = training_stats.Collector(regex='Loss/signs/real', keep_previous=False)
        self.w_avg_guard = RunningStatGuard(self.G)

    #------------------------------------------------------------------------
    # One training step: every due phase on one global batch, then the running averages.

    def fetch_batch(self):
        spread = self.loss.row_spread(self.progress.cur_nimg) if hasattr(self.loss, 'row_spread') else 1.0
        return run_setup.fetch_batch(self.data_iter, self.G, self.training_set, len(self.phases), self.batch_rank,
                                     self.cfg.batch_gpu, self.device, row_spread=spread)

    def step(self):
        c, p = self.cfg, self.progress
        real_img, real_c, gen_z, gen_c = self.fetch_batch()
        self.w_avg_guard.remember()
        pl_skips = getattr(self.loss, 'pl_mean_skips', 0)
        for phase, phase_z, phase_c in zip(self.phases, gen_z, gen_c):
            if p.batch_idx % phase.interval == 0 and not phase_lib.run_phase(
                    phase, self.loss, real_img, real_c, phase_z.split(c.batch_gpu), phase_c.split(c.batch_gpu),
                    p.cur_nimg, self.world_size):
                self.count_skip(phase.name, f'gradients in {phase.name}: step')
        if getattr(self.loss, 'pl_mean_skips', 0) != pl_skips:
            self.count_skip('pl_mean', 'path lengths: pl_mean update')
        for name in self.w_avg_guard.restore_if_nonfinite():
            self.count_skip('w_avg', f'{name}: update')
        beta = phase_lib.ema_beta(p.cur_nimg, c.batch_size, c.ema_kimg, c.ema_rampup)
        if not phase_lib.update_ema(self.G_ema, self.G, beta):
            self.count_skip('G_ema', 'generator weights: G_ema update')
        p.cur_nimg += c.batch_size
        p.batch_idx += 1
        if self.augment_pipe is not None and c.ada_target is not None:
            self._ada_update()

    def _ada_update(self):
        """Accumulate sign(D(real)) every step (resumable counts); adjust p every ada_interval steps."""
        c, p = self.cfg, self.progress
        self.ada_stats.update()
        num, total, _ = self.ada_stats.sums('Loss/signs/real')
        p.ada_num, p.ada_sum = p.ada_num + num, p.ada_sum + total
        if p.batch_idx % c.ada_interval != 0 or p.ada_num == 0:
            return
        rt, p.ada_num, p.ada_sum = p.ada_sum / p.ada_num, 0.0, 0.0
        if not phase_lib.adjust_augment_p(self.augment_pipe, rt, c.ada_target, c.batch_size, c.ada_interval,
                                          c.ada_kimg):
            self.count_skip('augment_p', 'ADA statistic: augment p update')

    #------------------------------------------------------------------------
    # The loop and its per-tick maintenance.

    def train(self):
        c = self.cfg
        total_nimg = int(round(c.total_kimg * 1000))
        if self._nothing_to_do(total_nimg):
            return self.summary(0.0, aborted=False)
        with run_setup.side_rng(self.device):
            self.grids = snapshot.GridWriter(c.run_dir, self.training_set, self.G, c.image_grid, c.random_seed,
                                             c.batch_gpu, self.device, self.rank)
            if self.fresh:
                log_module_summaries(self.log, self.G, self.D, c.batch_gpu, self.device)
                self.grids.save_reals()
                self.grids.save_fakes(self.G_ema, 'fakes_init.png')
        return self.run_ticks(total_nimg)

    def tick(self, done):
        """Report the tick, write grids/snapshots/metrics when due; returns True to abort."""
        c, p = self.cfg, self.progress
        self.timing['tick_end'] = time.time()
        augment = float(self.augment_pipe.p) if self.augment_pipe is not None else 0.0
        report_tick(self.log, self.stats, p, self.timing, augment, self.device)
        abort = self._abort()
        last = done or abort
        grids_due = c.image_snapshot_ticks is not None and (last or p.cur_tick % c.image_snapshot_ticks == 0)
        snapshot_due = c.network_snapshot_ticks is not None and (last or p.cur_tick % c.network_snapshot_ticks == 0)
        state = None
        if snapshot_due:                                       # Before anything touches the RNG.
            state = snapshot.capture_run_state(self.run_state, finetune=c.finetune)
        with run_setup.side_rng(self.device):
            if grids_due:
                self.grids.save_fakes(self.G_ema, snapshot.fakes_name(p.cur_nimg))
            if snapshot_due:
                if self.rank == 0:
                    cur_nimg = int(p.cur_nimg)
                    data = snapshot.snapshot_data(self.networks, c.training_set_kwargs, cur_nimg=cur_nimg,
                                                  latent_rows=self.G.latent_rows)
                    self.last_snapshot, self.last_state = snapshot.save_snapshot(c.run_dir, cur_nimg, data, state,
                                                                                 c.keep_states, self.log)
                self._evaluate_metrics()
        self._finish_tick()
        return abort

    def _evaluate_metrics(self):
        """`cfg.metrics` of G_ema, one `metric-NAME.jsonl` line each; a metric that fails is reported once and
        dropped for the rest of the run (e.g. detector weights missing offline: training goes on)."""
        if self.metric_fn is None:
            return
        kimg = self.progress.cur_nimg / 1000
        for name in list(self.metrics):
            try:
                result = self.metric_fn(name, self.G_ema, self.cfg.training_set_kwargs, self.world_size, self.rank,
                                        self.device)
            except Exception as err:
                self.log(f'Warning: metric {name} failed ({type(err).__name__}: {err}); not computed again in this run')
                self.metrics.remove(name)
                continue
            if self.rank == 0:
                line = dict(result, metric=name, kimg=kimg, timestamp=time.time(),
                            snapshot_pkl=os.path.basename(self.last_snapshot or ''))
                append_jsonl(os.path.join(self.cfg.run_dir, f'metric-{name}.jsonl'), _jsonable(line))
                self.log(f'Metric {name}: {_jsonable(dict(result))}')

    def close(self):
        """Release the data loader, files and backend flags (safe to call twice)."""
        super().close()
        run_setup.restore_backends(self._old_backends)


def _metric_function(metrics, metric_fn, log):
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


def _jsonable(obj):
    """`obj` with numpy/torch scalars and arrays turned into plain Python values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    return obj

#----------------------------------------------------------------------------
