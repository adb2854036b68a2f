"""GANSpace (inversion.edit.ganspace, ganspace.py): PCA against a known covariance, sampling of w
vectors / W rows, editing, and both CLI commands end to end on tiny random checkpoints."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import ganspace as ganspace_cli
from conftest import tiny_generator_kwargs
from inversion.edit import ganspace
from torch_utils import checkpoint
from training import networks
from training.latent_spaces import LatentSpace

R = 32


def _known_covariance(d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    evals = torch.tensor([9.0, 5.0, 3.0, 1.5, 0.6, 0.2], dtype=torch.float64)[:d]
    return q, evals, q @ torch.diag(evals) @ q.T


def test_pca_recovers_known_covariance():
    q, evals, cov = _known_covariance()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 6, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T + 3.0
    pca = ganspace.fit_pca(x, 4)
    comps = pca['components'].double()
    assert comps.shape == (4, 6)
    assert torch.allclose(comps @ comps.T, torch.eye(4, dtype=torch.float64), atol=1e-6)
    ev = pca['explained_variance'].double()
    assert (ev[:-1] >= ev[1:]).all()
    assert torch.allclose(ev, evals[:4], rtol=0.05)
    cos = (comps * q.T[:4]).sum(dim=1).abs()          # Match the true eigenvectors up to sign.
    assert (cos > 0.99).all(), cos
    assert torch.allclose(pca['mean'].double(), torch.full([6], 3.0, dtype=torch.float64), atol=0.1)
    assert torch.allclose(pca['explained_variance_ratio'].double(), evals[:4] / evals.sum(), atol=0.01)


def test_save_load_roundtrip(tmp_path):
    pca = ganspace.fit_pca(torch.randn(100, 5), 3)
    ganspace.save_pca(tmp_path / 'c.npz', pca, num_ws=np.int64(7))
    back = ganspace.load_pca(tmp_path / 'c.npz')
    for k in ('mean', 'components', 'explained_variance', 'explained_variance_ratio'):
        assert torch.equal(back[k], pca[k])
    assert int(back['num_ws']) == 7


def test_edit_identity_and_row_tied_shift():
    comps = torch.linalg.qr(torch.randn(4, 4))[0].T
    ws = torch.randn(2, 5, R, 4)
    assert torch.equal(ganspace.edit(ws, comps, 1, 0.0, [0, 1]), ws)
    out = ganspace.edit(ws, comps, 1, 2.0, [1, 3], std=0.5)
    delta = out - ws
    assert torch.allclose(delta[:, [1, 3]], comps[1].expand(2, 2, R, 4), atol=1e-6)   # 2 * 0.5 * v on every row.
    assert torch.equal(delta[:, [0, 2, 4]], torch.zeros(2, 3, R, 4))
    vec = torch.randn(3, 5, 4)
    assert torch.allclose(ganspace.edit(vec, comps, 0, -1.0)[:, 2], vec[:, 2] - comps[0], atol=1e-6)
    assert ganspace.parse_layers('0-2,4', 5) == [0, 1, 2, 4]
    with pytest.raises(ValueError):
        ganspace.parse_layers('0-5', 5)


@pytest.fixture(scope='module')
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp('gs')
    out = {}
    for key, rows in (('overparam', R), ('baseline', None)):
        torch.manual_seed(4)
        G = networks.Generator(**tiny_generator_kwargs(latent_rows=rows)).eval()
        path = root / f'{key}.pkl'
        checkpoint.save_network_pkl(path, dict(G_ema=G))
        out[key] = (G, path)
    return out


def test_sample_latents_shapes(nets):
    G, _ = nets['overparam']
    x = ganspace.sample_latents(G, 10, seed=0, batch=4)
    assert x.shape == (10 * R, G.w_dim)
    assert torch.equal(x, ganspace.sample_latents(G, 10, seed=0, batch=4))   # Deterministic for (seed, batch).
    assert not torch.equal(x, ganspace.sample_latents(G, 10, seed=1, batch=4))
    Gb, _ = nets['baseline']
    assert ganspace.sample_latents(Gb, 10, seed=0).shape == (10, Gb.w_dim)


@pytest.mark.parametrize('key', ['overparam', 'baseline'])
def test_cli_fit_and_edit(tmp_path, nets, key):
    G, pkl = nets[key]
    runner = CliRunner()
    res = runner.invoke(ganspace_cli.cli, ['fit', '--network', str(pkl), '--num-samples', '200', '--components', '5',
                                           '--device', 'cpu', '--outdir', str(tmp_path / 'pca')])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / 'pca' / 'explained_variance.json').read_text())
    assert info['num_vectors'] == 200 * (R if key == 'overparam' else 1) and len(info['explained_variance']) == 5
    assert PIL.Image.open(tmp_path / 'pca' / 'explained_variance.png').size == (640, 400)
    npz = tmp_path / 'pca' / 'components.npz'
    res = runner.invoke(ganspace_cli.cli, ['edit', '--network', str(pkl), '--components', str(npz), '--seeds', '0-2',
                                           '--component', '1', '--strength=-2,0,2', '--layers', '0-3',
                                           '--device', 'cpu', '--outdir', str(tmp_path / 'ed')])
    assert res.exit_code == 0, res.output
    w, h = PIL.Image.open(tmp_path / 'ed' / 'edits.png').size
    assert w >= 3 * 128 and h >= 3 * 128                                  # Upscaled cells, titles, labels.
    assert len(list((tmp_path / 'ed' / 'images').glob('*.png'))) == 3 * 3
    edits = json.loads((tmp_path / 'ed' / 'edits.json').read_text())
    assert edits['layers'] == [0, 1, 2, 3] and edits['images'] == ['seed0000', 'seed0001', 'seed0002']
    # An inversion run's latents.npz (invert.py's format) as input.
    space = 'W' if key == 'overparam' else 'w+'
    sp = LatentSpace.for_generator(G, space)
    lat = sp.init_from_w_avg(G, 2).numpy()
    np.savez(tmp_path / 'latents.npz', names=np.array(['a', 'b']), latents=lat, space=np.array(space))
    res = runner.invoke(ganspace_cli.cli, ['edit', '--network', str(pkl), '--components', str(npz), '--latents',
                                           str(tmp_path / 'latents.npz'), '--component', '0', '--strength', '0,1',
                                           '--device', 'cpu', '--outdir', str(tmp_path / 'ed2')])
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / 'ed2' / 'edits.npz') as edited:
        assert list(edited['names']) == ['a-c0-s0', 'b-c0-s0', 'a-c0-s+1', 'b-c0-s+1'] and str(edited['space']) == space
        assert np.array_equal(edited['latents'][:2], lat)                     # Strength 0: the input latents.
    res = runner.invoke(ganspace_cli.cli, ['edit', '--network', str(pkl), '--components', str(npz), '--seeds', '0',
                                           '--component', '9', '--device', 'cpu', '--outdir', str(tmp_path / 'e3')])
    assert res.exit_code != 0 and 'component 9' in res.output


def test_sample_latents_refuses_a_zero_batch(nets):
    """batch=0 used to loop forever (no progress per chunk) while memory grew."""
    G, _ = nets['baseline']
    for batch in (0, -1):
        with pytest.raises(ValueError, match='--batch'):
            ganspace.sample_latents(G, 10, seed=0, batch=batch)
    with pytest.raises(ValueError, match='--num-samples'):
        ganspace.run_fit('unused.pkl', 'unused', num_samples=1)
    with pytest.raises(ValueError, match='--components'):
        ganspace.run_fit('unused.pkl', 'unused', num_samples=10, num_components=0)


def test_streaming_pca_equals_one_shot(nets):
    G, _pkl = nets['overparam']
    x = ganspace.sample_latents(G, 300, seed=3, batch=7)
    one = ganspace.fit_pca(x, 6)
    seen = []
    streamed = ganspace.fit_pca_streaming(ganspace.iter_latents(G, 300, seed=3, batch=7), 6, progress=seen.append)
    assert streamed['num_vectors'] == 300 * R and sum(seen) == 300 * R and max(seen) == 7 * R
    for key in ('mean', 'explained_variance', 'explained_variance_ratio'):
        assert torch.allclose(streamed[key], one[key], rtol=1e-5, atol=1e-7), key
    assert torch.allclose(streamed['components'], one['components'], atol=1e-5)


def test_covariance_accumulator_far_from_origin():
    """Sums of x - shift keep the covariance exact when the mean is large (1e4) and the spread small."""
    q, evals, cov = _known_covariance()
    g = torch.Generator().manual_seed(5)
    x = 1e4 + torch.randn(4000, 6, generator=g, dtype=torch.float64) @ (q @ torch.diag(evals.sqrt()))
    acc = ganspace.CovarianceAccumulator()
    for k in range(0, 4000, 333):
        acc.add(x[k:k + 333])
    mean, got = acc.mean_cov()
    xc = x - x.mean(0)
    assert torch.allclose(mean, x.mean(0), rtol=0, atol=1e-9)
    assert torch.allclose(got, xc.T @ xc / 3999, rtol=1e-9, atol=1e-9)


def test_edit_several_components_latents_and_titles(tmp_path, nets):
    G, pkl = nets['overparam']
    runner = CliRunner()
    res = runner.invoke(ganspace_cli.cli, ['fit', '--network', str(pkl), '--num-samples', '100', '--components', '4',
                                           '--device', 'cpu', '--outdir', str(tmp_path / 'pca')])
    assert res.exit_code == 0, res.output
    npz = tmp_path / 'pca' / 'components.npz'
    res = runner.invoke(ganspace_cli.cli, ['edit', '--network', str(pkl), '--components', str(npz), '--seeds', '0-1',
                                           '--component', '0,2', '--component', '3', '--strength=-1,2',
                                           '--device', 'cpu', '--outdir', str(tmp_path / 'ed')])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / 'ed' / 'edits.json').read_text())
    assert info['components_edited'] == [0, 2, 3] and info['edited_space'] == 'W'
    pca = ganspace.load_pca(npz)
    z = torch.cat([G.sample_z(1, generator=np.random.RandomState(s)) for s in (0, 1)])
    base = G.mapping(z, None)[:, 0].detach().numpy()                       # [2, R, w_dim]
    with np.load(tmp_path / 'ed' / 'edits.npz') as data:
        names, lat = list(data['names']), data['latents']
    assert len(names) == 2 * 3 * 2 and lat.shape == (12, R, G.w_dim)
    for comp in (0, 2, 3):
        for s in (-1.0, 2.0):
            shift = s * float(pca['explained_variance'][comp].sqrt()) * pca['components'][comp].numpy()
            for i, name in enumerate(('seed0000', 'seed0001')):
                got = lat[names.index(f'{name}-c{comp}-s{s:+g}')]
                np.testing.assert_allclose(got - base[i], np.broadcast_to(shift, got.shape), atol=1e-5)
            with PIL.Image.open(tmp_path / 'ed' / 'images' / f'seed0001-c{comp}-s{s:+g}.png') as im:
                assert im.size[0] >= 128 and im.size[1] > im.size[0]             # Upscaled, title strip on top.


def test_edit_refuses_components_of_another_network(tmp_path, nets):
    _G, pkl = nets['overparam']
    _Gb, other = nets['baseline']
    runner = CliRunner()
    res = runner.invoke(ganspace_cli.cli, ['fit', '--network', str(pkl), '--num-samples', '50', '--components', '2',
                                           '--device', 'cpu', '--outdir', str(tmp_path / 'pca')])
    assert res.exit_code == 0, res.output
    args = ['edit', '--network', str(other), '--components', str(tmp_path / 'pca' / 'components.npz'), '--seeds', '0',
            '--component', '0', '--device', 'cpu', '--outdir', str(tmp_path / 'ed')]
    res = runner.invoke(ganspace_cli.cli, args)
    assert res.exit_code != 0 and 'was fitted on another network' in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / 'ed').exists()
    res = runner.invoke(ganspace_cli.cli, [*args, '--allow-other-network'])
    assert res.exit_code == 0, res.output                                  # Same w_dim: the override works.
