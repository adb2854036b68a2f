"""Training presets of the image encoder (`training.encoder.Encoder`, trained by `training.encoder_loop`).

A preset is one row of `ENCODER_PRESETS`; `setup_encoder_config(**opts)` applies the row, then every option that is
not None, checks the result against the generator (and the dataset, if any) and returns the keyword arguments of
`training.encoder_loop.encoder_loop`. `train_encoder.py` is a thin click wrapper over it.
"""

import json
import os

import dnnlib
from torch_utils import compiled
from training.latent_spaces import SPACES

#----------------------------------------------------------------------------

LOSS_FN = 'inversion.losses.build_loss'     # The inversion's reconstruction loss, looked up by name.
ENCODER_CLASS = 'training.encoder.Encoder'

COMMON = dict(space='auto', latent_weight=1.0, mse_weight=0.1, sample_psi=1.0, real_fraction=0.5, lr=1e-3, beta2=0.99,
              gpus=1, seed=0, workers=1, keep_states=2, resume_kimg=0, design={}, compile='auto')

ENCODER_PRESETS = {
    # CPU minutes at 32 px: small batches; the offline LPIPS (a seeded random VGG16: not a perceptual metric).
    'tiny':     dict(COMMON, res=32, batch=8, batch_gpu=8, kimg=4, tick=0.2, snap=5, lpips='vgg-random'),
    # FFHQ 256 on GPUs: StyleGAN2's LPIPS (vgg16-nvlabs, as the inversion and the metrics), a lower rate.
    'paper256': dict(COMMON, res=256, batch=32, batch_gpu=8, kimg=3000, tick=20, snap=25, lr=1e-4, workers=3,
                     lpips='vgg16-nvlabs'),
}

# Every option `setup_encoder_config` accepts; CLI flags use the same names.
OPTIONS = dict(
    cfg='preset name', network='generator pickle (path or URL)', data='real images (zip or folder), optional',
    space="target space: w, w+, W, W+ or auto (W for overparameterized generators, else w+)",
    gpus='number of processes', batch='total batch size', batch_gpu='images per GPU per round',
    kimg='training length in kimg', tick='kimg per tick', snap='ticks between snapshots', seed='random seed',
    lr='Adam learning rate', beta2='Adam beta2', latent_weight='latent MSE weight on G samples',
    mse_weight='pixel MSE weight (LPIPS weight is 1)', lpips='LPIPS network spec (inversion.losses)',
    sample_psi='truncation of the G samples', real_fraction='share of real images per batch (with --data)',
    workers='data workers', keep_states='training states kept', resume='encoder pkl, training-state pt or auto',
    resume_kimg='kimg counter for weights-only resume', design='encoder design keyword arguments (dict)',
    res='expected resolution', trust_pickle='unpickle arbitrary code from the generator file',
    compile="torch.compile of the encoder's step: auto, on or off (training.compiled_phases)",
)

#----------------------------------------------------------------------------

def resolve_encoder_options(cfg='tiny', **opts):
    """Preset row + non-None overrides -> flat options (EasyDict), validated. Opens the generator and the dataset."""
    if cfg not in ENCODER_PRESETS:
        raise ValueError(f"unknown preset '{cfg}'; choose one of: {', '.join(ENCODER_PRESETS)}")
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise TypeError(f'unknown option(s): {", ".join(unknown)}')
    o = dnnlib.EasyDict(ENCODER_PRESETS[cfg], cfg=cfg, network=None, data=None, resume=None, trust_pickle=False)
    o.update({k: v for k, v in opts.items() if v is not None})
    if o.network is None:
        raise ValueError('--network is required: the generator pickle the encoder is trained for')
    need(opts.get('real_fraction') is None or o.data is not None, '--real-fraction needs --data (real images)')
    if isinstance(o.design, str):
        o.design = _parse_design(o.design)

    from torch_utils import checkpoint  # The generator decides the space, resolution and shapes.
    G = checkpoint.load_network(o.network, trust=o.trust_pickle)
    o.latent_rows, o.resolution = G.latent_rows, G.img_resolution
    if o.space == 'auto':
        o.space = 'W' if G.latent_rows is not None else 'w+'
    need(o.space in SPACES, f"--space must be one of {', '.join(SPACES)} or auto, got '{o.space}'")
    need(G.latent_rows is not None or o.space in ('w', 'w+'),
         f'--space {o.space} needs an overparameterized generator; {o.network} has latent vectors: use w or w+')
    need(G.latent_rows is None or o.space in ('W', 'W+') or o.latent_weight == 0,
         f'--space {o.space} on the overparameterized {o.network}: its samples have no known {o.space} latent; '
         f'use W/W+, or --latent-weight 0')
    need(o.res == o.resolution, f"preset '{cfg}' is set up for {o.res}x{o.res} images but {o.network} makes "
                                f'{o.resolution}x{o.resolution}; use --cfg={_preset_for(o.resolution)}')
    if o.data is not None:
        o.data = os.path.abspath(os.path.expanduser(str(o.data)))
        dataset = dnnlib.util.construct_class_by_name(class_name='training.dataset.ImageFolderDataset', path=o.data)
        shape = list(dataset.image_shape)
        o.dataset_name = dataset.name
        dataset.close()
        need(shape == [G.img_channels, G.img_resolution, G.img_resolution],
             f'--data {o.data} has images {shape}, the generator makes {[G.img_channels, o.resolution, o.resolution]}; '
             f'rebuild the data with dataset_tool.py --resolution={o.resolution}')
    _validate(o)
    return o


def need(cond, msg):
    if not cond:
        raise ValueError(msg)


def _preset_for(res):
    return next((name for name, row in ENCODER_PRESETS.items() if row['res'] == res), 'paper256 with --res')


def _parse_design(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f'--design must be a JSON object, e.g. \'{{"channels": 64}}\' ({err.msg})') from None
    need(isinstance(value, dict), '--design must be a JSON object of encoder keyword arguments')
    return value


def _validate(o):
    need(o.gpus >= 1 and o.batch >= o.gpus and o.batch % o.gpus == 0,
         f'--batch={o.batch} must be a positive multiple of --gpus={o.gpus}')
    o.batch_gpu = min(o.batch_gpu, o.batch // o.gpus)
    per_gpu = o.batch // o.gpus
    need(o.batch_gpu >= 1 and per_gpu % o.batch_gpu == 0,
         f'--batch-gpu={o.batch_gpu} must divide the per-GPU batch {per_gpu} (= --batch / --gpus)')
    need(o.kimg > 0 and o.tick > 0 and o.snap >= 1, '--kimg and --tick must be positive and --snap >= 1')
    need(0 <= o.real_fraction <= 1, f'--real-fraction must be in [0, 1], got {o.real_fraction}')
    real = int(round(o.batch_gpu * o.real_fraction)) if o.data is not None else 0
    need(o.data is None or o.real_fraction == 0 or real >= 1,
         f'--real-fraction={o.real_fraction} gives no real image in a round of --batch-gpu={o.batch_gpu}; raise either')
    need(o.data is None or o.real_fraction == 1 or real < o.batch_gpu,
         f'--real-fraction={o.real_fraction} leaves no G sample in a round of --batch-gpu={o.batch_gpu}')
    need(o.latent_weight >= 0 and o.mse_weight >= 0, '--latent-weight and --mse-weight must be >= 0')
    need(0 < o.lr, '--lr must be positive')
    need(o.resume_kimg >= 0, '--resume-kimg must be >= 0')
    need(o.compile in compiled.MODES, f"--compile must be auto, on or off, got '{o.compile}'")


def build_encoder_kwargs(o):
    """Flat options -> the kwargs of `encoder_loop` (sub-configs name their class or function)."""
    c = dnnlib.EasyDict()
    c.network_pkl = o.network
    c.space = o.space
    c.E_kwargs = dict(class_name=ENCODER_CLASS, **o.design)
    c.loss_kwargs = dict(func_name=LOSS_FN, spec=o.lpips, resolution=256, mse_weight=o.mse_weight, seed=0)
    c.latent_weight = o.latent_weight
    c.sample_psi = o.sample_psi
    c.training_set_kwargs = None
    c.real_fraction = 0.0
    if o.data is not None and o.real_fraction > 0:
        c.training_set_kwargs = dict(class_name='training.dataset.ImageFolderDataset', path=o.data,
                                     resolution=o.resolution)
        c.real_fraction = o.real_fraction
    c.data_loader_kwargs = dict(pin_memory=True, num_workers=o.workers)
    if o.workers > 0:
        c.data_loader_kwargs.update(prefetch_factor=2, persistent_workers=True)
    c.opt_kwargs = dict(class_name='torch.optim.Adam', lr=o.lr, betas=[0.9, o.beta2], eps=1e-8)
    c.random_seed = o.seed
    c.batch_size = o.batch
    c.batch_gpu = o.batch_gpu
    c.total_kimg = o.kimg
    c.kimg_per_tick = o.tick
    c.network_snapshot_ticks = o.snap
    c.keep_states = o.keep_states
    c.resume_pkl = o.resume
    c.resume_kimg = o.resume_kimg
    c.trust_pickle = o.trust_pickle
    c.compile = o.compile
    return c


def setup_encoder_config(cfg='tiny', **opts):
    """Preset + non-None overrides -> `encoder_loop` kwargs (EasyDict). Usable without click."""
    return build_encoder_kwargs(resolve_encoder_options(cfg=cfg, **opts))


def run_description(o):
    """Run-directory suffix, e.g. 'network-snapshot-000030-tiny-W-gpus1-batch8' (+ '-DATA' with real images)."""
    name = os.path.splitext(os.path.basename(str(o.network).rstrip('/')))[0]
    desc = f'{name}-{o.cfg}-{o.space.replace("+", "plus")}-gpus{o.gpus}-batch{o.batch}'
    if o.data is not None and o.real_fraction > 0:
        desc += f'-{o.dataset_name}'
    return desc

#----------------------------------------------------------------------------
