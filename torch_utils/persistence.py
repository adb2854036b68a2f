"""Pickling network modules by reference: module path, class name, constructor arguments and weights.

Decorate each network class with `@persistent_class`. An instance then pickles as the call
`torch_utils.persistence._rebuild_persistent(class_path, init_args, init_kwargs, state)`; no source
code is stored, so `class_path` (module path + class name) is a public API and must stay stable.
Unpickling constructs the registered class with the recorded arguments and loads `state` (strict).

stylegan2-ada-pytorch pickles instead embed their source code in records handled by
`_reconstruct_persistent_obj`. Ours turns each record into an inert `PersistentRecord` (the source
is dropped, never executed); `torch_utils.checkpoint` converts those into our classes.
"""

import collections
import copy
import functools
import importlib
import pickle

import torch

# Top-level packages of this project: the safe loader may import a module named by a pickle only under these.
TRUSTED_IMPORT_ROOTS = ('training', 'torch_utils', 'inversion', 'metrics', 'configs')

_STATE_FORMAT = 1
_by_path = {}   # 'module.qualname' -> class
_by_name = {}   # 'ClassName' -> {'module.qualname': class}


class PickleLoadError(pickle.UnpicklingError, ValueError):
    """A pickle that cannot (or must not) be loaded; a ValueError too, so CLIs can report it plainly."""


def class_path(cls):
    """'module.qualname' under which a persistent class is pickled and registered."""
    return f'{cls.__module__}.{cls.__qualname__}'


# ----------------------------------------------------------------------------
# The decorator and the registry.


def persistent_class(cls):
    """Class decorator: record constructor arguments, register the class, pickle instances by reference.

    Afterwards `obj._init_args` / `obj._init_kwargs` hold deep copies of the arguments of the outermost
    constructor call, `pickle` stores (class path, arguments, weights), and `copy.deepcopy` copies the
    instance directly (keeping requires_grad flags and training mode) without rebuilding it.
    """
    if not isinstance(cls, type):
        raise TypeError('@persistent_class decorates classes only')
    if is_persistent(cls):                      # Decorating twice changes nothing.
        return cls
    construct = cls.__init__

    @functools.wraps(construct)
    def recording_init(self, *call_args, **call_kwargs):
        construct(self, *call_args, **call_kwargs)
        # A persistent base class records first; the outermost (most derived) class records last and wins.
        self._init_args, self._init_kwargs = copy.deepcopy(call_args), copy.deepcopy(call_kwargs)

    cls.__init__ = recording_init
    cls.__reduce__ = _reduce_persistent
    cls.__deepcopy__ = _deepcopy_persistent
    path = class_path(cls)
    _by_path[path] = cls
    _by_name.setdefault(cls.__name__, {})[path] = cls
    return cls


def is_persistent(obj):
    """True for a class decorated with @persistent_class and for its instances."""
    cls = obj if isinstance(obj, type) else type(obj)
    return _by_path.get(class_path(cls)) is cls


def registered_classes():
    """Copy of the registry: {'module.qualname': class}."""
    return dict(_by_path)


# Modules defining the classes that stylegan2-ada-pytorch pickles name by bare class name
# ('Generator', 'Discriminator', 'AugmentPipe'); imported by name on the first such lookup.
NETWORK_MODULES = ('training.networks', 'training.augment')


def _import_network_modules():
    for module in NETWORK_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def get_registered_class(name):
    """Look up a persistent class by 'module.qualname' or by bare class name (which must be unambiguous)."""
    cls = _by_path.get(name)
    if cls is not None:
        return cls
    if name not in _by_name:
        _import_network_modules()
    matches = _by_name.get(name, {})
    if len(matches) == 1:
        return next(iter(matches.values()))
    if len(matches) > 1:
        raise LookupError(f'Class name {name!r} is ambiguous: registered as {", ".join(sorted(matches))}')
    raise LookupError(f'No persistent class is registered as {name!r}; import the module that defines it first')


# ----------------------------------------------------------------------------
# Pickling and copying instances.


def _capture_state(obj):
    if isinstance(obj, torch.nn.Module):
        state_dict = obj.state_dict(keep_vars=True)
        return dict(
            format=_STATE_FORMAT,
            state_dict=collections.OrderedDict(
                (name, value.detach() if isinstance(value, torch.Tensor) else value)
                for name, value in state_dict.items()),
            training={name: module.training for name, module in obj.named_modules()},
            requires_grad={name: param.requires_grad for name, param in obj.named_parameters()},
        )
    attrs = {key: value for key, value in obj.__dict__.items() if key not in ('_init_args', '_init_kwargs')}
    return dict(format=_STATE_FORMAT, attrs=attrs)


def _reduce_persistent(self):
    cls = type(self)
    if not is_persistent(cls):
        raise pickle.PicklingError(f'{class_path(cls)} derives from a persistent class but is not decorated with '
                                   f'@persistent_class itself')
    if not hasattr(self, '_init_kwargs'):
        raise pickle.PicklingError(f'{class_path(cls)} instance has no recorded constructor arguments')
    return _rebuild_persistent, (class_path(cls), self._init_args, self._init_kwargs, _capture_state(self))


def _deepcopy_persistent(self, memo):
    cls = type(self)
    new = cls.__new__(cls)
    memo[id(self)] = new
    state = copy.deepcopy(self.__getstate__() or {}, memo)
    if hasattr(new, '__setstate__'):
        new.__setstate__(state)
    else:
        new.__dict__.update(state)
    return new


# ----------------------------------------------------------------------------
# Unpickling our records.


def _import_for_path(path):
    """Import the longest importable module prefix of 'pkg.module.Class' (it registers its classes)."""
    parts = path.split('.')
    for i in range(len(parts) - 1, 0, -1):
        module_name = '.'.join(parts[:i])
        try:
            importlib.import_module(module_name)
            return
        except ModuleNotFoundError as err:
            if err.name is not None and (module_name == err.name or module_name.startswith(err.name + '.')):
                continue
            raise


def _resolve_class(path, import_roots):
    if not isinstance(path, str):
        raise PickleLoadError(f'Malformed persistent record: class path {path!r} is not a string')
    cls = _by_path.get(path)
    if cls is None and (import_roots is None or path.split('.')[0] in import_roots):
        _import_for_path(path)
        cls = _by_path.get(path)
    if cls is None:  # Moved to another module? Accept a unique bare class name.
        matches = _by_name.get(path.rsplit('.', 1)[-1], {})
        cls = next(iter(matches.values())) if len(matches) == 1 else None
    if cls is None:
        raise PickleLoadError(f'The pickle holds a {path!r}, which is not a registered persistent class of this '
                              f'project; import the module that defines it before loading')
    return cls


def _build(cls, init_args, init_kwargs, state):
    if not isinstance(init_args, (tuple, list)) or not isinstance(init_kwargs, dict) or not isinstance(state, dict) \
            or state.get('format') != _STATE_FORMAT:
        raise PickleLoadError(f'Malformed persistent record for {class_path(cls)}')
    obj = cls(*init_args, **init_kwargs)
    if not isinstance(obj, torch.nn.Module):
        obj.__dict__.update(state.get('attrs', {}))
        return obj
    state_dict = state.get('state_dict', {})
    try:
        obj.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise PickleLoadError(f'The weights in the pickle do not fit {class_path(cls)}: {err}') from err
    modules = dict(obj.named_modules())
    for name, flag in state.get('training', {}).items():
        if name in modules:
            modules[name].training = bool(flag)
    params = dict(obj.named_parameters())
    for name, flag in state.get('requires_grad', {}).items():
        if name in params:
            params[name].requires_grad_(bool(flag))
    devices = {value.device for value in state_dict.values() if isinstance(value, torch.Tensor)}
    if len(devices) == 1:
        device = devices.pop()
        if device.type != 'cpu':
            obj.to(device)
    return obj


def _rebuild_persistent(class_path, init_args, init_kwargs, state):
    """Unpickle one of our persistent objects (plain `pickle.load`: may import any module named by the pickle)."""
    return _build(_resolve_class(class_path, import_roots=None), init_args, init_kwargs, state)


def _rebuild_persistent_safe(class_path, init_args, init_kwargs, state):
    """Like `_rebuild_persistent`, but imports only modules of this project; used by the safe loader."""
    return _build(_resolve_class(class_path, import_roots=TRUSTED_IMPORT_ROOTS), init_args, init_kwargs, state)


# ----------------------------------------------------------------------------
# stylegan2-ada-pytorch records.


class PersistentRecord:
    """Inert stand-in for one persistent object of a stylegan2-ada-pytorch pickle.

    Holds the record's `class_name` and `state` (the original object's `__dict__`); the embedded
    source code is discarded without being executed.
    """

    def __init__(self, class_name, state, version=None):
        self.class_name = class_name
        self.state = state
        self.version = version

    def state_dict(self, prefix=''):
        """Parameters and persistent buffers of the record tree under dotted names, like Module.state_dict()."""
        out = collections.OrderedDict()
        state = self.state
        skip = state.get('_non_persistent_buffers_set') or set()
        for kind in ('_parameters', '_buffers'):
            for name, value in (state.get(kind) or {}).items():
                if value is None or (kind == '_buffers' and name in skip):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise PickleLoadError(f'{self.class_name}: {prefix}{name} is a {type(value).__name__}, '
                                          'not a tensor')
                out[prefix + name] = value
        for name, sub in (state.get('_modules') or {}).items():
            if sub is None:
                continue
            if isinstance(sub, PersistentRecord):
                out.update(sub.state_dict(prefix=f'{prefix}{name}.'))
            elif isinstance(sub, torch.nn.Module):
                out.update(sub.state_dict(prefix=f'{prefix}{name}.', keep_vars=True))
            else:
                raise PickleLoadError(f'{self.class_name}: submodule {prefix}{name} is a {type(sub).__name__}')
        return out

    def __repr__(self):
        return f'PersistentRecord(class_name={self.class_name!r}, version={self.version!r})'


def _reconstruct_persistent_obj(record_dict):
    """Handle a stylegan2-ada-pytorch persistence record: return a `PersistentRecord`, never run its source.

    The name is NVIDIA's (their pickles call it); `record_dict` holds 'type', 'class_name', 'state',
    'version' and the embedded 'module_src', which is ignored.
    """
    if not isinstance(record_dict, dict) or record_dict.get('type') != 'class':
        raise PickleLoadError('Unsupported stylegan2-ada-pytorch persistence record (expected type "class")')
    class_name, state = record_dict.get('class_name'), record_dict.get('state')
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise PickleLoadError('Malformed stylegan2-ada-pytorch persistence record')
    return PersistentRecord(class_name, state, version=record_dict.get('version'))
