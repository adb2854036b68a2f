"""StyleGAN2 training loop (phases, ticks, snapshots) for the baseline and the overparameterized generator of
"Overparameterization Improves StyleGAN Inversion" (sec. 4).

Distributed training does not use DDP: every rank starts from rank 0's weights, accumulates gradients on its shard
of the batch, and each phase averages them with one flat all_reduce before the optimizer step, so all ranks take
identical steps. Launch one process per GPU (train.py spawns them, or use torchrun/SLURM) and call `training_loop`
in each with its rank; only rank 0 writes files. Every random draw of a training step comes from the global torch
RNG of the rank's device; grids, summaries and metrics run on a forked RNG, so a resumed run is exact.
"""

import time

import torch

import dnnlib
from torch_utils import training_stats
from training import finetune as finetune_lib
from training import phases as phase_lib
from training import resume as resume_lib
from training import run_setup, snapshot, ticks
from training.guards import RunningStatGuard
from training.metrics_hook import evaluate_metrics, load_metric_fn
from training.run_log import RunLog, log_module_summaries, report_tick

#----------------------------------------------------------------------------

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
    resume_pkl              = None,     # Snapshot .pkl (ours or NVIDIA's) or training-state .pt to resume, None = fresh.
    resume_fallbacks        = (),       # Older training states to try (newest first) if resume_pkl is unreadable.
    resume_kimg             = 0,        # kimg counter after a weights-only resume (pickle without training state).
    finetune                = None,     # Record of a start from a pretrained StyleGAN2 (training.finetune), None = none.
    precision               = 'fp32',   # 'fp32', 'tf32' or 'mixed' (FP16 where num_fp16_res > 0).
    cudnn_benchmark         = True,     # torch.backends.cudnn.benchmark.
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


class TrainingRun:
    """Data, networks, loss, phases and resume state from `training_loop`'s arguments; `train()` runs them."""

    @classmethod
    def from_kwargs(cls, **kwargs):
        """Like `training_loop(**kwargs)`, but returns the set-up run (for tests and notebooks)."""
        return cls(run_setup.bind_config(training_loop, kwargs))

    def __init__(self, cfg):
        self.cfg = c = cfg
        self.device, self.rank, self.world_size = torch.device(c.device), c.rank, c.world_size
        self.batch_rank = run_setup.batch_per_rank(c.batch_size, c.batch_gpu, c.world_size)
        self.progress = dnnlib.EasyDict(cur_nimg=0, cur_tick=0, batch_idx=0, skipped_steps=0, skipped={},
                                        ada_num=0.0, ada_sum=0.0)
        self.last_snapshot = self.last_state = self.training_set = self.data_iter = None
        self._old_backends = run_setup.setup_backends(c.precision, c.cudnn_benchmark, c.G_kwargs, c.D_kwargs)
        self.log = RunLog(c.run_dir, rank=c.rank, echo=c.verbose)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self):
        c = self.cfg
        if self.rank == 0:
            snapshot.remove_stale_temporaries(c.run_dir, self.log)
        self.training_set = dnnlib.util.construct_class_by_name(**c.training_set_kwargs)
        self.networks = run_setup.build_networks(c, self.training_set, self.device)
        self.G, self.D, self.G_ema, self.augment_pipe = (self.networks[k] for k in ('G', 'D', 'G_ema', 'augment_pipe'))
        self.loss = dnnlib.util.construct_class_by_name(device=self.device, G=self.G, D=self.D,
                                                        augment_pipe=self.augment_pipe, **c.loss_kwargs)
        self.phases = phase_lib.setup_phases(self.G, self.D, c.G_opt_kwargs, c.D_opt_kwargs, c.G_reg_interval,
                                             c.D_reg_interval)
        run_setup.log_setup(self.log, self.training_set, self.G, self.D, self.phases)
        for line in finetune_lib.describe(c.finetune) if c.finetune else []:
            self.log(line)
        self.fresh = resume_lib.seed_and_resume(self)
        self.data_iter = run_setup.data_iterator(self.training_set, c, self.rank, self.world_size, self.batch_rank,
                                                 self.progress.cur_nimg, self.device)
        self.metric_fn, self.metrics = load_metric_fn(c.metrics, c.metric_fn, self.log), list(c.metrics)
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
                ticks.count_skip(self, phase.name, f'gradients in {phase.name}: step')
        if getattr(self.loss, 'pl_mean_skips', 0) != pl_skips:
            ticks.count_skip(self, 'pl_mean', 'path lengths: pl_mean update')
        for name in self.w_avg_guard.restore_if_nonfinite():
            ticks.count_skip(self, 'w_avg', f'{name}: update')
        beta = phase_lib.ema_beta(p.cur_nimg, c.batch_size, c.ema_kimg, c.ema_rampup)
        if not phase_lib.update_ema(self.G_ema, self.G, beta):
            ticks.count_skip(self, 'G_ema', 'generator weights: G_ema update')
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
            ticks.count_skip(self, 'augment_p', 'ADA statistic: augment p update')

    #------------------------------------------------------------------------
    # The loop and its per-tick maintenance.

    def train(self):
        c, p = self.cfg, self.progress
        total_nimg = int(round(c.total_kimg * 1000))
        if p.cur_nimg >= total_nimg:
            self.log(f'Nothing to do: kimg {p.cur_nimg / 1000:.3f} >= total_kimg {c.total_kimg}')
            return self._summary(0.0, aborted=False)
        with run_setup.side_rng(self.device):
            self.grids = snapshot.GridWriter(self.cfg.run_dir, self.training_set, self.G, self.cfg.image_grid,
                                             self.cfg.random_seed, self.cfg.batch_gpu, self.device, self.rank)
            if self.fresh:
                log_module_summaries(self.log, self.G, self.D, self.cfg.batch_gpu, self.device)
                self.grids.save_reals()
                self.grids.save_fakes(self.G_ema, 'fakes_init.png')
        return ticks.run_ticks(self, total_nimg)

    def _tick(self, done):
        """Report the tick, write grids/snapshots/metrics when due; returns True to abort."""
        c, p = self.cfg, self.progress
        self.timing['tick_end'] = time.time()
        augment = float(self.augment_pipe.p) if self.augment_pipe is not None else 0.0
        report_tick(self.log, self.stats, p, self.timing, augment, self.device)
        abort = ticks.tick_abort(self)
        last = done or abort
        grids_due = c.image_snapshot_ticks is not None and (last or p.cur_tick % c.image_snapshot_ticks == 0)
        snapshot_due = c.network_snapshot_ticks is not None and (last or p.cur_tick % c.network_snapshot_ticks == 0)
        state = snapshot.capture_run_state(self) if snapshot_due else None   # Before anything touches the RNG.
        with run_setup.side_rng(self.device):
            if grids_due:
                self.grids.save_fakes(self.G_ema, snapshot.fakes_name(p.cur_nimg))
            if snapshot_due:
                if self.rank == 0:
                    self.last_snapshot, self.last_state = snapshot.save_run_snapshot(self, state)
                evaluate_metrics(self)
        ticks.finish_tick(self)
        return abort

    def _summary(self, seconds, aborted):
        p = self.progress
        return dict(run_dir=self.cfg.run_dir, cur_nimg=int(p.cur_nimg), kimg=p.cur_nimg / 1000, cur_tick=int(p.cur_tick),
                    batch_idx=int(p.batch_idx), skipped_steps=int(p.skipped_steps), skipped=dict(p.skipped),
                    seconds=seconds, aborted=aborted, snapshot_pkl=self.last_snapshot, training_state=self.last_state)

    def close(self):
        """Release the data loader, files and backend flags (safe to call twice)."""
        self.data_iter = None
        if self.training_set is not None:
            self.training_set.close()
        self.log.close()
        run_setup.restore_backends(self._old_backends)

#----------------------------------------------------------------------------
