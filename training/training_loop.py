"""StyleGAN2 training loop (stylegan2-ada-pytorch's structure: phase list, ticks, snapshots) for the baseline and
the overparameterized generator of "Overparameterization Improves StyleGAN Inversion" (sec. 4).

Distributed training does not use DDP: every rank starts from rank 0's weights, accumulates gradients on its
shard of the batch, and each phase averages them with one flat all_reduce before the optimizer step (as
stylegan3's loop does), so all ranks take identical steps. Launch one process per GPU (train.py spawns them, or
use torchrun/SLURM) and call `training_loop` in each with its rank; only rank 0 writes files.
"""

import contextlib
import copy
import inspect
import io
import os
import time

import numpy as np
import torch

import dnnlib
from torch_utils import misc, training_stats
from torch_utils.image_io import append_jsonl
from training import phases as phase_lib
from training import snapshot
from training.run_log import RunLog, format_tick

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
    resume_kimg             = 0,        # kimg counter after a weights-only resume (pickle without training state).
    precision               = 'fp32',   # 'fp32', 'tf32' or 'mixed' (FP16 where num_fp16_res > 0).
    cudnn_benchmark         = True,     # torch.backends.cudnn.benchmark.
    abort_fn                = None,     # Callable -> True to stop after the current tick.
    progress_fn             = None,     # Callable(cur_nimg, total_nimg) after each tick.
    verbose                 = True,     # Print log lines on rank 0 (log.txt is always written).
    device                  = torch.device('cpu'),  # Device of this rank.
):
    """Train; returns a summary dict (cur_nimg, kimg, ticks, skipped steps, last snapshot, seconds)."""
    cfg = dnnlib.EasyDict(locals())
    run = TrainingRun(cfg)
    try:
        return run.train()
    finally:
        run.close()

#----------------------------------------------------------------------------
# The pieces of the loop, sharing one set of training objects.

class TrainingRun:
    """Builds data, networks, loss, phases and resume state from `training_loop`'s arguments; `train()` runs."""

    @classmethod
    def from_kwargs(cls, **kwargs):
        """Like `training_loop(**kwargs)`, but returns the set-up run (for tests and notebooks)."""
        bound = inspect.signature(training_loop).bind(**kwargs)
        bound.apply_defaults()
        return cls(dnnlib.EasyDict(bound.arguments))

    def __init__(self, cfg):
        self.cfg = c = cfg
        self.device = torch.device(c.device)
        self.rank, self.world_size = c.rank, c.world_size
        if c.batch_size % (c.batch_gpu * c.world_size) != 0:
            raise ValueError(f'batch_size={c.batch_size} must be a multiple of batch_gpu={c.batch_gpu} x '
                             f'world_size={c.world_size}')
        self.batch_rank = c.batch_size // c.world_size
        self.progress = dnnlib.EasyDict(cur_nimg=0, cur_tick=0, batch_idx=0, skipped_steps=0)
        self.last_snapshot = self.last_state = None
        self.training_set = self.data_iter = None
        self._old_backends = _setup_backends(c.precision, c.cudnn_benchmark, c.G_kwargs, c.D_kwargs)
        self.log = RunLog(c.run_dir, rank=c.rank, echo=c.verbose)
        try:
            self._build()
            self.fresh = not self._resume()
            if self.world_size > 1:   # Rank 0's weights everywhere (they already agree unless a file differs).
                for module in self.networks.values():
                    for tensor in misc.params_and_buffers(module) if module is not None else []:
                        torch.distributed.broadcast(tensor, src=0)
            self._setup_data_iterator()
            self._setup_metrics()
            self.stats = training_stats.Collector(regex='.*')
            self.ada_stats = training_stats.Collector(regex='Loss/signs/real')
        except BaseException:
            self.close()
            raise

    def _build(self):
        c, device = self.cfg, self.device
        self.training_set = dnnlib.util.construct_class_by_name(**c.training_set_kwargs)
        self.log(f'Dataset: {len(self.training_set)} images, shape {self.training_set.image_shape}, '
                 f'label dim {self.training_set.label_dim}')
        if c.precision == 'mixed' and device.type != 'cuda':
            self.log('Warning: precision=mixed runs FP16 layers on the CPU, which is slow; use fp32 there')
        torch.manual_seed(c.random_seed)   # Same initial networks on every rank and for every world size.
        common = dict(c_dim=self.training_set.label_dim, img_resolution=self.training_set.resolution,
                      img_channels=self.training_set.num_channels)
        self.G = dnnlib.util.construct_class_by_name(**c.G_kwargs, **common).train().requires_grad_(False).to(device)
        self.D = dnnlib.util.construct_class_by_name(**c.D_kwargs, **common).train().requires_grad_(False).to(device)
        self.G_ema = copy.deepcopy(self.G).eval()
        self.augment_pipe = None
        if c.augment_kwargs is not None:
            self.augment_pipe = dnnlib.util.construct_class_by_name(**c.augment_kwargs).train().requires_grad_(False).to(device)
            self.augment_pipe.p.copy_(torch.as_tensor(c.augment_p))
        self.networks = dict(G=self.G, D=self.D, G_ema=self.G_ema, augment_pipe=self.augment_pipe)
        self.loss = dnnlib.util.construct_class_by_name(device=device, G=self.G, D=self.D, augment_pipe=self.augment_pipe,
                                                        **c.loss_kwargs)
        self.phases = phase_lib.setup_phases(self.G, self.D, c.G_opt_kwargs, c.D_opt_kwargs, c.G_reg_interval, c.D_reg_interval)
        self.log(f'Generator: latent {tuple(self.G.z_shape)}, {_num_params(self.G) / 1e6:.2f} M parameters; '
                 f'discriminator {_num_params(self.D) / 1e6:.2f} M; phases {[p.name for p in self.phases]}')
        torch.manual_seed(c.random_seed * c.world_size + c.rank)   # Per-rank stream of latents and labels.

    def _resume(self):
        """Load `resume_pkl`; True when a full training state was restored (counters, optimizers, RNG)."""
        c = self.cfg
        if c.resume_pkl is None:
            return False
        path = os.fspath(c.resume_pkl)
        state_path = path if path.endswith('.pt') else snapshot.state_for_snapshot(path)
        if state_path is not None:
            state = snapshot.load_training_state(state_path)
            restored = snapshot.restore_training_state(state, self.networks, self.phases, self.loss, self.rank,
                                                       self.world_size, self.device)
            self.progress.update({k: restored[k] for k in self.progress})
            if not restored['restored_rng']:
                torch.manual_seed((c.random_seed * self.world_size + self.rank + self.progress.cur_nimg) % (1 << 63))
            self.log(f'Resumed from {state_path}: kimg {self.progress.cur_nimg / 1000:.3f}, tick {self.progress.cur_tick}'
                     + ('' if restored['restored_rng'] else ' (world size changed: RNG reseeded)'))
            self.progress.cur_tick += 1   # The saved tick was completed.
            return True
        _, missing = snapshot.load_snapshot_weights(path, self.networks)
        self.progress.cur_nimg = int(round(c.resume_kimg * 1000))
        self.log(f'Resumed weights from {path} (no training state: fresh optimizers, kimg {c.resume_kimg})'
                 + (f'; not in the pickle: {", ".join(missing)}' if missing else ''))
        return False

    def _setup_data_iterator(self):
        c = self.cfg
        seed = c.random_seed if self.fresh else (c.random_seed + self.progress.cur_nimg) % (1 << 31)
        sampler = misc.InfiniteSampler(self.training_set, rank=self.rank, num_replicas=self.world_size, seed=seed)
        loader_kwargs = dict(c.data_loader_kwargs)
        if self.device.type != 'cuda':
            loader_kwargs['pin_memory'] = False   # Pinned memory only helps host-to-GPU copies.
        loader = torch.utils.data.DataLoader(self.training_set, sampler=sampler, batch_size=self.batch_rank,
                                             **loader_kwargs)
        self.data_iter = iter(loader)

    def _setup_metrics(self):
        c = self.cfg
        self.metric_fn = None
        self.metrics = list(c.metrics)
        if not self.metrics:
            return
        if callable(c.metric_fn):
            self.metric_fn = c.metric_fn
            return
        try:
            self.metric_fn = dnnlib.util.get_obj_by_name(c.metric_fn)
        except (ImportError, AttributeError) as err:
            self.log(f'Warning: metrics {", ".join(c.metrics)} skipped: cannot import {c.metric_fn} ({err})')

    #------------------------------------------------------------------------
    # One training step: every due phase on one global batch, then EMA and ADA.

    def _fetch_batch(self):
        c, device = self.cfg, self.device
        real_img, real_c = next(self.data_iter)
        real_img = (real_img.to(device).to(torch.float32) / 127.5 - 1).split(c.batch_gpu)
        real_c = real_c.to(device).split(c.batch_gpu)
        n = len(self.phases) * self.batch_rank
        gen_z = self.G.sample_z(n, device=device).split(self.batch_rank)
        idx = torch.randint(len(self.training_set), [n]).tolist()
        gen_c = torch.from_numpy(np.stack([self.training_set.get_label(i) for i in idx])).to(device).split(self.batch_rank)
        return real_img, real_c, gen_z, gen_c

    def step(self):
        c, p = self.cfg, self.progress
        real_img, real_c, gen_z, gen_c = self._fetch_batch()
        for phase, phase_z, phase_c in zip(self.phases, gen_z, gen_c):
            if p.batch_idx % phase.interval != 0:
                continue
            ok = phase_lib.run_phase(phase, self.loss, real_img, real_c, phase_z.split(c.batch_gpu),
                                     phase_c.split(c.batch_gpu), p.cur_nimg, self.world_size)
            if not ok:
                p.skipped_steps += 1
                self.log(f'Warning: non-finite gradients in {phase.name} at kimg {p.cur_nimg / 1000:.3f}: '
                         f'step skipped ({p.skipped_steps} so far)')
        phase_lib.update_ema(self.G_ema, self.G, phase_lib.ema_beta(p.cur_nimg, c.batch_size, c.ema_kimg, c.ema_rampup))
        p.cur_nimg += c.batch_size
        p.batch_idx += 1
        if self.augment_pipe is not None and c.ada_target is not None and p.batch_idx % c.ada_interval == 0:
            self.ada_stats.update()
            phase_lib.adjust_augment_p(self.augment_pipe, self.ada_stats['Loss/signs/real'], c.ada_target,
                                       c.batch_size, c.ada_interval, c.ada_kimg)

    #------------------------------------------------------------------------
    # The loop and its per-tick maintenance.

    def train(self):
        c, p = self.cfg, self.progress
        total_nimg = int(round(c.total_kimg * 1000))
        if p.cur_nimg >= total_nimg:
            self.log(f'Nothing to do: kimg {p.cur_nimg / 1000:.3f} >= total_kimg {c.total_kimg}')
            return self._summary(0.0, aborted=False)
        self._start_grids()
        self.start_time = self.tick_start_time = time.time()
        self.tick_start_nimg = p.cur_nimg
        self.maintenance_time = 0.0
        self.log(f'Training for {c.total_kimg} kimg from kimg {p.cur_nimg / 1000:.3f}...')
        while True:
            self.step()
            done = p.cur_nimg >= total_nimg
            if not done and p.cur_tick != 0 and p.cur_nimg < self.tick_start_nimg + c.kimg_per_tick * 1000:
                continue
            done = self._tick(done) or done
            if c.progress_fn is not None:
                c.progress_fn(p.cur_nimg, total_nimg)
            if done:
                break
        self.log('Exiting...')
        return self._summary(time.time() - self.start_time, aborted=p.cur_nimg < total_nimg)

    def _tick(self, done):
        """Report the tick, write grids/snapshots/metrics when due; returns True to abort."""
        c, p = self.cfg, self.progress
        tick_end_time = time.time()
        self._report_tick(tick_end_time)
        abort = c.abort_fn is not None and bool(c.abort_fn())
        if self.world_size > 1:   # Rank 0 decides, so that every rank leaves the loop together.
            flag = torch.tensor(float(abort), device=self.device)
            torch.distributed.broadcast(flag, src=0)
            abort = bool(flag)
        if abort:
            self.log('Aborting...')
        last = done or abort
        if c.image_snapshot_ticks is not None and (last or p.cur_tick % c.image_snapshot_ticks == 0):
            self._save_fakes(f'fakes{p.cur_nimg // 1000:06d}.png')
        if c.network_snapshot_ticks is not None and (last or p.cur_tick % c.network_snapshot_ticks == 0):
            self._save_snapshot()
            self._evaluate_metrics()

        p.cur_tick += 1
        self.tick_start_nimg = p.cur_nimg
        self.tick_start_time = time.time()
        self.maintenance_time = self.tick_start_time - tick_end_time
        return abort

    def _report_tick(self, tick_end_time):
        """Progress stats into training_stats, then one tick line (log.txt) and one stats.jsonl line."""
        p = self.progress
        tick_kimg = (p.cur_nimg - self.tick_start_nimg) / 1000
        sec_per_tick = tick_end_time - self.tick_start_time
        gpu_mem = 0.0
        if self.device.type == 'cuda':
            gpu_mem = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        augment = float(self.augment_pipe.p) if self.augment_pipe is not None else 0.0
        training_stats.report0('Progress/tick', p.cur_tick)
        training_stats.report0('Progress/kimg', p.cur_nimg / 1000)
        training_stats.report0('Progress/augment', augment)
        training_stats.report0('Progress/skipped_steps', p.skipped_steps)
        training_stats.report0('Timing/total_sec', tick_end_time - self.start_time)
        training_stats.report0('Timing/sec_per_tick', sec_per_tick)
        training_stats.report0('Timing/sec_per_kimg', sec_per_tick / max(tick_kimg, 1e-8))
        training_stats.report0('Timing/maintenance_sec', self.maintenance_time)
        training_stats.report0('Resources/cpu_mem_gb', _cpu_mem_gb())
        training_stats.report0('Resources/peak_gpu_mem_gb', gpu_mem)
        self.stats.update()
        stats = self.stats.as_dict()
        fields = [('tick', p.cur_tick, '<5d'), ('kimg', p.cur_nimg / 1000, '<8.3f'),
                  ('time', dnnlib.util.format_time(tick_end_time - self.start_time), '<12s'),
                  ('sec/tick', sec_per_tick, '<7.1f'), ('sec/kimg', sec_per_tick / max(tick_kimg, 1e-8), '<7.2f'),
                  ('maint', self.maintenance_time, '<5.1f'), ('cpumem', _cpu_mem_gb(), '<5.2f'),
                  ('gpumem', gpu_mem, '<5.2f'), ('augment', augment, '.3f')]
        for label, name in [('G', 'Loss/G/loss'), ('D', 'Loss/D/loss'), ('r1', 'Loss/r1_penalty'),
                            ('pl', 'Loss/pl_penalty')]:
            if name in stats:
                fields.append((label, stats[name].mean, '.4g'))
        if p.skipped_steps:
            fields.append(('skipped', p.skipped_steps, 'd'))
        self.log(format_tick(fields))
        self.log.write_stats(stats, p.cur_nimg, time.time())

    #------------------------------------------------------------------------
    # Files.

    def _start_grids(self):
        c = self.cfg
        if self.rank != 0:
            return
        columns, rows = snapshot.grid_shape(self.training_set.resolution, c.image_grid)
        self.grid_columns = columns
        images, labels = snapshot.real_grid(self.training_set, columns * rows, c.random_seed)
        gen = torch.Generator().manual_seed(c.random_seed)
        self.grid_z = self.G.sample_z(columns * rows, generator=gen).to(self.device)
        self.grid_c = torch.from_numpy(labels).to(self.device)
        if self.fresh:
            self._log_summaries()
            snapshot.save_grid(os.path.join(c.run_dir, 'reals.png'), images, columns)
            self._save_fakes('fakes_init.png')

    def _log_summaries(self):
        z = self.G.sample_z(self.cfg.batch_gpu, device=self.device)
        c = torch.zeros([self.cfg.batch_gpu, self.G.c_dim], device=self.device)
        out = io.StringIO()
        with torch.no_grad(), contextlib.redirect_stdout(out):
            img = misc.print_module_summary(self.G, [z, c])
            misc.print_module_summary(self.D, [img, c])
        self.log(out.getvalue().rstrip())

    def _save_fakes(self, name):
        if self.rank != 0:
            return
        images = snapshot.fake_grid(self.G_ema, self.grid_z, self.grid_c, self.cfg.batch_gpu)
        snapshot.save_grid(os.path.join(self.cfg.run_dir, name), images, self.grid_columns)

    def _save_snapshot(self):
        """network-snapshot-*.pkl (export) then training-state-*.pt (resume); rank 0 writes, all ranks gather RNG."""
        c, p = self.cfg, self.progress
        if self.world_size > 1:   # All ranks must hold the same weights (w_avg follows each rank's own latents).
            for module in self.networks.values():
                if module is not None:
                    misc.check_ddp_consistency(module, ignore_regex=r'.*\.w_avg')
        state = snapshot.capture_training_state(p, self.networks, self.phases, self.loss, self.device, self.world_size)
        if self.rank != 0:
            return
        pkl_path = os.path.join(c.run_dir, snapshot.snapshot_name(p.cur_nimg))
        state_path = os.path.join(c.run_dir, snapshot.state_name(p.cur_nimg))
        snapshot.save_network_snapshot(pkl_path, self.networks, c.training_set_kwargs, cur_nimg=int(p.cur_nimg),
                                       latent_rows=self.G.latent_rows)
        snapshot.save_training_state(state_path, state)
        snapshot.prune_states(c.run_dir, c.keep_states)
        self.last_snapshot, self.last_state = pkl_path, state_path
        self.log(f'Saved {os.path.basename(pkl_path)} and {os.path.basename(state_path)}')

    def _evaluate_metrics(self):
        c, p = self.cfg, self.progress
        if self.metric_fn is None:
            return
        for name in list(self.metrics):
            try:
                result = self.metric_fn(name, self.G_ema, c.training_set_kwargs, self.world_size, self.rank, self.device)
            except Exception as err:   # E.g. detector weights missing offline: warn once, keep training.
                self.log(f'Warning: metric {name} failed ({type(err).__name__}: {err}); not computed again in this run')
                self.metrics.remove(name)
                continue
            if self.rank == 0:
                line = dict(result, metric=name, kimg=p.cur_nimg / 1000, timestamp=time.time(),
                            snapshot_pkl=os.path.basename(self.last_snapshot or ''))
                append_jsonl(os.path.join(c.run_dir, f'metric-{name}.jsonl'), _jsonable(line))
                self.log(f'Metric {name}: {_jsonable(dict(result))}')

    def _summary(self, seconds, aborted):
        p = self.progress
        return dict(run_dir=self.cfg.run_dir, cur_nimg=int(p.cur_nimg), kimg=p.cur_nimg / 1000, cur_tick=int(p.cur_tick),
                    batch_idx=int(p.batch_idx), skipped_steps=int(p.skipped_steps), seconds=seconds, aborted=aborted,
                    snapshot_pkl=self.last_snapshot, training_state=self.last_state)

    def close(self):
        """Release the data loader, files and backend flags (safe to call twice)."""
        self.data_iter = None
        if self.training_set is not None:
            self.training_set.close()
        self.log.close()
        _restore_backends(self._old_backends)

#----------------------------------------------------------------------------
# Helpers.

def _setup_backends(precision, cudnn_benchmark, G_kwargs, D_kwargs):
    """Set TF32 and cuDNN flags for `precision`; returns the old values. FP16 layers need precision='mixed'."""
    if precision not in ('fp32', 'tf32', 'mixed'):
        raise ValueError(f"precision must be 'fp32', 'tf32' or 'mixed', got {precision!r}")
    fp16_res = max(G_kwargs.get('synthesis_kwargs', {}).get('num_fp16_res', 0), D_kwargs.get('num_fp16_res', 0))
    if precision != 'mixed' and fp16_res > 0:
        raise ValueError(f"precision='{precision}' but the networks have num_fp16_res={fp16_res}; use precision='mixed' "
                         f'or set num_fp16_res=0 (configs.presets does this for you)')
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = (precision == 'tf32')
    torch.backends.cudnn.benchmark = cudnn_benchmark
    return old


def _restore_backends(old):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = old


def _num_params(module):
    return sum(p.numel() for p in module.parameters())


def _cpu_mem_gb():
    """Peak resident memory of this process in GB (0 where the resource module is missing)."""
    try:
        import resource
    except ImportError:
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _jsonable(obj):
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
