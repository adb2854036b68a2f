"""Tests for the foundations: dnnlib (EasyDict, open_url cache, names), torch_utils.misc, training_stats,
distributed."""

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
from dnnlib import cli, util
from torch_utils import distributed, files, misc, training_stats

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
    cfg = distributed._env_config(dict(RANK='3', WORLD_SIZE='8', LOCAL_RANK='1', MASTER_ADDR='node0',
                                       MASTER_PORT='1234'))
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


# ---------------------------------------------------------------------------- writing files, output folders, CLI errors

def test_atomic_write_respects_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        files.atomic_write(tmp_path / 'a.txt', lambda tmp: open(tmp, 'w').write('x'))
        assert (os.stat(tmp_path / 'a.txt').st_mode & 0o777) == 0o640           # 0o666 & ~0o027, not mkstemp's 0600.
        os.umask(0o022)
        files.atomic_write(tmp_path / 'b.txt', lambda tmp: open(tmp, 'w').write('x'), fsync=True)
        assert (os.stat(tmp_path / 'b.txt').st_mode & 0o777) == 0o644
    finally:
        os.umask(old)
    assert sorted(os.listdir(tmp_path)) == ['a.txt', 'b.txt']


@pytest.mark.parametrize('failure', ['enospc', 'hidden-errno'])
def test_atomic_write_names_a_full_disk(tmp_path, monkeypatch, failure):
    (tmp_path / 'f.pt').write_text('previous')

    def write(tmp):
        open(tmp, 'w').write('partial')
        if failure == 'enospc':
            raise OSError(28, 'No space left on device')
        raise RuntimeError('[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0')  # torch.save's way.
    if failure == 'hidden-errno':
        class Full:
            f_bavail, f_favail, f_files = 0, 10, 100
        monkeypatch.setattr(files.os, 'statvfs', lambda path: Full())
    with pytest.raises(files.DiskFullError) as info:
        files.atomic_write(tmp_path / 'f.pt', write)
    assert f'no space left on device at {tmp_path}' in str(info.value) and 'f.pt' in str(info.value)
    assert (tmp_path / 'f.pt').read_text() == 'previous' and os.listdir(tmp_path) == ['f.pt']


def test_atomic_write_other_errors_pass_through(tmp_path):
    def write(tmp):
        raise RuntimeError('a bug, not a full disk')
    with pytest.raises(RuntimeError, match='a bug'):
        files.atomic_write(tmp_path / 'g', write)
    assert os.listdir(tmp_path) == []


def test_remove_stale_temporaries(tmp_path):
    (tmp_path / 'state').mkdir()
    stale = [tmp_path / '.x.npy.tmp-ab12cd_3.tmp', tmp_path / 'state' / '.g.pt.tmp-zz99yy00.tmp',
             tmp_path / '.curve.png.tmp-a1b2c3d4.png', tmp_path / '.old.pkl.k3j4h5g6.tmp']      # Older naming too.
    keep = [tmp_path / 'x.npy', tmp_path / '.hidden.png', tmp_path / 'notes.tmp', tmp_path / '.lock']
    for p in stale + keep:
        p.write_text('')
    removed = files.remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(map(str, stale))
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    # The temporaries atomic_write makes (what a SIGKILL would leave) are the ones recognised.
    names = []

    def write(tmp):
        names.append(os.path.basename(tmp))
    files.atomic_write(tmp_path / 'y.npy', write)
    files.atomic_write(tmp_path / 'z.png', write, suffix='.png')
    assert all(files._STALE_TMP.match(n) for n in names)


def test_check_outdir(tmp_path):
    assert files.check_outdir(tmp_path / 'new' / 'deeper') == str(tmp_path / 'new' / 'deeper')
    assert not (tmp_path / 'new').exists()                                      # Checking creates nothing.
    (tmp_path / 'file').write_text('x')
    with pytest.raises(files.OutdirError, match='--outdir .*file is a file; pass a folder'):
        files.check_outdir(tmp_path / 'file')
    with pytest.raises(files.OutdirError, match='which is a file'):
        files.check_outdir(tmp_path / 'file' / 'sub', option='--run-dir')
    try:
        os.makedirs('/sys/overparam-test-dir')
        pytest.skip('/sys is writable here')
    except OSError:
        pass
    with pytest.raises(files.OutdirError, match='cannot write in /sys'):
        files.check_outdir('/sys/overparam-test-dir/out')
    assert os.listdir(tmp_path) == ['file']


def test_outdir_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path):
    import subprocess
    import sys
    import time
    code = ('import sys, time; sys.path.insert(0, %r); from torch_utils import files\n'
            'with files.outdir_lock(%r):\n    print("locked", flush=True); time.sleep(30)\n'
            % (os.getcwd(), str(tmp_path)))
    holder = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        with pytest.raises(files.OutdirError, match=rf'in use by another run \(pid {holder.pid}\)'):
            with files.outdir_lock(tmp_path):
                pass
    finally:
        holder.kill()                                                            # SIGKILL: no cleanup runs.
        holder.wait()
    deadline = time.time() + 10
    while True:                                                                  # The kernel frees the lock.
        try:
            with files.outdir_lock(tmp_path):
                break
        except files.OutdirError:
            assert time.time() < deadline
            time.sleep(0.05)


def test_cli_errors_make_one_line_errors(monkeypatch):
    import click
    from click.testing import CliRunner

    class Mine(Exception):
        pass

    @click.command()
    @click.option('--kind')
    @cli.cli_errors(Mine)
    def cmd(kind):
        raise {'value': ValueError('bad\nvalue  here'), 'os': FileNotFoundError(2, 'No such file', 'x.pkl'),
               'eof': EOFError(), 'mine': Mine('mine'), 'bug': KeyError('k')}[kind]

    for kind, text in [('value', 'Error: bad value here'), ('os', "x.pkl"), ('eof', 'Error: EOFError'),
                       ('mine', 'Error: mine')]:
        result = CliRunner().invoke(cmd, ['--kind', kind])
        assert result.exit_code == 1 and text in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert isinstance(CliRunner().invoke(cmd, ['--kind', 'bug']).exception, KeyError)   # Bugs are not hidden.
    monkeypatch.setenv('DNNLIB_TRACEBACK', '1')
    assert isinstance(CliRunner().invoke(cmd, ['--kind', 'value']).exception, ValueError)
