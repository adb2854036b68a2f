"""Invert a folder, file or zip of images with one generator, resumably (the work behind invert.py).

`run_inversion(...)` loads the generator and the loss and hands an `InversionJob` (the optimisation
of `optimize.Inverter` with the LPIPS loss) to the per-image runner `jobs.run_job`, which lists the
targets, batches, resumes, locks the output folder and writes the run files. Per-image files are
described in `inversion.outputs`. Also here: checking a generator for per-image jobs (loading one is
`checkpoint.load_frozen_network`, for every file format),
and the encoder start (`init='encoder:PKL'`): each batch starts from an encoder's prediction
`E(targets) [N, *param_shape]` instead of the mean latent (`steps=0`: the encoder alone).
"""

import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch

import dnnlib
from torch_utils import files
from torch_utils import checkpoint
from torch_utils.image_io import to_uint8
from training.encoder import generator_mismatch, load_encoder_pkl

from . import run_files
from .jobs import InversionError, check_job_outdir, list_job_targets, run_job
from metrics.lpips import DEFAULT_LPIPS, MaskUnsupportedError, lpips_network_name
from metrics.reconstruction import pixel_metrics

from .losses import MaskedLoss, build_loss
from .optimize import Inverter
from .targets import TargetError, decode_target_with_mask, to_tensor

#----------------------------------------------------------------------------

MIN_RESOLUTION = 16        # VGG16's relu5_3 is 1x1 at 16 px.
AUTO_BATCH_MAX = 64        # `batch='auto'` never goes above this.
INIT_MEAN, INIT_ENCODER = 'mean', 'encoder:'
DEFAULT_TRUNCATION = {INIT_MEAN: 0.9, INIT_ENCODER: 1.0}   # psi when none is given, by start

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


def check_generator(G):
    """Raise InversionError if LPIPS cannot be computed on G's images."""
    if G.img_channels not in (1, 3):
        raise InversionError(f'The generator makes {G.img_channels}-channel images; inversion with LPIPS needs 1 or 3')
    if G.img_resolution < MIN_RESOLUTION:
        raise InversionError(f'The generator makes {G.img_resolution} px images; LPIPS (VGG16) needs at least '
                             f'{MIN_RESOLUTION} px')


def auto_batch_size(G, loss, space, device, precision='fp32', limit=AUTO_BATCH_MAX, headroom=0.8):
    """Largest batch whose optimisation step fits in `headroom` of free CUDA memory (measured with
    1 and 2 images), at most `limit`. Off CUDA: min(limit, 8)."""
    device = torch.device(device)
    if device.type != 'cuda':
        return max(1, min(limit, 8))

    def peak_bytes(n):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        targets = torch.zeros([n, G.img_channels, G.img_resolution, G.img_resolution], device=device)
        inverter = Inverter(G, loss, targets, space, steps=1, precision=precision)
        for _ in inverter.run():
            pass
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base

    one, two = peak_bytes(1), peak_bytes(2)
    per_image = max(two - one, 1)
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info(device)
    n = int((free * headroom - max(one - per_image, 0)) // per_image)
    return max(1, min(limit, n))

def check_mask_support(loss, G, device):
    """Raise InversionError (one line) when `loss`'s LPIPS network gives no spatial map to mask."""
    r = G.img_resolution
    probe = torch.zeros([1, G.img_channels, r, r], device=device)
    half = torch.ones([1, 1, r, r], device=device)
    half[..., : r // 2] = 0
    try:
        loss.prepare_target(probe, half)
    except MaskUnsupportedError as err:
        raise InversionError(str(err)) from err

#----------------------------------------------------------------------------

def split_mask(images):
    """uint8 `[N, H, W, C + 1]` (the inversion job's batches: image channels, then the mask) ->
    (images `[N, H, W, C]`, masks `[N, H, W]` uint8, 255 = keep)."""
    return images[..., :-1], images[..., -1]


def mask_tensor(masks, device):
    """uint8 masks `[N, H, W]` -> float `[N, 1, H, W]` in [0, 1], or None when every pixel is kept."""
    if (masks == 255).all():
        return None
    return torch.from_numpy(masks.copy()).to(device=device, dtype=torch.float32)[:, None] / 255


class InversionJob:
    """The inversion job for `jobs.run_job`: LPIPS (+ pixel terms) against the target, the paper's truncation.

    Targets are decoded with their masks (`--mask` files, alpha channels, `--crop pad` padding); a batch is
    uint8 `[N, H, W, C + 1]` with the mask last (255 where there is none). Per image it writes `<name>.npy`,
    `<name>-recon.png`, `<name>-pair.png` (and video frames).
    """

    kind = 'invert'
    curve_key = 'lpips'

    def __init__(self, G, loss, space, settings, opt, device, sources=(), encoder=None):
        self.G, self.loss, self.space, self.settings, self.opt = G, loss, space, settings, opt
        self.encoder = encoder                                              # None: start at the mean latent
        self.lpips_network = getattr(loss, 'lpips_network', None) or lpips_network_name(settings['lpips'])
        self.device = torch.device(device)
        self.decode_resolution, self.channels, self.crop = G.img_resolution, G.img_channels, settings['crop']
        self.mask_dir = settings.get('mask')
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
        image, mask, note = decode_target_with_mask(src, self.decode_resolution, crop=self.crop,
                                                    channels=self.channels, mask_dir=self.mask_dir)
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
        s = self.settings
        images, masks = split_mask(images)
        mask = mask_tensor(masks, self.device)
        loss = self.loss if mask is None else MaskedLoss(self.loss, mask)
        targets = to_tensor(images).to(self.device)
        try:
            return Inverter(self.G, loss, targets, self.space, steps=s['steps'], lr=s['lr'], betas=s['betas'],
                            truncation_psi=s['truncation'], truncation_until=s['truncation_until'],
                            precision=s['precision'], init=self.initial_latents(targets))
        except MaskUnsupportedError as err:
            raise InversionError(str(err)) from err

    def on_step(self, outdir, names, images, info):
        step = info['step']
        if self.opt['save_video'] and (step - 1) % self.opt['video_every'] == 0:
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
            if self.opt['save_video']:
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
            results, self.space.name, s['steps'], self.opt['args'],
            extra=dict(checkpoint_sha256=s['network_sha256'], precision=s['precision'], lpips=s['lpips'],
                       lpips_network=self.lpips_network, device=str(self.device), skipped=len(skipped), mask=s.get('mask'),
                       masked_images=sum(bool(r.get('masked')) for r in results.values()), init=self.init_name,
                       encoder_sha256=s.get('encoder_sha256'), truncation=s['truncation']))

#----------------------------------------------------------------------------

def run_inversion(network, target, outdir, *, space=None, steps=1000, lr=0.05, betas=(0.9, 0.999), batch='auto',
                  truncation=None, truncation_until=0.5, init=INIT_MEAN, seed=0, save_every=100, device='cpu',
                  precision='fp32',
                  crop='center', lpips=DEFAULT_LPIPS, trust_pickle=False, mse_weight=0.0, l1_weight=0.0, save_video=False,
                  video_every=10, progress=True, progress_every=10, lpips_resolution=256, mask=None, skipped=(),
                  args=None):
    """Invert every image of `target` into `network`'s latent `space`; returns the summary dict.

    See invert.py for the meaning of each option, `inversion.jobs` for the files and resuming. mask: folder of
    masks (same relative paths as the targets, any image format; white = keep, black = ignore, grey = weight).
    skipped: [(source, reason)] of files left out before (e.g. photos without a face), for skipped.json.
    init: 'mean' (the paper) or 'encoder:PKL' (start from that encoder's prediction; space None/'auto' takes the
    encoder's space). truncation: psi toward the mean; None = 0.9 from the mean, 1 (off) from an encoder.
    steps: 0 evaluates the start (with an encoder: the encoder alone). Raises InversionError for bad inputs (found
    before anything is written).
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    if batch != 'auto' and int(batch) < 1:
        raise InversionError(f'--batch {batch}: must be a positive integer or auto')
    sources, ignored = list_job_targets(target)
    ignored = list(ignored) + list(skipped)
    if mask is not None and not os.path.isdir(os.path.expanduser(str(mask))):
        raise InversionError(f'--mask {mask}: not a folder (give a folder of masks named like the targets)')
    if int(steps) < 0:
        raise InversionError(f'--steps {steps}: must be 0 or more')
    encoder_path = parse_init(init)
    check_job_outdir(outdir)
    G, _local, sha256 = checkpoint.load_frozen_network(network, trust=trust_pickle, device=device, option='--network')
    check_generator(G)
    encoder = encoder_sha256 = None
    if encoder_path is not None:
        encoder, encoder_sha256 = load_init_encoder(encoder_path, G, trust_pickle=trust_pickle, device=device)
        if space in (None, 'auto'):
            space = encoder.space
        elif space != encoder.space:
            raise InversionError(f'--space {space} does not match the encoder of --init {INIT_ENCODER}{encoder_path}, '
                                 f'which predicts {encoder.space}: leave --space out (auto) or pass --space '
                                 f'{encoder.space}')
    latent_space = G.latent_space(space)
    if truncation is None:
        truncation = DEFAULT_TRUNCATION[INIT_MEAN if encoder is None else INIT_ENCODER]
    settings = dict(network_sha256=sha256, target=os.path.abspath(os.path.expanduser(str(target))),
                    space=latent_space.name, steps=int(steps), lr=float(lr), betas=[float(b) for b in betas],
                    truncation=float(truncation), truncation_until=float(truncation_until), crop=crop,
                    lpips=str(lpips), mse_weight=float(mse_weight), l1_weight=float(l1_weight),
                    precision=precision, seed=int(seed),
                    mask=None if mask is None else os.path.abspath(os.path.expanduser(str(mask))))
    if encoder is not None:                    # (mean-start settings stay as before, so older runs still resume)
        settings.update(init=INIT_ENCODER.rstrip(':'), encoder_sha256=encoder_sha256)
    try:
        loss = build_loss(lpips, device=device, resolution=lpips_resolution, mse_weight=mse_weight,
                          l1_weight=l1_weight, precision=precision, seed=seed)
    except (OSError, ValueError, RuntimeError) as err:
        raise InversionError(f'Cannot set up --lpips {lpips}: {err}') from err
    if mask is not None or crop == 'pad':
        check_mask_support(loss, G, device)
    opt = dict(save_video=save_video, video_every=max(1, int(video_every)), args=args or {})
    job = InversionJob(G, loss, latent_space, settings, opt, device, sources=sources, encoder=encoder)

    def batch_size(pending):
        if batch != 'auto':
            return int(batch)
        return auto_batch_size(G, loss, latent_space, device, precision=precision, limit=max(1, pending))

    network_ref = str(network) if dnnlib.util.is_url(str(network)) else os.path.abspath(os.path.expanduser(str(network)))
    header = (f'Generator {network} ({G.img_resolution} px, latent {list(G.w_shape)}, num_ws {G.num_ws}); '
              f'space {latent_space.name} {list(latent_space.param_shape)}; device {device}, {precision}')
    init_ref = INIT_MEAN
    if encoder is not None:
        is_url = dnnlib.util.is_url(str(encoder_path))
        init_ref = INIT_ENCODER + (encoder_path if is_url else os.path.abspath(os.path.expanduser(str(encoder_path))))
        header += f'; start: encoder {encoder_path}, truncation {truncation}'
        w_avg = getattr(encoder, 'w_avg', None)
        if w_avg is not None and w_avg.shape == G.mapping.w_avg.shape and not torch.allclose(w_avg, G.mapping.w_avg):
            header += " (note: the encoder's w_avg is not this generator's: was it trained for another checkpoint?)"
    return run_job(job, sources, ignored, outdir, batch=batch_size, device=device, save_every=save_every,
                   progress=progress, progress_every=progress_every, header=header,
                   run_info=dict(network=network_ref, init=init_ref, args=args or {}))

#----------------------------------------------------------------------------
