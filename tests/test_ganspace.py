"""GANSpace (inversion.ganspace, ganspace.py): PCA against a known covariance, sampling of w
vectors / W rows, editing, and both CLI commands end to end on tiny random checkpoints."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import ganspace as ganspace_cli
from conftest import tiny_generator_kwargs
from inversion import ganspace
from inversion.spaces import LatentSpace
from torch_utils import checkpoint
from training import networks

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
    assert PIL.Image.open(tmp_path / 'ed' / 'edits.png').size == (3 * 32, 3 * 32)
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
    assert PIL.Image.open(tmp_path / 'ed2' / 'edits.png').size == (2 * 32, 2 * 32)
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
