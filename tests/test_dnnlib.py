"""Tests for the foundations: dnnlib (EasyDict, open_url cache, names), torch_utils.misc, training_stats, distributed."""

import copy
import hashlib
import itertools
import os
import pickle
import socket
import urllib.error

import numpy as np
import pytest
import torch

import dnnlib
from dnnlib import util
from torch_utils import distributed, misc, training_stats

URL = 'https://example.invalid/models/network-snapshot.pkl'


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the test."""
    def fetch(url, timeout=60.0):
        raise AssertionError(f'network access attempted: {url}')
    monkeypatch.setattr(util, '_fetch_url', fetch)


# ---------------------------------------------------------------------------- dnnlib

def test_easydict_attribute_access_copy_and_pickle():
    d = dnnlib.EasyDict(a=1, nested=dnnlib.EasyDict(b=2))
    d.c = 3
    assert d['c'] == 3 and d.nested.b == 2
    with pytest.raises(AttributeError):
        _ = d.missing
    del d.c
    assert 'c' not in d
    for clone in (copy.deepcopy(d), pickle.loads(pickle.dumps(d))):
        assert clone == d and type(clone) is dnnlib.EasyDict and clone.nested.b == 2


def test_names_and_format_time():
    od = util.construct_class_by_name(class_name='collections.OrderedDict', a=1)
    assert type(od).__name__ == 'OrderedDict' and od['a'] == 1
    assert util.get_obj_by_name('os.path.join') is os.path.join
    assert util.call_func_by_name('a', 'b', func_name='os.path.join') == os.path.join('a', 'b')
    with pytest.raises(ImportError):
        util.get_obj_by_name('os.path.no_such_function')
    assert [util.format_time(s) for s in (5, 184, 7384, 93784)] == ['5s', '3m 04s', '2h 03m 04s', '1d 02h 03m']


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    assert util.make_cache_dir_path('downloads') == os.path.join(str(tmp_path), 'downloads')
    assert util.url_cache_path(URL).startswith(os.path.join(str(tmp_path), 'downloads'))


def test_open_url_local_path_and_file_url(tmp_path, no_network):
    path = tmp_path / 'some file.bin'
    path.write_bytes(b'local bytes')
    with util.open_url(str(path)) as f:
        assert f.read() == b'local bytes'
    with util.open_url(path.as_uri()) as f:       # file:// URL, space percent-encoded
        assert f.read() == b'local bytes'
    assert util.open_url(path.as_uri(), return_filename=True) == str(path)


def test_open_url_cache_hit_needs_no_network(tmp_path, no_network):
    name = hashlib.md5(URL.encode()).hexdigest() + '_network-snapshot.pkl'
    (tmp_path / name).write_bytes(b'cached bytes')
    with util.open_url(URL, cache_dir=str(tmp_path)) as f:
        assert f.read() == b'cached bytes'
    assert util.open_url(URL, cache_dir=str(tmp_path), return_filename=True) == str(tmp_path / name)


def test_open_url_downloads_once_into_cache(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(util, '_fetch_url', lambda url, timeout=60.0: calls.append(url) or b'payload')
    for _ in range(2):
        with util.open_url(URL, cache_dir=str(tmp_path), verbose=False) as f:
            assert f.read() == b'payload'
    assert calls == [URL]
    assert os.listdir(tmp_path) == [os.path.basename(util.url_cache_path(URL, str(tmp_path)))]  # no temp files


def test_open_url_unreachable_gives_clear_error(tmp_path, monkeypatch):
    calls = []

    def offline(url, timeout=60.0):
        calls.append(url)
        raise urllib.error.URLError(socket.gaierror(-3, 'Temporary failure in name resolution'))
    monkeypatch.setattr(util, '_fetch_url', offline)
    with pytest.raises(OSError) as info:
        util.open_url(URL, cache_dir=str(tmp_path), verbose=False)
    message = str(info.value)
    assert URL in message and 'local path' in message and util.url_cache_path(URL, str(tmp_path)) in message
    assert len(calls) == 1                         # offline: no pointless retries
    assert os.listdir(tmp_path) == []


def test_open_url_retries_transient_errors(tmp_path, monkeypatch):
    attempts = []
    monkeypatch.setattr(util.time, 'sleep', lambda s: None)

    def flaky(url, timeout=60.0):
        attempts.append(url)
        if len(attempts) < 3:
            raise ConnectionResetError('reset')
        return b'ok'
    monkeypatch.setattr(util, '_fetch_url', flaky)
    with util.open_url(URL, cache_dir=str(tmp_path), num_attempts=3, verbose=False) as f:
        assert f.read() == b'ok'
    assert len(attempts) == 3


# ---------------------------------------------------------------------------- torch_utils.misc

def test_assert_shape():
    x = torch.zeros(2, 3, 4)
    misc.assert_shape(x, [2, None, 4])
    with pytest.raises(AssertionError, match='dimension 1: got 3, expected 5'):
        misc.assert_shape(x, [None, 5, 4])
    with pytest.raises(AssertionError, match='number of dimensions'):
        misc.assert_shape(x, [2, 3])


def test_constant_is_cached():
    a = misc.constant([1, 2, 3], dtype=torch.float32)
    assert a is misc.constant([1, 2, 3], dtype=torch.float32)
    assert a is not misc.constant([1, 2, 3], dtype=torch.float64)
    b = misc.constant(0.5, shape=[2, 2])
    assert b.shape == (2, 2) and torch.all(b == 0.5)


def test_infinite_sampler_shards_are_disjoint_and_cover_each_pass():
    data = list(range(20))
    streams = [iter(misc.InfiniteSampler(data, rank=r, num_replicas=2, seed=7)) for r in range(2)]
    first = [list(itertools.islice(s, 10)) for s in streams]
    assert not set(first[0]) & set(first[1])
    assert sorted(first[0] + first[1]) == data
    again = list(itertools.islice(iter(misc.InfiniteSampler(data, rank=0, num_replicas=2, seed=7)), 10))
    assert again == first[0]
    assert list(itertools.islice(iter(misc.InfiniteSampler(data, shuffle=False)), 22)) == data + [0, 1]


def test_copy_params_and_buffers():
    src, dst = torch.nn.BatchNorm1d(4), torch.nn.BatchNorm1d(4)
    with torch.no_grad():
        src.weight.uniform_()
        src.running_mean.uniform_()
    dst.weight.requires_grad_(False)
    misc.copy_params_and_buffers(src, dst, require_all=True)
    assert torch.equal(dst.weight, src.weight) and torch.equal(dst.running_mean, src.running_mean)
    assert not dst.weight.requires_grad
    with pytest.raises(KeyError):
        misc.copy_params_and_buffers(torch.nn.LayerNorm(4), dst, require_all=True)  # no running_mean
    assert len(misc.params_and_buffers(dst)) == len(misc.named_params_and_buffers(dst)) == 5


def test_print_module_summary_and_ddp_helpers(capsys):
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    out = misc.print_module_summary(net, [torch.zeros(4, 3)])
    text = capsys.readouterr().out
    assert out.shape == (4, 2)
    assert 'Output shape' in text and '[4, 5]' in text and '[4, 2]' in text and 'float32' in text
    total_line = next(line for line in text.splitlines() if line.startswith('Total'))
    assert total_line.split()[1] == str(sum(p.numel() for p in net.parameters()))
    with misc.ddp_sync(net, sync=False):
        pass
    misc.check_ddp_consistency(net)               # no process group: nothing to compare


# ---------------------------------------------------------------------------- training_stats

def test_training_stats_mean_std_match_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(3.0, 2.0, size=50), rng.normal(-1.0, 0.5, size=(4, 5))
    collector = training_stats.Collector(regex='tdn/.*')
    training_stats.report('tdn/a', torch.from_numpy(a[:20]))
    training_stats.report('tdn/a', a[20:])
    assert training_stats.report0('tdn/b', torch.from_numpy(b)) is not None
    training_stats.report('other/c', 1.0)
    collector.update()
    assert collector.names() == ['tdn/a', 'tdn/b']
    assert collector.num('tdn/a') == 50 and collector.num('tdn/b') == 20
    assert collector.mean('tdn/a') == pytest.approx(a.mean(), rel=1e-5)
    assert collector.std('tdn/a') == pytest.approx(a.std(), rel=1e-4)
    assert collector['tdn/b'] == pytest.approx(b.mean(), rel=1e-5)
    assert collector.as_dict()['tdn/b'].std == pytest.approx(b.std(), rel=1e-4)

    # Next interval: only new reports count; keep_previous keeps 'tdn/b'.
    training_stats.report('tdn/a', [1.0, 3.0])
    collector.update()
    assert collector.num('tdn/a') == 2 and collector.mean('tdn/a') == 2.0 and collector.std('tdn/a') == 1.0
    assert collector.num('tdn/b') == 20
    fresh = training_stats.Collector(regex='tdn/.*', keep_previous=False)
    fresh.update()
    assert fresh.num('tdn/a') == 0 and np.isnan(fresh.mean('tdn/a'))


# ---------------------------------------------------------------------------- distributed

def test_distributed_env_parsing_and_single_process(monkeypatch, capsys):
    cfg = distributed._env_config(dict(RANK='3', WORLD_SIZE='8', LOCAL_RANK='1', MASTER_ADDR='node0', MASTER_PORT='1234'))
    assert cfg == dict(rank=3, world_size=8, local_rank=1, master_addr='node0', master_port=1234)
    cfg = distributed._env_config(dict(SLURM_PROCID='5', SLURM_NTASKS='6', SLURM_LOCALID='2'))
    assert (cfg['rank'], cfg['world_size'], cfg['local_rank']) == (5, 6, 2)
    assert distributed._env_config({})['world_size'] == 1
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'SLURM_PROCID', 'SLURM_NTASKS'):
        monkeypatch.delenv(name, raising=False)
    distributed.init()
    assert not torch.distributed.is_initialized()
    assert distributed.get_rank() == 0 and distributed.get_world_size() == 1
    distributed.barrier()
    distributed.print0('hello from rank 0')
    assert 'hello from rank 0' in capsys.readouterr().out
