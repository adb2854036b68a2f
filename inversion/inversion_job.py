"""The inversion (Poirier-Ginter et al., sec. 4.2) behind invert.py: its options (`InversionConfig`), the job that the
per-image runner runs (`InversionJob`), `run_inversion(cfg, target, outdir)`, and `invert_folder(cfg, outdir)`, the
whole of invert.py (faces aligned first and pasted back after, when asked).

`init='encoder:PKL'` starts each batch from an encoder's prediction `E(targets) [N, *param_shape]` instead of the
mean latent (`steps=0`: the encoder alone). Files and resuming: `job_runner` and `run_files`.
"""

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import PIL.Image
import torch

import dnnlib
from metrics.lpips import DEFAULT_LPIPS, MaskUnsupportedError, lpips_network_name
from metrics.reconstruction import pixel_metrics
from preprocess.align_folder import AlignFolderError, align_folder, paste_back_folder
from torch_utils import distributed, files
from torch_utils.image_io import to_uint8
from training.encoder import generator_mismatch, load_encoder_pkl
from training.latent_spaces import AUTO

from . import run_files
from .compiled_step import InversionCompiler
from .job_runner import InversionError, check_compile_mode, check_job_outdir, list_job_targets, load_generator, run_job
from .losses import MaskedLoss, build_loss, check_mask_support
from .optimize import Inverter, auto_batch_size
from .targets import TargetError, decode_target_with_mask, mask_tensor, split_mask, to_tensor

#----------------------------------------------------------------------------

INIT_MEAN, INIT_ENCODER = 'mean', 'encoder:'
DEFAULT_TRUNCATION = {INIT_MEAN: 0.9, INIT_ENCODER: 1.0}   # psi when none is given, by start
NOT_RECORDED = dict(recorded=False)     # Field metadata: an option of the Python API that `to_json` leaves out.


@dataclasses.dataclass(frozen=True)
class InversionConfig:
    """The options of an inversion: invert.py's flags (its --help says more), and a few of the Python API."""
    network:          Optional[str] = None          # Checkpoint path or URL, any format torch_utils.checkpoint reads.
    target:           Optional[str] = None          # Image folder (recursive), single image, or zip.
    space:            str = AUTO                    # w | w+ | W | W+ | auto (W for overparameterized G, else w+).
    steps:            int = 1000                    # Adam steps per image; 0 = evaluate the start only.
    lr:               float = 0.05                  # Adam learning rate.
    truncation:       Optional[float] = None        # psi toward the mean latent before the early steps; None =
                                                    # 0.9 from the mean, 1 (off) from an encoder.
    truncation_until: float = 0.5                   # Fraction of the steps that start with truncation.
    crop:             str = 'center'                # Non-square targets: center | none (squash) | pad (masked).
    lpips:            str = DEFAULT_LPIPS           # LPIPS spec (metrics.lpips).
    mse_weight:       float = 0.0                   # Weight of a pixel MSE term (intensities in [0, 1]).
    l1_weight:        float = 0.0                   # Weight of a pixel L1 term.
    precision:        str = 'fp32'                  # fp32 | tf32 | bf16 (see optimize.precision_context).
    seed:             int = 0                       # Seed of the run (and of the vgg-random trunk).
    mask:             Optional[str] = None          # Folder of masks named like the targets (white = keep).
    init:             str = INIT_MEAN               # mean | encoder:PKL (start from an encoder's prediction).
    batch:            Union[int, str] = 'auto'      # Images optimised together; auto = fit free GPU memory.
    save_every:       int = 100                     # Steps between resumable states; 0 = never.
    device:           Optional[str] = None          # cuda, cuda:K, cpu; None = cuda when available.
    trust_pickle:     bool = False                  # Unpickle the network without restrictions (trusted files).
    compile:          str = 'auto'                  # auto | on | off: the step through torch.compile (compiled_step).
    save_video:       bool = False                  # frames/<name>/stepNNNNN.png during the optimisation.
    video_every:      int = 10                      # Steps between video frames.
    align:            bool = False                  # Align the faces of target first (invert_folder).
    align_resolution: int = 1024                    # Side of the aligned crops in px.
    align_multiple:   str = 'largest'               # Photos with several faces: largest | all | skip.
    paste_back:       bool = False                  # Paste the reconstructions back into the photos (with align).
    betas:            tuple = dataclasses.field(default=(0.9, 0.999), metadata=NOT_RECORDED)  # Adam's (paper).
    lpips_resolution: int = dataclasses.field(default=256, metadata=NOT_RECORDED)  # Larger images shrink first.
    progress:         bool = dataclasses.field(default=True, metadata=NOT_RECORDED)  # tqdm bars, console lines.
    progress_every:   int = dataclasses.field(default=10, metadata=NOT_RECORDED)   # Steps between bar updates.

    def __post_init__(self):
        if self.paste_back and not self.align:
            raise ValueError('--paste-back needs --align (it undoes the alignment)')

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_json(self, outdir=None):
        """The options a run records (run.json's and summary.json's 'args'), with `outdir` after `init`."""
        out = {}
        for field in dataclasses.fields(self):
            if field.metadata.get('recorded', True):
                out[field.name] = getattr(self, field.name)
            if field.name == 'init' and outdir is not None:
                out['outdir'] = str(outdir)
        return out

    @classmethod
    def from_run(cls, run_dir, **given):
        """The options of the run in `run_dir` (its run.json: the settings that change results, the network and
        the start), except those in `given` (options the user set: they win). InversionError (one line) when
        there is no run or run.json is damaged."""
        run_json = Path(run_dir) / 'run.json'
        if not run_json.is_file():
            raise InversionError(f'--resume {run_dir}: no run.json there, so no run to resume')
        try:
            recorded = json.loads(run_json.read_text())
        except (OSError, ValueError) as err:
            raise InversionError(f'--resume {run_dir}: run.json is damaged ({err}); start a new run') from err
        saved = dict(recorded.get('settings', {}), network=recorded.get('network'), init=recorded.get('init'))
        restored = {name: saved[name] for name in RESUMED if saved.get(name) is not None}
        return cls(**{**restored, **given})

    @classmethod
    def for_command(cls, options, given, resume_dir=None, outdir=None):
        """(config, output folder) of invert.py's `options` ({field: value}, defaults included; `given`: those the
        user set): the options, or with `resume_dir` the options of that run (`from_run`) except those given,
        into that folder. ValueError (one line) for options that do not go together, InversionError for a run
        that cannot be resumed."""
        if resume_dir is None:
            cfg = cls(**options)
        else:
            if outdir is not None and Path(outdir).resolve() != Path(resume_dir).resolve():
                raise ValueError('--resume DIR continues the run in DIR: leave out --outdir or make it DIR')
            cfg = cls.from_run(resume_dir, **{k: v for k, v in options.items() if k not in RESUMED or k in given})
            outdir = resume_dir
        for key, value in (('network', cfg.network), ('target', cfg.target), ('outdir', outdir)):
            if value is None:
                raise ValueError(f'--{key} is required (unless --resume DIR is given)')
        return cfg, outdir


# Options that `--resume DIR` takes from DIR/run.json unless given.
RESUMED = ('network', 'target', 'space', 'steps', 'lr', 'truncation', 'truncation_until', 'crop', 'lpips',
           'mse_weight', 'l1_weight', 'precision', 'seed', 'mask', 'init')


#----------------------------------------------------------------------------

def parse_init(init):
    """'mean' -> None; 'encoder:PKL' -> 'PKL'; anything else raises InversionError (one line naming --init)."""
    init = INIT_MEAN if init is None else str(init)
    if init == INIT_MEAN:
        return None
    if init.startswith(INIT_ENCODER) and len(init) > len(INIT_ENCODER):
        return init[len(INIT_ENCODER):]
    raise InversionError(f'--init {init}: expected "mean" or "encoder:PKL" (an encoder pickle from train_encoder.py)')


def load_init_encoder(path, G, trust_pickle=False, device=None):
    """Encoder pickle path or URL -> (its network 'E' in eval mode, frozen; sha256 of the file).

    Checked against `G`: image resolution and channels, and the latent geometry (num_ws, w_dim, R).
    Raises InversionError (one line naming --init) for anything else.
    """
    what = f'--init {INIT_ENCODER}{path}'
    try:
        E = load_encoder_pkl(path, device=device, trust_pickle=trust_pickle)['E']
        sha256 = files.file_sha256(dnnlib.util.open_url(path, return_filename=True))   # cached by now
    except (OSError, ValueError) as err:
        reason = getattr(err, 'reason', None) or dnnlib.util.one_line(err)
        raise InversionError(f'Cannot load {what}: {reason}') from err
    mismatch = generator_mismatch(E, G, generator='--network')
    if mismatch is not None:
        raise InversionError(f'{what}: {mismatch}; use an encoder trained for this generator')
    return E.eval().requires_grad_(False), sha256

#----------------------------------------------------------------------------

class InversionJob:
    """The inversion job for `job_runner.run_job`: LPIPS (+ pixel terms) against the target, the paper's truncation.

    Targets are decoded with their masks (`--mask` files, alpha channels, `--crop pad` padding); a batch is
    uint8 `[N, H, W, C + 1]` with the mask last (255 where there is none). Per image it writes `<name>.npy`,
    `<name>-recon.png`, `<name>-pair.png` (and video frames).
    """

    kind = 'invert'
    curve_key = 'lpips'

    def __init__(self, cfg, G, loss, space, settings, args, sources=(), encoder=None):
        """cfg: the `InversionConfig` (device and truncation resolved); settings: the run.json settings (what
        changes results); args: what run.json and summary.json record of the options."""
        self.cfg, self.G, self.loss, self.space, self.settings, self.args = cfg, G, loss, space, settings, args
        self.encoder = encoder                                              # None: start at the mean latent
        self.compiler = InversionCompiler(cfg.compile)                      # --compile: one per job, shared by batches
        self.lpips_network = getattr(loss, 'lpips_network', None) or lpips_network_name(cfg.lpips)
        self.device = torch.device(cfg.device)
        self.mask_dir = settings['mask']
        self.curve_title = f'LPIPS during inversion ({space.name})'
        self.sources = {src.name: src for src in sources}                  # for overview.png after a resume
        self.shown = {}                                                     # name -> overview entry

    def overview_entry(self, outdir, name, record):
        """(name, target, recon, lpips, mask) of an image finished earlier (decoded again), or None."""
        try:
            image = self.decode(self.sources[name])[0]
            recon = np.asarray(PIL.Image.open(outdir / f'{name}-recon.png'))
        except (KeyError, OSError, ValueError):
            return None
        target, mask = split_mask(image[None])
        recon = recon[:, :, None] if recon.ndim == 2 else recon
        return (name, target[0], recon, record.get('lpips'), mask[0] if (mask[0] != 255).any() else None)

    def write_overview(self, outdir):
        """overview.png of the first `run_files.OVERVIEW_MAX` finished images by name."""
        outdir = Path(outdir)
        results = run_files.read_results(outdir / 'results.jsonl', repair=False)
        finished = sorted(set(results) | set(self.shown))[:run_files.OVERVIEW_MAX]
        for name in finished:
            if name not in self.shown:
                entry = self.overview_entry(outdir, name, results[name])
                if entry is not None:
                    self.shown[name] = entry
        self.shown = {n: self.shown[n] for n in finished if n in self.shown}
        entries = list(self.shown.values())
        total = len(set(results) | set(self.shown))
        more = f', the first {len(entries)} of {total}' if total > len(entries) else ''
        run_files.write_overview(outdir / 'overview.png', entries,
                               f'Inversion into {self.space.name}: target (top), reconstruction (bottom){more}')

    def decode(self, src):
        image, mask, note = decode_target_with_mask(src, self.G.img_resolution, crop=self.cfg.crop,
                                                    channels=self.G.img_channels, mask_dir=self.mask_dir)
        if mask is None:
            mask = np.full(image.shape[:2], 255, dtype=np.uint8)
        elif not mask.any():
            raise TargetError('its mask keeps no pixel (all black): nothing to invert')
        return np.concatenate([image, mask[:, :, None]], axis=2), note

    @torch.no_grad()
    def initial_latents(self, targets):
        """The start of a batch `targets [N, C, H, W]`: the encoder's prediction `[N, *param_shape]`, or None (mean)."""
        if self.encoder is None:
            return None
        return self.encoder(targets).to(torch.float32)

    def make_inverter(self, images):
        c = self.cfg
        images, masks = split_mask(images)
        mask = mask_tensor(masks, self.device)
        loss = self.loss if mask is None else MaskedLoss(self.loss, mask)
        targets = to_tensor(images).to(self.device)
        try:
            return Inverter(self.G, loss, targets, self.space, steps=c.steps, lr=c.lr, betas=c.betas,
                            truncation_psi=c.truncation, truncation_until=c.truncation_until, precision=c.precision,
                            init=self.initial_latents(targets), compiler=self.compiler)
        except MaskUnsupportedError as err:
            raise InversionError(str(err)) from err

    def on_step(self, outdir, names, images, info):
        step = info['step']
        if self.cfg.save_video and (step - 1) % max(1, self.cfg.video_every) == 0:
            images, _masks = split_mask(images)
            frames = to_uint8(info['images'])
            for i, name in enumerate(names):
                run_files.write_frame(outdir, name, step - 1, images[i], frames[i])

    def finish(self, outdir, names, images, inverter):
        images, masks = split_mask(images)
        final = inverter.evaluate()
        mask = mask_tensor(masks, self.device)
        if mask is not None:                                                # MSE/PSNR over the kept pixels
            final.update(pixel_metrics(final['images'], inverter.target_state['image'], drange=(-1, 1), mask=mask,
                                       with_ssim=False, dtype=torch.float32))
        recon = to_uint8(final['images'])
        latents = inverter.params.detach().cpu().numpy()
        metrics = {k: final[k].cpu().tolist() for k in ('lpips', 'mse', 'psnr')}
        records = []
        for i, name in enumerate(names):
            masked = bool((masks[i] != 255).any())
            shown = masks[i] if masked else None
            run_files.write_image_outputs(outdir, name, latents[i], images[i], recon[i], mask=shown,
                                        lpips=metrics['lpips'][i])
            if self.cfg.save_video:
                run_files.write_frame(outdir, name, inverter.steps, images[i], recon[i])
            records.append(dict({k: metrics[k][i] for k in metrics}, lpips_network=self.lpips_network, masked=masked,
                                mask_coverage=round(float(masks[i].mean()) / 255, 6), init=self.init_name))
            if len(self.shown) < run_files.OVERVIEW_MAX or name < max(self.shown):
                self.shown[name] = (name, images[i], recon[i], metrics['lpips'][i], shown)
        self.write_overview(outdir)
        return records

    @property
    def init_name(self):
        """'mean' or 'encoder' (results.jsonl and summary.json record it)."""
        return INIT_MEAN if self.encoder is None else INIT_ENCODER.rstrip(':')

    def summarize(self, results, skipped):
        s = self.settings
        return run_files.summarize(
            results, self.space.name, s['steps'], self.args,
            extra=dict(checkpoint_sha256=s['network_sha256'], precision=s['precision'], lpips=s['lpips'],
                       lpips_network=self.lpips_network, device=str(self.device), skipped=len(skipped),
                       mask=s.get('mask'), masked_images=sum(bool(r.get('masked')) for r in results.values()),
                       init=self.init_name, encoder_sha256=s.get('encoder_sha256'), truncation=s['truncation'],
                       compile=self.compiler.summary()))

#----------------------------------------------------------------------------

def run_inversion(cfg, target, outdir, skipped=()):
    """Invert every image of `target` (folder, file or zip) into the latent space of `cfg.network`; returns the
    summary dict. skipped: [(source, reason)] of files left out before (e.g. photos without a face), for
    skipped.json. Raises InversionError for bad inputs (found before anything is written).
    """
    device = distributed.resolve_device(cfg.device)
    cfg = cfg.replace(device=str(device))
    args = cfg.to_json(outdir=outdir)                                      # The options as given (truncation None).
    torch.manual_seed(cfg.seed)
    if cfg.batch != 'auto' and int(cfg.batch) < 1:
        raise InversionError(f'--batch {cfg.batch}: must be a positive integer or auto')
    sources, ignored = list_job_targets(target)
    ignored = list(ignored) + list(skipped)
    if cfg.mask is not None and not os.path.isdir(os.path.expanduser(str(cfg.mask))):
        raise InversionError(f'--mask {cfg.mask}: not a folder (give a folder of masks named like the targets)')
    if int(cfg.steps) < 0:
        raise InversionError(f'--steps {cfg.steps}: must be 0 or more')
    check_compile_mode(cfg.compile)
    encoder_path = parse_init(cfg.init)
    check_job_outdir(outdir)
    G, sha256 = load_generator(cfg.network, cfg.trust_pickle, device)
    space, encoder, encoder_sha256 = cfg.space, None, None
    if encoder_path is not None:
        encoder, encoder_sha256 = load_init_encoder(encoder_path, G, trust_pickle=cfg.trust_pickle, device=device)
        if space in (None, AUTO):
            space = encoder.space
        elif space != encoder.space:
            raise InversionError(f'--space {space} does not match the encoder of --init {INIT_ENCODER}{encoder_path}, '
                                 f'which predicts {encoder.space}: leave --space out (auto) or pass --space '
                                 f'{encoder.space}')
    latent_space = G.latent_space(space)
    if cfg.truncation is None:
        cfg = cfg.replace(truncation=DEFAULT_TRUNCATION[INIT_MEAN if encoder is None else INIT_ENCODER])
    settings = dict(network_sha256=sha256, target=os.path.abspath(os.path.expanduser(str(target))),
                    space=latent_space.name, steps=int(cfg.steps), lr=float(cfg.lr),
                    betas=[float(b) for b in cfg.betas],
                    truncation=float(cfg.truncation), truncation_until=float(cfg.truncation_until), crop=cfg.crop,
                    lpips=str(cfg.lpips), mse_weight=float(cfg.mse_weight), l1_weight=float(cfg.l1_weight),
                    precision=cfg.precision, seed=int(cfg.seed),
                    mask=None if cfg.mask is None else os.path.abspath(os.path.expanduser(str(cfg.mask))))
    if encoder is not None:                    # (mean-start settings stay as before, so older runs still resume)
        settings.update(init=INIT_ENCODER.rstrip(':'), encoder_sha256=encoder_sha256)
    try:
        loss = build_loss(cfg.lpips, device=device, resolution=cfg.lpips_resolution, mse_weight=cfg.mse_weight,
                          l1_weight=cfg.l1_weight, precision=cfg.precision, seed=cfg.seed)
    except (OSError, ValueError, RuntimeError) as err:
        raise InversionError(f'Cannot set up --lpips {cfg.lpips}: {err}') from err
    if cfg.mask is not None or cfg.crop == 'pad':
        try:
            check_mask_support(loss, G, device)
        except MaskUnsupportedError as err:
            raise InversionError(str(err)) from err
    job = InversionJob(cfg, G, loss, latent_space, settings, args, sources=sources, encoder=encoder)

    def batch_size(pending):
        if cfg.batch != 'auto':
            return int(cfg.batch)
        return auto_batch_size(G, loss, latent_space, device, precision=cfg.precision, limit=max(1, pending))

    network = str(cfg.network)
    network_ref = network if dnnlib.util.is_url(network) else os.path.abspath(os.path.expanduser(network))
    header = (f'Generator {cfg.network} ({G.img_resolution} px, latent {list(G.w_shape)}, num_ws {G.num_ws}); '
              f'space {latent_space.name} {list(latent_space.param_shape)}; device {device}, {cfg.precision}')
    init_ref = INIT_MEAN
    if encoder is not None:
        is_url = dnnlib.util.is_url(str(encoder_path))
        init_ref = INIT_ENCODER + (encoder_path if is_url else os.path.abspath(os.path.expanduser(str(encoder_path))))
        header += f'; start: encoder {encoder_path}, truncation {cfg.truncation}'
        w_avg = getattr(encoder, 'w_avg', None)
        if w_avg is not None and w_avg.shape == G.mapping.w_avg.shape and not torch.allclose(w_avg, G.mapping.w_avg):
            header += " (note: the encoder's w_avg is not this generator's: was it trained for another checkpoint?)"
    return run_job(job, sources, ignored, outdir, batch=batch_size, device=device, save_every=cfg.save_every,
                   progress=cfg.progress, progress_every=cfg.progress_every, header=header,
                   run_info=dict(network=network_ref, init=init_ref, args=args))

#----------------------------------------------------------------------------
# invert.py as a whole: alignment first, paste-back after.

def invert_folder(cfg, outdir, log=print):
    """invert.py: with `cfg.align`, first align the faces of `cfg.target` into OUTDIR/aligned (rank 0 aligns, the
    other ranks of a sharded run read its result) and invert those; with `cfg.paste_back`, paste each reconstruction
    back into its photo (OUTDIR/pasted, rank 0). `log(message)` gets what a user should read (photos left out).
    Returns (the inversion's summary, paste-back's summary or None)."""
    target, align_skipped = cfg.target, []
    if cfg.align:
        if distributed.get_rank() == 0:
            target, align_skipped = _align_targets(cfg, outdir, log)
        distributed.barrier()
        if distributed.get_rank() != 0:
            target, align_skipped = _aligned_result(cfg.target, outdir)
    summary = run_inversion(cfg, target, outdir, skipped=align_skipped)
    pasted = None
    if cfg.paste_back and distributed.get_rank() == 0:
        pasted = paste_back_folder(Path(outdir) / 'aligned', outdir, Path(outdir) / 'pasted',
                                   pattern='{name}-recon.png', progress=False)
    return summary, pasted


def _align_targets(cfg, outdir, log):
    """Align the faces of cfg.target into OUTDIR/aligned (resumable) -> (that folder, [(photo, reason)] of the photos
    left out, for the run's skipped.json); InversionError when no face is found. The photos left out are logged
    and listed in OUTDIR/aligned/skipped.json too."""
    aligned_dir = Path(outdir) / 'aligned'
    try:
        summary = align_folder(cfg.target, aligned_dir, cfg.align_resolution, multiple=cfg.align_multiple,
                               overview=Path(outdir) / 'aligned-overview.png')
    except AlignFolderError as err:
        raise InversionError(str(err)) from None
    _, skipped = _aligned_result(cfg.target, outdir)
    for source, reason in skipped:
        log(f'{source}: {reason} (not inverted)')
    if summary['crops'] + summary['resumed'] == 0:
        raise InversionError(f'--align: no face found in --target {cfg.target} (reasons in '
                             f'{aligned_dir / "skipped.json"})')
    return str(aligned_dir), skipped


def _aligned_result(target, outdir):
    """(OUTDIR/aligned, [(photo, reason)] of the photos that alignment left out) from its skipped.json."""
    aligned_dir = Path(outdir) / 'aligned'
    skipped = [(str(Path(target) / r['source']) if Path(target).is_dir() else str(target), f'--align: {r["reason"]}')
               for r in json.loads((aligned_dir / 'skipped.json').read_text())]
    return str(aligned_dir), skipped
