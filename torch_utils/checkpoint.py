"""Loading and saving network pickles: ours and NVlabs/stylegan2-ada-pytorch snapshots, safely by default.

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
import io
import os
import pickle
import warnings
import zipfile

import torch

import dnnlib
from . import persistence, safe_pickle

PickleLoadError = persistence.PickleLoadError
_SNAPSHOT_OPTIONAL = ('augment_pipe',)  # Skipped with a warning when it cannot be rebuilt.


class CheckpointError(PickleLoadError):
    """A network file that cannot be read or is refused; the message is one line naming the file and the fix.

    A ValueError (CLIs report it as one line) and, like the loader's internal refusals, an UnpicklingError.
    `path`: the file; `reason`: the message without the leading 'Cannot load PATH: '.
    """

    def __init__(self, message, path=None, reason=None):
        super().__init__(message)
        self.path, self.reason = path, reason


def _refuse(path, reason):
    return CheckpointError(f'Cannot load {path}: {reason}', path=path, reason=reason)


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
    if isinstance(err, PickleLoadError) and str(err).startswith('Refusing'):
        return dnnlib.util.one_line(err)                  # Refusals first: they say what to do.
    if head.startswith(b'PK\x03\x04'):
        return ('it is a zip archive (a dataset, or a torch.save file such as training-state-*.pt), not a network '
                'pickle; pass a network-snapshot-*.pkl')
    if head[:1] != b'\x80':                                # Every network pickle uses protocol 2 or later.
        return 'it is not a pickle (wrong first bytes); pass a network-snapshot-*.pkl from train.py or stylegan2-ada-pytorch'
    if isinstance(err, PickleLoadError):
        return dnnlib.util.one_line(err)
    if isinstance(err, EOFError) or 'truncated' in str(err):
        return 'the file is truncated (an interrupted copy or download?); copy or download it again'
    return (f'the pickle is damaged ({type(err).__name__}: {dnnlib.util.one_line(err)[:160]}); '
            f'copy or download it again')


# What reading a damaged or hostile file (a pickle, or a torch.save archive) can raise besides our own refusals.
READ_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
                RuntimeError, MemoryError, RecursionError, OverflowError, UnicodeDecodeError, zipfile.BadZipFile,
                ImportError, LookupError)


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


def load_network_pkl(f, trust=False, device=None):
    """Load a network pickle (file object or path) into a dict.

    Our pickles come back as saved (a dict of networks and plain data). A stylegan2-ada-pytorch snapshot
    gives keys G, D, G_ema, augment_pipe (None when it cannot be rebuilt) and training_set_kwargs. A pickle
    of a bare network gives {'net': network}. `device`: move every network there. Raises CheckpointError.
    """
    if isinstance(f, (str, os.PathLike)):
        try:
            with open(f, 'rb') as file:
                return load_network_pkl(file, trust=trust, device=device)
        except OSError as err:
            raise _refuse(os.fspath(f), f'{(err.strerror or str(err)).lower()}; check the path') from err
    name = getattr(f, 'name', None) or 'the network pickle'
    with _reading(name, f), safe_pickle.allocation_limit(safe_pickle.budget_for(_file_size(f)), name):
        data = read_pickle(f, trust=trust)
        if isinstance(data, (persistence.PersistentRecord, torch.nn.Module)):
            data = {'net': data}
        if not isinstance(data, dict):
            raise PickleLoadError(f'expected a dict of networks or a network in the pickle, found {type(data).__name__}')
        data = dict(data)
        for key, value in data.items():
            if not isinstance(value, persistence.PersistentRecord):
                continue
            try:
                data[key] = module_from_record(value, key=key)
            except PickleLoadError as err:
                if key not in _SNAPSHOT_OPTIONAL:
                    raise
                warnings.warn(f'Skipping {key} ({err}); generation and inversion do not need it.')
                data[key] = None
    if device is not None:
        for key, value in data.items():
            if isinstance(value, torch.nn.Module):
                data[key] = value.to(device)
    return data


def load_network(path_or_url, key='G_ema', trust=False, device=None):
    """Load one network (default the EMA generator) from a local path or a URL (downloaded once, cached).

    Raises CheckpointError (one line: the file, the problem, the fix) for anything missing or unreadable.
    """
    try:
        local = dnnlib.util.open_url(path_or_url, return_filename=True)
    except OSError as err:
        raise _refuse(path_or_url, dnnlib.util.one_line(err)) from err
    data = load_network_pkl(local, trust=trust, device=device)
    net = data.get(key) if data.get(key) is not None else data.get('net') if set(data) == {'net'} else None
    if net is None:
        raise _refuse(path_or_url, f'it has no network {key!r}; it holds: {", ".join(sorted(map(str, data)))}')
    if not isinstance(net, torch.nn.Module):
        raise _refuse(path_or_url, f'its {key!r} is a {type(net).__name__}, not a network')
    return net


def load_frozen_network(path_or_url, key='G_ema', trust=False, device=None):
    """(network `key` in eval mode with gradients off, the local file, its SHA-256) from a path or URL.

    For code that uses a trained network as a fixed function (inversion, an encoder's generator) and records
    which file it was. Raises CheckpointError (one line) as `load_network` does.
    """
    try:
        local = dnnlib.util.open_url(path_or_url, return_filename=True)
    except OSError as err:
        raise _refuse(path_or_url, dnnlib.util.one_line(err)) from err
    net = load_network(local, key=key, trust=trust, device=device)
    return net.eval().requires_grad_(False), local, dnnlib.util.file_sha256(local)


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
    dnnlib.util.atomic_write(path, write, fsync=True)
