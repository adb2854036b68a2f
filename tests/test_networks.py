"""Generator and discriminator at 32 px: shapes, the overparameterized latent, gradients, pickles."""

import copy

import pytest
import torch

from conftest import tiny_discriminator_kwargs, tiny_generator_kwargs
from torch_utils import checkpoint
from training import networks

pytestmark = pytest.mark.pins_numbers

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


# ---------------------------------------------------------------------------- layers against their formulas

def test_dense_layer_is_equalized_lr_affine_map():
    torch.manual_seed(3)
    fc = networks.FullyConnectedLayer(6, 5, activation='lrelu', lr_multiplier=0.1, bias_init=0.5)
    x = torch.randn(4, 3, 6)                                           # leading dims pass through
    pre = x @ (fc.weight * 0.1 / 6 ** 0.5).t() + fc.bias * 0.1
    torch.testing.assert_close(fc(x), torch.nn.functional.leaky_relu(pre, 0.2) * 2 ** 0.5)
    assert torch.equal(fc.bias, torch.full([5], 0.5)) and abs(fc.weight.std().item() * 0.1 - 1) < 0.5
    frozen = networks.FullyConnectedLayer(6, 5, trainable=False)
    assert not list(frozen.parameters()) and {'weight', 'bias'} == set(frozen.state_dict())


def test_conv_layer_is_equalized_lr_conv_with_scaled_clamp():
    torch.manual_seed(4)
    conv = networks.Conv2dLayer(3, 4, 3, activation='lrelu', conv_clamp=0.3)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 3, 8, 8)
    pre = torch.nn.functional.conv2d(x, conv.weight / (3 * 9) ** 0.5, conv.bias, padding=1)
    act = torch.nn.functional.leaky_relu(pre, 0.2) * 2 ** 0.5
    torch.testing.assert_close(conv(x), act.clamp(-0.3, 0.3))
    torch.testing.assert_close(conv(x, gain=0.5), (act * 0.5).clamp(-0.15, 0.15))   # the clamp scales with gain


def test_minibatch_std_uses_strided_groups():
    torch.manual_seed(5)
    x = torch.randn(6, 4, 3, 3)
    y = networks.MinibatchStdLayer(group_size=3, num_channels=2)(x)
    assert y.shape == (6, 6, 3, 3) and torch.equal(y[:, :4], x)
    for i in range(6):                                                  # image i is in group i mod (6 / 3)
        group = x[i % 2::2]                                             # [3, 4, 3, 3]
        for f in range(2):
            std = group[:, 2 * f:2 * f + 2].std(dim=0, unbiased=False).mean()
            torch.testing.assert_close(y[i, 4 + f], std.expand(3, 3), rtol=1e-5, atol=1e-6)


def test_conditional_discriminator_projects_onto_the_mapped_label():
    torch.manual_seed(6)
    D = networks.Discriminator(**tiny_discriminator_kwargs(c_dim=3), cmap_dim=8).eval()
    seen = {}
    D.b4.out.register_forward_hook(lambda mod, inp, out: seen.update(out=out))
    D.mapping.register_forward_hook(lambda mod, inp, out: seen.update(cmap=out))
    img, c = torch.randn(2, 3, 32, 32), torch.eye(3)[[0, 2]]
    logits = D(img, c)
    assert seen['out'].shape == (2, 8) and seen['cmap'].shape == (2, 8)
    torch.testing.assert_close(logits, (seen['out'] * seen['cmap']).sum(1, keepdim=True) / 8 ** 0.5)


def test_freeze_d_keeps_the_leading_layers_as_buffers():
    D = networks.Discriminator(**tiny_discriminator_kwargs(), block_kwargs=dict(freeze_layers=3))
    trainable = {name for name, _ in D.named_parameters()}
    assert not {'b32.fromrgb.weight', 'b32.conv0.weight', 'b32.conv1.bias'} & trainable
    assert {'b32.skip.weight', 'b16.conv0.weight', 'b4.fc.weight'} <= trainable
    assert {'b32.fromrgb.weight', 'b32.conv1.bias'} <= set(D.state_dict())       # same names in the state dict


@pytest.mark.parametrize('latent_rows', [None, R])
def test_resnet_blocks_are_scaled_residual_sums(latent_rows):
    """Generator and discriminator 'resnet' blocks: sqrt(1/2) * (shortcut + two convs)."""
    torch.manual_seed(7)
    kw = tiny_generator_kwargs(latent_rows=latent_rows)
    kw['synthesis_kwargs']['architecture'] = 'resnet'
    G = networks.Generator(**kw).eval()
    block = G.synthesis.b16                                          # no toRGB below the last block
    x = torch.randn(2, 32, 8, 8)
    ws = G.mapping(G.sample_z(2), None)[:, :2]
    with torch.no_grad():
        out, img = block(x, None, ws)
        convs = block.conv1(block.conv0(x, ws[:, 0]), ws[:, 1])
        torch.testing.assert_close(out, (block.skip(x) + convs) * 0.5 ** 0.5, rtol=1e-5, atol=1e-5)
    assert img is None
    D = networks.Discriminator(**tiny_discriminator_kwargs()).eval()
    blk = D.b16
    h = torch.randn(2, blk.in_channels, 16, 16)
    with torch.no_grad():
        out, _ = blk(h, None)
        torch.testing.assert_close(out, (blk.skip(h) + blk.conv1(blk.conv0(h))) * 0.5 ** 0.5, rtol=1e-5, atol=1e-5)


def test_orig_architecture_images_come_from_the_last_torgb_only():
    kw = tiny_generator_kwargs()
    kw['synthesis_kwargs']['architecture'] = 'orig'
    G = networks.Generator(**kw).eval()
    assert [hasattr(getattr(G.synthesis, f'b{r}'), 'torgb') for r in (4, 8, 16, 32)] == [False, False, False, True]
    seen = {}
    G.synthesis.b32.torgb.register_forward_hook(lambda mod, inp, out: seen.update(rgb=out))
    img = G(G.sample_z(2), None)
    assert torch.equal(img, seen['rgb'])
    assert G.num_ws == G.synthesis.num_ws == 8                           # 7 convs + 1 toRGB


@pytest.mark.parametrize('default, training, dtype, batch, expect', [
    (None, False, torch.float32, 4, True), (None, True, torch.float32, 4, False),
    (None, False, torch.float16, 4, False), (None, False, torch.float16, 1, True),
    (True, True, torch.float16, 4, True), (False, False, torch.float32, 1, False),
    ('inference_only', False, torch.float16, 4, True), ('inference_only', True, torch.float32, 1, False)])
def test_fused_modconv_default(default, training, dtype, batch, expect):
    kw = tiny_generator_kwargs()
    kw['synthesis_kwargs']['fused_modconv_default'] = default
    block = networks.Generator(**kw).synthesis.b8.train(training)
    assert block._fused(None, dtype, batch) is expect
    assert block._fused(not expect, dtype, batch) is (not expect)       # an explicit choice always wins


def test_label_is_shared_by_the_rows_of_its_image():
    G = networks.Generator(**tiny_generator_kwargs(latent_rows=R, c_dim=3)).eval()
    z, c = G.sample_z(3), torch.eye(3)
    ws = G.mapping(z, c)
    for i in range(3):                                                  # one image at a time
        torch.testing.assert_close(ws[i:i + 1], G.mapping(z[i:i + 1], c[i:i + 1]), rtol=1e-5, atol=1e-6)
