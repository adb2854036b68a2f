"""The per-image runner (inversion/jobs.py) behind invert.py and upsample.py: what an earlier run left
(damaged resume state, truncated latents, stale temporaries), the output-folder lock, file modes, and
upsample.py on the same runner (skipped.json, log.txt, resume, latents.npz)."""

import json
import os

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import invert
import upsample as upsample_cli
from conftest import Killed, kill_inversion_at, tiny_generator_kwargs
from torch_utils import checkpoint, files
from training import networks


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('runner')
    torch.manual_seed(3)
    G = networks.Generator(**tiny_generator_kwargs(latent_rows=32)).eval()
    checkpoint.save_network_pkl(root / 'net.pkl', dict(G_ema=G))
    imgs = root / 'imgs'
    imgs.mkdir()
    rng = np.random.RandomState(1)
    for name in ('a', 'b', 'c'):
        PIL.Image.fromarray(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(imgs / f'{name}.png')
    (imgs / 'broken.png').write_bytes(b'\x89PNG broken')
    return dict(net=root / 'net.pkl', imgs=imgs)


def _invert(setup, outdir, *extra):
    args = ['--network', setup['net'], '--target', setup['imgs'], '--outdir', outdir, '--lpips', 'vgg-random',
            '--steps', 4, '--batch', 2, '--device', 'cpu', '--space', 'W', *extra]
    return CliRunner().invoke(invert.main, [str(a) for a in args])


def _results(outdir):
    return [json.loads(line)['name'] for line in (outdir / 'results.jsonl').read_text().splitlines()]


def test_damaged_state_and_latents_are_redone(setup, tmp_path):
    ref, out = tmp_path / 'ref', tmp_path / 'out'
    assert _invert(setup, ref, '--batch', 1).exit_code == 0         # Batches of one: b's redo is bitwise comparable.
    assert _invert(setup, out, '--batch', 1).exit_code == 0
    # A killed run's leftovers: a truncated finished latent, a truncated resume state, stale temporaries.
    data = (out / 'b.npy').read_bytes()
    (out / 'b.npy').write_bytes(data[:len(data) // 2])
    (out / 'state').mkdir(exist_ok=True)
    (out / 'state' / '0123456789abcdef.pt').write_bytes(b'PK\x03\x04 truncated torch.save')
    (out / '.a.npy.tmp-k2j3h4g5.tmp').write_bytes(b'x' * 100)
    (out / 'state' / '.x.pt.tmp-abcdefgh.tmp').write_bytes(b'x')
    result = _invert(setup, out, '--batch', 1)
    assert result.exit_code == 0, result.output
    log = (out / 'log.txt').read_text()
    assert 'b.npy is missing or damaged: redoing b' in log and 'is damaged (' in log
    np.testing.assert_array_equal(np.load(out / 'b.npy'), np.load(ref / 'b.npy'))   # Redone, same result.
    assert sorted(_results(out)) == ['a', 'b', 'c'] and len(_results(out)) == 3
    assert not list((out / 'state').iterdir())
    assert not [p for p in os.listdir(out) if '.tmp' in p]
    with np.load(out / 'latents.npz') as npz:
        assert list(npz['names']) == ['a', 'b', 'c']


def test_second_process_on_the_same_outdir_is_refused(setup, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    with files.outdir_lock(out):                             # Another open file: flock conflicts as across processes.
        result = _invert(setup, out)
    assert result.exit_code == 1 and 'in use by another invert run' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (out / 'results.jsonl').exists()
    assert _invert(setup, out).exit_code == 0               # Released: the next run works.


def test_outputs_are_readable_under_the_umask(setup, tmp_path):
    out = tmp_path / 'out'
    old = os.umask(0o022)
    try:
        assert _invert(setup, out, '--steps', 2).exit_code == 0
    finally:
        os.umask(old)
    modes = {p: os.stat(out / p).st_mode & 0o777 for p in ('a.npy', 'a-recon.png', 'summary.json', 'latents.npz',
                                                          'skipped.json', 'run.json')}
    assert set(modes.values()) == {0o644}, modes


def test_upsample_uses_the_runner(setup, tmp_path):
    out = tmp_path / 'up'
    args = ['--network', setup['net'], '--target', setup['imgs'], '--outdir', out, '--factor', 4, '--steps', 3,
            '--batch', 2, '--lpips', 'vgg-random', '--device', 'cpu', '--space', 'W', '--save-every', 1]
    result = CliRunner().invoke(upsample_cli.main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert '3 images upsampled, 1 skipped' in result.output                 # One bad file does not stop the folder.
    skipped = json.loads((out / 'skipped.json').read_text())
    assert [s['name'] for s in skipped] == ['broken'] and skipped[0]['reason']
    assert _results(out) == ['a', 'b', 'c']
    rec = json.loads((out / 'results.jsonl').read_text().splitlines()[0])
    assert {'lowres_mse', 'lowres_lpips', 'psnr', 'lpips', 'steps', 'seconds'} <= set(rec)
    with np.load(out / 'latents.npz') as npz:
        assert list(npz['names']) == ['a', 'b', 'c'] and npz['latents'].shape == (3, 32, 32)
        np.testing.assert_array_equal(npz['latents'][0], np.load(out / 'a.npy'))
    assert 'Batch of 2 done' in (out / 'log.txt').read_text()
    assert PIL.Image.open(out / 'a_compare.png').size == (4 * 32, 32)
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['images'] == 3 and summary['skipped'] == 1 and summary['factor'] == 4
    assert summary['means']['lowres_mse'] == pytest.approx(np.mean([json.loads(l)['lowres_mse'] for l in
                                                                    (out / 'results.jsonl').read_text().splitlines()]))
    # Running again resumes: nothing is redone; other settings are refused.
    before = (out / 'results.jsonl').read_text()
    again = CliRunner().invoke(upsample_cli.main, [str(a) for a in args])
    assert again.exit_code == 0 and (out / 'results.jsonl').read_text() == before
    other = CliRunner().invoke(upsample_cli.main, [str(a) for a in args] + ['--factor', '2'])
    assert other.exit_code == 1 and 'other settings: factor' in other.stderr


def test_upsample_resume_after_kill_matches_uninterrupted(setup, tmp_path, monkeypatch):
    full, killed = tmp_path / 'full', tmp_path / 'killed'

    def args(out):
        return [str(a) for a in ['--network', setup['net'], '--target', setup['imgs'], '--outdir', out, '--factor', 4,
                                 '--steps', 4, '--batch', 3, '--lpips', 'vgg-random', '--device', 'cpu', '--space',
                                 'W', '--save-every', 2]]
    assert CliRunner().invoke(upsample_cli.main, args(full)).exit_code == 0
    revive = kill_inversion_at(monkeypatch, 3)
    assert isinstance(CliRunner().invoke(upsample_cli.main, args(killed)).exception, Killed)
    assert len(list((killed / 'state').glob('*.pt'))) == 1
    revive()
    assert CliRunner().invoke(upsample_cli.main, args(killed)).exit_code == 0
    assert 'Resuming a batch of 2 at step 2/4: a, b' in (killed / 'log.txt').read_text()
    for n in ('a', 'b', 'c'):
        np.testing.assert_array_equal(np.load(killed / f'{n}.npy'), np.load(full / f'{n}.npy'))


def test_full_disk_is_one_line_naming_the_folder(setup, tmp_path, monkeypatch):
    from inversion import run_files
    out = tmp_path / 'out'
    real = run_files.np.save

    def full(f, arr, *args, **kwargs):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(run_files.np, 'save', full)
    result = _invert(setup, out)
    monkeypatch.setattr(run_files.np, 'save', real)
    assert result.exit_code == 1 and isinstance(result.exception, (SystemExit, type(None)))
    errors = [line for line in result.stderr.splitlines() if line.startswith('Error:')]   # (Progress bars aside.)
    assert len(errors) == 1 and 'Traceback' not in result.stderr
    assert f'no space left on device at {out}' in errors[0] and 'a.npy' in errors[0]
    assert not [p for p in os.listdir(out) if '.tmp' in p] and not (out / 'a.npy').exists()
    assert not (out / 'results.jsonl').exists()                    # Nothing is marked finished.
    assert _invert(setup, out).exit_code == 0                      # Space again: the run completes.
