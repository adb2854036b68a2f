"""Loading and saving network files, safely by default: ours, NVIDIA's (stylegan2-ada-pytorch and stylegan3
pickles of StyleGAN2, TensorFlow StyleGAN2 / StyleGAN2-ADA pickles) and rosinality/stylegan2-pytorch `.pt`.

The format is recognised by content, never by extension: a `torch.save` file (zip or legacy) is read by
torch's weights-only loader (`safe_pickle.read_torch_save`) and handed to the rosinality translator; a
pickle of TensorFlow network records (`tf_records`) to the TensorFlow translator. Translators live beside
our networks (`training.formats.*`) and are reached by module name (`_TRANSLATORS`), as persistence
reaches our classes; every format comes back as the same dict (G, D, G_ema, ...).

SAFE mode (default): `torch_utils.safe_pickle` resolves only an exact allow-list of globals (tensor and
storage rebuilding, each storage blob read by `torch.load(..., weights_only=True)`; OrderedDict; torch/numpy
dtypes, sizes, devices, arrays and scalars; set/frozenset/slice/complex; our EasyDict; our persistence
records), checks their arguments, and caps the tensor memory that constructing the recorded networks
may take. Our pickles rebuild registered classes only. stylegan2-ada-pytorch records become inert
placeholders (their embedded source is never executed) that are converted into our registered class
of the same name: constructed from the record's `_init_args`/`_init_kwargs`, then loaded with the
record's parameters and buffers (strict). Converted networks come back in eval mode, requires_grad False.

TRUSTED mode (`trust=True`, CLI `--trust-pickle`): plain unpickling, which can run arbitrary code from
the file. NVIDIA's persistence module is not importable here, so its records still go through the same
placeholder conversion; every other global is imported as usual.

Every failure to read or accept a file raises `CheckpointError`: one line naming the file, what is wrong
and what to do.
"""

import contextlib
import importlib
import io
import os
import pickle
import struct
import warnings
import zipfile

import torch

import dnnlib
from torch_utils import files

from . import persistence, safe_pickle, tf_records

PickleLoadError = persistence.PickleLoadError
_SNAPSHOT_OPTIONAL = ('augment_pipe',)  # Skipped with a warning when it cannot be rebuilt.

# Format names (`read_network_file`) and the translators of other codebases' formats, by module name.
OURS, NVLABS, TENSORFLOW, ROSINALITY = 'overparam-stylegan', 'stylegan2-ada-pytorch', 'nvidia-tensorflow', 'rosinality'
_TRANSLATORS = {TENSORFLOW: 'training.formats.tensorflow', ROSINALITY: 'training.formats.rosinality'}
TRAINING_STATE_FORMAT = 'overparam-stylegan-training-state'   # The `format` of train.py's training-state-*.pt.
_FORMATS_HINT = 'a network-snapshot-*.pkl, a NVIDIA pickle (PyTorch or TensorFlow) or a rosinality .pt'


class CheckpointError(PickleLoadError):
    """A network file that cannot be read or is refused; the message is one line naming the file and the fix.

    A ValueError (CLIs report it as one line) and, like the loader's internal refusals, an UnpicklingError.
    `path`: the file; `reason`: the message without the leading 'Cannot load PATH: '.
    """

    def __init__(self, message, path=None, reason=None):
        super().__init__(message)
        self.path, self.reason = path, reason


def _refuse(path, reason, option=None):
    """CheckpointError 'Cannot load [OPTION ]PATH: reason'."""
    what = f'{option} {path}' if option else f'{path}'
    return CheckpointError(f'Cannot load {what}: {reason}', path=path, reason=reason)


def read_pickle(f, trust=False):
    """Unpickle `f` (binary file or path) without converting NVIDIA records (they stay `PersistentRecord`s)."""
    if isinstance(f, (str, os.PathLike)):
        with open(f, 'rb') as file:
            return read_pickle(file, trust=trust)
    return safe_pickle.read(f, trust=trust)


def _explain(err, head):
    """Why the bytes starting with `head` could not be loaded, and what to do, as one short phrase."""
    if not head:
        return 'the file is empty; copy or download it again'
    torch_save = head.startswith(b'PK\x03\x04')
    if isinstance(err, PickleLoadError) and (str(err).startswith('Refusing') or torch_save):
        return dnnlib.util.one_line(err)                  # Refusals first: they say what to do.
    if torch_save:
        return (f'the torch.save file is damaged or truncated ({dnnlib.util.one_line(err).split(". ")[0][:160]}); '
                f'copy or download it again')
    if head[:1] != b'\x80':                                # Every network pickle uses protocol 2 or later.
        return f'it is not a pickle nor a torch.save file (wrong first bytes); pass {_FORMATS_HINT}'
    if isinstance(err, PickleLoadError):
        return dnnlib.util.one_line(err)
    if isinstance(err, EOFError) or 'truncated' in str(err):
        return 'the file is truncated (an interrupted copy or download?); copy or download it again'
    return (f'the pickle is damaged ({type(err).__name__}: {dnnlib.util.one_line(err)[:160]}); '
            f'copy or download it again')


# What reading a damaged or hostile file (a pickle, or a torch.save archive) can raise besides our own refusals.
READ_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
                RuntimeError, MemoryError, RecursionError, OverflowError, UnicodeDecodeError, zipfile.BadZipFile,
                ImportError, LookupError, struct.error)


@contextlib.contextmanager
def _reading(name, f):
    """Turn anything a bad file raises into one CheckpointError naming `name`."""
    try:
        pos = f.tell()
        head = f.read(8)
        f.seek(pos)
    except (OSError, ValueError, AttributeError):
        head = b'?'
    try:
        yield
    except CheckpointError:
        raise
    except READ_ERRORS as err:
        raise _refuse(name, _explain(err, head)) from err


def _file_size(f):
    try:
        return os.fstat(f.fileno()).st_size
    except (OSError, AttributeError, io.UnsupportedOperation):
        try:
            return len(f.getbuffer())
        except AttributeError:
            return 0

# ----------------------------------------------------------------------------
# Converting stylegan2-ada-pytorch records into our classes.


def module_from_record(record, key='network'):
    """Build our registered class named like `record.class_name` and load the record's weights (strict).

    A class may translate NVIDIA's other layouts of its arguments (`cls.nvlabs_arguments(record)` ->
    (args, kwargs); a ValueError refuses the record, e.g. a StyleGAN3 network) and check the rebuilt
    network against the settings the record kept (`cls.nvlabs_check(net, record)`, ValueError on a mismatch).
    """
    try:
        cls = persistence.get_registered_class(record.class_name)
    except LookupError as err:
        raise PickleLoadError(f'The pickle holds a {record.class_name!r} ({key}); this version cannot load it '
                              f'safely ({err})') from err
    translate = getattr(cls, 'nvlabs_arguments', None)
    if translate is not None:
        init_args, init_kwargs = translate(record)
    else:
        state = record.state
        init_args, init_kwargs = state.get('_init_args', ()), state.get('_init_kwargs', {})
    if not isinstance(init_args, (tuple, list)) or not isinstance(init_kwargs, dict):
        raise PickleLoadError(f'{key}: malformed constructor arguments in the {record.class_name!r} record')
    try:
        net = cls(*init_args, **init_kwargs)
    except (TypeError, ValueError) as err:
        raise PickleLoadError(f'{key}: cannot construct {persistence.class_path(cls)} from the pickle\'s arguments '
                              f'{init_kwargs}: {err}') from err
    try:
        net.load_state_dict(record.state_dict(), strict=True)
    except RuntimeError as err:
        raise PickleLoadError(f'{key}: the {record.class_name!r} weights in the pickle do not fit '
                              f'{persistence.class_path(cls)}: {err}') from err
    check = getattr(cls, 'nvlabs_check', None)
    if check is not None:
        try:
            check(net, record)
        except ValueError as err:
            raise PickleLoadError(f'{key}: {err}') from err
    return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------
# Public API.


def _translate(file_format, content):
    """Our networks from the content of a file of another codebase, by the translator of `file_format`."""
    return importlib.import_module(_TRANSLATORS[file_format]).networks_from(content)


def _peek(f, size):
    """The next `size` bytes of `f`, its position kept (b'' where it cannot seek)."""
    try:
        here = f.tell()
        head = f.read(size)
        f.seek(here)
        return head
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return b''


def _is_torch_save(f):
    try:
        return safe_pickle.is_torch_save(f)
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return False                                      # Not seekable: only a pickle can be read.


def _read_content(f, trust):
    """(format name, dict of networks and data) of an open network file, before any device move."""
    if _is_torch_save(f):
        content = safe_pickle.read_torch_save(f, trust=trust)
        if isinstance(content, dict) and content.get('format') == TRAINING_STATE_FORMAT:
            raise PickleLoadError('it is a training state of train.py (training-state-*.pt), not a network file; '
                                  'pass it to train.py --resume, or load the network-snapshot-*.pkl beside it')
        return ROSINALITY, _translate(ROSINALITY, content)
    if _peek(f, 4) == b'PK\x03\x04':
        raise PickleLoadError(f'it is a zip archive (a dataset?), not a network file; pass {_FORMATS_HINT}')
    data = read_pickle(f, trust=trust)
    if tf_records.is_tf_network(data):
        return TENSORFLOW, _translate(TENSORFLOW, data)
    if isinstance(data, (persistence.PersistentRecord, torch.nn.Module)):
        data = {'net': data}
    if not isinstance(data, dict):
        raise PickleLoadError(f'expected a dict of networks or a network in the pickle, found {type(data).__name__}')
    data, file_format = dict(data), OURS
    for key, value in data.items():
        if not isinstance(value, persistence.PersistentRecord):
            continue
        file_format = NVLABS
        try:
            data[key] = module_from_record(value, key=key)
        except PickleLoadError as err:
            if key not in _SNAPSHOT_OPTIONAL:
                raise
            warnings.warn(f'Skipping {key} ({err}); generation and inversion do not need it.')
            data[key] = None
    return file_format, data


def read_network_file(f, trust=False, device=None):
    """(format, data) of a network file (file object or path); see `load_network_pkl` for `data`.

    format: OURS, NVLABS (stylegan2-ada-pytorch / stylegan3 pickles), TENSORFLOW or ROSINALITY.
    """
    if dnnlib.util.is_url(f):
        return read_network_file(_local_file(f), trust=trust, device=device)
    if isinstance(f, (str, os.PathLike)):
        try:
            with open(f, 'rb') as file:
                return read_network_file(file, trust=trust, device=device)
        except OSError as err:
            raise _refuse(os.fspath(f), f'{(err.strerror or str(err)).lower()}; check the path') from err
    name = getattr(f, 'name', None) or 'the network pickle'
    with _reading(name, f), safe_pickle.allocation_limit(safe_pickle.budget_for(_file_size(f)), name):
        file_format, data = _read_content(f, trust)
    if device is not None:
        for key, value in data.items():
            if isinstance(value, torch.nn.Module):
                data[key] = value.to(device)
    return file_format, data


def load_network_pkl(f, trust=False, device=None):
    """Load a network file (file object, path or URL) of any supported format into a dict.

    Our pickles come back as saved (a dict of networks and plain data). A stylegan2-ada-pytorch snapshot
    gives keys G, D, G_ema, augment_pipe (None when it cannot be rebuilt) and training_set_kwargs. A pickle
    of a bare network gives {'net': network}. NVIDIA TensorFlow pickles and rosinality checkpoints give G, D,
    G_ema (None where the file has none; see `training.formats`), rosinality's also `rosinality_args`.
    `device`: move every network there. Raises CheckpointError (one line naming the file).
    """
    return read_network_file(f, trust=trust, device=device)[1]


def _local_file(path_or_url, option=None):
    """A local path of `path_or_url` (URLs are downloaded once and cached); CheckpointError if it cannot be had."""
    try:
        return dnnlib.util.open_url(path_or_url, return_filename=True)
    except OSError as err:
        raise _refuse(path_or_url, dnnlib.util.one_line(err), option) from err


def network_in(data, path, key='G_ema', option=None):
    """Network `key` of a loaded file's `data` (a bare network file's only network, whatever the key).

    Raises CheckpointError naming `path` (and `option`, e.g. '--network') when there is no such network.
    """
    held = sorted(str(k) for k, v in data.items() if v is not None)
    net = data.get(key) if data.get(key) is not None else data.get('net') if held == ['net'] else None
    if net is None:
        raise _refuse(path, f'it has no network {key!r}; it holds: {", ".join(held) or "nothing"}', option)
    if not isinstance(net, torch.nn.Module):
        raise _refuse(path, f'its {key!r} is a {type(net).__name__}, not a network', option)
    return net


def _load_one(path_or_url, local, key, trust, device, option):
    try:
        data = load_network_pkl(local, trust=trust, device=device)
    except CheckpointError as err:                         # Name what the user gave (a URL, an option).
        raise _refuse(path_or_url, err.reason, option) from (err.__cause__ or err)
    return network_in(data, path_or_url, key, option)


def load_network(path_or_url, key='G_ema', trust=False, device=None, option=None):
    """Load one network (default the EMA generator) from a local path or a URL (downloaded once, cached).

    Raises CheckpointError (one line: `option` if given, the file, the problem, the fix) for anything missing
    or unreadable.
    """
    return _load_one(path_or_url, _local_file(path_or_url, option), key, trust, device, option)


def load_frozen_network(path_or_url, key='G_ema', trust=False, device=None, option=None):
    """(network `key` in eval mode with gradients off, the local file, its SHA-256) from a path or URL.

    For code that uses a trained network as a fixed function (generation, inversion, an encoder's generator)
    and records which file it was. Raises CheckpointError (one line) as `load_network` does.
    """
    local = _local_file(path_or_url, option)
    net = _load_one(path_or_url, local, key, trust, device, option)
    return net.eval().requires_grad_(False), local, files.file_sha256(local)


def save_network_pkl(path, data_dict):
    """Pickle `data_dict` (networks and plain data) to `path` atomically: temporary file, then os.replace."""
    if not isinstance(data_dict, dict):
        raise TypeError('save_network_pkl expects a dict, e.g. dict(G=G, D=D, G_ema=G_ema)')
    for key, value in data_dict.items():
        if isinstance(value, torch.nn.Module) and not persistence.is_persistent(value):
            raise TypeError(f'{key}: {type(value).__name__} is not decorated with @persistence.persistent_class, '
                            f'so the safe loader could not rebuild it')
    def write(tmp):
        with open(tmp, 'wb') as f:
            pickle.dump(data_dict, f, protocol=4)
    files.atomic_write(path, write, fsync=True)
