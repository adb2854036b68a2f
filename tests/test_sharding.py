"""Sharded per-image runs: `torchrun --nproc_per_node=2 invert.py` on CPU (gloo) equals a 1-process run.

Equality is bitwise (latent .npy bytes, recon PNG bytes, LPIPS/MSE/PSNR in results.jsonl): the runner
forms the same batches whatever the number of ranks (`jobs._plan_batches`), every batch runs the
same kernels on the same inputs in one process, and nothing in the loop is random. Float tolerance
would not do: Adam's first steps turn rounding-level gradient differences (another batch
composition) into lr-sized latent differences (measured: 0.028 after 3 steps), so a tolerant test
could not tell a wrong batch plan from noise.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import invert
from conftest import tiny_generator_kwargs
from inversion.job_runner import _plan_batches
from torch_utils import checkpoint, distributed
from torch_utils.files import outdir_lock
from training import networks

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NAMES = [f'im{i}' for i in range(6)]


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """(network, target folder, reference outdir of a 1-process run)."""
    root = tmp_path_factory.mktemp('shard')
    torch.manual_seed(2)
    G = networks.Generator(**tiny_generator_kwargs(latent_rows=16, resolution=16, dim=16)).eval()
    G.mapping.w_avg.copy_(torch.randn(G.w_dim) * 0.3)
    net = root / 'net.pkl'
    checkpoint.save_network_pkl(net, dict(G_ema=G))
    target = root / 'img'
    target.mkdir()
    rng = np.random.RandomState(0)
    for name in NAMES:
        PIL.Image.fromarray(rng.randint(0, 256, (20, 24, 3), dtype=np.uint8)).save(target / f'{name}.png')
    (target / 'im2b.png').write_bytes(b'not a png')          # Unreadable, inside a batch: shrinks that batch.
    ref = root / 'ref'
    result = CliRunner().invoke(invert.main, [str(a) for a in args(net, target, ref)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return net, target, ref


def args(net, target, outdir):
    return ['--network', net, '--target', target, '--outdir', outdir, '--lpips', 'vgg-random', '--steps', 3,
            '--device', 'cpu', '--batch', 2, '--save-every', 1]


def torchrun(net, target, outdir, nproc=2, **popen):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', 'invert.py',
           *[str(a) for a in args(net, target, outdir)]]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def descendants(pid):
    """Process ids below `pid` (Linux /proc), deepest first."""
    try:
        children = [int(c) for c in Path(f'/proc/{pid}/task/{pid}/children').read_text().split()]
    except OSError:
        return []
    return [d for c in children for d in (*descendants(c), c)]


def results(outdir):
    recs = [json.loads(line) for line in (outdir / 'results.jsonl').read_text().splitlines()]
    return {r['name']: {k: r[k] for k in ('source', 'lpips', 'mse', 'psnr', 'steps', 'batch_size')} for r in recs}


def assert_same_run(out, ref):
    for name in NAMES:
        assert (out / f'{name}.npy').read_bytes() == (ref / f'{name}.npy').read_bytes(), name
        assert (out / f'{name}-recon.png').read_bytes() == (ref / f'{name}-recon.png').read_bytes(), name
    assert results(out) == results(ref)
    with np.load(out / 'latents.npz') as a, np.load(ref / 'latents.npz') as b:
        assert list(a['names']) == NAMES and np.array_equal(a['latents'], b['latents'])
    with np.load(out / 'lpips_curves.npz') as a, np.load(ref / 'lpips_curves.npz') as b:
        assert list(a['names']) == NAMES and np.array_equal(a['curves'], b['curves'], equal_nan=True)
    assert [r['source'] for r in json.loads((out / 'skipped.json').read_text())] == [
        r['source'] for r in json.loads((ref / 'skipped.json').read_text())]
    summary, ref_summary = (json.loads((d / 'summary.json').read_text()) for d in (out, ref))
    for key in ('images', 'skipped', 'lpips_mean', 'mse_mean', 'psnr_mean', 'lpips_median'):
        assert summary[key] == ref_summary[key], key
    assert not (out / 'shards').exists() and not list((out / 'state').glob('*.pt'))

#----------------------------------------------------------------------------

def test_split_by_rank():
    items = list(range(11))
    shares = [distributed.split_by_rank(items, r, 3) for r in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert distributed.split_by_rank(items) == items                       # One process: everything.
    with pytest.raises(ValueError):
        distributed.split_by_rank(items, 3, 3)


def test_plan_batches_keep_positions():
    class Src:
        def __init__(self, name):
            self.name = name
    srcs = [Src(n) for n in 'abcdefg']
    names = lambda plan: [[s.name for s in c] for c in plan]             # noqa: E731
    assert names(_plan_batches(srcs, set('abcdefg'), 3)) == [['a', 'b', 'c'], ['d', 'e', 'f'], ['g']]
    # a, b, c finished and f in a saved batch: the other batches are the ones an uninterrupted run forms.
    assert names(_plan_batches(srcs, set('degx'), 3)) == [['d', 'e'], ['g']]


def test_two_ranks_equal_one(setup, tmp_path):
    net, target, ref = setup
    out = tmp_path / 'out'
    proc = torchrun(net, target, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count('Inverted 6 images') == 1                      # Rank 0 reports.
    assert_same_run(out, ref)
    log = (out / 'log.txt').read_text()
    assert '[rank 1/2]' in log and '[rank 0/2]' in log


def test_killed_sharded_run_resumes(setup, tmp_path):
    net, target, ref = setup
    out = tmp_path / 'out'
    proc = torchrun(net, target, out, start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            shards = list((out / 'shards').glob('results-*.jsonl')) if (out / 'shards').is_dir() else []
            if any(p.stat().st_size for p in shards):
                break
            time.sleep(0.05)
    finally:
        for pid in [*descendants(proc.pid), proc.pid]:                   # The ranks run in their own sessions.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode != 0, 'the run ended before it could be killed'
    assert (out / 'shards').is_dir()
    proc = torchrun(net, target, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (out / 'log.txt').read_text()
    assert 'finished images from the shards of an earlier sharded run' in log
    assert_same_run(out, ref)


def test_lock_refuses_a_second_run_on_every_rank(setup, tmp_path):
    net, target, _ref = setup
    out = tmp_path / 'out'
    out.mkdir()
    with outdir_lock(out, 'invert run'):
        proc = torchrun(net, target, out)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert text.count('is in use by another invert run') == 2, text          # Rank 1 too, in one line.
    assert 'jobs.py", line' not in text and 'invert.py", line' not in text      # torchrun's own report aside.
    assert not list(out.glob('*.npy'))

#----------------------------------------------------------------------------
# interpolate.py --pairs=all and calc_metrics.py --inversion-run, 2 ranks vs 1.

def run_script(script, argv, nproc):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    argv = [str(a) for a in argv]
    cmd = [sys.executable, script, *argv] if nproc == 1 else [
        sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', script, *argv]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_interpolation_two_ranks_equal_one(setup, tmp_path):
    net, _target, _ref = setup
    real = tmp_path / 'real'
    real.mkdir()
    rng = np.random.RandomState(1)
    for k in range(6):
        PIL.Image.fromarray(rng.randint(0, 256, (16, 16, 3), dtype=np.uint8)).save(real / f'r{k}.png')
    outs = {}
    for nproc in (1, 2):
        outs[nproc] = tmp_path / f'out{nproc}'
        run_script('interpolate.py', ['--network', net, '--seeds', '0-4', '--pairs', 'all', '--steps', 3, '--batch', 3,
                                      '--metrics', '--detector-path', 'random:64:0', '--data', real, '--no-cache',
                                      '--device', 'cpu', '--no-progress', '--outdir', outs[nproc]], nproc)
    one, two = (json.loads((outs[k] / 'interpolation.json').read_text()) for k in (1, 2))
    assert len(one['pairs']) == 10 and one['per_pair'] == two['per_pair']       # Bitwise: same floats in JSON.
    assert one['summary'] == two['summary'] and np.isfinite(one['summary']['fid_midpoints'])
    for i, j in one['pairs']:
        assert (outs[1] / f'pair-{i}-{j}.png').read_bytes() == (outs[2] / f'pair-{i}-{j}.png').read_bytes()
    assert np.array_equal(np.asarray(PIL.Image.open(outs[1] / 'overview.png')),
                          np.asarray(PIL.Image.open(outs[2] / 'overview.png')))


def test_recon_metrics_two_ranks_equal_one(setup, tmp_path):
    _net, _target, ref = setup
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f'm{nproc}'
        run_script('calc_metrics.py', ['--inversion-run', ref, '--metrics', 'recon', '--detector-path', 'random:16:0',
                                       '--batch', 2, '--quiet', '--run-dir', out], nproc)
        lines = (out / 'metric-recon.jsonl').read_text().splitlines()
        assert len(lines) == 1                                                 # Rank 0 reports once.
        results[nproc] = json.loads(lines[0])['results']
    assert results[1]['recon_num_images'] == 6 and np.isfinite(results[1]['recon_fid'])
    assert results[1] == results[2]


def test_slurm_environment_shards_too(setup, tmp_path):
    """Two plain processes with SLURM's variables (srun --ntasks=2) form the same 2-rank run."""
    import socket
    net, target, ref = setup
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    out = tmp_path / 'out'
    base = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    procs = [subprocess.Popen([sys.executable, 'invert.py', *[str(a) for a in args(net, target, out)]], cwd=ROOT,
                              env=dict(base, OMP_NUM_THREADS='1', SLURM_PROCID=str(r), SLURM_NTASKS='2',
                                       SLURM_LOCALID=str(r), MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert '[rank 1/2]' in (out / 'log.txt').read_text()
    assert_same_run(out, ref)
