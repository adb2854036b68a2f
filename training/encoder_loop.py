"""Training loop of an image encoder E into a frozen generator's latent space (`training.encoder.Encoder`).

Each step takes `batch_size` images over all ranks: G's own samples (known latent: latent + reconstruction loss)
and, with a dataset, a `real_fraction` of real images (reconstruction loss only); see training.encoder_loss.
It runs on the GAN loop's pieces: run directories and `--resume auto` (training.launch), the run log, tick lines
and stats.jsonl (training.run_log, torch_utils.training_stats), the resumable training state and its exact resume
(training.snapshot, training.resume), the rank-sharded data stream (training.run_setup) and the flat gradient
all_reduce without DDP (training.phases). Only rank 0 writes files.

Files in the run directory: training_options.json, log.txt, stats.jsonl, `encoder-snapshot-K.pkl` (the encoder,
written by `training.encoder.save_encoder_pickle`, with generator_pkl and generator_sha256: the generator's path or
URL and the file's SHA-256; calc_metrics.py reads generator_pkl), `training-state-K.pt`
(written with each pickle, as one unit) and `reconK.png`, `recon_init.png` (targets above, E's reconstructions
through G below).
Every random draw of a step comes from the global torch RNG of the rank's device (G.sample_z); grids run on a
forked RNG, so a run stopped after any tick and resumed from its state ends bitwise equal to an uninterrupted one.
"""

import copy
import os
import sys
import time

import numpy as np
import torch

import dnnlib
from torch_utils import checkpoint, training_stats
from torch_utils.image_io import make_grid, save_png, to_uint8
from training import phases as phase_lib, resume as resume_lib, run_setup, snapshot
from training.encoder_loss import EncoderLoss
from training.run_log import report_tick
from training.training_loop import Loop

ENCODER_LOSSES = (('E', 'Loss/E/loss'), ('latent', 'Loss/E/latent'), ('lpips', 'Loss/E/lpips_fake'),
                  ('lpips_real', 'Loss/E/lpips_real'))     # (tick label, stat name)
GRID_FAKES = 8      # G samples in recon-K.png (plus up to as many real images with a dataset)

#----------------------------------------------------------------------------

def encoder_loop(
    run_dir                 = '.',      # Output directory; only rank 0 writes.
    network_pkl             = None,     # Frozen generator: our snapshot or NVIDIA's (path or URL); G_ema is used.
    space                   = 'W',      # Target space: 'w', 'w+', 'W' or 'W+'.
    E_kwargs                = {},       # Encoder class_name (built with `.from_generator(G, space, **rest)`) + design.
    loss_kwargs             = {},       # Reconstruction loss func_name (e.g. inversion.losses.build_loss) + arguments.
    latent_weight           = 1.0,      # Weight of the latent MSE on G's samples.
    sample_psi              = 1.0,      # Truncation of G's training samples toward w_avg.
    training_set_kwargs     = None,     # Real images (dataset class_name + arguments), None = G's samples only.
    data_loader_kwargs      = {},       # Arguments for torch.utils.data.DataLoader.
    real_fraction           = 0.0,      # Share of each round that is real images (with a dataset).
    opt_kwargs              = {},       # Optimizer class_name + arguments.
    random_seed             = 0,        # Seed of E's initialisation, G's samples and the data order.
    rank                    = 0,        # Rank of this process in [0, world_size).
    world_size              = 1,        # Number of processes.
    batch_size              = 8,        # Images per step over all ranks.
    batch_gpu               = 8,        # Images per rank per accumulation round.
    total_kimg              = 10,       # Training length in thousands of images (fake + real).
    kimg_per_tick           = 1,        # Progress report interval in kimg.
    network_snapshot_ticks  = 5,        # Ticks between snapshots (pkl + training state + reconK.png), None = never.
    keep_states             = 2,        # Newest training states kept on disk, None = all.
    resume_pkl              = None,     # encoder-snapshot .pkl (weights) or training-state .pt (exact), None = fresh.
    resume_fallbacks        = (),       # Older training states to try (newest first) if resume_pkl is unreadable.
    resume_kimg             = 0,        # kimg counter after a weights-only resume.
    trust_pickle            = False,    # Let the generator pickle run arbitrary code (only for files you trust).
    abort_fn                = None,     # Callable -> True to stop after the current tick.
    progress_fn             = None,     # Callable(cur_nimg, total_nimg) after each tick.
    verbose                 = True,     # Print log lines and a progress bar on rank 0 (log.txt is always written).
    compile                 = 'auto',   # torch.compile of the encoder's step: auto, on, off (compiled_phases).
    device                  = torch.device('cpu'),  # Device of this rank.
):
    """Train E; returns a summary dict (cur_nimg, kimg, cur_tick, skipped steps, last snapshot and state, seconds)."""
    run = EncoderRun(dnnlib.EasyDict(locals()))
    try:
        return run.train()
    finally:
        run.close()


def encoder_snapshot_name(cur_nimg):
    return f'encoder-snapshot-{snapshot.kimg_tag(cur_nimg)}.pkl'


_RESUME_FIX = 'pass an encoder-snapshot-*.pkl or training-state-*.pt written by train_encoder.py, or --resume=auto'


def check_encoder_resume(path):
    """Raise training.resume.ResumeError (one line) unless `path` is an encoder training state or encoder pickle."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise resume_lib.ResumeError(f'--resume: {path} does not exist; {_RESUME_FIX}')
    if path.endswith('.pt'):
        try:
            state = snapshot.load_training_state(path)
        except snapshot.StateError as err:
            raise resume_lib.ResumeError(f'--resume: {err}; {_RESUME_FIX}') from None
        found = sorted(k for k, v in state['networks'].items() if v is not None)
        if found != ['E']:
            raise resume_lib.ResumeError(f'--resume: {path} is the training state of {", ".join(found)}, not of an '
                                         f'encoder; {_RESUME_FIX}')
        return
    try:
        data = checkpoint.load_network_pkl(path)
    except Exception as err:   # The loader's refusals and every way a pickle can be broken: one line.
        raise resume_lib.ResumeError(f'--resume: {path} is not a usable encoder pickle '
                                     f'({dnnlib.util.one_line(err)[:200]}); {_RESUME_FIX}') from None
    if not isinstance(data, dict) or data.get('E') is None:
        raise resume_lib.ResumeError(f'--resume: {path} holds no encoder E; {_RESUME_FIX}')


class EncoderRun(Loop):
    """Generator, encoder, loss, optimizer, data and resume state from `encoder_loop`'s arguments; `train()` runs.
    Its networks are {'E'}, its phases one ('Emain')."""

    loop_function = encoder_loop

    def __init__(self, cfg):
        self.bar = None
        super().__init__(cfg)

    def _setup(self):
        c = self.cfg
        self.num_rounds = self.batch_rank // c.batch_gpu
        self.round_real = int(round(c.batch_gpu * c.real_fraction)) if c.training_set_kwargs else 0
        self.round_fake = c.batch_gpu - self.round_real
        self.G, self.network_path, self.network_sha256 = checkpoint.load_frozen_network(
            c.network_pkl, key='G_ema', trust=c.trust_pickle, device=self.device)
        if c.training_set_kwargs and self.round_real > 0:
            self.training_set = dnnlib.util.construct_class_by_name(**c.training_set_kwargs)
            shape = (self.G.img_channels, self.G.img_resolution, self.G.img_resolution)
            if tuple(self.training_set.image_shape) != shape:
                raise ValueError(f'the dataset has images {list(self.training_set.image_shape)}, the generator makes '
                                 f'{list(shape)}')
        torch.manual_seed(c.random_seed)   # E's initial weights: the same on every rank and world size.
        E_kwargs = dict(c.E_kwargs)
        E_class = dnnlib.util.get_obj_by_name(E_kwargs.pop('class_name', 'training.encoder.Encoder'))
        self.E = E_class.from_generator(self.G, c.space, **E_kwargs).train().requires_grad_(True).to(self.device)
        self.networks = dict(E=self.E)
        opt = dnnlib.util.construct_class_by_name(self.E.parameters(), **c.opt_kwargs)
        self.phases = [phase_lib.Phase('Emain', self.E, opt, 1)]
        recon = dnnlib.util.call_func_by_name(device=self.device, **c.loss_kwargs)
        self.loss = EncoderLoss(self.G, c.space, recon, latent_weight=c.latent_weight, sample_psi=c.sample_psi)
        self._attach_phase_compiler()
        n_params = sum(p.numel() for p in self.E.parameters())
        self.log(f'Generator: {self.network_path} (sha256 {self.network_sha256[:12]}), latent rows '
                 f'{self.G.latent_rows}, {self.G.img_resolution} px; encoder into {c.space} '
                 f'{list(self.E.param_shape)}: {n_params / 1e6:.3f} M parameters')
        self.log(f'Each step: {self.batch_rank} images per rank in {self.num_rounds} round(s) of {self.round_fake} '
                 f'G samples + {self.round_real} real images')
        self._start()
        if self.training_set is not None:
            real_per_rank = self.num_rounds * self.round_real
            start = self.progress.batch_idx * real_per_rank * self.world_size     # real images consumed so far
            self.data_iter = run_setup.data_iterator(self.training_set, c, self.rank, self.world_size, real_per_rank,
                                                     start, self.device)
        self.stats = training_stats.Collector(regex='.*')

    #------------------------------------------------------------------------
    # One training step.

    def step(self):
        c, p = self.cfg, self.progress
        opt = self.phases[0].opt
        reals = [None] * self.num_rounds
        if self.data_iter is not None:
            images, _labels = next(self.data_iter)
            reals = (images.to(self.device).to(torch.float32) / 127.5 - 1).split(self.round_real)
        opt.zero_grad(set_to_none=True)
        for real in reals:
            total = 0
            if self.round_fake > 0:
                fake, latents = self.loss.sample(self.round_fake, self.device)
                total = self.loss(self.E, fake, latents, kind='fake').sum()
            if real is not None:
                total = total + self.loss(self.E, real, None, kind='real').sum()
            (total / self.batch_rank).backward()     # The mean over this rank's images; all_reduce: global mean.
        if phase_lib.reduce_gradients_(self.E, self.world_size):
            opt.step()
        else:
            self.count_skip('Emain', 'gradients in Emain: step')
        opt.zero_grad(set_to_none=True)
        p.cur_nimg += c.batch_size
        p.batch_idx += 1

    #------------------------------------------------------------------------
    # The loop and its per-tick maintenance.

    def train(self):
        c, p = self.cfg, self.progress
        total_nimg = int(round(c.total_kimg * 1000))
        if self._nothing_to_do(total_nimg):
            return self.summary(0.0, aborted=False)
        with run_setup.side_rng(self.device):
            self._grid_setup()
            if self.fresh:
                self._save_grid('recon_init.png')
        if self.rank == 0 and c.verbose:
            from tqdm import tqdm
            # Counted in images (integers: float kimg steps overshoot the total), shown in kimg.
            self.bar = tqdm(total=total_nimg, initial=p.cur_nimg, unit_scale=0.001, unit='kimg', file=sys.stderr,
                            desc='train_encoder',
                            bar_format='{l_bar}{bar}| {n:.3f}/{total:.3f} kimg [{elapsed}<{remaining}]')
        on_step = None if self.bar is None else self.bar.update
        return self.run_ticks(total_nimg, on_step=on_step)

    def tick(self, done):
        """Report the tick, write the snapshot when due; returns True to abort."""
        c, p = self.cfg, self.progress
        self.timing['tick_end'] = time.time()
        report_tick(self.log, self.stats, p, self.timing, None, self.device, losses=ENCODER_LOSSES)
        abort = self._abort()
        due = c.network_snapshot_ticks is not None and (done or abort or p.cur_tick % c.network_snapshot_ticks == 0)
        if due:
            state = snapshot.capture_run_state(self.run_state)   # Before anything touches the RNG; ranks agree.
            with run_setup.side_rng(self.device):
                if self.rank == 0:
                    self.last_snapshot, self.last_state = self._save_snapshot(state)
                    self._save_grid(f'recon{snapshot.kimg_tag(p.cur_nimg)}.png')
        self._finish_tick()
        return abort

    def _save_snapshot(self, state):
        """encoder-snapshot-K.pkl and training-state-K.pt as one unit (`training.snapshot.save_snapshot`)."""
        from training.encoder import save_encoder_pickle
        c, cur_nimg = self.cfg, int(self.progress.cur_nimg)
        E = copy.deepcopy(self.E).eval().requires_grad_(False).cpu()
        data = dict(E=E, generator_pkl=self.generator_ref(), generator_sha256=self.network_sha256, cur_nimg=cur_nimg,
                    space=c.space, loss=self.loss_description())
        return snapshot.save_snapshot(c.run_dir, cur_nimg, data, state, c.keep_states, self.log,
                                      pkl_name=encoder_snapshot_name(cur_nimg),
                                      write_pkl=lambda path, data: save_encoder_pickle(path, **data))

    def generator_ref(self):
        """What the pickle records as its generator: the absolute path of a local file, else the URL."""
        path = self.cfg.network_pkl
        return os.path.abspath(path) if os.path.isfile(path) else path

    def loss_description(self):
        c = self.cfg
        return dict(recon={k: v for k, v in c.loss_kwargs.items()}, latent_weight=c.latent_weight,
                    sample_psi=c.sample_psi, real_fraction=c.real_fraction if self.training_set is not None else 0.0)

    #------------------------------------------------------------------------
    # Reconstruction grids: fixed G samples (and the first real images), E's reconstructions below.

    def _grid_setup(self):
        self.grid_targets = None
        if self.rank != 0:
            return
        z = self.G.sample_z(GRID_FAKES, generator=torch.Generator().manual_seed(self.cfg.random_seed)).to(self.device)
        with torch.no_grad():
            targets = [self.loss.synthesize(self.G.mapping(z, None, truncation_psi=self.cfg.sample_psi))]
        if self.training_set is not None:
            reals = [self.training_set[i][0] for i in range(min(GRID_FAKES, len(self.training_set)))]
            targets.append(torch.from_numpy(np.stack(reals)).to(self.device).to(torch.float32) / 127.5 - 1)
        self.grid_targets = torch.cat(targets)

    @torch.no_grad()
    def _save_grid(self, name):
        if self.grid_targets is None:
            return
        was_training = self.E.training
        self.E.eval()
        recon = torch.cat([self.loss.reconstruct(self.E, self.E(t[None])) for t in self.grid_targets])
        self.E.train(was_training)
        cols = GRID_FAKES
        rows = []
        for k in range(0, len(self.grid_targets), cols):
            rows += [self.grid_targets[k:k + cols], recon[k:k + cols]]
        save_png(os.path.join(self.cfg.run_dir, name), make_grid(to_uint8(torch.cat(rows)), cols))

    #------------------------------------------------------------------------

    def close(self):
        """Release the data loader, files and progress bar (safe to call twice)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        super().close()

#----------------------------------------------------------------------------
