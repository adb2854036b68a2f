"""Interpolation metrics (table 3) and interpolate.py end to end on a tiny random generator."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import interpolate
from conftest import tiny_generator_kwargs
from figures import sheets
from inversion.inversion_job import InversionConfig, run_inversion
from metrics import interpolation as interp
from metrics.ppl import l2_distance
from torch_utils import checkpoint
from training import networks
from training.tiny_data import write_tiny_images

#----------------------------------------------------------------------------
# Pairs.

def test_all_pairs_100():
    pairs = interp.all_pairs(100)
    assert len(pairs) == 4950
    assert len(set(pairs)) == 4950
    assert all(i < j for i, j in pairs)
    assert pairs[:3] == [(0, 1), (0, 2), (0, 3)] and pairs[-1] == (98, 99)
    assert pairs == sorted(pairs)
    assert interp.all_pairs(1) == [] and interp.all_pairs(3) == [(0, 1), (0, 2), (1, 2)]


def test_parse_pairs():
    assert interp.parse_pairs('0-1,3-7') == [(0, 1), (3, 7)]
    assert interp.parse_pairs(' 2 - 0 , 2-0 ') == [(2, 0)]
    assert interp.parse_pairs('all', n=3) == [(0, 1), (0, 2), (1, 2)]
    for bad in ('0', '1-1', 'a-b', '0-1,', '0-1-2'):
        with pytest.raises(ValueError):
            interp.parse_pairs(bad)
    with pytest.raises(ValueError, match='out of range'):
        interp.parse_pairs('0-5', n=5)

#----------------------------------------------------------------------------
# Lerp.

@pytest.mark.parametrize('shape', [(2, 4, 8), (2, 4, 6, 8)])     # vector ws, matrix ws
def test_lerp_endpoints_and_midpoint(shape):
    ws0, ws1 = torch.randn(shape), torch.randn(shape)
    out = interp.lerp_ws(ws0, ws1, torch.tensor([0.0, 0.5, 1.0]))
    assert out.shape == (3,) + shape
    assert torch.equal(out[0], ws0) and torch.equal(out[2], ws1)
    torch.testing.assert_close(out[1], (ws0 + ws1) / 2)

#----------------------------------------------------------------------------
# Analytic path length on a linear "generator".

class LinearG:
    """synthesis(ws) = reshape(A @ flatten(ws)): images `[N, 3, 4, 4]` from ws `[N, 2, 3, 5]` (matrix latents)."""
    num_ws, w_shape, img_resolution, img_channels = 2, (3, 5), 4, 3

    def __init__(self):
        self.A = torch.randn([3 * 4 * 4, 2 * 3 * 5], dtype=torch.float64) * 0.01

    def synthesis(self, ws):
        return (ws.to(torch.float64).flatten(1) @ self.A.T).reshape(-1, 3, 4, 4)


def test_path_length_linear_analytic():
    G = LinearG()
    ws0, ws1 = torch.randn([3, 2, 3, 5], dtype=torch.float64), torch.randn([3, 2, 3, 5], dtype=torch.float64)
    got = interp.interpolation_path_length(G, ws0, ws1, l2_distance, num_segments=5)
    # Images are scaled by 255/2 into LPIPS range; each segment moves the image by A(delta)/5.
    step = (ws1 - ws0).flatten(1) @ G.A.T / 5 * (255 / 2)
    expected = 5 * step.square().sum(dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)

    res = interp.interpolation_metrics(G, torch.cat([ws0, ws1]), interp.all_pairs(6), l2_distance, batch_size=4)
    assert res['num_pairs'] == 15 and len(res['path_lengths']) == 15
    i = interp.all_pairs(6).index((0, 3))
    assert res['path_lengths'][i] == pytest.approx(float(expected[0]), rel=1e-9)
    assert res['ppl_mean'] == pytest.approx(np.mean(res['path_lengths']))
    assert 'fid_midpoints' not in res


def test_fid_midpoints_uses_features():
    G = LinearG()
    ws = torch.randn([4, 2, 3, 5], dtype=torch.float64)

    def feature_fn(images):                 # uint8 [n, 3, 4, 4] -> [n, 2]
        return images.flatten(1)[:, :2].to(torch.float32)
    real = np.random.RandomState(0).randn(50, 2) * 5 + 128
    res = interp.interpolation_metrics(G, ws, interp.all_pairs(4), l2_distance, feature_fn=feature_fn,
                                       real_features=real)
    assert np.isfinite(res['fid_midpoints']) and res['fid_midpoints'] >= 0

#----------------------------------------------------------------------------
# CLI end to end.

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """(checkpoint path, inversion run folder with 3 W latents)."""
    root = tmp_path_factory.mktemp('interp')
    torch.manual_seed(3)
    G = networks.Generator(**tiny_generator_kwargs(latent_rows=32)).eval()
    pkl = root / 'G.pkl'
    checkpoint.save_network_pkl(pkl, dict(G_ema=G))
    write_tiny_images(root / 'targets', num_images=3, resolution=32)
    run_dir = root / 'run'
    run_inversion(InversionConfig(network=str(pkl), space='W', steps=2, batch=3, lpips='vgg-random', progress=False),
                  str(root / 'targets'), str(run_dir))
    return pkl, run_dir


def test_cli_end_to_end(tiny_run, tmp_path):
    pkl, run_dir = tiny_run
    out = tmp_path / 'out'
    result = CliRunner().invoke(interpolate.main, [
        '--network', str(pkl), '--inversion-run', str(run_dir), '--pairs', 'all', '--steps', '4', '--gif',
        '--metrics', '--detector-path', 'random:64:0', '--data', str(run_dir.parent / 'targets'),
        '--no-cache', '--outdir', str(out), '--device', 'cpu', '--no-progress'])
    assert result.exit_code == 0, result.output
    data = json.loads((out / 'interpolation.json').read_text())
    assert data['space'] == 'W' and data['pairs'] == [[0, 1], [0, 2], [1, 2]]
    assert len(data['per_pair']) == 3 and all(p['path_length'] > 0 for p in data['per_pair'])
    s = data['summary']
    assert s['num_pairs'] == 3 and s['ppl_mean'] == pytest.approx(np.mean([p['path_length'] for p in data['per_pair']]))
    assert np.isfinite(s['fid_midpoints'])
    assert s['lpips_network'] == 'random:64:0'                  # which LPIPS the path lengths come from
    strip = np.asarray(PIL.Image.open(out / 'pair-0-2.png'))
    assert strip.shape == (2 * sheets.LINE_PX + 8 + 128 + 2, 4 * (128 + 2), 3)  # Title, t labels, 4 frames.
    with PIL.Image.open(out / 'overview.png') as im:
        assert im.size == (strip.shape[1], 3 * strip.shape[0])
    with PIL.Image.open(out / 'pair-1-2.gif') as im:
        assert im.n_frames == 6


def test_cli_midpoints_and_seeds(tiny_run, tmp_path):
    pkl, _ = tiny_run
    result = CliRunner().invoke(interpolate.main, [
        '--network', str(pkl), '--seeds', '0-2', '--pairs', '0-1', '--midpoints-only', '--outdir', str(tmp_path),
        '--device', 'cpu', '--no-progress'])
    assert result.exit_code == 0, result.output
    assert (tmp_path / 'midpoint-0-1.png').is_file() and not (tmp_path / 'pair-0-1.png').exists()


@pytest.mark.parametrize('args, message', [
    (['--inversion-run', '/nonexistent/run'], 'no such folder'),
    (['--pairs', '0-3'], 'out of range'),
    (['--pairs', 'zero-one'], 'bad pair'),
])
def test_cli_errors(tiny_run, tmp_path, args, message):
    pkl, run_dir = tiny_run
    base = ['--network', str(pkl), '--outdir', str(tmp_path / 'o'), '--device', 'cpu', '--no-progress']
    if '--inversion-run' not in args:
        base += ['--inversion-run', str(run_dir)]
    result = CliRunner().invoke(interpolate.main, base + args)
    assert result.exit_code != 0
    assert message in result.output
    assert isinstance(result.exception, SystemExit) and 'Traceback' not in result.output


def test_seed_latents_follow_generate_convention(tiny_run):
    """--seeds endpoints are generate.py's latents: z = RandomState(seed).randn for vector latents
    (NVIDIA's convention), mapped with the same truncation."""
    from inversion.edit.interpolate import seed_ws
    torch.manual_seed(0)
    G = networks.Generator(**tiny_generator_kwargs()).eval()
    names, ws = seed_ws(G, [7, 11], truncation_psi=0.7)
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in (7, 11)])).to(torch.float32)
    expect = G.mapping(z, torch.zeros([2, 0]), truncation_psi=0.7)
    assert names == ['seed0007', 'seed0011']
    assert torch.equal(ws, expect)


@pytest.mark.parametrize('rows', [None, 32])
def test_cli_seed_endpoints_equal_generate_images(tmp_path, rows):
    """Frames t = 0 and t = 1 of `interpolate.py --seeds A,B` are generate.py's images of A and B."""
    import generate
    torch.manual_seed(4)
    pkl = tmp_path / 'G.pkl'
    checkpoint.save_network_pkl(pkl, dict(G_ema=networks.Generator(**tiny_generator_kwargs(latent_rows=rows)).eval()))
    common = ['--network', str(pkl), '--seeds', '5,9', '--trunc', '0.8', '--device', 'cpu']
    result = CliRunner().invoke(interpolate.main,
                                common + ['--steps', '2', '--outdir', str(tmp_path / 'i'), '--no-progress'])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(generate.main, common + ['--outdir', str(tmp_path / 'g')])
    assert result.exit_code == 0, result.output
    strip = np.asarray(PIL.Image.open(tmp_path / 'i' / 'pair-0-1.png'))
    for k, seed in enumerate((5, 9)):
        expect = np.asarray(PIL.Image.open(tmp_path / 'g' / f'seed{seed:04d}.png'))
        np.testing.assert_array_equal(strip_frame(strip, k), expect.repeat(4, axis=0).repeat(4, axis=1))
    data = json.loads((tmp_path / 'i' / 'interpolation.json').read_text())
    assert data['seeds'] == [5, 9] and data['names'] == ['seed0005', 'seed0009']


def strip_frame(strip, k, px=128, gap=2):
    """Frame k (upscaled) of a pair-<i>-<j>.png strip: below the title line and the t labels."""
    top = 2 * sheets.LINE_PX + 8
    return strip[top:top + px, k * (px + gap):k * (px + gap) + px]


def test_cli_bad_seeds_one_line(tiny_run, tmp_path):
    pkl, _ = tiny_run
    result = CliRunner().invoke(interpolate.main, ['--network', str(pkl), '--seeds', '3-x', '--outdir', str(tmp_path)])
    assert result.exit_code != 0 and '--seeds' in result.output and 'Traceback' not in result.output
