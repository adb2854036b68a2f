"""Where a training run continues from: a training state (exact resume), or the weights of a network pickle.

A training state (`training-state-K.pt`, see training.snapshot) restores everything the next step depends on:
weights, Adam moments, counters, the path-length target, the ADA accumulators and every rank's RNG state (the
sampler position follows from the image counter, and data-loader workers draw nothing random), so a run killed
after any tick and resumed ends bitwise equal to an uninterrupted one. A network file (ours, NVIDIA's PyTorch or
TensorFlow pickles, rosinality's .pt; told apart by content) gives weights only: fresh optimizers and RNG streams,
at `resume_kimg`.
"""

import os

import torch

from torch_utils import checkpoint
from training import run_setup, snapshot

_FIX = ("pass a network-snapshot-*.pkl or training-state-*.pt written by train.py (or a NVIDIA pickle or a "
        "rosinality .pt), or --resume=auto")


class ResumeError(ValueError):
    """The resume source cannot be used; the message is one line naming the file and the fix."""


def _first_line(err):
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def _pickle_message(path, err):
    detail = _first_line(err)
    if path in detail:   # The loader's own one-line refusal already names the file.
        return f'--resume: {detail}; {_FIX}'
    return f'--resume: {path} is not a usable network pickle ({detail}); {_FIX}'


def check_resume_file(path):
    """Raise ResumeError unless `path` is a readable training state or network pickle (read once, safely)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ResumeError(f'--resume: {path} does not exist; {_FIX}')
    if snapshot.is_training_state_file(path):
        try:
            snapshot.load_training_state(path)
        except snapshot.StateError as err:
            raise ResumeError(f'--resume: {err}; {_FIX}') from None
        return
    try:
        with open(path, 'rb') as f:
            data = checkpoint.load_network_pkl(f)
    except Exception as err:   # The loader's refusals and every way a pickle can be broken: one line, no traceback.
        raise ResumeError(_pickle_message(path, err)) from None
    if not isinstance(data, dict) or not any(data.get(key) is not None for key in ('G', 'D', 'G_ema')):
        raise ResumeError(f'--resume: {path} holds no G, D or G_ema network; {_FIX}')


def _load_first_readable(paths, log):
    """(path, state) of the first readable training state in `paths`, saying which ones were skipped."""
    errors = []
    for path in paths:
        try:
            state = snapshot.load_training_state(path)
        except snapshot.StateError as err:
            errors.append(str(err))
            log(f'Warning: {err}; trying an older training state')
            continue
        if errors:
            log(f'Falling back to {os.path.basename(path)} (the newest intact training state)')
        return path, state
    raise ResumeError(f'--resume: no readable training state ({"; ".join(errors)}); {_FIX}')


def seed_and_resume(state, random_seed, resume_pkl=None, fallbacks=(), resume_kimg=0, weights_only=None):
    """How every loop starts its steps: seed this rank's stream (`random_seed * world_size + rank`), resume
    `state` (a `run_setup.RunState`) from `resume_pkl` if one is given (a full training state restores the saved
    streams instead), then hand every rank rank 0's networks. weights_only: a file to take weights from, never a
    training state (the pretrained start of training.finetune). Returns True for a fresh start (nothing resumed
    from a full training state)."""
    torch.manual_seed(random_seed * state.world_size + state.rank)
    fresh = resume_pkl is None or not resume(state, resume_pkl, random_seed, fallbacks, resume_kimg, weights_only)
    if state.world_size > 1:
        run_setup.broadcast_networks(state.networks)
    return fresh


def resume(state, resume_pkl, random_seed, fallbacks=(), resume_kimg=0, weights_only=None):
    """Load `resume_pkl` (training state or network file) into `state` (a `run_setup.RunState`); returns True when a
    full training state was restored. fallbacks: older training states to try, newest first, when `resume_pkl` is
    an unreadable state (--resume auto); weights_only: see `seed_and_resume`."""
    path = os.fspath(resume_pkl)
    if weights_only is not None and os.path.abspath(weights_only) == os.path.abspath(path):
        return _resume_weights(state, path, resume_kimg)
    is_state = snapshot.is_training_state_file(path)
    state_path = path if is_state else snapshot.state_for_snapshot(path)
    if state_path is not None and not is_state:
        saved = snapshot.load_training_state(state_path)
        pkl_nimg = _pickle_nimg(path)
        if pkl_nimg is not None and pkl_nimg != saved['progress']['cur_nimg']:
            state.log(f'Warning: {os.path.basename(state_path)} is at image {saved["progress"]["cur_nimg"]}, '
                      f'{os.path.basename(path)} at {pkl_nimg}: not one snapshot; using the pickle\'s weights only')
            state_path = None
    if state_path is None:
        return _resume_weights(state, path, resume_kimg)
    state_path, saved = _load_first_readable([state_path, *fallbacks], state.log)
    restored = snapshot.restore_training_state(saved, state.networks, state.phases, state.loss, state.rank,
                                               state.world_size, state.device)
    progress = state.progress
    for key in progress:
        if key in restored:
            progress[key] = restored[key]
    if not restored['restored_rng']:
        torch.manual_seed((random_seed * state.world_size + state.rank + progress.cur_nimg) % (1 << 63))
    state.log(f'Resumed from {state_path}: kimg {progress.cur_nimg / 1000:.3f}, tick {progress.cur_tick}'
              + ('' if restored['restored_rng'] else ' (world size changed: RNG reseeded, not an exact resume)'))
    progress.cur_tick += 1   # The saved tick was completed.
    return True


def _pickle_nimg(path):
    try:
        with open(path, 'rb') as f:
            value = checkpoint.load_network_pkl(f).get('cur_nimg')
    except Exception:   # Unreadable pickles are reported where their weights are loaded.
        return None
    return int(value) if isinstance(value, int) else None


def _resume_weights(state, path, resume_kimg):
    try:
        _, missing = snapshot.load_snapshot_weights(path, state.networks)
    except Exception as err:   # Same one-line report as check_resume_file.
        raise ResumeError(_pickle_message(path, err)) from None
    state.progress.cur_nimg = int(round(resume_kimg * 1000))
    state.log(f'Resumed weights from {path} (no training state: fresh optimizers, kimg {resume_kimg})'
              + (f'; not in the pickle: {", ".join(missing)}' if missing else ''))
    return False
