"""The safe loader against hand-made pickles: the exact allow-list, and a corpus of attacks that must
neither run code, nor write a file, nor take more than a bounded amount of memory.

Each payload is written as raw pickle opcodes (or through a `__reduce__` helper) and loaded with
`checkpoint.load_network_pkl`, which must raise `CheckpointError` with our own refusal (not a
MemoryError or a torch allocation failure: those would mean it was refused after allocating).
"""

import argparse
import builtins
import collections
import functools
import io
import os
import pickle
import resource
import struct
import tracemalloc
import warnings

import numpy as np
import pytest
import torch

import dnnlib
from format_writers import Network, dumps_tf
from torch_utils import checkpoint, persistence, safe_pickle, tf_records

MAX_PYTHON_PEAK = 64 << 20          # Bytes of Python allocations any payload may cause (tracemalloc peak).

# ----------------------------------------------------------------------------
# The allow-list, pinned.

EXPECTED_ALLOW_LIST = {
    ('torch._utils', '_rebuild_tensor_v2'): safe_pickle._rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): safe_pickle._rebuild_parameter,
    ('torch.storage', '_load_from_bytes'): safe_pickle.load_storage_weights_only,
    ('torch', 'Size'): torch.Size,
    ('torch', 'device'): torch.device,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('numpy', 'dtype'): np.dtype,
    ('numpy', 'ndarray'): safe_pickle.NDARRAY,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('builtins', 'slice'): slice,
    ('builtins', 'complex'): complex,
    ('dnnlib.util', 'EasyDict'): dnnlib.EasyDict,
    ('torch_utils.persistence', '_rebuild_persistent'): persistence._rebuild_persistent_safe,
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): persistence._reconstruct_persistent_obj,
    ('numpy.core.multiarray', '_reconstruct'): safe_pickle._array_start,
    ('numpy._core.multiarray', '_reconstruct'): safe_pickle._array_start,
    ('numpy.core.multiarray', 'scalar'): safe_pickle._numpy_scalar,
    ('numpy._core.multiarray', 'scalar'): safe_pickle._numpy_scalar,
    ('dnnlib.tflib.network', 'Network'): tf_records.TFNetworkRecord,       # inert: checks and keeps its state
}
EXPECTED_TORCH_SAVE_GLOBALS = (argparse.Namespace,)                      # rosinality's `args`


def test_allow_list_is_exactly_the_pinned_one():
    """Adding anything (getattr, exec, ...) or swapping a checked wrapper for the raw function fails here."""
    allowed = safe_pickle.safe_globals()
    assert set(allowed) == set(EXPECTED_ALLOW_LIST)
    for key, obj in EXPECTED_ALLOW_LIST.items():
        assert allowed[key] is obj, key
    assert safe_pickle.TORCH_SAVE_GLOBALS == EXPECTED_TORCH_SAVE_GLOBALS
    unpickler = safe_pickle.SafeUnpickler(io.BytesIO(b''))
    assert unpickler.find_class('torch', 'float16') is torch.float16          # torch dtypes besides the list...
    for module, name in [('torch', 'load'), ('torch', 'tensor'), ('builtins', 'getattr'), ('builtins', 'eval'),
                         ('numpy', 'frombuffer'), ('torch._utils', '_rebuild_tensor')]:
        with pytest.raises(persistence.PickleLoadError, match='allow-list'):  # ...and nothing else.
            unpickler.find_class(module, name)


# ----------------------------------------------------------------------------
# Building payloads.

def _str(s):
    b = s.encode()
    return b'\x8c' + bytes([len(b)]) + b if len(b) < 256 else b'X' + struct.pack('<I', len(b)) + b


def _global(module, name):
    return _str(module) + _str(name) + b'\x93'                              # SHORT_BINUNICODE x2, STACK_GLOBAL


def _proto(body):
    return b'\x80\x04' + body + b'.'


class _Call:
    """Pickles as `func(*args)` (func by reference)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _storage_blob(n=4):
    """A typed-storage blob as stylegan2-ada-pytorch pickles hold them."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='TypedStorage is deprecated')
        torch.save(torch.arange(n, dtype=torch.float32).storage(), buf)
    return buf.getvalue()


class _Tensor:
    """Pickles as `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata)`."""

    def __init__(self, offset=0, size=(4,), stride=(1,), hooks=None, metadata=None, storage='blob'):
        self.args = (_Call(torch.storage._load_from_bytes, _storage_blob()) if storage == 'blob' else storage,
                     offset, size, stride, False, hooks if hooks is not None else collections.OrderedDict(), metadata)

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


def _easydict_payload():
    body = (_global('dnnlib.util', 'EasyDict') + b')\x81'                    # d = EasyDict()
            + b'(' + _str('__setstate__') + _global('collections', 'OrderedDict') + b'u'   # d['__setstate__'] = ...
            + b'}' + _str('a') + b'K\x01' + b's'                              # state = {'a': 1}
            + b'b')                                                           # BUILD
    return _proto(body)


def _build_on(module, name, attr, value_ops):
    """GLOBAL module.name, then BUILD with slot state {attr: value}: would overwrite a class/function attribute."""
    return _proto(_global(module, name) + b'N' + b'}' + _str(attr) + value_ops + b's' + b'\x86' + b'b')


def _huge_generator_record():
    """Our persistent record of a Generator whose recorded arguments ask for 2**40 weights."""
    kwargs = dict(z_dim=2**20, c_dim=0, w_dim=2**20, img_resolution=32, img_channels=3)
    return _Call(persistence._rebuild_persistent, 'training.networks.Generator', (), kwargs, dict(format=1))


def _huge_nvlabs_record():
    state = dict(_init_args=(), _init_kwargs=dict(z_dim=2**20, c_dim=0, w_dim=2**20, img_resolution=32,
                                                  img_channels=3))
    meta = dict(type='class', version=6, module_src='import os; os.system("touch SENTINEL")', class_name='Generator',
                state=state)
    return dict(G_ema=_Call(persistence._reconstruct_persistent_obj, meta))


def _torch_save(obj, zip_format=True):
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zip_format)
    return buf.getvalue()


_TF = _global('dnnlib.tflib.network', 'Network')


def _tf_record(state_ops, extra=b''):
    """GLOBAL Network, NEWOBJ with no arguments, BUILD with the state built by `state_ops` (then `extra`)."""
    return _proto(_TF + b')\x81' + state_ops + b'b' + extra)


def _tf_state(**fields):
    ops = b'}'
    for key, value_ops in fields.items():
        ops += _str(key) + value_ops + b's'
    return ops


def _payloads(sentinel):
    touch = f'touch {sentinel}'
    p4 = lambda obj: pickle.dumps(obj, protocol=4)  # noqa: E731
    return {
        # Code execution through names that are not allowed.
        'os.system': (p4(_Call(os.system, touch)), 'allow-list'),
        'eval': (p4(_Call(builtins.eval, f'open({str(sentinel)!r}, "w")')), 'allow-list'),
        'exec': (p4(_Call(builtins.exec, f'open({str(sentinel)!r}, "w")')), 'allow-list'),
        'getattr-globals-chain': (_proto(_global('builtins', 'getattr') + _global('dnnlib.util', 'EasyDict')
                                         + _str('__init__') + b'\x86R' + _str('__globals__') + b'\x86R'), 'allow-list'),
        '__import__': (_proto(_global('builtins', '__import__') + _str('os') + b'\x85R'), 'allow-list'),
        'copyreg._reconstructor': (_proto(_global('copyreg', '_reconstructor') + _global('os', 'system') + b'N' + b'N'
                                          + b'\x87R'), 'allow-list'),
        'copyreg-extension': (_proto(b'\x82\x01'), 'damaged'),                   # EXT1 1: no extension registered.
        'functools.partial': (p4(_Call(functools.partial(os.system, touch))), 'allow-list'),
        'INST opcode': (b'(S' + repr(touch).encode() + b'\nios\nsystem\n.', 'allow-list'),
        '__reduce_ex__': (p4(type('R', (), {'__reduce_ex__': lambda self, proto: (os.system, (touch,))})()),
                          'allow-list'),
        'persistent id': (_proto(_str('x') + b'Q'), 'persistent id'),
        'rebuild_from_type_v2': (_proto(_global('torch._utils', '_rebuild_from_type_v2')), 'allow-list'),
        # Our records naming classes outside the registry.
        'persistent subprocess': (p4(_Call(persistence._rebuild_persistent, 'subprocess.Popen',
                                           (['touch', str(sentinel)],), {}, dict(format=1))), 'not a registered'),
        'persistent module attr': (p4(_Call(persistence._rebuild_persistent, 'training.networks.os.system', (touch,),
                                            {}, dict(format=1))), 'not a registered'),
        # BUILD used to overwrite attributes of allow-listed classes and functions, or to pose keys as methods.
        'BUILD on EasyDict class': (_build_on('dnnlib.util', 'EasyDict', '__getattr__', _global('builtins', 'set')),
                                    'Refusing to set the state'),
        'BUILD on a function': (_build_on('torch_utils.persistence', '_rebuild_persistent', '__defaults__',
                                          b')'), 'Refusing to set the state'),
        'BUILD on a network': (p4(_Call(persistence._rebuild_persistent, 'x', (), {}, {})), 'not a registered'),
        # numpy.
        'numpy frombuffer': (_proto(_global('numpy', 'frombuffer') + b'C\x04abcd' + b'\x85R'), 'allow-list'),
        'numpy _reconstruct huge': (_proto(_global('numpy._core.multiarray', '_reconstruct')
                                           + _global('numpy', 'ndarray')
                                           + b'\x8a\x05\x00\x00\x00\x00\x01\x85' + b'C\x01b' + b'\x87R'), 'shape'),
        'numpy _reconstruct subtype': (_proto(_global('numpy._core.multiarray', '_reconstruct')
                                              + _global('dnnlib.util', 'EasyDict') + b'K\x00\x85C\x01b\x87R'),
                                       'only plain arrays'),
        'numpy ndarray called': (_proto(_global('numpy', 'ndarray') + b'\x8a\x05\x00\x00\x00\x00\x01\x85\x85R'),
                                 'not callable'),
        'numpy object scalar': (_proto(_global('numpy._core.multiarray', 'scalar') + _global('numpy', 'dtype')
                                       + _str('O') + b'\x85R' + b'N\x86R'), 'numpy scalar'),
        # torch tensors with crafted arguments.
        'tensor beyond storage': (p4(_Tensor(size=(2**40,))), 'Refusing a tensor'),
        'tensor offset beyond storage': (p4(_Tensor(offset=10, size=(4,))), 'reaches element'),
        'tensor with hooks': (p4(_Tensor(hooks=collections.OrderedDict(a=_Call(os.system, touch)))), 'allow-list'),
        'tensor with allowed hook': (p4(_Tensor(hooks=collections.OrderedDict(a=set))), 'backward hooks'),
        'tensor with metadata': (p4(_Tensor(metadata={'__class__': 1})), 'extra attributes'),
        'tensor without storage': (p4(_Tensor(storage=b'\x00' * 16)), 'storage is a bytes'),
        'storage blob running code': (p4(_Call(torch.storage._load_from_bytes, _evil_storage_blob(touch))),
                                      'Refusing a tensor storage'),
        # Memory bombs: refused before allocating.
        'deep nesting': (b'\x80\x04' + b']' * 200000 + b'a' * 199999 + b'.', 'expected a dict'),
        'huge BINBYTES8': (b'\x80\x04\x8e' + struct.pack('<Q', 1 << 40) + b'abc', 'truncated'),
        'huge BINUNICODE8': (b'\x80\x04\x8d' + struct.pack('<Q', 1 << 40) + b'abc', 'truncated'),
        'huge LONG4': (b'\x80\x04\x8b' + struct.pack('<i', 2**31 - 1) + b'ab', 'truncated'),
        'huge FRAME': (b'\x80\x04\x95' + struct.pack('<Q', 1 << 40) + b'N.', 'truncated'),
        'huge generator record': (p4(dict(G_ema=_huge_generator_record())), 'Refusing to build'),
        'huge NVIDIA record': (p4(_huge_nvlabs_record()), 'Refusing to build'),
        # NVIDIA TensorFlow records: inert data, checked.
        'tf variable running code': (dumps_tf(Network('G', 'G_main', {}, {'x': _Call(os.system, touch)})),
                                     'allow-list'),
        'tf record with arguments': (_proto(_TF + _str('x') + b'\x85\x81'), 'without arguments'),
        'tf record state not a dict': (_tf_record(b']'), 'not a dict of names'),
        'tf record unknown field': (_tf_record(_tf_state(version=b'K\x04', name=_str('G'), variables=b']',
                                                         __class__=b'N')), 'unknown fields'),
        'tf record built twice': (_tf_record(_tf_state(version=b'K\x04', name=_str('G'), variables=b']'),
                                             _tf_state(version=b'K\x04', name=_str('G'), variables=b']') + b'b'),
                                  'set twice'),
        'tf component not a network': (_tf_record(_tf_state(version=b'K\x04', name=_str('G'), variables=b']',
                                                            components=b'}' + _str('m') + b'K\x01s')), 'component'),
        'tf variable not an array': (_tf_record(_tf_state(version=b'K\x04', name=_str('G'),
                                                          variables=b']' + _str('w') + b'K\x01\x86a')),
                                     'numeric array'),
        # torch.save files (rosinality's format): torch's weights-only loader with one extra global.
        'torch.save os.system': (_torch_save(dict(g_ema=_Call(os.system, touch))), 'allow-list'),
        'torch.save legacy os.system': (_torch_save(dict(g_ema=_Call(os.system, touch)), zip_format=False),
                                        'allow-list'),
        'torch.save Namespace state': (_torch_save(dict(args=_Call(argparse.Namespace, _Call(os.system, touch)))),
                                       'allow-list'),
        'nested records': (p4(dict(G_ema=_Call(persistence._rebuild_persistent, 'training.networks.Generator', (),
                                               dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                                                    mapping_kwargs=dict(bad=_huge_generator_record())),
                                               dict(format=1)))), 'Refusing to build'),
    }


def _evil_storage_blob(command):
    buf = io.BytesIO()
    torch.save(_Call(os.system, command), buf)
    return buf.getvalue()


SENTINEL_NAME = 'SENTINEL'
CASES = sorted(_payloads('x'))
HEADROOM = 2 << 30                  # Address space a payload may add before allocations fail outright.


@pytest.fixture
def memory_ceiling():
    """Cap this process's address space at its current size + HEADROOM while the test runs, so that a
    regression turns a memory bomb into a failed allocation instead of an exhausted machine."""
    with open('/proc/self/status') as f:
        vm_size = next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmSize:'))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_size + HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize('case', CASES)
def test_adversarial_pickle_is_refused_without_effects(tmp_path, case, memory_ceiling):
    sentinel = tmp_path / SENTINEL_NAME
    payload, expected = _payloads(sentinel)[case]
    path = tmp_path / 'evil.pkl'
    path.write_bytes(payload)
    before = sorted(os.listdir(tmp_path))
    tracemalloc.start()
    try:
        with pytest.raises(checkpoint.CheckpointError) as info:
            checkpoint.load_network_pkl(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert expected in message, message
    assert '\n' not in message and str(path) in message                     # One line naming the file.
    assert 'MemoryError' not in message and "can't allocate" not in message
    assert not sentinel.exists() and sorted(os.listdir(tmp_path)) == before  # No code ran, no file was written.
    assert peak < MAX_PYTHON_PEAK


def test_easydict_keys_cannot_pose_as_methods(tmp_path):
    """A key '__setstate__' once made BUILD call an allow-listed function; now BUILD sets attributes only."""
    path = tmp_path / 'ed.pkl'
    path.write_bytes(_easydict_payload())
    d = checkpoint.read_pickle(path)
    assert type(d) is dnnlib.EasyDict and d.__dict__ == {'a': 1}           # State went to the attributes,
    assert dict(d) == {'__setstate__': collections.OrderedDict}            # the key stayed a key.
    with pytest.raises(AttributeError):
        d.__setstate__                                                       # noqa: B018
    d.update(plain=5)
    assert d.plain == 5                                                      # Ordinary keys still read as attributes.


def test_allowed_class_is_unchanged_after_a_refused_build(tmp_path):
    path = tmp_path / 'b.pkl'
    path.write_bytes(_build_on('dnnlib.util', 'EasyDict', '__getattr__', _global('builtins', 'set')))
    original = dnnlib.EasyDict.__getattr__
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load_network_pkl(path)
    assert dnnlib.EasyDict.__getattr__ is original


def test_legitimate_pickles_still_load(tmp_path):
    """The checks refuse the corpus but not real content: arrays, scalars, dtypes, views, our networks."""
    from training import networks
    torch.manual_seed(0)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3)
    base = torch.arange(12, dtype=torch.float32)
    data = dict(G_ema=G, arr=np.arange(6, dtype=np.int16).reshape(2, 3), scalar=np.float64(2.5),
                dtype=np.dtype('f4'), view=base[2:8:2], expanded=torch.zeros(1).expand(5), meta=dnnlib.EasyDict(a=1))
    path = tmp_path / 'ok.pkl'
    with open(path, 'wb') as f:
        pickle.dump(data, f, protocol=4)
    out = checkpoint.load_network_pkl(path)
    assert np.array_equal(out['arr'], data['arr']) and out['scalar'] == 2.5 and out['dtype'] == np.dtype('f4')
    assert torch.equal(out['view'], base[2:8:2]) and torch.equal(out['expanded'], torch.zeros(5))
    assert out['meta'].a == 1
    for a, b in zip(out['G_ema'].state_dict().values(), G.state_dict().values()):
        assert torch.equal(a, b)


def test_load_network_refuses_a_non_network_under_the_key(tmp_path):
    path = tmp_path / 'fake.pkl'
    path.write_bytes(pickle.dumps(dict(G_ema=[1, 2, 3]), protocol=4))
    with pytest.raises(checkpoint.CheckpointError, match="'G_ema' is a list, not a network"):
        checkpoint.load_network(path)


def test_allocation_cap_counts_factory_calls():
    with safe_pickle.allocation_limit(1 << 20):
        torch.zeros(1000)                                                     # 4 KB: fine.
        with pytest.raises(persistence.PickleLoadError, match='Refusing to build'):
            torch.randn([1024, 1024])                                         # 4 MiB > 1 MiB: refused first.
    assert torch.zeros(300, 1000).numel() == 300000                           # Outside the block: no cap.
