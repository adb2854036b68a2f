"""Invert a folder, file or zip of images with one generator, resumably (the work behind invert.py).

`run_inversion(...)` loads the generator and the loss, lists the targets, and inverts them in
batches with `optimize.Inverter`. Files go to `outdir` as described in `inversion.outputs`.

Resuming: `outdir/run.json` records the settings that change results. Running again into the
same `outdir` with the same settings resumes: images with a line in `results.jsonl` are
skipped, a batch with a saved `state/<group>.pt` continues from its step with its Adam
state, and the remaining images are batched afresh. Since the loop has no randomness and each
image's trajectory does not depend on its batch, the result equals the uninterrupted run.
Different settings are refused with one line listing them.
"""

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import dnnlib
from torch_utils import checkpoint
from torch_utils.image_io import save_json, to_uint8

from . import outputs
from .losses import build_loss
from .optimize import Inverter, truncation_steps
from .spaces import LatentSpace
from .targets import IMAGE_EXTENSIONS, TargetError, load_target, scan_targets, to_tensor

#----------------------------------------------------------------------------

RESULT_SETTINGS = ('network_sha256', 'target', 'space', 'steps', 'lr', 'betas', 'truncation', 'truncation_until',
                   'crop', 'lpips', 'mse_weight', 'l1_weight', 'precision', 'seed')
MIN_RESOLUTION = 16        # VGG16's relu5_3 is 1x1 at 16 px.
AUTO_BATCH_MAX = 64        # `batch='auto'` never goes above this.
STATE_VERSION = 1


class InversionError(Exception):
    """A problem with the user's inputs or settings, reported as one line."""

#----------------------------------------------------------------------------

def load_generator(network, trust_pickle=False, device=None):
    """Checkpoint path or URL -> (G in eval mode, frozen; sha256 of the checkpoint file)."""
    try:
        local = dnnlib.util.open_url(network, return_filename=True)
        sha256 = outputs.file_sha256(local)
        G = checkpoint.load_network(local, key='G_ema', trust=trust_pickle, device=device)
    except (OSError, ValueError) as err:
        raise InversionError(f'Cannot load --network {network}: {err}') from err
    return G.eval().requires_grad_(False), sha256


def check_generator(G):
    """Raise InversionError if LPIPS cannot be computed on G's images."""
    if G.img_channels not in (1, 3):
        raise InversionError(f'The generator makes {G.img_channels}-channel images; inversion with LPIPS needs 1 or 3')
    if G.img_resolution < MIN_RESOLUTION:
        raise InversionError(f'The generator makes {G.img_resolution} px images; LPIPS (VGG16) needs at least '
                             f'{MIN_RESOLUTION} px')


def resolve_space(G, name=None):
    """'w' | 'w+' | 'W' | 'W+' | None/'auto' (W for overparameterized networks, w+ otherwise) -> LatentSpace."""
    if name in (None, 'auto'):
        name = 'W' if G.latent_rows is not None else 'w+'
    try:
        return LatentSpace.for_generator(G, name)
    except ValueError as err:
        raise InversionError(str(err)) from err


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

#----------------------------------------------------------------------------

def _group_id(names):
    return hashlib.sha1('\n'.join(names).encode('utf-8')).hexdigest()[:16]


def _settings_diff(old, new):
    return [f'{k} ({old.get(k)!r} -> {new.get(k)!r})' for k in RESULT_SETTINGS if old.get(k) != new.get(k)]


class _Run:
    """State of one `run_inversion` call (kept in one object so the per-batch code stays short)."""

    def __init__(self, *, G, loss, space, settings, outdir, device, opt, log):
        self.G, self.loss, self.space, self.settings = G, loss, space, settings
        self.outdir, self.device, self.opt, self.log = Path(outdir), device, opt, log
        self.results_path = self.outdir / 'results.jsonl'
        self.results = outputs.read_results(self.results_path)
        self.curves = outputs.read_curves(self.outdir / 'lpips_curves.npz')
        self.skipped = {}                                                # {source: record}, shared with run_inversion

    def state_path(self, names):
        return self.outdir / 'state' / f'{_group_id(names)}.pt'

    def save_state(self, names, inverter, seconds):
        state = dict(version=STATE_VERSION, names=list(names), settings=self.settings, seconds=float(seconds),
                     **inverter.state_dict())
        outputs.save_state(self.state_path(names), state)

    def invert_group(self, names, sources, images, state=None, images_bar=None):
        """Invert one batch. images: uint8 `[N, H, W, C]`; state: a saved resume state or None."""
        opt = self.opt
        n = len(names)
        inverter = Inverter(self.G, self.loss, to_tensor(images).to(self.device), self.space, steps=opt['steps'],
                            lr=opt['lr'], betas=opt['betas'], truncation_psi=opt['truncation'],
                            truncation_until=opt['truncation_until'], precision=opt['precision'])
        seconds = 0.0
        if state is not None:
            inverter.load_state_dict(state)
            seconds = float(state.get('seconds', 0.0))
            self.log(f'Resuming a batch of {n} at step {inverter.step}/{opt["steps"]}: {", ".join(names[:4])}'
                     f'{" ..." if n > 4 else ""}')
        bar = tqdm(total=opt['steps'], initial=inverter.step, desc=f'steps (batch of {n})', unit='step',
                   leave=False, disable=not opt['progress'], dynamic_ncols=True)
        start = time.perf_counter()
        try:
            for info in inverter.run():
                step = info['step']
                if opt['save_video'] and ((step - 1) % opt['video_every'] == 0):
                    frames = to_uint8(info['images'])
                    for i, name in enumerate(names):
                        outputs.write_frame(self.outdir, name, step - 1, images[i], frames[i])
                if step % opt['progress_every'] == 0 or step == opt['steps']:
                    mean = info['lpips'].mean().item()                  # One host sync every few steps.
                    bar.update(step - bar.n)
                    bar.set_postfix(lpips=f'{mean:.4f}')
                if opt['save_every'] and step % opt['save_every'] == 0 and step < opt['steps']:
                    self.save_state(names, inverter, seconds + time.perf_counter() - start)
        finally:
            bar.close()
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        seconds += time.perf_counter() - start
        self.finish_group(names, sources, images, inverter, seconds)
        if images_bar is not None:
            images_bar.update(n)

    def finish_group(self, names, sources, images, inverter, seconds):
        """Write the batch's per-image files, then its results lines, then drop its resume state."""
        n = len(names)
        final = inverter.evaluate()
        recon = to_uint8(final['images'])
        latents = inverter.params.detach().cpu().numpy()
        metrics = {k: final[k].cpu().tolist() for k in ('lpips', 'mse', 'psnr')}
        history = inverter.history.cpu().numpy()                           # [steps, N]
        todo = [i for i, name in enumerate(names) if name not in self.results]
        for i in todo:
            outputs.write_image_outputs(self.outdir, names[i], latents[i], images[i], recon[i])
            if self.opt['save_video']:
                outputs.write_frame(self.outdir, names[i], inverter.steps, images[i], recon[i])
            self.curves[names[i]] = np.append(history[:, i], metrics['lpips'][i]).astype(np.float32)
        outputs.write_curves(self.outdir / 'lpips_curves.npz', self.curves)
        for i in todo:
            record = dict(name=names[i], source=sources[i], lpips=metrics['lpips'][i], mse=metrics['mse'][i],
                          psnr=metrics['psnr'][i], steps=inverter.steps, seconds=seconds / n,
                          batch_seconds=seconds, batch_size=n)
            outputs.append_result(self.results_path, record)
            self.results[names[i]] = record
        state_path = self.state_path(names)
        if state_path.exists():
            state_path.unlink()
        mean = float(np.mean(metrics['lpips']))
        self.log(f'Batch of {n} done in {seconds:.1f}s: mean LPIPS {mean:.4f} '
                 f'({len(self.results)} images finished)')
        self.write_run_files(latents=False)

    def write_run_files(self, latents=True):
        """summary.json and lpips_curve.png (cheap: after every batch); latents.npz (at the end)."""
        s = self.settings
        if latents:
            outputs.write_latents_npz(self.outdir, list(self.results), self.space.name, s['network_sha256'],
                                      num_ws=self.space.num_ws, w_dim=self.space.w_dim,
                                      latent_rows=-1 if self.space.latent_rows is None else self.space.latent_rows)
        truncation_end = truncation_steps(s['steps'], s['truncation_until']) if s['truncation'] != 1 else None
        outputs.plot_curves(self.outdir / 'lpips_curve.png',
                            {n: c for n, c in self.curves.items() if n in self.results},
                            truncation_end=truncation_end, title=f'LPIPS during inversion ({self.space.name})')
        summary = outputs.summarize(
            self.results, self.space.name, s['steps'], self.opt['args'],
            extra=dict(checkpoint_sha256=s['network_sha256'], precision=s['precision'], lpips=s['lpips'],
                       device=str(self.device), skipped=len(self.skipped)))
        outputs.write_summary(self.outdir, summary)
        return summary

#----------------------------------------------------------------------------

def run_inversion(network, target, outdir, *, space=None, steps=1000, lr=0.05, betas=(0.9, 0.999), batch='auto',
                  truncation=0.9, truncation_until=0.5, seed=0, save_every=100, device='cpu', precision='fp32',
                  crop='center', lpips='vgg', trust_pickle=False, mse_weight=0.0, l1_weight=0.0, save_video=False,
                  video_every=10, progress=True, progress_every=10, lpips_resolution=256, args=None):
    """Invert every image of `target` into `network`'s latent `space`; returns the summary dict.

    See invert.py for the meaning of each option. Raises InversionError for bad inputs.
    """
    outdir = Path(outdir)
    device = torch.device(device)
    torch.manual_seed(seed)

    # Everything that can fail on bad inputs happens before anything is written.
    try:
        sources = scan_targets(target)
    except FileNotFoundError as err:
        raise InversionError(str(err)) from err
    if not sources:
        raise InversionError(f'No images ({" ".join(IMAGE_EXTENSIONS)}) found in {target}')
    by_name = {s.name: s for s in sources}
    G, sha256 = load_generator(network, trust_pickle=trust_pickle, device=device)
    check_generator(G)
    latent_space = resolve_space(G, space)
    settings = dict(network_sha256=sha256, target=os.path.abspath(os.path.expanduser(str(target))),
                    space=latent_space.name, steps=int(steps), lr=float(lr), betas=[float(b) for b in betas],
                    truncation=float(truncation), truncation_until=float(truncation_until), crop=crop,
                    lpips=str(lpips), mse_weight=float(mse_weight), l1_weight=float(l1_weight),
                    precision=precision, seed=int(seed))
    run_json = outdir / 'run.json'
    if run_json.is_file():
        old = json.loads(run_json.read_text()).get('settings', {})
        diff = _settings_diff(old, settings)
        if diff:
            raise InversionError(f'{outdir} holds a run with other settings: {"; ".join(diff)}. '
                                 f'Use another --outdir, or the same settings to resume it')
    try:
        loss = build_loss(lpips, device=device, resolution=lpips_resolution, mse_weight=mse_weight,
                          l1_weight=l1_weight, precision=precision, seed=seed)
    except (OSError, ValueError, RuntimeError) as err:
        raise InversionError(f'Cannot set up --lpips {lpips}: {err}') from err

    outdir.mkdir(parents=True, exist_ok=True)
    network_ref = str(network) if dnnlib.util.is_url(str(network)) else os.path.abspath(os.path.expanduser(str(network)))
    save_json(run_json, dict(settings=settings, network=network_ref, args=args or {}))
    log = outputs.RunLog(outdir / 'log.txt', echo=progress)
    log(f'Generator {network} ({G.img_resolution} px, latent {list(G.w_shape)}, num_ws {G.num_ws}); '
        f'space {latent_space.name} {list(latent_space.param_shape)}; device {device}, {precision}')

    skipped_path = outdir / 'skipped.json'
    skipped = {}
    if skipped_path.is_file():
        skipped = {r['source']: r for r in json.loads(skipped_path.read_text())}

    def decode(src):
        """uint8 [H, W, C], or None after recording the file in skipped.json."""
        try:
            image = load_target(src, G.img_resolution, crop=crop, channels=G.img_channels)
        except TargetError as err:
            skipped[src.source] = dict(name=src.name, source=src.source, reason=str(err))
            save_json(skipped_path, list(skipped.values()))
            log(f'Skipping {src.source}: {err}')
            return None
        if skipped.pop(src.source, None) is not None:      # Readable again since an earlier run.
            save_json(skipped_path, list(skipped.values()))
        return image

    opt = dict(steps=int(steps), lr=lr, betas=tuple(betas), truncation=truncation, truncation_until=truncation_until,
               precision=precision, save_every=int(save_every), save_video=save_video, video_every=max(1, int(video_every)),
               progress=progress, progress_every=max(1, int(progress_every)), args=args or {})
    run = _Run(G=G, loss=loss, space=latent_space, settings=settings, outdir=outdir, device=device, opt=opt, log=log)
    run.skipped = skipped

    # Saved batches first, then everything not finished.
    groups = []
    for path in sorted((outdir / 'state').glob('*.pt')):
        state = outputs.load_state(path)
        names = list(state['names'])
        if state.get('settings') != settings or any(n not in by_name for n in names):
            raise InversionError(f'Resume state {path} does not fit this run (other settings or targets); remove it')
        if all(n in run.results for n in names):
            path.unlink()
            continue
        groups.append((names, state))
    in_groups = {n for names, _ in groups for n in names}
    pending = [s for s in sources if s.name not in run.results and s.name not in in_groups]
    todo = len(pending) + sum(sum(n not in run.results for n in names) for names, _ in groups)
    log(f'{len(sources)} targets: {len(run.results)} finished, {len(in_groups)} in saved batches, '
        f'{len(pending)} to do')

    if batch == 'auto':
        batch_size = auto_batch_size(G, loss, latent_space, device, precision=precision, limit=max(1, len(pending)))
        log(f'--batch auto: {batch_size} images per batch')
    else:
        batch_size = int(batch)

    images_bar = tqdm(total=todo, desc='images', unit='img', disable=not progress, dynamic_ncols=True)
    try:
        for names, state in groups:
            images = []
            for n in names:
                img = decode(by_name[n])
                if img is None:
                    raise InversionError(f'{by_name[n].source} from a saved batch can no longer be read')
                images.append(img)
            run.invert_group(names, [by_name[n].source for n in names], np.stack(images), state=state,
                             images_bar=images_bar)
        queue = iter(pending)
        exhausted = False
        while not exhausted:
            names, srcs, images = [], [], []
            while len(names) < batch_size:
                src = next(queue, None)
                if src is None:
                    exhausted = True
                    break
                img = decode(src)
                if img is None:
                    images_bar.update(1)
                    continue
                names.append(src.name)
                srcs.append(src.source)
                images.append(img)
            if names:
                run.invert_group(names, srcs, np.stack(images), images_bar=images_bar)
    finally:
        images_bar.close()

    summary = run.write_run_files(latents=True)
    lpips_mean = 'n/a' if summary['lpips_mean'] is None else f'{summary["lpips_mean"]:.4f}'
    log(f'Done: {summary["images"]} images inverted (mean LPIPS {lpips_mean}), {len(skipped)} skipped -> {outdir}',
        echo=False)                                                     # The CLI prints its own last line.
    return summary

#----------------------------------------------------------------------------
