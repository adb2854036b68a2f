"""Generator and discriminator at 32 px: shapes, the overparameterized latent, gradients, pickles."""

import copy

import pytest
import torch

from conftest import tiny_discriminator_kwargs, tiny_generator_kwargs
from torch_utils import checkpoint
from training import networks

R = 32   # rows of the tiny overparameterized latent (>= widest layer, 32 channels)


def make_G(latent_rows=None, **kwargs):
    torch.manual_seed(1)
    return networks.Generator(**tiny_generator_kwargs(latent_rows=latent_rows, **kwargs)).eval()


@pytest.mark.parametrize('latent_rows', [None, R])
def test_shapes_and_api(latent_rows):
    G = make_G(latent_rows)
    expect_z = (32,) if latent_rows is None else (R, 32)
    assert G.z_shape == expect_z and G.w_shape == expect_z
    z = G.sample_z(3, generator=torch.Generator().manual_seed(0))
    assert z.shape == (3, *G.z_shape)
    ws = G.mapping(z, None)
    assert ws.shape == (3, G.num_ws, *G.w_shape)
    img = G.synthesis(ws)
    assert img.shape == (3, 3, 32, 32) and torch.isfinite(img).all()
    assert torch.equal(G(z, None), img)


def test_latent_rows_must_cover_widest_layer():
    with pytest.raises(ValueError, match='latent_rows=8 is too small'):
        make_G(latent_rows=8)


def test_mapping_is_row_wise():
    """Each row of W depends only on the same row of Z (rows map independently)."""
    G = make_G(R)
    z = G.sample_z(2)
    ws = G.mapping(z, None)[:, 0]                                  # [N, R, w_dim]
    z2 = z.clone()
    z2[:, 5] = torch.randn_like(z2[:, 5])
    ws2 = G.mapping(z2, None)[:, 0]
    changed = (ws2 - ws).abs().amax(dim=-1) > 0                    # [N, R]
    assert changed[:, 5].all() and not changed[:, torch.arange(R) != 5].any()
    # Rows equal mapping each vector on its own through the same network.
    single = torch.stack([G.mapping(z[:, r], None)[:, 0] for r in range(R)], dim=1)
    torch.testing.assert_close(ws, single, rtol=1e-5, atol=1e-6)


def test_correlated_sampling_covariance():
    G = make_G(R)
    z = G.sample_z(4000, generator=torch.Generator().manual_seed(3)).double()  # [n, R, z_dim]
    assert abs(z.var().item() - 1) < 0.02                                      # unit variance per entry
    a, b = z[:, 0], z[:, 7]                                                    # two rows of the same image
    corr = ((a * b).mean() / (a.std() * b.std())).item()
    assert abs(corr - 0.5) < 0.03
    other = torch.roll(z[:, 7], 1, dims=0)                                     # rows of different images
    assert abs(((a * other).mean()).item()) < 0.03


def test_single_row_broadcast_equals_baseline():
    """R = 1: one latent row broadcast over every output row gives the StyleGAN2 image exactly."""
    Gb = make_G(None)
    G1 = make_G(1)
    G1.load_state_dict(Gb.state_dict())
    z = Gb.sample_z(2)
    with torch.no_grad():
        torch.testing.assert_close(G1(z.unsqueeze(1), None), Gb(z, None), rtol=1e-5, atol=1e-5)


def test_repeated_rows_equal_baseline():
    """R rows all equal to w give the baseline image (eq. 2 reduces to eq. 1)."""
    Gb, Go = make_G(None), make_G(R)
    Go.load_state_dict(Gb.state_dict())
    ws = Gb.mapping(Gb.sample_z(2), None)
    with torch.no_grad():
        img_b = Gb.synthesis(ws)
        img_o = Go.synthesis(ws.unsqueeze(2).expand(-1, -1, R, -1))
    torch.testing.assert_close(img_o, img_b, rtol=1e-4, atol=1e-4)


def test_truncation_pulls_every_row_toward_w_avg():
    G = make_G(R)
    G.mapping.w_avg.normal_()
    z = G.sample_z(2)
    ws = G.mapping(z, None)
    wt = G.mapping(z, None, truncation_psi=0.5)
    torch.testing.assert_close(wt, G.mapping.w_avg + 0.5 * (ws - G.mapping.w_avg))
    wc = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=3)
    torch.testing.assert_close(wc[:, :3], wt[:, :3])
    torch.testing.assert_close(wc[:, 3:], ws[:, 3:])


def test_w_avg_tracks_all_rows_in_training():
    G = make_G(R).train()
    z = G.sample_z(4)
    G.mapping(z, None)
    rows = G.mapping(z, None, skip_w_avg_update=True)[:, 0].reshape(-1, 32)
    assert G.mapping.w_avg.abs().sum() > 0
    w_avg_before = G.mapping.w_avg.clone()
    G.mapping(z, None)
    torch.testing.assert_close(G.mapping.w_avg, rows.mean(0).lerp(w_avg_before, 0.995))


@pytest.mark.parametrize('latent_rows', [None, R])
def test_generator_and_discriminator_backward(latent_rows):
    G = make_G(latent_rows).train()
    D = networks.Discriminator(**tiny_discriminator_kwargs()).train()
    z = G.sample_z(4).requires_grad_(True)
    ws = G.mapping(z, None)
    ws.retain_grad()
    img = G.synthesis(ws)
    logits = D(img, None)
    assert logits.shape == (4, 1)
    torch.nn.functional.softplus(-logits).sum().backward()
    assert torch.isfinite(ws.grad).all() and ws.grad.abs().sum() > 0
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_conditional_networks():
    G = networks.Generator(**tiny_generator_kwargs(latent_rows=R, c_dim=5))
    D = networks.Discriminator(**tiny_discriminator_kwargs(c_dim=5))
    c = torch.nn.functional.one_hot(torch.tensor([0, 3]), 5).float()
    img = G(G.sample_z(2), c)
    assert D(img, c).shape == (2, 1)


def test_fp16_blocks_run():
    kw = tiny_generator_kwargs(latent_rows=R)
    kw['synthesis_kwargs']['num_fp16_res'] = 2
    G = networks.Generator(**kw).eval()
    assert G.synthesis.b32.use_fp16 and not G.synthesis.b8.use_fp16
    img = G(G.sample_z(2), None, force_fp32=True)
    assert img.dtype == torch.float32 and torch.isfinite(img).all()


@pytest.mark.parametrize('latent_rows', [None, R])
def test_pickle_round_trip(latent_rows, tmp_path):
    G = make_G(latent_rows)
    D = networks.Discriminator(**tiny_discriminator_kwargs())
    path = tmp_path / 'net.pkl'
    checkpoint.save_network_pkl(path, dict(G_ema=G, D=D, cur_nimg=1234))
    with open(path, 'rb') as f:
        data = checkpoint.load_network_pkl(f)
    G2 = data['G_ema']
    assert G2.latent_rows == latent_rows and data['cur_nimg'] == 1234
    z = G.sample_z(2)
    with torch.no_grad():
        torch.testing.assert_close(G2(z, None), G(z, None), rtol=0, atol=0)
    G3 = copy.deepcopy(G)
    with torch.no_grad():
        torch.testing.assert_close(G3(z, None), G(z, None), rtol=0, atol=0)
