"""calc_metrics.py end to end on a tiny random generator, a tiny dataset zip and the seeded
random detector; offline errors; recon metrics of an inversion-run folder."""

import json
import socket
import urllib.error

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import calc_metrics
import dnnlib
from conftest import tiny_generator_kwargs
from metrics import detectors
from torch_utils import checkpoint
from training.networks import Generator
from training.tiny_data import write_tiny_dataset


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setattr(dnnlib.util, '_cache_dir_override', None)
    monkeypatch.delenv(detectors.DETECTOR_PATH_ENV, raising=False)
    fetched = []

    def offline(url, timeout=60.0):
        fetched.append(url)
        raise urllib.error.URLError(socket.gaierror(-3, 'Temporary failure in name resolution'))
    monkeypatch.setattr(dnnlib.util, '_fetch_url', offline)
    detectors.clear_cache()
    yield fetched
    detectors.clear_cache()


@pytest.fixture
def tiny_run(tmp_path):
    G = Generator(**tiny_generator_kwargs(latent_rows=32)).eval()
    pkl = tmp_path / 'net' / 'network-snapshot.pkl'
    checkpoint.save_network_pkl(pkl, dict(G_ema=G))
    data = write_tiny_dataset(tmp_path / 'data.zip', num_images=24, resolution=32, seed=3)
    return pkl, data


def _invoke(*args):
    return CliRunner().invoke(calc_metrics.main, [str(a) for a in args])


def test_calc_metrics_writes_jsonl(tmp_path, tiny_run, _offline):
    pkl, data = tiny_run
    out = tmp_path / 'metrics-out'
    result = _invoke('--network', pkl, '--data', data, '--metrics', 'fid50k_full,kid50k_full,pr50k3_full,ppl2_wend',
                     '--detector-path', 'random:64:0', '--num-images', 16, '--run-dir', out, '--workers', 0,
                     '--batch', 16, '--quiet')
    assert result.exit_code == 0, result.output
    values = {}
    for name in ('fid50k_full', 'kid50k_full', 'pr50k3_full', 'ppl2_wend'):
        lines = (out / f'metric-{name}.jsonl').read_text().splitlines()
        assert len(lines) == 1
        line = json.loads(lines[0])
        assert line['metric'] == name and line['overrides']['num_gen'] == 16 and line['num_gpus'] == 1
        values.update(line['results'])
    assert values['fid50k_full'] > 0 and np.isfinite(values['kid50k_full']) and values['ppl2_wend'] > 0
    assert 0 <= values['pr50k3_full_precision'] <= 1 and 0 <= values['pr50k3_full_recall'] <= 1
    assert _offline == []                                       # nothing was downloaded
    ppl_line = json.loads((out / 'metric-ppl2_wend.jsonl').read_text())
    assert ppl_line['lpips_network'] == 'random:64:0'          # the LPIPS the value comes from
    assert 'lpips_network' not in json.loads((out / 'metric-fid50k_full.jsonl').read_text())

    # Default run dir: next to the network; the dataset recorded in the checkpoint is not required with --data.
    again = _invoke('--network', pkl, '--data', data, '--metrics', 'fid50k_full', '--detector-path', 'random:64:0',
                    '--num-images', 16, '--workers', 0, '--quiet')
    assert again.exit_code == 0, again.output
    line = json.loads((pkl.parent / 'metric-fid50k_full.jsonl').read_text().splitlines()[0])
    assert line['results']['fid50k_full'] == pytest.approx(values['fid50k_full'])   # same seed, same value
    assert line['snapshot_pkl'] == 'network-snapshot.pkl'


def test_missing_detector_offline_is_one_line(tmp_path, tiny_run):
    pkl, data = tiny_run
    result = _invoke('--network', pkl, '--data', data, '--metrics', 'fid50k_full', '--num-images', 4, '--workers', 0,
                     '--run-dir', tmp_path / 'out', '--quiet')
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert len(errors) == 1 and '--detector-path' in errors[0] and 'Traceback' not in result.output
    assert not (tmp_path / 'out' / 'metric-fid50k_full.jsonl').exists()


def test_usage_errors(tmp_path, tiny_run):
    pkl, _data = tiny_run
    bad = _invoke('--network', pkl, '--metrics', 'fid1k')
    assert bad.exit_code != 0 and 'fid50k_full' in bad.output
    no_data = _invoke('--network', pkl, '--metrics', 'fid50k_full', '--detector-path', 'random:8:0')
    assert no_data.exit_code != 0 and '--data' in no_data.output
    no_run = _invoke('--metrics', 'recon')
    assert no_run.exit_code != 0 and '--inversion-run' in no_run.output


def test_recon_metrics_of_an_inversion_run(tmp_path):
    run = tmp_path / 'inv'
    run.mkdir()
    rnd = np.random.RandomState(0)
    records = []
    for i in range(3):
        target = rnd.randint(0, 256, [16, 16, 3]).astype(np.uint8)
        recon = (target // 2 + 60).astype(np.uint8)
        PIL.Image.fromarray(recon).save(run / f'face{i}-recon.png')
        PIL.Image.fromarray(np.concatenate([target, recon], axis=1)).save(run / f'face{i}-pair.png')
        records.append(json.dumps(dict(name=f'face{i}', lpips=0.2)))
    (run / 'results.jsonl').write_text('\n'.join(records) + '\n')
    result = _invoke('--inversion-run', run, '--metrics', 'recon_pixel,recon', '--detector-path', 'random:16:0',
                     '--quiet')
    assert result.exit_code == 0, result.output
    pixel = json.loads((run / 'metric-recon_pixel.jsonl').read_text())['results']
    full = json.loads((run / 'metric-recon.jsonl').read_text())['results']
    assert pixel['recon_num_images'] == 3 and 0 < pixel['recon_ssim'] < 1 and pixel['recon_psnr'] > 0
    assert full['recon_mse'] == pytest.approx(pixel['recon_mse']) and full['recon_lpips'] > 0
    assert full['recon_recorded_lpips'] == pytest.approx(0.2) and np.isfinite(full['recon_fid'])


def test_recorded_dataset_not_found_names_data_option(tmp_path, tiny_run, monkeypatch):
    """A checkpoint that records a relative dataset path, run from another folder: one line naming --data."""
    pkl, data = tiny_run
    G = checkpoint.load_network(pkl)
    rel = tmp_path / 'rel.pkl'
    checkpoint.save_network_pkl(rel, dict(G_ema=G, training_set_kwargs=dict(path='data/tiny32.zip')))
    monkeypatch.chdir(tmp_path)
    result = _invoke('--network', rel, '--metrics', 'fid50k_full', '--detector-path', 'random:8:0', '--quiet')
    errors = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert result.exit_code != 0 and len(errors) == 1 and 'Traceback' not in result.output
    assert 'data/tiny32.zip' in errors[0] and '--data' in errors[0]
    ok = _invoke('--network', rel, '--data', data, '--metrics', 'fid50k_full', '--detector-path', 'random:8:0',
                 '--num-images', 8, '--workers', 0, '--quiet')
    assert ok.exit_code == 0, ok.output
