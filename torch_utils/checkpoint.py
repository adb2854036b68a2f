"""Loading and saving network pickles: ours and NVlabs/stylegan2-ada-pytorch snapshots, safely by default.

SAFE mode (default): a restricted unpickler resolves only an explicit allow-list of globals (tensor and
storage rebuilding, with each storage blob read by `torch.load(..., weights_only=True)`; OrderedDict;
torch/numpy dtypes, sizes, devices, arrays and scalars; set/frozenset/slice/complex; our EasyDict; our
persistence records). Our pickles rebuild registered classes only. stylegan2-ada-pytorch records become
inert placeholders (their embedded source is never executed) that are converted into our registered
class of the same name: constructed from the record's `_init_args`/`_init_kwargs`, then loaded with the
record's parameters and buffers (strict). Converted networks come back in eval mode, requires_grad False.
Anything else raises `PickleLoadError` (an UnpicklingError and a ValueError).

TRUSTED mode (`trust=True`, CLI `--trust-pickle`): plain unpickling, which can run arbitrary code from
the file. NVIDIA's persistence module is not importable here, so its records still go through the same
placeholder conversion; every other global is imported as usual.
"""

import collections
import io
import os
import pickle
import warnings

import numpy as np
import torch

import dnnlib
from . import persistence

PickleLoadError = persistence.PickleLoadError
_SNAPSHOT_OPTIONAL = ('augment_pipe',)  # Skipped with a warning when it cannot be rebuilt.

# ----------------------------------------------------------------------------
# Storage blobs and the allow-list.


def _load_storage_weights_only(blob):
    """Safe replacement for torch.storage._load_from_bytes: the nested torch.save blob is read weights_only."""
    if not isinstance(blob, (bytes, bytearray)):
        raise PickleLoadError('Malformed tensor storage in the pickle')
    storage = torch.load(io.BytesIO(blob), weights_only=True, map_location='cpu')
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise PickleLoadError(f'Expected a tensor storage in the pickle, found {type(storage).__name__}')
    return storage


def _load_storage_trusted(blob):
    return torch.load(io.BytesIO(blob), weights_only=False, map_location='cpu')


def _numpy_multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _safe_globals():
    multiarray = _numpy_multiarray()
    allowed = {
        ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
        ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,
        ('torch.storage', '_load_from_bytes'): _load_storage_weights_only,
        ('torch', 'Size'): torch.Size,
        ('torch', 'device'): torch.device,
        ('collections', 'OrderedDict'): collections.OrderedDict,
        ('numpy', 'dtype'): np.dtype,
        ('numpy', 'ndarray'): np.ndarray,
        ('builtins', 'set'): set,
        ('builtins', 'frozenset'): frozenset,
        ('builtins', 'slice'): slice,
        ('builtins', 'complex'): complex,
        ('dnnlib.util', 'EasyDict'): dnnlib.EasyDict,
        ('torch_utils.persistence', '_rebuild_persistent'): persistence._rebuild_persistent_safe,
        ('torch_utils.persistence', '_reconstruct_persistent_obj'): persistence._reconstruct_persistent_obj,
    }
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        allowed[(module, '_reconstruct')] = multiarray._reconstruct
        allowed[(module, 'scalar')] = multiarray.scalar
    return allowed


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals."""

    def __init__(self, file):
        super().__init__(file)
        self._allowed = _safe_globals()

    def find_class(self, module, name):
        obj = self._allowed.get((module, name))
        if obj is not None:
            return obj
        if module == 'torch' and isinstance(torch.__dict__.get(name), torch.dtype):
            return torch.__dict__[name]
        raise PickleLoadError(
            f'Refusing to load {module}.{name} from the pickle: it is not on the safe loader\'s allow-list. '
            f'If you trust the file, load it with trust=True (CLI: --trust-pickle), which may run code from it.')


class _TrustedUnpickler(pickle.Unpickler):
    """Plain unpickling, except that NVIDIA records become placeholders and storages map to the CPU."""

    def find_class(self, module, name):
        if (module, name) == ('torch_utils.persistence', '_reconstruct_persistent_obj'):
            return persistence._reconstruct_persistent_obj
        if (module, name) == ('torch.storage', '_load_from_bytes'):
            return _load_storage_trusted
        return super().find_class(module, name)


def read_pickle(f, trust=False):
    """Unpickle `f` (binary file or path) without converting NVIDIA records (they stay `PersistentRecord`s)."""
    if isinstance(f, (str, os.PathLike)):
        with open(f, 'rb') as file:
            return read_pickle(file, trust=trust)
    unpickler = _TrustedUnpickler(f) if trust else _SafeUnpickler(f)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='TypedStorage is deprecated')
        return unpickler.load()


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
    of a bare network gives {'net': network}. `device`: move every network there.
    """
    data = read_pickle(f, trust=trust)
    if isinstance(data, (persistence.PersistentRecord, torch.nn.Module)):
        data = {'net': data}
    if not isinstance(data, dict):
        raise PickleLoadError(f'Expected a dict of networks or a network in the pickle, found {type(data).__name__}')
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
    """Load one network (default the EMA generator) from a local path or a URL (downloaded once, cached)."""
    with dnnlib.util.open_url(path_or_url) as f:
        data = load_network_pkl(f, trust=trust, device=device)
    if data.get(key) is not None:
        return data[key]
    if set(data) == {'net'}:
        return data['net']
    raise PickleLoadError(f'{path_or_url} has no network {key!r}; it holds: {", ".join(sorted(map(str, data)))}')


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
