"""calc_metrics.py --metrics encoder_recon: an encoder's reconstructions G(E(x)) of a tiny dataset zip, measured
against formulas computed here; the generator recorded in the encoder pickle; one-line errors.

Tiny random generator and fresh random encoder (head made random so E(x) depends on x); LPIPS from the seeded
random detector (`--detector-path random:16:0`, no download).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import calc_metrics
from conftest import tiny_generator_with_mean
from torch_utils import checkpoint
from torch_utils.image_io import to_uint8
from training.dataset import ImageFolderDataset
from training.encoder import Encoder, save_encoder_pickle
from training.tiny_data import write_tiny_dataset


def make_G(resolution=32):
    return tiny_generator_with_mean(32, resolution, seed=2)


def make_E(G):
    torch.manual_seed(5)
    E = Encoder.from_generator(G, 'W', token_resolution=4).eval()
    with torch.no_grad():
        E.head.weight.normal_(0, 0.2)
    return E


@pytest.fixture
def files(tmp_path):
    G = make_G()
    paths = dict(G=tmp_path / 'net' / 'G.pkl', E=tmp_path / 'enc' / 'encoder.pkl', bare=tmp_path / 'bare.pkl',
                 E16=tmp_path / 'enc16.pkl')
    checkpoint.save_network_pkl(paths['G'], dict(G_ema=G))
    save_encoder_pickle(paths['E'], make_E(G), generator_pkl=str(paths['G']))
    save_encoder_pickle(paths['bare'], make_E(G))                         # records no generator
    save_encoder_pickle(paths['E16'], make_E(make_G(16)))
    paths['data'] = write_tiny_dataset(tmp_path / 'heldout.zip', num_images=6, resolution=32, seed=3)
    paths['data16'] = write_tiny_dataset(tmp_path / 'small.zip', num_images=2, resolution=16, seed=3)
    return paths


def invoke(*args):
    return CliRunner().invoke(calc_metrics.main, [str(a) for a in args])


def expected_pixel_metrics(files, num_images):
    """MSE and PSNR of G(E(x)) on [0, 1] intensities, computed here from the dataset images."""
    dataset = ImageFolderDataset(str(files['data']))
    targets = np.stack([dataset[i][0] for i in range(num_images)])                    # uint8 [n, C, H, W]
    G = make_G()
    E = make_E(G)
    with torch.no_grad():
        recon = np.concatenate([to_uint8(G.synthesis(E.to_ws(E(torch.from_numpy(targets[i:i + 4]).float() / 127.5 - 1)),
                                                     noise_mode='const', force_fp32=True))
                                for i in range(0, num_images, 4)])                       # the metric's batches of 4
    err = (recon.transpose(0, 3, 1, 2).astype(np.float64) - targets) / 255
    mse = (err ** 2).mean(axis=(1, 2, 3))
    return mse.mean(), (-10 * np.log10(mse)).mean()


def test_encoder_recon_metrics(files):
    result = invoke('--encoder', files['E'], '--target', files['data'], '--metrics', 'encoder_recon',
                    '--detector-path', 'random:16:0', '--batch', 4, '--quiet')
    assert result.exit_code == 0, result.output
    assert f'Generator from the encoder pickle: {files["G"]}' in result.output
    lines = (files['E'].parent / 'metric-encoder_recon.jsonl').read_text().splitlines()
    record = json.loads(lines[0])
    r = record['results']
    assert record['snapshot_pkl'] == 'encoder.pkl'
    mse, psnr = expected_pixel_metrics(files, 6)
    assert r['encoder_recon_num_images'] == 6
    assert r['encoder_recon_mse'] == pytest.approx(mse, rel=1e-9) and r['encoder_recon_psnr'] == pytest.approx(psnr)
    assert 0 < r['encoder_recon_ssim'] < 1 and r['encoder_recon_lpips'] > 0
    assert r['encoder_recon_images_per_second'] > r['encoder_recon_images_per_second_with_G'] > 0

    capped = invoke('--encoder', files['E'], '--network', files['G'], '--data', files['data'], '--metrics',
                    'encoder_recon', '--detector-path', 'random:16:0', '--batch', 4, '--num-images', 3, '--quiet')
    assert capped.exit_code == 0, capped.output
    r3 = json.loads((files['E'].parent / 'metric-encoder_recon.jsonl').read_text().splitlines()[1])['results']
    assert r3['encoder_recon_num_images'] == 3
    assert r3['encoder_recon_mse'] == pytest.approx(expected_pixel_metrics(files, 3)[0], rel=1e-9)


def _one_line(result):
    lines = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert result.exit_code != 0 and len(lines) == 1 and 'Traceback' not in result.output, result.output
    return lines[0]


def test_encoder_recon_errors_are_one_line(files):
    base = ['--metrics', 'encoder_recon', '--detector-path', 'random:16:0', '--quiet']
    assert 'is required for encoder_recon' in _one_line(invoke('--encoder', files['E'], *base))
    assert '--encoder PKL is required' in _one_line(invoke('--target', files['data'], *base))
    assert 'not an encoder pickle' in _one_line(invoke('--encoder', files['G'], '--target', files['data'], *base))
    assert 'records no generator_pkl' in _one_line(invoke('--encoder', files['bare'], '--target', files['data'], *base))
    line = _one_line(invoke('--encoder', files['E16'], '--network', files['G'], '--target', files['data'], *base))
    assert 'reads 16 px' in line and 'makes 32 px' in line
    line = _one_line(invoke('--encoder', files['E'], '--target', files['data16'], *base))
    assert '16x16' in line and '--resolution 32' in line
    line = _one_line(invoke('--encoder', files['E'], '--target', files['data'], '--metrics', 'fid50k_full',
                            '--network', files['G']))
    assert '--encoder is used by the encoder_recon metric only' in line


def test_committed_help_is_current():
    """docs/calc-metrics-help.txt is `python calc_metrics.py --help` (80 columns: width 78); regenerate it when
    options change."""
    result = CliRunner().invoke(calc_metrics.main, ['--help'], prog_name='calc_metrics.py', terminal_width=78)
    path = Path(__file__).parent.parent / 'docs' / 'calc-metrics-help.txt'
    assert result.exit_code == 0 and result.output == path.read_text()
