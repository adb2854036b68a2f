"""Training presets for StyleGAN2 and the overparameterized generator of "Overparameterization Improves
StyleGAN Inversion" (sec. 4: stylegan2-ada-pytorch `--cfg=auto` at 256 px on 4 GPUs).

A preset is one row of `PRESETS`. `setup_training_config(**opts)` applies the row first, then every option
that is not None (EDM2 style), validates the result and returns the keyword arguments of
`training.training_loop.training_loop`. It works without click; `train.py` is a thin wrapper over it.
"""

import os

import dnnlib
from torch_utils import compiled
from training import finetune
from training.augment import AUGPIPE_SPECS
from training.loss import PL_ROW_REDUCTIONS
from training.row_start import ROW_STARTS

#----------------------------------------------------------------------------
# The preset table. `AUTO` entries are computed from the resolution and GPU count by `auto_options`.

AUTO = 'auto'

DEFAULT_AUGPIPE = 'bgc'    # stylegan2-ada-pytorch's default pipe (training.augment.AUGPIPE_SPECS)

# Shared by every preset: stylegan2-ada-pytorch's defaults (ADA with the 'bgc' pipe at target 0.6, no x-flips)
# plus the paper's choices (2 mapping layers, no noise inputs) and the authors' path length on latent matrices
# (pl_rows='sum', their fork's ppl_power 0.5; 'mean' = ppl_power 0).
COMMON = dict(
    map=2, ramp=0.05, style_mixing=0.9, pl_weight=2, pl_rows='sum', noise=False, aug='ada', augpipe=DEFAULT_AUGPIPE,
    target=0.6, mirror=False, cond=False,
    fp16_res=4, conv_clamp=256, G_reg=4, D_reg=16, gpus=1, seed=0, workers=3, keep_states=2, resume_kimg=0,
    row_start=None, row_spread_kimg=None,     # fine-tuning starts only: None = training.finetune's defaults
    compile='auto',
)

# Paper runs: batch 64 = 16 per GPU on 4 GPUs (fewer GPUs accumulate 16-image rounds to the same batch).
PAPER256 = dict(res=256, dim=512, batch=64, batch_gpu=16, cbase=16384, cmax=512, mbstd=4, lr=0.0025, gamma=0.2048,
                ema=20, kimg=25000, tick=4, snap=50, grid=None, precision='fp32', metrics=['fid50k_full'])

# CPU smoke runs at 32 px on the bundled shapes (dataset_tool.py --source=tiny:1000): minutes, not days.
TINY = dict(res=32, dim=64, batch=16, batch_gpu=16, cbase=1024, cmax=64, mbstd=4, lr=0.0025, gamma=0.0128,
            ema=5, kimg=30, tick=1, snap=5, grid=8, precision='fp32', metrics=[], workers=1)

PRESETS = {
    'paper256-baseline':  dict(PAPER256, rows=None),    # Table 1 baseline (FID 3.88 in the paper).
    'paper256-overparam': dict(PAPER256, rows=512),     # Table 1 overparameterized, R = 512 (FID 5.05).
    'auto':               dict(res=AUTO, dim=512, rows=None, batch=AUTO, batch_gpu=AUTO, cbase=AUTO, cmax=512,
                               mbstd=AUTO, lr=AUTO, gamma=AUTO, ema=AUTO, kimg=25000, tick=4, snap=50, grid=None,
                               precision='mixed', metrics=['fid50k_full']),
    'tiny':               dict(TINY, rows=None),
    'tiny-overparam':     dict(TINY, rows=64),
}

PRECISIONS = {  # name -> (TF32 matmuls/convolutions, FP16 in the preset's highest resolutions)
    'fp32':  (False, False),    # Strict FP32, as the paper's authors trained (their `--fp32 True`).
    'tf32':  (True, False),     # TF32 tensor cores on Ampere+ GPUs; FP32 storage.
    'mixed': (False, True),     # stylegan2-ada-pytorch default: FP16 in `fp16_res` resolutions, clamp 256. Fastest.
}

METRIC_FN = 'metrics.metric_main.calc_metric'   # Looked up by name when a run computes metrics.

# Every option `setup_training_config` accepts, with its meaning. CLI flags use the same names.
OPTIONS = dict(
    cfg='preset name', data='dataset zip or folder', gpus='number of processes', batch='total batch size',
    batch_gpu='images per GPU per round', kimg='training length in kimg', tick='kimg per tick',
    snap='ticks between snapshots', seed='random seed', rows='latent rows R (0 or None = StyleGAN2)',
    dim='z and w dimensionality', map='mapping layers', cbase='channel_base', cmax='channel_max',
    mbstd='minibatch-std group size', lr='Adam learning rate (G and D)', gamma='R1 weight',
    ema='EMA half-life in kimg', ramp='EMA ramp-up', style_mixing='style mixing probability',
    pl_weight='path length weight', pl_rows='path length over latent rows: sum (ppl_power 0.5) or mean (0)',
    noise='noise inputs', augpipe='augmentation pipe name (training.augment.AUGPIPE_SPECS)', mirror='x-flips',
    cond='class labels', subset='use N images', aug='noaug or ada', target='ADA target', metrics='metric names',
    precision='fp32, tf32 or mixed', fp16_res='FP16 resolutions (mixed)', conv_clamp='clamp (mixed)',
    G_reg='G lazy regularization interval', D_reg='D lazy regularization interval', workers='data workers',
    grid='image grid cells per side', keep_states='training states kept', resume='pkl, pt or auto',
    resume_kimg='kimg counter for weights-only resume', res='expected resolution',
    row_start='rows of a fine-tuning start (training.row_start): paper or spread',
    row_spread_kimg='spread: kimg over which the rows go from identical to the paper\'s correlation',
    compile='torch.compile of Gmain/Dmain: auto, on or off (training.compiled_phases)',
)

#----------------------------------------------------------------------------

def auto_options(res, gpus):
    """stylegan2-ada-pytorch's `--cfg=auto` rule for a resolution and GPU count (mapping depth 2 per the paper)."""
    batch = max(min(gpus * min(4096 // res, 32), 64), gpus)
    return dict(batch=batch, batch_gpu=batch // gpus, mbstd=min(batch // gpus, 4), cbase=32768 if res >= 512 else 16384,
                lr=0.002 if res >= 1024 else 0.0025, gamma=0.0002 * res ** 2 / batch, ema=batch * 10 / 32)


def resolve_options(cfg='auto', **opts):
    """Preset row + non-None overrides -> flat options (EasyDict), validated. Opens the dataset for its shape."""
    if cfg not in PRESETS:
        raise ValueError(f"unknown preset '{cfg}'; choose one of: {', '.join(PRESETS)}")
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise TypeError(f'unknown option(s): {", ".join(unknown)}')
    o = dnnlib.EasyDict(COMMON, cfg=cfg, subset=None, resume=None, data=None)
    o.update(PRESETS[cfg])
    overrides = {k: v for k, v in opts.items() if v is not None}
    if overrides.get('data') is None:
        raise ValueError('--data is required: a dataset zip or folder made by dataset_tool.py')

    # The dataset decides resolution, channels and labels.
    o.data = os.path.abspath(os.path.expanduser(str(overrides['data'])))   # Recorded in snapshots: valid from anywhere.
    dataset = dnnlib.util.construct_class_by_name(class_name='training.dataset.ImageFolderDataset', path=o.data,
                                                  use_labels=bool(overrides.get('cond', o.cond)))
    o.dataset_name, o.resolution = dataset.name, dataset.resolution
    o.has_labels = dataset.has_labels
    dataset.close()
    if o.res != AUTO and o.res != o.resolution:
        raise ValueError(f"preset '{cfg}' is set up for {o.res}x{o.res} images but {o.data} has "
                         f'{o.resolution}x{o.resolution}; rebuild the data or use --cfg=auto')

    # Auto entries first (they depend on the GPU count), then the user's overrides.
    gpus = overrides.get('gpus', o.gpus)
    o.update({k: v for k, v in auto_options(o.resolution, gpus).items() if o.get(k) == AUTO})
    o.res = o.resolution
    if 'batch' in overrides and 'batch_gpu' not in overrides and cfg == 'auto':
        o.batch_gpu = overrides['batch'] // gpus
    o.update(overrides, data=o.data)
    o.rows = o.rows or None
    o.metrics = list(o.metrics or [])
    if o.batch_gpu is None:
        o.batch_gpu = o.batch // o.gpus
    o.batch_gpu = min(o.batch_gpu, o.batch // max(o.gpus, 1))
    _validate(o)
    if not PRECISIONS[o.precision][1]:   # Like stylegan2-ada-pytorch's --fp32: no FP16 layers, no clamping.
        o.fp16_res, o.conv_clamp = 0, None
    return o


def _validate(o):
    def need(cond, msg):
        if not cond:
            raise ValueError(msg)
    need(o.gpus >= 1 and o.batch >= o.gpus and o.batch % o.gpus == 0,
         f'--batch={o.batch} must be a positive multiple of --gpus={o.gpus}')
    per_gpu = o.batch // o.gpus
    need(o.batch_gpu >= 1 and per_gpu % o.batch_gpu == 0,
         f'--batch-gpu={o.batch_gpu} must divide the per-GPU batch {per_gpu} (= --batch / --gpus)')
    need(o.batch_gpu % min(o.mbstd, o.batch_gpu) == 0,
         f'--mbstd={o.mbstd} must divide --batch-gpu={o.batch_gpu} (minibatch-std groups)')
    need(o.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}, got '{o.precision}'")
    need(o.aug in ('noaug', 'ada'), f"--aug must be 'noaug' or 'ada', got '{o.aug}'")
    need(o.augpipe in AUGPIPE_SPECS, f"--augpipe must be one of {', '.join(sorted(AUGPIPE_SPECS))}, got '{o.augpipe}'")
    need(o.pl_rows in PL_ROW_REDUCTIONS, f"--pl-rows must be one of {', '.join(PL_ROW_REDUCTIONS)}, got '{o.pl_rows}'")
    need(o.kimg > 0 and o.tick > 0 and o.snap >= 1, '--kimg and --tick must be positive and --snap >= 1')
    need(not o.cond or o.has_labels, f'--cond=1 needs labels in {o.data}/dataset.json')
    need(o.resume_kimg >= 0, '--resume-kimg must be >= 0')
    need(o.row_start is None or o.row_start in ROW_STARTS,
         f"--row-start must be one of {', '.join(ROW_STARTS)}, got '{o.row_start}'")
    need(o.row_spread_kimg is None or o.row_spread_kimg > 0, '--row-spread-kimg must be > 0')
    need(o.resume is not None or (o.row_start is None and o.row_spread_kimg is None),
         '--row-start and --row-spread-kimg set how a fine-tuning run starts: give the pretrained StyleGAN2 '
         'with --resume=PKL (and --rows R)')
    need(o.compile in compiled.MODES, f"--compile must be auto, on or off, got '{o.compile}'")


def build_training_kwargs(o):
    """Flat options -> the kwargs tree of `training_loop` (each sub-config names its class)."""
    num_fp16_res, conv_clamp = o.fp16_res, o.conv_clamp
    c = dnnlib.EasyDict()
    c.training_set_kwargs = dict(class_name='training.dataset.ImageFolderDataset', path=o.data, use_labels=o.cond,
                                 max_size=o.subset, xflip=o.mirror, resolution=o.resolution)
    c.data_loader_kwargs = dict(pin_memory=True, num_workers=o.workers)
    if o.workers > 0:
        c.data_loader_kwargs.update(prefetch_factor=2, persistent_workers=True)
    c.G_kwargs = dict(class_name='training.networks.Generator', z_dim=o.dim, w_dim=o.dim, latent_rows=o.rows,
                      mapping_kwargs=dict(num_layers=o.map, lr_multiplier=0.01),
                      synthesis_kwargs=dict(channel_base=o.cbase, channel_max=o.cmax, num_fp16_res=num_fp16_res,
                                            conv_clamp=conv_clamp, use_noise=o.noise))
    c.D_kwargs = dict(class_name='training.networks.Discriminator', channel_base=o.cbase, channel_max=o.cmax,
                      num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
                      epilogue_kwargs=dict(mbstd_group_size=o.mbstd))
    c.G_opt_kwargs = dict(class_name='torch.optim.Adam', lr=o.lr, betas=[0, 0.99], eps=1e-8)
    c.D_opt_kwargs = dict(c.G_opt_kwargs)
    c.loss_kwargs = dict(class_name='training.loss.StyleGAN2Loss', r1_gamma=o.gamma, style_mixing_prob=o.style_mixing,
                         pl_weight=o.pl_weight, pl_batch_shrink=2, pl_decay=0.01, pl_row_reduction=o.pl_rows)
    c.augment_kwargs = None
    if o.aug == 'ada':
        c.augment_kwargs = dict(class_name='training.augment.AugmentPipe', **AUGPIPE_SPECS[o.augpipe])
    c.augment_p = 0.0
    c.ada_target = o.target if o.aug == 'ada' else None
    c.ada_interval, c.ada_kimg = 4, 500                # stylegan2-ada-pytorch's loop defaults, shown in -n
    c.metrics = list(o.metrics)
    c.metric_fn = METRIC_FN
    c.random_seed = o.seed
    c.batch_size = o.batch
    c.batch_gpu = o.batch_gpu
    c.ema_kimg = o.ema
    c.ema_rampup = o.ramp
    c.G_reg_interval = o.G_reg
    c.D_reg_interval = o.D_reg
    c.total_kimg = o.kimg
    c.kimg_per_tick = o.tick
    c.image_snapshot_ticks = c.network_snapshot_ticks = o.snap
    c.image_grid = None if o.grid is None else [o.grid, o.grid]
    c.keep_states = o.keep_states
    c.resume_pkl = o.resume
    c.resume_kimg = o.resume_kimg
    c.precision = o.precision
    # A network file to resume from decides the architecture; a StyleGAN2 into R rows is a fine-tuning start.
    finetune.adopt_resume_source(c, row_start_name=o.row_start, spread_kimg=o.row_spread_kimg)
    _check_rows(c.G_kwargs)
    c.compile = o.compile
    return c


def _check_rows(G_kwargs):
    """Every layer reads one row per output channel: R must cover the widest layer (at 4x4) or be 1."""
    rows, synthesis = G_kwargs.get('latent_rows'), G_kwargs.get('synthesis_kwargs', {})
    widest = min(synthesis.get('channel_base', 32768) // 4, synthesis.get('channel_max', 512))
    if not (rows is None or rows == 1 or rows >= max(widest, 3)):
        raise ValueError(f'--rows={rows} is too small: the widest layer has {widest} channels, one row each')


def setup_training_config(cfg='auto', **opts):
    """Preset + non-None overrides -> `training_loop` kwargs (EasyDict). Usable without click."""
    return build_training_kwargs(resolve_options(cfg=cfg, **opts))


def run_description(o):
    """Run-directory suffix, e.g. 'tiny32-tiny-overparam-gpus1-batch16-gamma0.0128-rows64'."""
    desc = f'{o.dataset_name}-{o.cfg}-gpus{o.gpus}-batch{o.batch}-gamma{o.gamma:g}'
    if o.rows is not None:
        desc += f'-rows{o.rows}'
    return desc

#----------------------------------------------------------------------------
