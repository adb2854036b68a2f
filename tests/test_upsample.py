"""PULSE-style upsampling (inversion.upsample, upsample.py): downsampling operators and their
adjoints, the optimisation on a tiny random overparameterized model, the CLI end to end."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import upsample as upsample_cli
from conftest import tiny_generator_kwargs
from inversion import upsample
from torch_utils import checkpoint
from training import networks
from training.latent_spaces import LatentSpace

R = 32


def test_nearest_picks_block_offset_pixels():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    y = upsample.downsample_nearest(x, 4)
    assert y.shape == (2, 3, 2, 2)
    for i in range(2):
        for j in range(2):
            assert torch.equal(y[:, :, i, j], x[:, :, 4 * i + 2, 4 * j + 2])
    assert torch.equal(upsample.downsample_nearest(x, 1), x)
    with pytest.raises(ValueError):
        upsample.downsample_nearest(x, 3)


def test_area_is_block_mean():
    x = torch.randn(1, 2, 8, 8)
    y = upsample.downsample(x, 4, 'area')
    assert torch.allclose(y[0, 1, 1, 0], x[0, 1, 4:8, 0:4].mean())


@pytest.mark.parametrize('mode', upsample.MODES)
@pytest.mark.parametrize('factor', [1, 2, 4, 16])
def test_adjoint(mode, factor):
    assert upsample.adjoint_gap((2, 3, 32, 32), factor, mode) < 1e-12
    y = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    up = upsample.downsample_adjoint(y, factor, mode)
    if mode == 'nearest':   # Zero-fill: D D^T = identity and only one pixel per block is non-zero.
        assert torch.equal(upsample.downsample(up, factor, mode), y)
        assert int((up != 0).sum()) == 4
    else:                   # Repetition / f^2: D D^T = identity / f^2.
        assert torch.allclose(upsample.downsample(up, factor, mode) * factor ** 2, y)


def test_enlarge_for_lpips():
    assert upsample.enlarge_for_lpips(torch.zeros(1, 3, 2, 2)).shape[-1] == 32
    assert upsample.enlarge_for_lpips(torch.zeros(1, 3, 8, 8)).shape[-1] == 32
    assert upsample.enlarge_for_lpips(torch.zeros(1, 3, 40, 40)).shape[-1] == 40


@pytest.fixture(scope='module')
def overparam_G():
    torch.manual_seed(3)
    G = networks.Generator(**tiny_generator_kwargs(latent_rows=R)).eval()
    G.mapping.w_avg.copy_(torch.randn(G.w_dim) * 0.3)
    return G


def test_pulse_reduces_lowres_error_with_truncation_every_step(overparam_G):
    G = overparam_G
    with torch.no_grad():   # A reachable target: a generated image, downsampled 4x (32 px -> 8 px).
        truth = G(G.sample_z(2, generator=torch.Generator().manual_seed(5)), None, noise_mode='const')
    low = upsample.downsample(truth, 4)
    space = LatentSpace.for_generator(G, 'W')
    truncated = []

    def spy(inverter, info):
        truncated.append(info['truncated'])
    steps = 30
    calls = []
    orig = space.truncate_

    def counting_truncate(params, w_avg, psi):
        calls.append(psi)
        return orig(params, w_avg, psi)
    space.truncate_ = counting_truncate
    out = upsample.upsample_invert(G, low, space, factor=4, steps=steps, truncation=0.9, loss='mse', lr=0.05,
                                   callback=spy)
    assert calls == [0.9] * steps and truncated == [True] * steps
    hist = out['history'].mean(dim=1)
    assert torch.isfinite(hist).all()
    assert hist[-5:].mean() < hist[:5].mean()
    assert out['images'].shape == truth.shape and out['recon_lowres'].shape == low.shape
    assert out['latents'].shape == (2, R, G.w_dim)


def test_lpips_lowres_loss_runs(overparam_G):
    G = overparam_G
    low = torch.rand(1, 3, 8, 8) * 2 - 1
    space = LatentSpace.for_generator(G, 'w+')
    out = upsample.upsample_invert(G, low, space, factor=4, steps=2, loss='both', lpips='vgg-random')
    assert out['lowres_lpips'].shape == (1,) and torch.isfinite(out['lowres_lpips']).all()
    with pytest.raises(ValueError):
        upsample.upsample_invert(G, torch.zeros(1, 3, 4, 4), space, factor=4, steps=1, loss='mse')


def test_cli_end_to_end(tmp_path, overparam_G):
    pkl = tmp_path / 'net.pkl'
    checkpoint.save_network_pkl(pkl, dict(G_ema=overparam_G))
    hi, lo = tmp_path / 'hi', tmp_path / 'lo'
    hi.mkdir()
    lo.mkdir()
    rng = np.random.RandomState(0)
    for i in range(2):
        PIL.Image.fromarray(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(hi / f'im{i}.png')
    PIL.Image.fromarray(rng.randint(0, 256, (8, 8, 3), dtype=np.uint8)).save(lo / 'small.png')
    base = ['--network', pkl, '--factor', 4, '--steps', 3, '--device', 'cpu', '--space', 'W']
    res = CliRunner().invoke(upsample_cli.main, [str(a) for a in base + ['--target', hi, '--outdir', tmp_path / 'o1',
                                                                         '--lpips', 'vgg-random']])
    assert res.exit_code == 0, res.output
    o1 = tmp_path / 'o1'
    recs = [json.loads(line) for line in (o1 / 'results.jsonl').read_text().splitlines()]
    assert [r['name'] for r in recs] == ['im0', 'im1']
    assert {'lowres_mse', 'lowres_lpips', 'psnr', 'lpips'} <= set(recs[0])
    assert PIL.Image.open(o1 / 'im0_upsampled.png').size == (32, 32)
    assert PIL.Image.open(o1 / 'im0_compare.png').size == (4 * 32, 32)
    assert json.loads((o1 / 'summary.json').read_text())['num_images'] == 2
    res = CliRunner().invoke(upsample_cli.main, [str(a) for a in base + ['--lowres', lo, '--outdir', tmp_path / 'o2',
                                                                         '--loss', 'mse']])
    assert res.exit_code == 0, res.output
    assert PIL.Image.open(tmp_path / 'o2' / 'small_compare.png').size == (3 * 32, 32)
    res = CliRunner().invoke(upsample_cli.main, [str(a) for a in base + ['--outdir', tmp_path / 'o3']])
    assert res.exit_code != 0
