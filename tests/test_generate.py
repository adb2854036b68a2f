"""generate.py and the quickstart, end to end on tiny networks (CLIs through click's runner)."""

import json

import numpy as np
import PIL.Image
from click.testing import CliRunner

import generate
import quickstart
from conftest import shared_fixture, tiny_generator_kwargs
from torch_utils import checkpoint
from training import networks
from dnnlib.util import parse_range


def test_parse_range():
    assert parse_range('0-3,7,10-11') == [0, 1, 2, 3, 7, 10, 11]


def test_generate_from_our_pickle(tmp_path):
    G = networks.Generator(**tiny_generator_kwargs(latent_rows=64, dim=64))
    checkpoint.save_network_pkl(tmp_path / 'net.pkl', dict(G_ema=G.eval()))
    result = CliRunner().invoke(generate.main, ['--network', str(tmp_path / 'net.pkl'), '--seeds', '1-3',
                                                '--trunc', '0.7', '--outdir', str(tmp_path / 'out')])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / 'out' / 'generate.json').read_text())
    assert meta['images'] == ['seed0001.png', 'seed0002.png', 'seed0003.png'] and meta['z_shape'] == [64, 64]
    img = np.asarray(PIL.Image.open(tmp_path / 'out' / 'seed0002.png'))
    assert img.shape == (32, 32, 3) and img.std() > 0
    assert PIL.Image.open(tmp_path / 'out' / 'grid.png').size == (64, 64)


def test_generate_from_nvlabs_fixture_is_seed_compatible(tmp_path):
    """Seeds follow NVIDIA's convention (RandomState(seed).randn), so images match their generate.py."""
    pkl = shared_fixture('nvlabs-sg2ada-32px.pkl')
    result = CliRunner().invoke(generate.main, ['--network', str(pkl), '--seeds', '5', '--noise-mode', 'const',
                                                '--outdir', str(tmp_path)])
    assert result.exit_code == 0, result.output
    G = checkpoint.load_network(str(pkl))
    assert isinstance(G, networks.Generator)
    import torch
    z = torch.from_numpy(np.random.RandomState(5).randn(1, G.z_dim).astype(np.float32))
    expect = (G(z, None, noise_mode='const') * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    got = np.asarray(PIL.Image.open(tmp_path / 'seed0005.png'))
    assert np.abs(got.astype(int) - expect.astype(int)).max() <= 1


def test_generate_bad_network_is_one_line(tmp_path):
    result = CliRunner().invoke(generate.main, ['--network', str(tmp_path / 'missing.pkl'), '--outdir', str(tmp_path)])
    assert result.exit_code != 0 and 'missing.pkl' in result.output and 'Traceback' not in result.output


def test_quickstart_runs(tmp_path):
    """The README's main job, shortened: train tiny-overparam briefly, invert 2 images into w and W."""
    result = CliRunner().invoke(quickstart.main, ['--outdir', str(tmp_path), '--kimg', '0.016', '--steps', '4',
                                                  '--images', '2'])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / 'quickstart.json').read_text())
    assert set(summary['inversions']) == {'w', 'W'}
    for r in summary['inversions'].values():
        assert r['num_images'] == 2 and np.isfinite(r['lpips']) and r['psnr'] > 0
    assert 'LPIPS' in result.output and 'PSNR' in result.output
