"""train.py on bad input: one line on stderr naming the file or option and the fix, a non-zero exit, no traceback,
no run directory left behind; `--resume auto` past a corrupt newest state; snapshot pairs and stale temporaries."""

import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dnnlib
import train as train_cli
from conftest import REPO, shared_fixture
from torch_utils import checkpoint
from training import snapshot
from training.tiny_data import write_tiny_dataset


@pytest.fixture(scope='module')
def data16(tmp_path_factory):
    path = tmp_path_factory.mktemp('data') / 'tiny16.zip'
    write_tiny_dataset(str(path), num_images=16, resolution=16, seed=0)
    return str(path)


def cli_args(outdir, data, kimg='0.008'):
    return ['--outdir', str(outdir), '--data', str(data), '--cfg', 'auto', '--rows', '32', '--dim', '32',
            '--cbase', '256', '--cmax', '32', '--batch', '4', '--mbstd', '2', '--precision', 'fp32',
            '--tick', '0.004', '--snap', '1', '--workers', '0', '--grid', '2', '--metrics', 'none',
            '--device', 'cpu', '--gamma', '0.05', '--aug', 'noaug', '--kimg', kimg]


def assert_one_line_error(result, *names):
    assert result.exit_code not in (0, None), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert 'Traceback' not in result.output and 'Traceback' not in result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


class Evil:
    def __reduce__(self):
        return (os.system, (f'touch {EVIL_MARKER}',))


EVIL_MARKER = '/tmp/overparam-train-evil-marker'


def bad_files(folder):
    """name -> path of a file that --resume must refuse."""
    folder.mkdir(exist_ok=True)
    real = open(shared_fixture('nvlabs-sg2ada-32px.pkl'), 'rb').read()
    files = {
        'random.pkl': np.random.RandomState(0).bytes(4096),
        'truncated.pkl': real[:len(real) // 2],
        'empty.pkl': b'',
        'text.pkl': b'this is not a pickle\n',
        'malicious.pkl': pickle.dumps(Evil()),
        'empty.pt': b'',
        # Random bytes: torch.load raises UnpicklingError for most, but IndexError, KeyError or UnicodeDecodeError
        # for some (8 % of os.urandom(4096) files; these seeds give one of each).
        'random.pt': np.random.RandomState(0).bytes(4096),
        'random-indexerror.pt': np.random.RandomState(13).bytes(4096),
        'random-keyerror.pt': np.random.RandomState(3).bytes(4096),
        'random-unicodeerror.pt': np.random.RandomState(5).bytes(4096),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as zf:
        zf.writestr('a.txt', 'hello')
    files['archive.pkl'] = buf.getvalue()
    paths = {}
    for name, content in files.items():
        (folder / name).write_bytes(content)
        paths[name] = str(folder / name)
    return paths


def test_bad_resume_files_are_refused_in_one_line(data16, tmp_path):
    if os.path.exists(EVIL_MARKER):
        os.remove(EVIL_MARKER)
    outdir = tmp_path / 'runs'
    for name, path in bad_files(tmp_path / 'bad').items():
        result = CliRunner().invoke(train_cli.main, cli_args(outdir, data16) + ['--resume', path])
        line = assert_one_line_error(result, path, '--resume')
        assert 'pass a network-snapshot' in line, line
        assert not os.path.exists(outdir) or os.listdir(outdir) == [], (name, os.listdir(outdir))
    assert not os.path.exists(EVIL_MARKER), 'the malicious pickle ran code'
    result = CliRunner().invoke(train_cli.main, cli_args(outdir, data16) + ['--resume', str(tmp_path / 'nope.pkl')])
    assert_one_line_error(result, 'nope.pkl', 'does not exist')


def test_bad_resume_from_the_real_command_line(data16, tmp_path):
    """The same through a real process: stderr is one line and the exit code is 1."""
    bad = tmp_path / 'broken.pkl'
    bad.write_bytes(b'\x80\x04garbage')
    proc = subprocess.run([sys.executable, 'train.py', *cli_args(tmp_path / 'runs', data16), '--resume', str(bad)],
                          cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and str(bad) in proc.stderr
    assert not (tmp_path / 'runs').exists()


def test_bad_outdir_and_data(data16, tmp_path, monkeypatch):
    afile = tmp_path / 'afile'
    afile.write_text('x')
    result = CliRunner().invoke(train_cli.main, cli_args(afile, data16))
    assert_one_line_error(result, str(afile), '--outdir', 'is a file')
    result = CliRunner().invoke(train_cli.main, cli_args(afile / 'sub', data16))
    assert_one_line_error(result, str(afile), '--outdir')
    locked = tmp_path / 'locked'
    locked.mkdir()
    real_mkdtemp = tempfile.mkdtemp                     # Root writes anywhere: the write probe is refused instead.

    def refuse(*args, dir=None, **kwargs):
        if str(dir) == str(locked):
            raise PermissionError(13, 'Permission denied')
        return real_mkdtemp(*args, dir=dir, **kwargs)
    monkeypatch.setattr(dnnlib.util.tempfile, 'mkdtemp', refuse)
    result = CliRunner().invoke(train_cli.main, cli_args(locked / 'runs', data16))
    assert_one_line_error(result, str(locked), 'cannot write', 'permission denied')
    monkeypatch.undo()
    assert os.listdir(locked) == []

    result = CliRunner().invoke(train_cli.main, cli_args(tmp_path / 'runs', tmp_path / 'missing.zip'))
    assert_one_line_error(result, 'missing.zip', 'dataset_tool.py')
    broken = tmp_path / 'broken.zip'
    broken.write_bytes(b'PK\x03\x04' + os.urandom(200))
    result = CliRunner().invoke(train_cli.main, cli_args(tmp_path / 'runs', broken))
    assert_one_line_error(result, 'broken.zip', 'dataset_tool.py')
    with zipfile.ZipFile(tmp_path / 'badimg.zip', 'w') as zf:
        zf.writestr('img0.png', b'not a png')
    result = CliRunner().invoke(train_cli.main, cli_args(tmp_path / 'runs', tmp_path / 'badimg.zip'))
    assert_one_line_error(result, 'badimg.zip', "cannot read image 'img0.png'", 'dataset_tool.py')
    result = CliRunner().invoke(train_cli.main, [a for a in cli_args(tmp_path / 'runs', data16)
                                                 if a not in ('--data', data16)])
    assert result.exit_code == 2 and "Missing option '--data'" in result.stderr
    assert not (tmp_path / 'runs').exists()


def test_resume_auto_falls_back_past_a_corrupt_newest_state(data16, tmp_path):
    outdir = tmp_path / 'runs'
    args = cli_args(outdir, data16) + ['--resume', 'auto']
    assert CliRunner().invoke(train_cli.main, args).exit_code == 0
    (run_name,) = os.listdir(outdir)
    run_dir = str(outdir / run_name)
    states = snapshot.list_states(run_dir)
    assert [os.path.basename(s) for s in states] == ['training-state-000000.004.pt', 'training-state-000000.008.pt']
    with open(states[-1], 'r+b') as f:                                  # the newest state loses its second half
        f.truncate(os.path.getsize(states[-1]) // 2)
    stale = os.path.join(run_dir, '.network-snapshot-000000.012.pkl.k3j2.tmp')
    open(stale, 'wb').write(b'\x00' * 100)                              # what a SIGKILL mid-write leaves

    result = CliRunner().invoke(train_cli.main, cli_args(outdir, data16, kimg='0.016') + ['--resume', 'auto'])
    assert result.exit_code == 0, result.output
    log = open(os.path.join(run_dir, 'log.txt')).read()
    assert 'training-state-000000.008.pt is not a readable training state' in log
    assert 'Falling back to training-state-000000.004.pt' in log and 'Resumed from' in log
    assert 'Removed 1 temporary file(s)' in log and not os.path.exists(stale)
    final = snapshot.load_training_state(snapshot.list_states(run_dir)[-1])
    assert final['progress']['cur_nimg'] == 16 and os.listdir(outdir) == [run_name]


class SimulatedKill(BaseException):
    """Not an Exception: like a signal that interrupts the write."""


@pytest.mark.parametrize('fail_in', ['pickle', 'state'])
def test_snapshot_pair_is_written_as_one_unit(tmp_path, monkeypatch, fail_in):
    run_dir = str(tmp_path)
    data, state = {'cur_nimg': 12}, {'format': snapshot.STATE_FORMAT, 'version': snapshot.STATE_VERSION}
    snapshot.save_snapshot_pair(run_dir, 8, {'cur_nimg': 8}, dict(state, progress={'cur_nimg': 8}))
    before = sorted(os.listdir(run_dir))

    def boom(*args, **kwargs):
        raise SimulatedKill()
    if fail_in == 'pickle':
        monkeypatch.setattr(checkpoint.pickle, 'dump', boom)
    else:
        monkeypatch.setattr(snapshot.torch, 'save', boom)
    with pytest.raises(SimulatedKill):
        snapshot.save_snapshot_pair(run_dir, 12, data, dict(state, progress={'cur_nimg': 12}))
    monkeypatch.undo()
    assert sorted(os.listdir(run_dir)) == before                        # neither file of K=12, no temporaries
    pkl, pt = snapshot.save_snapshot_pair(run_dir, 12, data, dict(state, progress={'cur_nimg': 12}))
    assert checkpoint.read_pickle(open(pkl, 'rb'))['cur_nimg'] == 12
    assert torch.load(pt, weights_only=True)['progress']['cur_nimg'] == 12
