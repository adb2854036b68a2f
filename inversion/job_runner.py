"""The resumable runner of per-image optimisation jobs (inversion, upsampling): `run_job(job, ...)`.

The runner owns everything but the optimisation: listing the targets, the output folder (checked before anything
is written, locked against a second process, cleared of temporaries a killed run left), `run.json` (the settings
that change results; other settings into the same folder are refused), `skipped.json` (every file of the target
that is not processed, with its reason), `log.txt`, the progress bars, `results.jsonl` (one line per finished
image: the completion marker), `state/<group>.pt` (resumable state of an unfinished batch), the LPIPS curves,
`latents.npz` and `summary.json` (formats in `run_files`). A job supplies the optimisation (`Job`).

Resuming: images with a line in `results.jsonl` whose `<name>.npy` still loads are skipped; a batch with a
readable `state/<group>.pt` continues from its step with its Adam state; damaged state or latent files are
reported and their images redone. Since the loop has no randomness and each image's trajectory does not depend
on its batch, the result equals the uninterrupted run.
"""

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from dnnlib.util import one_line
from figures.curves import lpips_curves
from torch_utils import checkpoint, compiled, distributed
from torch_utils.files import check_outdir, make_outdir, outdir_lock, remove_stale_temporaries, save_json
from torch_utils.image_io import IMAGE_EXTENSIONS
from training.latent_spaces import LatentSpace

from . import run_files, sharding
from .losses import check_lpips_input
from .optimize import Inverter, truncation_steps
from .targets import TargetError, TargetSource, list_targets

STATE_VERSION = 1


class InversionError(ValueError):
    """A problem with the user's inputs or settings, reported as one line (a ValueError, so `cli_errors` reports it)."""


class Job(Protocol):
    """What `run_job` needs of a job: its settings and the optimisation of a batch of decoded targets."""

    kind: str                   # 'invert' | 'upsample' (for messages)
    settings: dict              # The settings that change results (JSON); run.json keeps them, resuming compares.
    space: LatentSpace          # The space of the latents written as `<name>.npy`.
    curve_key: str              # The metric that ends each image's curve and is logged per batch ('lpips').
    curve_title: str            # Title of lpips_curve.png.

    def decode(self, source: TargetSource) -> tuple:
        """(uint8 `[H, W, C']`, note or None) of one target file; raises `targets.TargetError` for a file that
        cannot be used (it goes to skipped.json with the reason)."""

    def make_inverter(self, images: np.ndarray) -> Inverter:
        """The optimisation of a uint8 batch `[N, H, W, C']` of decoded targets."""

    def on_step(self, outdir: Path, names: list, images: np.ndarray, info: dict) -> None:
        """Called after every step (e.g. video frames); may do nothing."""

    def finish(self, outdir: Path, names: list, images: np.ndarray, inverter: Inverter) -> list:
        """Write the per-image files, including `<name>.npy`; one metrics dict per image."""

    def summarize(self, results: dict, skipped: dict) -> dict:
        """summary.json of the run."""

#----------------------------------------------------------------------------

def check_compile_mode(mode):
    """Raise InversionError (one line) unless `mode` is a --compile value (`torch_utils.compiled.MODES`)."""
    if mode not in compiled.MODES:
        raise InversionError(f'--compile {mode!r}: use one of {", ".join(compiled.MODES)}')


def list_job_targets(target):
    """(sources, ignored) of `targets.list_targets`; InversionError when `target` is missing or holds no candidates."""
    try:
        sources, ignored = list_targets(target)
    except (FileNotFoundError, TargetError) as err:
        raise InversionError(f'--target: {err}') from err
    if not sources:
        raise InversionError(f'No images ({" ".join(IMAGE_EXTENSIONS)}, or any other format Pillow reads) found in '
                             f'{target}')
    return sources, ignored


def load_generator(network, trust_pickle=False, device=None):
    """(G_ema of the checkpoint `network`, frozen, in eval mode; SHA-256 of its file) for a per-image job:
    InversionError (one line) for a file that cannot be loaded or a generator whose images LPIPS cannot take."""
    G, _local, sha256 = checkpoint.load_frozen_network(network, trust=trust_pickle, device=device, option='--network')
    try:
        check_lpips_input(G)
    except ValueError as err:
        raise InversionError(str(err)) from err
    return G, sha256


def check_job_outdir(outdir):
    """Raise InversionError (one line naming --outdir) unless `outdir` can be used; creates nothing."""
    try:
        check_outdir(outdir)
    except ValueError as err:
        raise InversionError(str(err)) from err


def _group_id(names):
    return hashlib.sha1('\n'.join(names).encode('utf-8')).hexdigest()[:16]


def _read_json(path, what):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise InversionError(f'{path} is damaged ({one_line(err)}); remove it, or use another --outdir, to '
                             f'start {what} afresh') from err

#----------------------------------------------------------------------------

class _Runner:
    """State of one `run_job` call (kept in one object so the per-batch code stays short)."""

    def __init__(self, job, outdir, *, opt, log, device):
        self.job, self.outdir, self.opt, self.log, self.device = job, Path(outdir), opt, log, device
        self.results_path = self.outdir / 'results.jsonl'
        self.results = run_files.read_results(self.results_path)
        self.curves = {}
        self.skipped = {}                                                   # {source: record}
        self.skipped_path = self.outdir / 'skipped.json'
        self.curves_path = self.outdir / 'lpips_curves.npz'
        self.shard = False                                                  # True: a rank of a sharded run.

    def use_shard_files(self, rank):
        """Write this rank's results, curves and skipped list to `shards/` (see `inversion.sharding`)."""
        paths = sharding.shard_paths(self.outdir, rank)
        paths['results'].parent.mkdir(exist_ok=True)
        self.results_path, self.curves_path, self.skipped_path = paths['results'], paths['curves'], paths['skipped']
        self.shard = True

    # -- skipped.json ------------------------------------------------------

    def load_skipped(self, ignored):
        if self.skipped_path.is_file():
            try:
                self.skipped = {r['source']: r for r in json.loads(self.skipped_path.read_text())}
            except (OSError, ValueError, KeyError, TypeError):
                self.log(f'{self.skipped_path} is damaged; listing the skipped files again')
        for source, reason in ignored:
            self.skipped[source] = dict(name=None, source=source, reason=reason)
        self.save_skipped()

    def save_skipped(self):
        save_json(self.skipped_path, list(self.skipped.values()))

    def decode(self, src):
        """uint8 [H, W, C], or None after recording the file in skipped.json."""
        job = self.job
        try:
            image, note = job.decode(src)
        except TargetError as err:
            self.skipped[src.source] = dict(name=src.name, source=src.source, reason=str(err))
            self.save_skipped()
            self.log(f'Skipping {src.source}: {err}')
            return None
        if note:
            self.log(f'{src.source}: {note}')
        if self.skipped.pop(src.source, None) is not None:                  # Readable again since an earlier run.
            self.save_skipped()
        return image

    # -- what an earlier run left ------------------------------------------

    def check_finished(self):
        """Drop finished images whose `<name>.npy` is missing or damaged (they are redone)."""
        shape = tuple(self.job.space.param_shape)
        bad = []
        for name in self.results:
            try:
                ok = tuple(np.load(self.outdir / f'{name}.npy', allow_pickle=False).shape) == shape
            except (OSError, ValueError, EOFError):
                ok = False
            if not ok:
                bad.append(name)
        for name in bad:
            del self.results[name]
            self.log(f'{name}.npy is missing or damaged: redoing {name}')
        if bad:
            run_files.rewrite_results(self.results_path, self.results)
        try:
            self.curves = run_files.read_curves(self.outdir / 'lpips_curves.npz')
        except (OSError, ValueError, KeyError, EOFError):
            self.log('lpips_curves.npz is damaged; the curves of earlier images are lost')
            self.curves = {}

    def saved_groups(self, by_name):
        """[(names, state)] of the readable resume states; damaged ones are removed (their images redone)."""
        groups = []
        for path in sorted((self.outdir / 'state').glob('*.pt')):
            try:
                state = run_files.load_state(path)
                names = list(state['names'])
            except Exception as err:  # noqa: BLE001 - any damage means: start this batch again.
                self.log(f'Resume state {path.name} is damaged ({type(err).__name__}); redoing its images')
                path.unlink(missing_ok=True)
                continue
            if state.get('settings') != self.job.settings or any(n not in by_name for n in names):
                raise InversionError(f'Resume state {path} does not fit this run (other settings or targets); '
                                     'remove it')
            if all(n in self.results for n in names):
                path.unlink(missing_ok=True)
                continue
            groups.append((names, state))
        return groups

    # -- one batch ---------------------------------------------------------

    def state_path(self, names):
        return self.outdir / 'state' / f'{_group_id(names)}.pt'

    def save_state(self, names, inverter, seconds):
        state = dict(version=STATE_VERSION, names=list(names), settings=self.job.settings, seconds=float(seconds),
                     **inverter.state_dict())
        run_files.save_state(self.state_path(names), state)

    def run_group(self, names, sources, images, state=None, images_bar=None):
        """Optimise one batch. images: uint8 `[N, H, W, C]`; state: a saved resume state or None."""
        opt, n = self.opt, len(names)
        start = time.perf_counter()                 # The job's set-up (e.g. an encoder's prediction) counts too.
        inverter = self.job.make_inverter(images)
        seconds = 0.0
        if state is not None:
            inverter.load_state_dict(state)
            seconds = float(state.get('seconds', 0.0))
            self.log(f'Resuming a batch of {n} at step {inverter.step}/{inverter.steps}: {", ".join(names[:4])}'
                     f'{" ..." if n > 4 else ""}')
        bar = tqdm(total=inverter.steps, initial=inverter.step, desc=f'steps (batch of {n})', unit='step',
                   leave=False, disable=not opt['progress'], dynamic_ncols=True)
        try:
            for info in inverter.run():
                step = info['step']
                self.job.on_step(self.outdir, names, images, info)
                if step % opt['progress_every'] == 0 or step == inverter.steps:
                    bar.update(step - bar.n)
                    bar.set_postfix(lpips=f'{info["lpips"].mean().item():.4f}')   # One host sync every few steps.
                if opt['save_every'] and step % opt['save_every'] == 0 and step < inverter.steps:
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
        metrics = self.job.finish(self.outdir, names, images, inverter)
        history = inverter.history.cpu().numpy()                               # [steps, N]
        todo = [i for i, name in enumerate(names) if name not in self.results]
        for i in todo:
            final = metrics[i].get(self.job.curve_key, np.nan)
            self.curves[names[i]] = np.append(history[:, i], final).astype(np.float32)
        run_files.write_curves(self.curves_path, self.curves)
        for i in todo:
            record = dict(name=names[i], source=sources[i], **metrics[i], steps=inverter.steps, seconds=seconds / n,
                          batch_seconds=seconds, batch_size=n)
            run_files.append_result(self.results_path, record)
            self.results[names[i]] = record
        state_path = self.state_path(names)
        if state_path.exists():
            state_path.unlink()
        key = self.job.curve_key
        mean = float(np.mean([m[key] for m in metrics])) if all(key in m for m in metrics) else float('nan')
        self.log(f'Batch of {n} done in {seconds:.1f}s: mean {key} {mean:.4f} ({len(self.results)} images finished)')
        if not self.shard:                                                  # Rank 0 writes them after the merge.
            self.write_run_files(latents=False)

    def write_run_files(self, latents=True):
        """summary.json and lpips_curve.png (cheap: after every batch); latents.npz (at the end)."""
        job, s = self.job, self.job.settings
        if latents:
            space = job.space
            run_files.write_latents_npz(self.outdir, list(self.results), space.name, s['network_sha256'],
                                      num_ws=space.num_ws, w_dim=space.w_dim,
                                      latent_rows=-1 if space.latent_rows is None else space.latent_rows)
        truncation_end = None
        if s.get('truncation', 1) != 1 and s.get('truncation_until', 1) < 1:
            truncation_end = truncation_steps(s['steps'], s['truncation_until'])
        lpips_curves(self.outdir / 'lpips_curve.png', {n: c for n, c in self.curves.items() if n in self.results},
                     truncation_end=truncation_end, title=job.curve_title)
        summary = job.summarize(self.results, self.skipped)
        run_files.write_summary(self.outdir, summary)
        return summary

#----------------------------------------------------------------------------

def run_job(job, sources, ignored, outdir, *, batch, device, save_every=100, progress=True, progress_every=10,
            run_info=None, header=None):
    """Run `job` on every target of `sources` (from `list_job_targets`), resumably, into `outdir`.

    batch: images per batch, or a function (number of images to do) -> batch size. run_info: extra
    JSON for run.json. Returns the summary dict. Raises InversionError for bad inputs (nothing is
    written before they are found) and when another process works in `outdir`.

    Sharded (a `torch_utils.distributed` process group of K > 1 ranks, e.g. torchrun): the images
    still to do are cut into the batches a single process would form, and batch j goes to rank
    j mod K (`distributed.split_by_rank`), so every batch holds the same images as in a 1-process
    run. Rank 0 holds the outdir lock for all K ranks, prepares the folder, and merges the ranks'
    bookkeeping (`inversion.sharding`) into results.jsonl, lpips_curves.npz, skipped.json,
    summary.json and latents.npz when all are done; every rank returns the merged summary.
    """
    outdir, device = Path(outdir), torch.device(device)
    rank, world = distributed.get_rank(), distributed.get_world_size()
    with contextlib.ExitStack() as stack:
        error = None
        if rank == 0:
            try:
                _prepare_outdir(job, outdir, run_info, stack)
            except (ValueError, OSError) as err:
                error = err
        message = distributed.broadcast_object(None if error is None else one_line(error))
        if error is not None:
            raise error
        if message is not None:
            raise InversionError(message)
        base_log = run_files.RunLog(outdir / 'log.txt', echo=progress and rank == 0)
        log = base_log if world == 1 else (lambda msg, echo=True: base_log(f'[rank {rank}/{world}] {msg}', echo))
        if header and rank == 0:
            log(header)
        opt = dict(save_every=int(save_every), progress=progress and rank == 0,
                   progress_every=max(1, int(progress_every)))
        if rank == 0:
            merged = sharding.merge_shards(outdir, log)                    # What a killed sharded run left.
            if merged:
                log(f'Merged {merged} finished images from the shards of an earlier sharded run')
            runner = _Runner(job, outdir, opt=opt, log=log, device=device)
            runner.load_skipped(ignored)
            runner.check_finished()
        distributed.barrier()                                              # results.jsonl etc. are final.
        if rank != 0:
            runner = _Runner(job, outdir, opt=opt, log=log, device=device)
            runner.skipped = sharding.read_skipped(runner.skipped_path) or {}
            runner.curves = {}
            with contextlib.suppress(OSError, ValueError, KeyError, EOFError):
                runner.curves = run_files.read_curves(runner.curves_path)
        by_name = {s.name: s for s in sources}
        groups = runner.saved_groups(by_name)
        distributed.barrier()                                              # Every rank has listed state/.
        if world > 1:
            runner.use_shard_files(rank)
        in_groups = {n for names, _ in groups for n in names}
        pending = [s for s in sources if s.name not in runner.results and s.name not in in_groups]
        todo = len(pending) + sum(sum(n not in runner.results for n in names) for names, _ in groups)
        log(f'{len(sources)} targets: {len(runner.results)} finished, {len(in_groups)} in saved batches, '
            f'{len(pending)} to do; {len(ignored)} other files left out')
        batch_size = distributed.broadcast_object(int(batch(len(pending)) if callable(batch) else batch) if rank == 0
                                                  else None)
        if batch_size < 1:
            raise InversionError(f'--batch {batch_size}: must be a positive integer')
        if callable(batch):
            log(f'{batch_size} images per batch')
        chunks = _plan_batches(sources, {s.name for s in pending}, batch_size)
        if world > 1:
            groups = distributed.split_by_rank(groups)
            chunks = distributed.split_by_rank(chunks)
            todo = sum(map(len, chunks)) + sum(sum(n not in runner.results for n in names) for names, _ in groups)
            log(f'This rank: {len(groups)} saved batches and {len(chunks)} new batches ({todo} images)')
        compiler = getattr(job, 'compiler', None)                          # --compile: what auto may count on
        if compiler is not None:
            compiler.set_log(log)
            compiler.plan([len(names) for names, _ in groups] + [len(c) for c in chunks], job.settings.get('steps', 0))

        images_bar = tqdm(total=todo, desc='images', unit='img', disable=not opt['progress'], dynamic_ncols=True)
        try:
            for names, state in groups:
                images = [runner.decode(by_name[n]) for n in names]
                if any(img is None for img in images):
                    bad = next(by_name[n].source for n, img in zip(names, images) if img is None)
                    raise InversionError(f'{bad} from a saved batch can no longer be read; restore it, or remove '
                                         f'{runner.state_path(names)} to redo the batch without it')
                runner.run_group(names, [by_name[n].source for n in names], np.stack(images), state=state,
                                 images_bar=images_bar)
            for chunk in chunks:
                _run_chunk(runner, chunk, images_bar)
        finally:
            images_bar.close()
        if world > 1:
            distributed.barrier()                                          # All shares are done.
            if rank == 0:
                sharding.merge_shards(outdir, log)
                runner = _Runner(job, outdir, opt=opt, log=log, device=device)
                runner.skipped = sharding.read_skipped(runner.skipped_path) or {}
                runner.curves = run_files.read_curves(runner.curves_path)
        if rank == 0:
            summary = runner.write_run_files(latents=True)
            log(f'Done: {summary["images"]} images, {len(runner.skipped)} skipped -> {outdir}', echo=False)
        distributed.barrier()                                              # summary.json is written.
        if rank != 0:
            summary = json.loads((outdir / 'summary.json').read_text())
    if not summary['images']:
        raise InversionError(f'None of the files in {job.settings.get("target")} could be used: all '
                             f'{summary["skipped"]} are listed with their reasons in {outdir / "skipped.json"}')
    return summary


def _prepare_outdir(job, outdir, run_info, stack):
    """Check `outdir` against job's settings, create it, take its lock (held until `stack` closes),
    remove a killed run's temporaries and write run.json. Raises InversionError/OutdirError."""
    check_job_outdir(outdir)
    run_json = outdir / 'run.json'
    if run_json.is_file():
        old = _read_json(run_json, 'the run').get('settings', {})
        diff = [f'{k} ({old.get(k)!r} -> {v!r})' for k, v in job.settings.items() if old.get(k) != v]
        if diff:
            raise InversionError(f'{outdir} holds a run with other settings: {"; ".join(diff)}. '
                                 f'Use another --outdir, or the same settings to resume it')
    make_outdir(outdir)
    stack.enter_context(outdir_lock(outdir, f'{job.kind} run'))
    remove_stale_temporaries(outdir)
    save_json(run_json, dict(settings=job.settings, kind=job.kind, **(run_info or {})))


def _run_chunk(runner, chunk, images_bar):
    """Decode one planned batch of sources and optimise it (unreadable files are skipped)."""
    names, srcs, images = [], [], []
    for src in chunk:
        img = runner.decode(src)
        if img is None:
            images_bar.update(1)
            continue
        names.append(src.name)
        srcs.append(src.source)
        images.append(img)
    if names:
        runner.run_group(names, srcs, np.stack(images), images_bar=images_bar)


def _plan_batches(sources, pending, batch_size):
    """The batches of a run: `sources` cut into consecutive runs of `batch_size`, each reduced to its
    `pending` names (empty ones dropped). Positions come from the whole listing, not from what is
    left, so a resumed or sharded run forms the same batches as an uninterrupted 1-process run, and
    an unreadable file only makes its batch smaller: per-image results are bitwise equal only for
    equal batches (Adam's first steps turn rounding-level gradient differences into lr-sized ones)."""
    chunks = ([s for s in sources[i:i + batch_size] if s.name in pending] for i in range(0, len(sources), batch_size))
    return [c for c in chunks if c]


def default_summary(results, skipped, job, args, **extra):
    """Common summary.json fields: counts, means of every numeric metric, timing, the CLI arguments."""
    recs = list(results.values())
    keys = sorted({k for r in recs for k, v in r.items() if isinstance(v, (int, float)) and k not in
                   ('steps', 'seconds', 'batch_seconds', 'batch_size')})
    opt_seconds = sum(r['seconds'] for r in recs)
    means = {k: float(np.mean(vals)) for k in keys
             if (vals := [r[k] for r in recs if isinstance(r.get(k), (int, float)) and np.isfinite(r[k])])}
    return dict(images=len(recs), skipped=len(skipped), space=job.space.name, steps=job.settings.get('steps'),
                means=means, optimization_seconds=round(opt_seconds, 3),
                images_per_second=(len(recs) / opt_seconds) if opt_seconds > 0 else None, args=args, **extra)

