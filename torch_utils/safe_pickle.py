"""The safe unpickler behind `torch_utils.checkpoint`: an exact allow-list, argument checks, a memory cap.

A pickle is a small program: GLOBAL names a callable, REDUCE calls it, BUILD hands state to an object.
Reading one safely means deciding what each of those may do:

- GLOBAL resolves only the names in `safe_globals()` (pinned by a test). Each is a data constructor
  (dict, set, tensor, array, dtype, device) or one of this project's record rebuilders, never a
  function that reaches attributes, imports, or runs code. Several are wrapped so that their
  arguments are checked first: numpy's `_reconstruct` accepts only the empty-array start of a real
  array pickle, `ndarray` resolves to an inert marker that only `_reconstruct` accepts (calling it
  would allocate any declared shape), tensors must be views inside their storage with no hooks or
  attributes, storage blobs are read by `torch.load(..., weights_only=True)`.
- BUILD is allowed only on arrays, dtypes, our dicts and the inert records of TensorFlow networks
  (`tf_records.TFNetworkRecord`, which checks the state it is given): never on a class, a function
  or a network, whose attributes it could otherwise overwrite for the rest of the process.
- Memory: byte strings are bounded by the file (Python reads declared lengths in chunks), storages
  must match their records (torch checks), and `allocation_limit` refuses tensor allocations that
  would take the running total past a budget, before they happen, while networks are constructed
  from the arguments a pickle records.

`torch.save` files (rosinality's checkpoints) are read by `read_torch_save`: torch's own weights-only
loader, with `TORCH_SAVE_GLOBALS` (pinned by a test) as the only globals allowed beyond its defaults.
"""

import argparse
import collections
import contextlib
import io
import math
import pickle
import re
import warnings
import zipfile

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

import dnnlib

from . import persistence, tf_records

PickleLoadError = persistence.PickleLoadError
MAX_TENSOR_ELEMENTS = 1 << 31               # No network parameter comes near this.

# ----------------------------------------------------------------------------
# Checked stand-ins for the allow-listed callables.


def _numpy_multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


class _NdarrayMarker:
    """What GLOBAL numpy.ndarray resolves to: accepted as `_reconstruct`'s first argument, not callable."""

    def __repr__(self):
        return 'numpy.ndarray (marker)'


NDARRAY = _NdarrayMarker()


def _array_start(subtype, shape, dtype_code):
    """numpy's `_reconstruct(ndarray, (0,), b'b')`: the empty array that BUILD then fills from raw bytes."""
    if subtype is not NDARRAY and subtype is not np.ndarray:
        raise PickleLoadError(f'Refusing numpy _reconstruct of {subtype!r}: only plain arrays are allowed')
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and 0 <= n for n in shape) or math.prod(shape) > 1:
        raise PickleLoadError(f'Refusing numpy _reconstruct with shape {shape!r}: a real array pickle starts empty')
    if dtype_code not in (b'b', 'b'):
        raise PickleLoadError(f'Refusing numpy _reconstruct with dtype {dtype_code!r}')
    return _numpy_multiarray()._reconstruct(np.ndarray, shape, dtype_code)


def _numpy_scalar(dtype, data=None):
    """numpy scalar from its raw bytes; the bytes must be exactly one item of a non-object dtype."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise PickleLoadError(f'Refusing a numpy scalar of dtype {dtype!r}')
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise PickleLoadError(f'Malformed numpy scalar of dtype {dtype}')
    return _numpy_multiarray().scalar(dtype, data)


def _check_no_hooks(hooks, what):
    if hooks is not None and (not isinstance(hooks, dict) or len(hooks) > 0):
        raise PickleLoadError(f'Refusing a {what} with backward hooks: a network pickle has none')


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """torch's `_rebuild_tensor_v2`, for a strided view that lies inside its storage, without hooks or attributes."""
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise PickleLoadError(f'Malformed tensor in the pickle: its storage is a {type(storage).__name__}')
    ints = lambda seq: isinstance(seq, (tuple, list, torch.Size)) and all(  # noqa: E731
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in seq)
    if not isinstance(storage_offset, int) or storage_offset < 0 or not ints(size) or not ints(stride) \
            or len(size) != len(stride) or not isinstance(requires_grad, bool):
        raise PickleLoadError('Malformed tensor in the pickle (offset, size or stride)')
    _check_no_hooks(backward_hooks, 'tensor')
    if metadata:
        raise PickleLoadError('Refusing a tensor with extra attributes: a network pickle has none')
    numel = math.prod(size)
    if numel > MAX_TENSOR_ELEMENTS:
        raise PickleLoadError(f'Refusing a tensor of {numel} elements declared in the pickle')
    if numel:
        extent = storage_offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='TypedStorage is deprecated')
            available = storage.size() if isinstance(storage, torch.storage.TypedStorage) else None
        if available is not None and extent > available:
            raise PickleLoadError(f'Malformed tensor in the pickle: it reaches element {extent} of a storage of '
                                  f'{available}')
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='TypedStorage is deprecated')
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), requires_grad,
                                               collections.OrderedDict())


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, torch.Tensor) or not isinstance(requires_grad, bool):
        raise PickleLoadError('Malformed parameter in the pickle')
    _check_no_hooks(backward_hooks, 'parameter')
    return torch.nn.Parameter(data, requires_grad=requires_grad)


def load_storage_weights_only(blob):
    """Safe replacement for torch.storage._load_from_bytes: the nested torch.save blob is read weights_only."""
    if not isinstance(blob, (bytes, bytearray)):
        raise PickleLoadError('Malformed tensor storage in the pickle')
    try:
        storage = torch.load(io.BytesIO(blob), weights_only=True, map_location='cpu')
    except pickle.UnpicklingError as err:
        raise PickleLoadError(f'Refusing a tensor storage: {" ".join(str(err).split())[:300]}') from err
    except (RuntimeError, EOFError, ValueError) as err:
        raise PickleLoadError(f'Malformed tensor storage in the pickle ({" ".join(str(err).split())[:200]})') from err
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise PickleLoadError(f'Expected a tensor storage in the pickle, found {type(storage).__name__}')
    return storage


def load_storage_trusted(blob):
    return torch.load(io.BytesIO(blob), weights_only=False, map_location='cpu')

# ----------------------------------------------------------------------------
# The allow-list.


def safe_globals():
    """{(module, name): object} that GLOBAL may resolve in SAFE mode (torch dtypes are allowed besides)."""
    allowed = {
        ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
        ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
        ('torch.storage', '_load_from_bytes'): load_storage_weights_only,
        ('torch', 'Size'): torch.Size,
        ('torch', 'device'): torch.device,
        ('collections', 'OrderedDict'): collections.OrderedDict,
        ('numpy', 'dtype'): np.dtype,
        ('numpy', 'ndarray'): NDARRAY,
        ('builtins', 'set'): set,
        ('builtins', 'frozenset'): frozenset,
        ('builtins', 'slice'): slice,
        ('builtins', 'complex'): complex,
        ('dnnlib.util', 'EasyDict'): dnnlib.EasyDict,
        ('torch_utils.persistence', '_rebuild_persistent'): persistence._rebuild_persistent_safe,
        ('torch_utils.persistence', '_reconstruct_persistent_obj'): persistence._reconstruct_persistent_obj,
        tf_records.TF_NETWORK_GLOBAL: tf_records.TFNetworkRecord,
    }
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        allowed[(module, '_reconstruct')] = _array_start
        allowed[(module, 'scalar')] = _numpy_scalar
    return allowed


# Instances that BUILD may hand state to: arrays and dtypes (of any dtype class) are filled this way; our
# dicts get attributes; a TensorFlow network record checks and keeps its state. Exact types for these, so
# that no class or subclass qualifies.
_BUILDABLE_KINDS = (np.ndarray, np.dtype)
_BUILDABLE_TYPES = (dnnlib.EasyDict, collections.OrderedDict, tf_records.TFNetworkRecord)


def _buildable(obj):
    return type(obj) in _BUILDABLE_TYPES or (isinstance(obj, _BUILDABLE_KINDS) and not isinstance(obj, type))


class SafeUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
    """Resolves only allow-listed globals and builds only arrays, dtypes and our dicts.

    The pure-Python unpickler, because BUILD must be checked; network pickles are mostly a few
    thousand large byte strings, so this costs little.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

    def __init__(self, file):
        super().__init__(file)
        self._allowed = safe_globals()

    def find_class(self, module_name, global_name):
        found = self._allowed.get((module_name, global_name))
        if found is not None:
            return found
        if module_name == 'torch' and isinstance(torch.__dict__.get(global_name), torch.dtype):
            return torch.__dict__[global_name]
        raise PickleLoadError(
            f'Refusing to load {module_name}.{global_name} from the pickle: '
            f'it is not on the safe loader\'s allow-list. '
            f'If you trust the file, load it with trust=True (CLI: --trust-pickle), which may run code from it.')

    def load_build(self):
        target = self.stack[-2] if len(self.stack) >= 2 else None
        if not _buildable(target):
            raise PickleLoadError(f'Refusing to set the state of a {type(target).__name__} from the pickle')
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def persistent_load(self, pid):
        raise PickleLoadError('Refusing a persistent id in the pickle (network pickles have none)')


class TrustedUnpickler(pickle.Unpickler):
    """Plain unpickling, except that NVIDIA records become placeholders and storages map to the CPU."""

    _REPLACED = {('torch_utils.persistence', '_reconstruct_persistent_obj'): persistence._reconstruct_persistent_obj,
                 ('torch.storage', '_load_from_bytes'): load_storage_trusted,
                 tf_records.TF_NETWORK_GLOBAL: tf_records.TFNetworkRecord}

    def find_class(self, module_name, global_name):
        replacement = self._REPLACED.get((module_name, global_name))
        return replacement if replacement is not None else super().find_class(module_name, global_name)

# ----------------------------------------------------------------------------
# Memory cap while networks are constructed from recorded arguments.

_F = torch.Tensor
_SIZED = {torch.empty: 0, torch.zeros: 0, torch.ones: 0, torch.full: 0, torch.rand: 0, torch.randn: 0,
          torch.empty_strided: 0, torch.randint: None, _F.new_empty: 1, _F.new_zeros: 1, _F.new_ones: 1,
          _F.new_full: 1}


def _requested_elements(func, args, kwargs):
    """Elements a factory call asks for, or None when `func` is not a factory this cap knows."""
    if func in (torch.eye,):
        n = args[0] if args else kwargs.get('n', 0)
        m = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get('m', n)
        return int(n) * int(m)
    if func is torch.arange:
        nums = [a for a in args if isinstance(a, (int, float))]
        start, end, step = (0, nums[0], 1) if len(nums) == 1 else (nums + [1])[:3] if nums else (0, 0, 1)
        return max(0, math.ceil((end - start) / step)) if step else 0
    if func not in _SIZED:
        return None
    pos = _SIZED[func]
    if pos is None:                                        # randint(low?, high, size)
        size = kwargs.get('size', next((a for a in args if isinstance(a, (tuple, list, torch.Size))), ()))
    elif 'size' in kwargs:
        size = kwargs['size']
    else:
        rest = args[pos:]
        size = rest[0] if rest and isinstance(rest[0], (tuple, list, torch.Size)) else \
            [a for a in (rest if func not in (torch.full, _F.new_full) else rest[:1]) if isinstance(a, int)]
    try:
        return math.prod(int(n) for n in size)
    except (TypeError, ValueError):
        return None


class _AllocationCap(TorchFunctionMode):
    def __init__(self, max_bytes, what):
        super().__init__()
        self.max_bytes, self.what, self.used = int(max_bytes), what, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        n = _requested_elements(func, args, kwargs)
        if n is not None:
            dtype = kwargs.get('dtype') or torch.get_default_dtype()
            self.used += n * (torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else 8)
            if self.used > self.max_bytes:
                raise PickleLoadError(
                    f'Refusing to build the networks of {self.what}: its recorded arguments ask for more than '
                    f'{self.max_bytes / 2**20:.0f} MiB of tensors, far more than the file holds')
        return func(*args, **kwargs)


@contextlib.contextmanager
def allocation_limit(max_bytes, what='the pickle'):
    """Refuse (PickleLoadError) tensor factory calls that take the running total past `max_bytes`."""
    with _AllocationCap(max_bytes, what):
        yield


def budget_for(file_bytes):
    """Tensor bytes a pickle of `file_bytes` may construct: its weights (4x: G, G_ema, temporaries) + 256 MiB."""
    return 4 * int(file_bytes) + (256 << 20)


class _BoundedReader:
    """A read-only view of a binary file whose reads never ask for more than the file still holds.

    Python's buffered `read(n)` reserves `n` bytes before reading, so a pickle declaring a 1 TB string
    would fail with MemoryError (or worse, succeed on an overcommitting host); here a read past the
    end is refused as truncation before anything is reserved.
    """

    def __init__(self, f):
        self._f = f
        here = f.tell()
        self._end = f.seek(0, io.SEEK_END)
        f.seek(here)

    def _left(self):
        return max(0, self._end - self._f.tell())

    def read(self, n=-1):
        left = self._left()
        if n is not None and n > left:
            raise PickleLoadError(f'the file is truncated: the pickle declares {n} more bytes where {left} are left; '
                                  f'copy or download it again')
        return self._f.read(left if n is None or n < 0 else n)

    def readline(self, limit=-1):
        return self._f.readline(self._left() if limit is None or limit < 0 else min(limit, self._left()))

    def readinto(self, buf):
        if len(buf) > self._left():
            raise PickleLoadError('the file is truncated: the pickle declares more data than it holds')
        return self._f.readinto(buf)


def read(f, trust=False):
    """Unpickle from a binary file object; SAFE (`SafeUnpickler`, reads bounded by the file) unless `trust`."""
    if not trust:
        try:
            f = _BoundedReader(f)
        except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
            pass                                          # Not seekable: read as is.
    unpickler = TrustedUnpickler(f) if trust else SafeUnpickler(f)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='TypedStorage is deprecated')
        return unpickler.load()


# ----------------------------------------------------------------------------
# torch.save files.

# Globals a rosinality training checkpoint needs beyond torch's weights-only defaults (its `args`).
TORCH_SAVE_GLOBALS = (argparse.Namespace,)
# The pickled magic number that starts torch.save's legacy (pre-zip) format.
_LEGACY_TORCH_MAGIC = b'\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19'


def is_torch_save(f):
    """Whether binary file `f` (its position kept) is a torch.save file: a zip with a data.pkl, or the legacy format."""
    here = f.tell()
    try:
        head = f.read(len(_LEGACY_TORCH_MAGIC))
        f.seek(here)
        if head.startswith(_LEGACY_TORCH_MAGIC):
            return True
        if not head.startswith(b'PK\x03\x04'):
            return False
        try:
            with zipfile.ZipFile(f) as archive:
                return any(name == 'data.pkl' or name.endswith('/data.pkl') for name in archive.namelist())
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return True                                   # A damaged zip: torch.load says what is wrong.
    finally:
        f.seek(here)


def read_torch_save(f, trust=False):
    """torch.load `f` to the CPU: weights only (tensors, containers, TORCH_SAVE_GLOBALS) unless `trust`.

    A global outside the allow-list raises PickleLoadError naming it (one line), before anything is built.
    """
    if trust:
        return torch.load(f, map_location='cpu', weights_only=False)
    try:
        with torch.serialization.safe_globals(list(TORCH_SAVE_GLOBALS)):
            return torch.load(f, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r'GLOBAL ([\w.]+)', str(err))
        if found is None:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            detail = next((line for line in lines[1:] if not line.startswith('Check the documentation')), 'unknown')
            raise PickleLoadError(f'the torch.save file cannot be read safely: {detail[:200]}') from err
        raise PickleLoadError(
            f'Refusing to load {found.group(1)} from the torch.save file: it is not on the safe loader\'s allow-list. '
            f'If you trust the file, load it with trust=True (CLI: --trust-pickle), which may run code from it.'
        ) from err
