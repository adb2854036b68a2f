"""Tests for torch_utils/persistence.py: recorded arguments, registry, pickling by reference, deepcopy."""

import copy
import pickle

import pytest
import torch

from torch_utils import persistence


@persistence.persistent_class
class PTinyNet(torch.nn.Module):
    """Linear layer plus a persistent and a non-persistent buffer."""
    num_constructed = 0

    def __init__(self, in_dim, out_dim=3, opts=None):
        super().__init__()
        type(self).num_constructed += 1
        self.fc = torch.nn.Linear(in_dim, out_dim)
        self.register_buffer('scale', torch.ones(out_dim))
        self.register_buffer('cache', torch.zeros(1), persistent=False)
        self.opts = dict(opts or {})

    def forward(self, x):
        return self.fc(x) * self.scale


@persistence.persistent_class
class PChildNet(PTinyNet):
    def __init__(self, width, gain=1.0):
        super().__init__(in_dim=width, out_dim=width)
        self.gain = gain


class PUndecoratedChild(PTinyNet):
    pass


@persistence.persistent_class
class PPlainObject:
    def __init__(self, name):
        self.name = name
        self.history = []


def _tiny():
    net = PTinyNet(4, out_dim=2, opts=dict(mode='a'))
    with torch.no_grad():
        net.scale.copy_(torch.tensor([2.0, -1.0]))
    return net


def test_decorator_records_deep_copied_arguments():
    opts = dict(mode='a', nested=[1, 2])
    net = PTinyNet(4, out_dim=2, opts=opts)
    opts['nested'].append(3)
    assert net._init_args == (4,) and net._init_kwargs == dict(out_dim=2, opts=dict(mode='a', nested=[1, 2]))
    assert persistence.is_persistent(net) and persistence.is_persistent(PTinyNet)
    assert not persistence.is_persistent(torch.nn.Linear(1, 1))
    child = PChildNet(5, gain=2.0)                    # the outermost constructor's arguments win
    assert child._init_args == (5,) and child._init_kwargs == dict(gain=2.0)


def test_registry_lookup_and_ambiguity():
    assert persistence.get_registered_class('PTinyNet') is PTinyNet
    assert persistence.get_registered_class(persistence.class_path(PTinyNet)) is PTinyNet
    made = []
    for module in ('fake_pkg_a.nets', 'fake_pkg_b.nets'):
        made.append(persistence.persistent_class(type('PAmbiguousNet', (torch.nn.Module,), dict(__module__=module))))
    with pytest.raises(LookupError, match='ambiguous'):
        persistence.get_registered_class('PAmbiguousNet')
    assert persistence.get_registered_class('fake_pkg_b.nets.PAmbiguousNet') is made[1]
    with pytest.raises(LookupError, match='import the module'):
        persistence.get_registered_class('NoSuchNetAnywhere')


def test_pickle_is_by_reference_and_round_trips():
    net = _tiny()
    net.fc.weight.requires_grad_(False)
    net.fc.eval()
    data = pickle.dumps(net)
    assert b'_rebuild_persistent' in data and b'def forward' not in data     # no source code inside
    net2 = pickle.loads(data)
    assert type(net2) is PTinyNet and net2 is not net
    assert net2._init_kwargs == net._init_kwargs and net2.opts == dict(mode='a')
    for (name, a), (_, b) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randn(3, 4)
    assert torch.equal(net2(x), net(x))
    assert net2.training and not net2.fc.training
    assert not net2.fc.weight.requires_grad and net2.fc.bias.requires_grad


def test_reduce_layout():
    func, args = _tiny().__reduce__()
    assert func is persistence._rebuild_persistent
    path, init_args, init_kwargs, state = args
    assert path == persistence.class_path(PTinyNet) and init_args == (4,) and init_kwargs['out_dim'] == 2
    assert set(state['state_dict']) == {'fc.weight', 'fc.bias', 'scale'} and state['training']['']


def test_deepcopy_is_direct_and_keeps_flags():
    net = _tiny().eval()
    net.fc.bias.requires_grad_(False)
    before = PTinyNet.num_constructed
    clone = copy.deepcopy(net)
    assert PTinyNet.num_constructed == before          # no rebuild through the constructor
    assert type(clone) is PTinyNet and not clone.training and not clone.fc.training
    assert clone.fc.weight.requires_grad and not clone.fc.bias.requires_grad
    assert clone._init_kwargs == net._init_kwargs
    with torch.no_grad():
        clone.fc.weight.add_(1.0)
    assert not torch.equal(clone.fc.weight, net.fc.weight)   # independent storage


def test_subclasses():
    child = pickle.loads(pickle.dumps(PChildNet(3, gain=0.5)))
    assert type(child) is PChildNet and child.gain == 0.5 and child.fc.in_features == 3
    with pytest.raises(pickle.PicklingError, match='not decorated'):
        pickle.dumps(PUndecoratedChild(2))


def test_plain_object_round_trip():
    obj = PPlainObject('x')
    obj.history.append(1)
    obj2 = pickle.loads(pickle.dumps(obj))
    assert type(obj2) is PPlainObject and obj2.name == 'x' and obj2.history == [1]


def test_rebuild_rejects_unregistered_classes():
    state = dict(format=1, state_dict={})
    with pytest.raises(pickle.UnpicklingError, match='not a registered persistent class'):
        persistence._rebuild_persistent_safe('subprocess.Popen', (['true'],), {}, state)
    with pytest.raises(pickle.UnpicklingError, match='not a registered'):
        persistence._rebuild_persistent_safe('torch_utils.persistence.PersistentRecord', ('x', {}), {}, state)


def test_rebuild_rejects_mismatched_weights():
    state = _tiny().__reduce__()[1][3]
    state['state_dict']['unexpected.weight'] = torch.zeros(1)
    with pytest.raises(pickle.UnpicklingError, match='do not fit'):
        persistence._rebuild_persistent_safe(persistence.class_path(PTinyNet), (4,), dict(out_dim=2), state)


def test_nvlabs_record_walk():
    leaf = persistence._reconstruct_persistent_obj(dict(
        type='class', version=6, module_src='raise SystemExit', class_name='Leaf',
        state=dict(_parameters={'weight': torch.nn.Parameter(torch.ones(2)), 'bias': None},
                   _buffers={'kept': torch.zeros(1), 'dropped': torch.zeros(1)},
                   _non_persistent_buffers_set={'dropped'}, _modules={})))
    root = persistence._reconstruct_persistent_obj(dict(
        type='class', version=6, module_src='', class_name='Root',
        state=dict(_parameters={'const': torch.ones(3)}, _buffers={}, _modules={'a': leaf, 'b': None,
                                                                            'lin': torch.nn.Linear(1, 1)})))
    assert isinstance(root, persistence.PersistentRecord) and root.class_name == 'Root'
    assert list(root.state_dict()) == ['const', 'a.weight', 'a.kept', 'lin.weight', 'lin.bias']
    with pytest.raises(pickle.UnpicklingError):
        persistence._reconstruct_persistent_obj(dict(type='module', module_src='import os'))
