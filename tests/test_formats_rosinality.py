"""rosinality/stylegan2-pytorch checkpoints: the fixture (made with his code) reproduces his outputs, files go out
and back bit for bit, exported keys and shapes are those of his Generator, and what he cannot express is refused."""

import argparse
import io
import os
import warnings

import numpy as np
import pytest
import torch

from conftest import shared_fixture, tiny_generator_kwargs
from torch_utils import checkpoint
from training import networks
from training.formats import rosinality

pytestmark = pytest.mark.pins_numbers
FIXTURE = 'rosinality-stylegan2-32px-narrow'


def rel_err(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope='module')
def loaded():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        fmt, data = checkpoint.read_network_file(shared_fixture(f'{FIXTURE}.pt'))
    expected = {k: torch.from_numpy(v) for k, v in np.load(shared_fixture(f'{FIXTURE}-expected.npz')).items()}
    return fmt, data, expected, [str(w.message) for w in caught]


def _his(path=None):
    """The fixture as his own code reads it (plain torch.load: a test may trust its own fixture)."""
    return torch.load(path or shared_fixture(f'{FIXTURE}.pt'), map_location='cpu', weights_only=False)


def test_fixture_reproduces_his_outputs(loaded):
    """Measured: G 5e-7 relative (his demodulation epsilon is scaled by fan_in; sums in other orders), D 8e-7."""
    fmt, data, ex, _ = loaded
    assert fmt == checkpoint.ROSINALITY
    G, D = data['G_ema'], data['D']
    with torch.no_grad():
        assert rel_err(G.mapping(ex['z'], None), ex['ws']) <= 1e-5
        assert rel_err(G.synthesis(ex['ws'], noise_mode='const'), ex['img_z']) <= 1e-5
        assert rel_err(G.synthesis(ex['wplus'], noise_mode='const'), ex['img_wplus']) <= 1e-5
        assert rel_err(G.synthesis(ex['wplus'], noise_mode='none'), ex['img_wplus_nonoise']) <= 1e-5
        assert rel_err(G.synthesis(ex['ws'], noise_mode='const', fused_modconv=False), ex['img_z']) <= 1e-5
        H = networks.Generator(**G._init_kwargs).eval()                   # Truncation toward his mean_latent.
        H.load_state_dict(G.state_dict())
        H.mapping.w_avg.copy_(ex['mean_latent'][0])
        assert rel_err(H.mapping(ex['z'], None, truncation_psi=0.7), ex['ws_psi07']) <= 1e-5
        assert rel_err(H(ex['z'], None, truncation_psi=0.7, noise_mode='const'), ex['img_z_psi07']) <= 1e-5
        assert rel_err(D(ex['real'], None), ex['d_logits']) <= 1e-4


def test_sizes_are_read_from_the_tensors(loaded):
    _, data, _, _ = loaded
    G = data['G_ema']
    assert (G.img_resolution, G.z_dim, G.w_dim, G.mapping.num_layers, G.num_ws) == (32, 64, 64, 2, 8)
    assert all(getattr(G.synthesis, f'b{r}').conv1.weight.shape[0] == 64 for r in (4, 8, 16, 32))
    assert data['rosinality_args']['n_mlp'] == 2 and data['ada_aug_p'] == 0.0
    assert data['D'].b4.mbstd.group_size == 4


def test_missing_latent_avg_is_estimated_with_a_notice(loaded):
    _, data, ex, notices = loaded
    assert any(n.startswith('g_ema has no latent_avg') and '10000' in n for n in notices)
    G = data['G_ema']
    again = rosinality.estimate_w_avg(G)
    assert torch.equal(G.mapping.w_avg, again)                          # fixed seed: reproducible
    torch.manual_seed(123)                                              # the mean of other samples is near it
    other = G.mapping(torch.randn(20000, G.z_dim), None)[:, 0].mean(0)
    spread = G.mapping(torch.randn(2000, G.z_dim), None)[:, 0].std(0).mean()
    assert (other - G.mapping.w_avg).abs().max() < 0.1 * spread
    assert (G.mapping.w_avg - ex['mean_latent'][0]).abs().max() < 0.2 * spread     # his mean_latent(4096)


def test_latent_avg_becomes_w_avg_without_notice(tmp_path):
    his = _his()
    latent_avg = torch.randn(64)
    path = tmp_path / 'g_ema_only.pt'
    torch.save(dict(g_ema=his['g_ema'], latent_avg=latent_avg), path)       # as his convert_weight.py writes
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        data = checkpoint.load_network_pkl(path)
    assert data['G'] is None and data['D'] is None and torch.equal(data['G_ema'].mapping.w_avg, latent_avg)


def test_round_trip_is_bit_for_bit(loaded):
    """In and out again: g_ema, g and d come back as the same tensors, in his order."""
    _, data, _, _ = loaded
    out, notes = rosinality.to_rosinality(data['G_ema'], data['G'], data['D'])
    his = _his()
    assert notes == [] and torch.equal(out['latent_avg'], data['G_ema'].mapping.w_avg)
    for key in ('g_ema', 'g', 'd'):
        assert list(out[key]) == list(his[key]), key
        for name, value in his[key].items():
            assert out[key][name].dtype == value.dtype and torch.equal(out[key][name], value), f'{key}.{name}'


def his_generator_shapes(size, style_dim, n_mlp, channels):
    """Keys and shapes of his Generator(size, style_dim, n_mlp).state_dict() with `channels` {res: width},
    in order, from his model.py: style (PixelNorm + n_mlp EqualLinear), input (ConstantInput), conv1 and to_rgb1,
    then per resolution an upsampling StyledConv, a StyledConv and a ToRGB (which upsamples the skip), noises."""
    log_size = int(np.log2(size))
    rows = [(f'style.{i}.{p}', [style_dim, style_dim] if p == 'weight' else [style_dim])
            for i in range(1, n_mlp + 1) for p in ('weight', 'bias')]
    rows.append(('input.input', [1, channels[4], 4, 4]))

    def styled_conv(name, cin, cout, up):
        return ([(f'{name}.conv.weight', [1, cout, cin, 3, 3])] + [(f'{name}.conv.blur.kernel', [4, 4])] * up
                + [(f'{name}.conv.modulation.weight', [cin, style_dim]), (f'{name}.conv.modulation.bias', [cin]),
                   (f'{name}.noise.weight', [1]), (f'{name}.activate.bias', [cout])])

    def to_rgb(name, cin, up):
        return ([(f'{name}.bias', [1, 3, 1, 1])] + [(f'{name}.upsample.kernel', [4, 4])] * up
                + [(f'{name}.conv.weight', [1, 3, cin, 1, 1]), (f'{name}.conv.modulation.weight', [cin, style_dim]),
                   (f'{name}.conv.modulation.bias', [cin])])
    rows += styled_conv('conv1', channels[4], channels[4], False) + to_rgb('to_rgb1', channels[4], False)
    index = 0
    for i in range(3, log_size + 1):
        cin, cout = channels[2 ** (i - 1)], channels[2 ** i]
        rows += styled_conv(f'convs.{index}', cin, cout, True) + styled_conv(f'convs.{index + 1}', cout, cout, False)
        index += 2
    rows += [row for k, i in enumerate(range(3, log_size + 1))
             for row in to_rgb(f'to_rgbs.{k}', channels[2 ** i], True)]
    rows += [(f'noises.noise_{j}', [1, 1, 2 ** ((j + 5) // 2), 2 ** ((j + 5) // 2)]) for j in range(log_size * 2 - 3)]
    return rows


def _shapes(state):
    return [(k, list(v.shape)) for k, v in state.items()]


def test_his_key_table_matches_the_fixture():
    """The independent table of the test is right: it is the fixture's own g_ema."""
    assert _shapes(_his()['g_ema']) == his_generator_shapes(32, 64, 2, {r: 64 for r in (4, 8, 16, 32)})


@pytest.mark.parametrize('source', ['nvlabs-sg2ada-32px.pkl', 'tf-stylegan2-32px.pkl'])
def test_nvidia_networks_export_with_his_keys_and_our_outputs(source):
    """NVIDIA networks out to his format: his keys and shapes; read back by our importer (pinned to his outputs
    by the fixture) they give our outputs."""
    data = checkpoint.load_network_pkl(shared_fixture(source))
    G = data['G_ema']
    out, _ = rosinality.to_rosinality(G, data['G'], data['D'])
    widths = {r: getattr(G.synthesis, f'b{r}').conv1.weight.shape[0] for r in G.synthesis.block_resolutions}
    assert _shapes(out['g_ema']) == his_generator_shapes(32, 64, 2, widths)
    buf = io.BytesIO()
    torch.save(out, buf)
    buf.seek(0)
    back = checkpoint.load_network_pkl(buf)
    z = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ws = G.mapping(z, None, truncation_psi=0.7)
        assert rel_err(back['G_ema'].mapping(z, None, truncation_psi=0.7), ws) <= 1e-6
        for mode in ('const', 'none'):
            assert rel_err(back['G_ema'].synthesis(ws, noise_mode=mode), G.synthesis(ws, noise_mode=mode)) <= 1e-5
        if 'd' in out:
            img = G.synthesis(ws, noise_mode='const')
            assert rel_err(back['D'](img, None), data['D'](img, None)) <= 1e-5


def test_his_default_table_is_recognised():
    G = networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=64, img_channels=3,
                           mapping_kwargs=dict(num_layers=8),
                           synthesis_kwargs=dict(channel_base=16384, channel_max=512))
    assert rosinality.his_constructor(G) == 'Generator(size=64, style_dim=16, n_mlp=8, channel_multiplier=1)'
    out, _ = rosinality.to_rosinality(G)
    assert _shapes(out['g_ema']) == his_generator_shapes(64, 16, 8, {4: 512, 8: 512, 16: 512, 32: 512, 64: 256})


def test_other_mapping_rate_and_no_noise_export_exactly():
    """His mapping runs at lr_mlp 0.01 (weights rescaled), his layers always add noise (written as zeros)."""
    torch.manual_seed(2)
    kwargs = tiny_generator_kwargs(resolution=16, dim=16)
    kwargs['mapping_kwargs'] = dict(num_layers=2, lr_multiplier=0.1)
    G = networks.Generator(**kwargs).eval()
    out, notes = rosinality.to_rosinality(G)
    assert len(notes) == 1 and 'conv_clamp dropped' in notes[0]
    assert torch.count_nonzero(out['g_ema']['noises.noise_2']) == 0 and out['g_ema']['convs.1.noise.weight'] == 0
    back = rosinality.networks_from(out)['G_ema']
    z = torch.randn(3, 16)
    with torch.no_grad():
        ws = G.mapping(z, None)
        assert rel_err(back.mapping(z, None), ws) <= 1e-6
        assert rel_err(back.synthesis(ws, noise_mode='const'), G.synthesis(ws, noise_mode='const')) <= 1e-5


def test_overparameterized_generator_is_refused():
    G = networks.Generator(**tiny_generator_kwargs(latent_rows=32, resolution=16, dim=16))
    with pytest.raises(rosinality.UnsupportedNetworkError, match='overparameterized') as info:
        rosinality.to_rosinality(G)
    assert '\n' not in str(info.value)


def _save(tmp_path, obj, name='x.pt'):
    path = tmp_path / name
    torch.save(obj, path)
    return path


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f'touch {self.path}',)


def _edited(**changes):
    his = _his()
    g = dict(his['g_ema'])
    for name, value in changes.items():
        if value is None:
            del g[name]
        else:
            g[name] = value
    return dict(g_ema=g)


BAD = {
    'no generator': (lambda s: dict(model=torch.zeros(3), epoch=4), 'holds no StyleGAN2 generator'),
    'hostile global': (lambda s: dict(g_ema={'style.1.weight': torch.zeros(1)}, args=_Evil(s)),
                       'Refusing to load posix.system'),
    'training state': (lambda s: dict(format=checkpoint.TRAINING_STATE_FORMAT, version=1), 'training state'),
    'extra tensor': (lambda s: _edited(**{'convs.0.extra': torch.zeros(2)}), 'convs.0.extra is not a tensor'),
    'missing tensor': (lambda s: _edited(**{'conv1.noise.weight': None}), 'conv1.noise.weight is missing'),
    'other blur': (lambda s: _edited(**{'convs.0.conv.blur.kernel': torch.ones(4, 4) / 4}), 'blur kernel'),
    'rising channels': (lambda s: _edited(**{'input.input': torch.zeros(1, 32, 4, 4)}), 'channel table'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_checkpoints_are_refused_in_one_line(tmp_path, case):
    sentinel = tmp_path / 'SENTINEL'
    make, expected = BAD[case]
    path = _save(tmp_path, make(sentinel))
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load_network_pkl(path)
    message = str(info.value)
    assert expected in message and str(path) in message and '\n' not in message, message
    assert not sentinel.exists()


def test_truncated_and_legacy_torch_save(tmp_path):
    his = _his()
    data = _save(tmp_path, his).read_bytes()
    cut = tmp_path / 'cut.pt'
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match='damaged or truncated'):
        checkpoint.load_network_pkl(cut)
    legacy = tmp_path / 'legacy.pt'                                     # torch < 1.6 wrote this format
    torch.save(dict(g_ema=his['g_ema'], latent_avg=torch.zeros(64)), legacy, _use_new_zipfile_serialization=False)
    assert checkpoint.read_network_file(legacy)[0] == checkpoint.ROSINALITY
    cut.write_bytes(legacy.read_bytes()[:5000])
    with pytest.raises(checkpoint.CheckpointError, match='truncated'):
        checkpoint.load_network_pkl(cut)


def test_namespace_is_the_only_extra_global(tmp_path):
    path = _save(tmp_path, dict(g_ema=_his()['g_ema'], args=argparse.Namespace(size=32), x=io.BytesIO))
    with pytest.raises(checkpoint.CheckpointError, match='Refusing to load _io.BytesIO'):
        checkpoint.load_network_pkl(path)
