"""generate.py and the quickstart, end to end on tiny networks (CLIs through click's runner)."""

import json

import numpy as np
import PIL.Image
from click.testing import CliRunner

import generate
import quickstart
from conftest import shared_fixture, tiny_generator_kwargs
from dnnlib.cli import parse_range
from torch_utils import checkpoint
from training import networks


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
    # Offline (random trunk) the loss is the tables' one, LPIPS + 0.1 x MSE; with NVIDIA's VGG16 the paper's
    # (LPIPS alone). Each inversion's run.json records what it used.
    mse = 0.1 if summary['lpips'] == 'vgg-random' else 0.0
    assert summary['loss']['mse_weight'] == mse and summary['loss']['l1_weight'] == 0.0
    for space in ('w', 'W'):
        settings = json.loads((tmp_path / f'invert-{space}' / 'run.json').read_text())['settings']
        assert (settings['lpips'], settings['mse_weight'], settings['l1_weight']) == (summary['lpips'], mse, 0.0)
    sheet = PIL.Image.open(tmp_path / 'comparison.png')                # targets | w | W, upscaled (96 px cells)
    assert sheet.width >= 3 * 96 and sheet.height >= 2 * 96 and str(tmp_path / 'comparison.png') in result.output
    assert quickstart.loss_settings('vgg16-nvlabs') == dict(lpips='vgg16-nvlabs', mse_weight=0.0, l1_weight=0.0)
    assert quickstart.loss_settings('vgg-random') == dict(lpips='vgg-random', mse_weight=0.1, l1_weight=0.0)


#----------------------------------------------------------------------------
# --latents: render an inversion run's saved latents.

import pytest  # noqa: E402

import invert  # noqa: E402


@pytest.fixture(scope='module')
def inverted(tmp_path_factory):
    """(network, other network, run folder) of a 3-image W inversion on a tiny 16 px generator."""
    import torch
    root = tmp_path_factory.mktemp('inv')
    nets = []
    for seed in (2, 3):
        torch.manual_seed(seed)
        G = networks.Generator(**tiny_generator_kwargs(latent_rows=16, resolution=16, dim=16)).eval()
        G.mapping.w_avg.copy_(torch.randn(G.w_dim) * 0.3)
        nets.append(root / f'net{seed}.pkl')
        checkpoint.save_network_pkl(nets[-1], dict(G_ema=G))
    (root / 'img').mkdir()
    rng = np.random.RandomState(0)
    for name in 'abc':
        PIL.Image.fromarray(rng.randint(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / 'img' / f'{name}.png')
    run = root / 'run'
    result = CliRunner().invoke(invert.main, ['--network', str(nets[0]), '--target', str(root / 'img'), '--outdir',
                                              str(run), '--lpips', 'vgg-random', '--steps', '3', '--batch', '2',
                                              '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    return nets[0], nets[1], run


@pytest.mark.parametrize('batch', ['1', '16'])
def test_generate_latents_reproduces_recon_bitwise(inverted, tmp_path, batch):
    net, _other, run = inverted
    out = tmp_path / 'out'
    result = CliRunner().invoke(generate.main, ['--network', str(net), '--latents', str(run / 'latents.npz'),
                                                '--batch', batch, '--outdir', str(out)])
    assert result.exit_code == 0, result.output
    for name in 'abc':
        got, want = (np.asarray(PIL.Image.open(p)) for p in (out / f'{name}.png', run / f'{name}-recon.png'))
        assert np.array_equal(got, want), name
    meta = json.loads((out / 'generate.json').read_text())
    assert meta['names'] == ['a', 'b', 'c'] and meta['space'] == 'W' and meta['images'] == ['a.png', 'b.png', 'c.png']


def test_generate_one_npy_infers_space(inverted, tmp_path):
    net, _other, run = inverted
    result = CliRunner().invoke(generate.main, ['--network', str(net), '--latents', str(run / 'b.npy'),
                                                '--outdir', str(tmp_path / 'out')])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / 'out' / 'b.png')),
                          np.asarray(PIL.Image.open(run / 'b-recon.png')))
    result = CliRunner().invoke(generate.main, ['--network', str(net), '--latents', str(run / 'b.npy'), '--space',
                                                'W+', '--outdir', str(tmp_path / 'out2')])
    assert result.exit_code != 0 and 'W+ latents of this generator are [6, 16, 16]' in result.output


def test_generate_latents_refuses_another_network(inverted, tmp_path):
    _net, other, run = inverted
    args = ['--network', str(other), '--latents', str(run / 'latents.npz'), '--outdir', str(tmp_path / 'out')]
    result = CliRunner().invoke(generate.main, args)
    assert result.exit_code != 0 and 'was fitted to a network with sha256' in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / 'out').exists()
    result = CliRunner().invoke(generate.main, [*args, '--allow-other-network'])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(generate.main, [*args[:-1], str(tmp_path / 'o3'), '--seeds', '1', '--trunc', '0.5'])
    assert result.exit_code != 0 and 'leave out --seeds, --trunc' in result.output
