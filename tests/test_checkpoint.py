"""Tests for torch_utils/checkpoint.py: our pickles, stylegan2-ada-pytorch-style pickles, refusing malicious ones."""

import builtins
import io
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch

import dnnlib
from conftest import shared_fixture
from torch_utils import checkpoint, persistence


@persistence.persistent_class
class CkTinyNet(torch.nn.Module):
    """Linear + nested submodule + persistent/non-persistent buffers, built from kwargs."""

    def __init__(self, in_dim, out_dim, hidden_kwargs=None):
        super().__init__()
        hidden_kwargs = dict(hidden_kwargs or {})
        self.fc = torch.nn.Linear(in_dim, out_dim)
        self.head = torch.nn.Sequential(torch.nn.Linear(out_dim, hidden_kwargs.get('width', 2)))
        self.register_buffer('w_avg', torch.zeros(out_dim))
        self.register_buffer('tmp', torch.zeros(1), persistent=False)

    def forward(self, x):
        return self.head(self.fc(x) + self.w_avg)


def _net(seed=1, **kwargs):
    torch.manual_seed(seed)
    net = CkTinyNet(in_dim=4, out_dim=3, hidden_kwargs=dict(width=2), **kwargs)
    with torch.no_grad():
        net.w_avg.normal_()
    return net


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


class _Global:
    """Pickles as a call `func(*args)`; `func` is stored by reference (module + name)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _nvlabs_record(module, init_kwargs, source):
    """An object that pickles exactly like a stylegan2-ada-pytorch persistent record of `module`."""
    state = dict(module.__dict__)
    state['_modules'] = {name: _nvlabs_record(sub, {}, source) for name, sub in module._modules.items()}
    state['_init_args'], state['_init_kwargs'] = (), init_kwargs
    meta = dict(type='class', version=6, module_src=source, class_name=type(module).__name__, state=state)
    return _Global(persistence._reconstruct_persistent_obj, meta)


# ---------------------------------------------------------------------------- our pickles

def test_round_trip_of_our_pickle(tmp_path):
    G = _net().eval().requires_grad_(False)
    extras = dict(cur_nimg=1234, kwargs=dnnlib.EasyDict(lr=0.002), arr=np.arange(3, dtype=np.float32),
                  scalar=np.float64(0.5), dtype=torch.float16, device=torch.device('cpu'), shape=torch.Size([2, 3]),
                  misc=(set([1]), frozenset([2]), slice(1, 5, 2), complex(1, 2)))
    path = tmp_path / 'sub' / 'network.pkl'
    checkpoint.save_network_pkl(path, dict(G_ema=G, D=_net(seed=2), **extras))
    assert os.listdir(path.parent) == ['network.pkl']           # the temp file was renamed away
    data = checkpoint.load_network_pkl(path)
    G2 = data['G_ema']
    assert type(G2) is CkTinyNet and G2._init_kwargs == dict(in_dim=4, out_dim=3, hidden_kwargs=dict(width=2))
    _assert_same_weights(G, G2)
    x = torch.randn(5, 4)
    assert torch.equal(G2(x), G(x))
    assert not G2.training and not any(p.requires_grad for p in G2.parameters())
    assert data['D'].training and all(p.requires_grad for p in data['D'].parameters())
    assert data['cur_nimg'] == 1234 and data['kwargs'].lr == 0.002 and np.array_equal(data['arr'], extras['arr'])
    assert data['scalar'] == 0.5 and data['dtype'] is torch.float16 and data['shape'] == (2, 3)
    assert data['misc'] == extras['misc']
    with open(path, 'rb') as f:                                  # file objects work too
        assert checkpoint.load_network(path, key='D', device='cpu').fc.in_features == 4
        assert checkpoint.load_network_pkl(f)['cur_nimg'] == 1234


def test_bare_network_and_missing_key(tmp_path):
    path = tmp_path / 'bare.pkl'
    path.write_bytes(pickle.dumps(_net()))
    assert type(checkpoint.load_network(str(path))) is CkTinyNet    # key ignored for a bare network
    checkpoint.save_network_pkl(path, dict(D=_net()))
    with pytest.raises(ValueError, match="no network 'G_ema'"):
        checkpoint.load_network(str(path))


def test_load_frozen_network(tmp_path):
    """Eval mode, no gradients, the weights saved, the local file and the SHA-256 of its bytes (hashlib here)."""
    import hashlib
    path = tmp_path / 'net.pkl'
    saved = _net().train()
    checkpoint.save_network_pkl(path, dict(G_ema=saved))
    net, local, sha256 = checkpoint.load_frozen_network(str(path))
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    _assert_same_weights(net, saved)
    assert local == str(path) and sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(checkpoint.CheckpointError, match='missing.pkl') as info:
        checkpoint.load_frozen_network(str(tmp_path / 'missing.pkl'))
    assert '\n' not in str(info.value) and info.value.reason


def test_save_refuses_unregistered_modules(tmp_path):
    with pytest.raises(TypeError, match='persistent_class'):
        checkpoint.save_network_pkl(tmp_path / 'x.pkl', dict(G=torch.nn.Linear(1, 1)))
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------- stylegan2-ada-pytorch pickles

def _write_nvlabs_snapshot(path, sentinel, augment_pipe=True):
    source = f'import os\nos.system("touch {sentinel}")\n'
    G = _net(seed=3).eval().requires_grad_(False)
    snapshot = dict(G=_nvlabs_record(G, dict(in_dim=4, out_dim=3, hidden_kwargs=dict(width=2)), source),
                    G_ema=_nvlabs_record(G, dict(in_dim=4, out_dim=3, hidden_kwargs=dict(width=2)), source),
                    training_set_kwargs=dict(class_name='training.dataset.ImageFolderDataset', resolution=32))
    if augment_pipe:
        pipe = torch.nn.Module()                                  # class name 'Module' is not registered
        snapshot['augment_pipe'] = _nvlabs_record(pipe, dict(xflip=1), source)
    path.write_bytes(pickle.dumps(snapshot, protocol=4))
    return G


@pytest.mark.parametrize('trust', [False, True])
def test_nvlabs_snapshot_rebuilds_our_class_without_running_its_source(tmp_path, trust):
    sentinel = tmp_path / 'SENTINEL'
    path = tmp_path / 'snapshot.pkl'
    G = _write_nvlabs_snapshot(path, sentinel)
    raw = checkpoint.read_pickle(path, trust=trust)
    assert isinstance(raw['G_ema'], persistence.PersistentRecord) and raw['G_ema'].class_name == 'CkTinyNet'
    with pytest.warns(UserWarning, match='augment_pipe'):
        data = checkpoint.load_network_pkl(path, trust=trust)
    assert data['augment_pipe'] is None and data['training_set_kwargs']['resolution'] == 32
    G2 = data['G_ema']
    assert type(G2) is CkTinyNet and not G2.training and not any(p.requires_grad for p in G2.parameters())
    _assert_same_weights(G, G2)
    x = torch.randn(2, 4)
    assert torch.equal(G2(x), G(x))
    with open(path, 'rb') as f:                                  # even plain pickle.load never runs the source
        assert isinstance(pickle.load(f)['G'], persistence.PersistentRecord)
    assert not sentinel.exists()


def test_nvlabs_unregistered_network_is_a_clear_error(tmp_path):
    sentinel = tmp_path / 'SENTINEL'
    path = tmp_path / 'snapshot.pkl'
    path.write_bytes(pickle.dumps(dict(D=_nvlabs_record(torch.nn.Module(), {}, f'open("{sentinel}", "w")'))))
    with pytest.raises(ValueError, match="holds a 'Module'.*cannot load it safely"):
        checkpoint.load_network_pkl(path)
    assert not sentinel.exists()


def test_nvlabs_weight_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / 'snapshot.pkl'
    kwargs = dict(in_dim=4, out_dim=3, hidden_kwargs=dict(width=5))       # the weights have width 2
    path.write_bytes(pickle.dumps(dict(G_ema=_nvlabs_record(_net(), kwargs, 'pass'))))
    with pytest.raises(pickle.UnpicklingError, match='do not fit'):
        checkpoint.load_network_pkl(path)


# ---------------------------------------------------------------------------- malicious pickles

@pytest.mark.parametrize('make', [
    lambda s: _Global(os.system, f'touch {s}'),
    lambda s: _Global(builtins.eval, f'open({str(s)!r}, "w")'),
    lambda s: _Global(subprocess.Popen, ['touch', str(s)]),
    lambda s: _Global(persistence._rebuild_persistent, 'subprocess.Popen', (['touch', str(s)],), {}, dict(format=1)),
    lambda s: dict(G_ema=_net(), payload=_Global(os.system, f'touch {s}')),
])
def test_malicious_pickles_are_refused(tmp_path, make):
    sentinel = tmp_path / 'SENTINEL'
    path = tmp_path / 'evil.pkl'
    path.write_bytes(pickle.dumps(make(sentinel), protocol=4))
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load_network_pkl(path)
    message = str(info.value)
    assert ('trust=True' in message and 'allow-list' in message) or 'not a registered' in message
    assert not sentinel.exists()


def test_storage_blobs_are_loaded_weights_only(tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get('weights_only'))
        return real_load(*args, **kwargs)
    monkeypatch.setattr(torch, 'load', spy)
    path = tmp_path / 'net.pkl'
    checkpoint.save_network_pkl(path, dict(G=_net()))
    checkpoint.load_network_pkl(path)
    assert calls and all(flag is True for flag in calls)

    # A storage blob that would run code under unrestricted torch.load is refused.
    sentinel = tmp_path / 'SENTINEL'
    blob = io.BytesIO()
    torch.save(_Global(os.system, f'touch {sentinel}'), blob, _use_new_zipfile_serialization=False)
    path.write_bytes(pickle.dumps(dict(G=_Global(torch.storage._load_from_bytes, blob.getvalue()))))
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load_network_pkl(path)
    assert not sentinel.exists()


# ---------------------------------------------------------------------------- the real NVIDIA fixture

def test_real_nvlabs_fixture_unpickles_safely_into_records():
    path = shared_fixture('nvlabs-sg2ada-32px.pkl')
    raw = checkpoint.read_pickle(path)
    assert set(raw) == {'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'}
    assert raw['G_ema'].class_name == 'Generator' and raw['D'].class_name == 'Discriminator'
    names = raw['G_ema'].state_dict()
    assert {'synthesis.b4.const', 'mapping.fc0.weight', 'mapping.w_avg'} <= set(names)
    assert all(isinstance(t, torch.Tensor) for t in names.values())
    assert raw['G_ema'].state['_init_kwargs']['img_resolution'] == 32
