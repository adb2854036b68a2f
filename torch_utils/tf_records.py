"""Inert records of NVIDIA's TensorFlow network pickles (StyleGAN2 / StyleGAN2-ADA releases such as
`stylegan2-ffhq-config-f.pkl`), read without TensorFlow and without running anything from the file.

Such a pickle holds `dnnlib.tflib.network.Network` objects pickled as their state: `version`, `name`,
`static_kwargs` (the build function's keyword arguments), `components` (sub-networks, e.g. 'mapping'
and 'synthesis'), `build_module_src` (the Python source of the build function), `build_func_name`, and
`variables`, a list of (TF variable name, numpy array). The safe unpickler resolves that class name to
`TFNetworkRecord`, which only checks and keeps this state; the source code is dropped unread.
`training.formats.tensorflow` translates records into our networks.
"""

import numpy as np

from .persistence import PickleLoadError

TF_NETWORK_GLOBAL = ('dnnlib.tflib.network', 'Network')   # What the pickles name; resolved to TFNetworkRecord.
_STATE_TYPES = dict(version=int, name=str, static_kwargs=dict, components=dict, build_module_src=str,
                    build_func_name=str, variables=list)


class TFNetworkRecord:
    """State of one pickled `dnnlib.tflib.network.Network`: checked plain data, never code.

    Attributes: `version`, `name`, `static_kwargs`, `components` ({name: TFNetworkRecord}), `build_func_name`,
    `variables` (list of (name, numpy array)). The pickled `build_module_src` is discarded.
    """

    def __new__(cls, *args, **kwargs):
        if args or kwargs:
            raise PickleLoadError('Malformed TensorFlow network record: it is created without arguments')
        record = super().__new__(cls)
        record._state_set = False
        return record

    def __setstate__(self, state):
        if self._state_set:
            raise PickleLoadError('Malformed TensorFlow network record: its state is set twice')
        if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
            raise PickleLoadError('Malformed TensorFlow network record: its state is not a dict of names')
        unknown = sorted(set(state) - set(_STATE_TYPES))
        missing = sorted({'version', 'name', 'variables'} - set(state))
        if unknown or missing:
            raise PickleLoadError(f'Malformed TensorFlow network record: unknown fields {unknown}, missing {missing}')
        for key, kind in _STATE_TYPES.items():
            if key in state and (not isinstance(state[key], kind) or isinstance(state[key], bool)):
                raise PickleLoadError(f'Malformed TensorFlow network record: {key} is a {type(state[key]).__name__}')
        components = state.get('components', {})
        if not all(isinstance(k, str) and isinstance(v, TFNetworkRecord) for k, v in components.items()):
            raise PickleLoadError('Malformed TensorFlow network record: a component is not a network')
        for item in state['variables']:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
                    and type(item[1]) is np.ndarray and not item[1].dtype.hasobject):
                raise PickleLoadError('Malformed TensorFlow network record: variables must be (name, numeric array)')
        self.version, self.name = state['version'], state['name']
        self.static_kwargs = dict(state.get('static_kwargs', {}))
        self.components = dict(components)
        self.build_func_name = state.get('build_func_name')
        self.variables = [(name, value) for name, value in state['variables']]
        self._state_set = True

    def all_variables(self, prefix=''):
        """{'component/.../name': array} of this network and its components (component names as TF scopes)."""
        found = {prefix + name: value for name, value in self.variables}
        for name, component in self.components.items():
            found.update(component.all_variables(f'{prefix}{name}/'))
        return found

    def __repr__(self):
        return f'TFNetworkRecord(name={getattr(self, "name", None)!r}, build_func_name=' \
               f'{getattr(self, "build_func_name", None)!r})'


def is_tf_network(obj):
    """A TensorFlow network pickle's content: one record, or the (G, D, Gs) tuple of records."""
    if isinstance(obj, TFNetworkRecord):
        return True
    return isinstance(obj, tuple) and len(obj) > 0 and all(isinstance(item, TFNetworkRecord) for item in obj)
