"""NVIDIA TensorFlow StyleGAN2 pickles, read without TensorFlow: the fixture reproduces NVIDIA's own conversion,
other configurations written here from the format's description load to the very networks they were written
from, and what the format has but we do not is refused in one line."""

import contextlib
import io
import os

import numpy as np
import pytest
import torch

from conftest import shared_fixture
from format_writers import Network, dumps_tf, fmap_kwargs, tf_discriminator, tf_generator
from torch_utils import checkpoint, safe_pickle
from training import networks

pytestmark = pytest.mark.pins_numbers
FIXTURE = 'tf-stylegan2-32px'


def rel_err(actual, expected):
    """Largest absolute error relative to the expected tensor's largest magnitude."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope='module')
def fixture_nets():
    fmt, data = checkpoint.read_network_file(shared_fixture(f'{FIXTURE}.pkl'))
    expected = {k: torch.from_numpy(v) for k, v in np.load(shared_fixture(f'{FIXTURE}-expected.npz')).items()}
    return fmt, data, expected


def test_fixture_reproduces_nvidia_conversion(fixture_nets):
    """G_ema = Gs and D give the outputs of NVIDIA's legacy.py conversion run through NVIDIA's networks
    (measured: equal to the bit on this CPU, D 1.4e-6 relative with ATEN_CPU_CAPABILITY=default; pinned at 1e-5)."""
    fmt, data, ex = fixture_nets
    assert fmt == checkpoint.TENSORFLOW and set(data) == {'G', 'D', 'G_ema'}
    G, D = data['G_ema'], data['D']
    assert isinstance(G, networks.Generator) and isinstance(D, networks.Discriminator) and data['G'] is not G
    with torch.no_grad():
        assert rel_err(G.mapping(ex['z'], ex['c']), ex['ws']) <= 1e-5
        assert rel_err(G.mapping(ex['z'], ex['c'], truncation_psi=0.7), ex['ws_psi07']) <= 1e-5
        assert rel_err(G.synthesis(ex['ws'], noise_mode='const', force_fp32=True), ex['img_const']) <= 1e-5
        assert rel_err(G.synthesis(ex['ws_psi07'], noise_mode='none', force_fp32=True), ex['img_psi07_nonoise']) <= 1e-5
        assert rel_err(D(ex['img_const'], ex['c']), ex['d_logits']) <= 1e-5
    assert G.synthesis.b32.conv0.weight.shape == (32, 64, 3, 3)                # fmap_base 512 = channel_base 1024
    assert D.b4.mbstd.group_size == 4


def test_record_keeps_no_code():
    """The records hold checked data only: the embedded source is dropped unread, nothing of theirs is built."""
    with open(shared_fixture(f'{FIXTURE}.pkl'), 'rb') as f:
        G, D, Gs = checkpoint.read_pickle(f)
    for record in (G, D, Gs, Gs.components['synthesis']):
        assert type(record).__name__ == 'TFNetworkRecord' and not hasattr(record, 'build_module_src')
    assert Gs.build_func_name == 'G_main' and Gs.components['synthesis'].build_func_name == 'G_synthesis_stylegan2'
    assert b'cnumpy.core.multiarray\n_reconstruct' in shared_fixture(f'{FIXTURE}.pkl').read_bytes()


def test_writer_matches_the_fixture_format(fixture_nets):
    """The test writer, applied to the fixture's own networks, gives back the fixture's variables: it writes the
    real format (so the configurations below are tested against it, not against our reader)."""
    from format_writers import tf_discriminator_variables, tf_generator_variables
    _, data, _ = fixture_nets
    with open(shared_fixture(f'{FIXTURE}.pkl'), 'rb') as f:
        _, D_rec, Gs_rec = checkpoint.read_pickle(f)
    written = tf_generator_variables(data['G_ema'])
    original = Gs_rec.all_variables()
    ours = {**{f'mapping/{k}': v for k, v in written['mapping'].items()},
            **{f'synthesis/{k}': v for k, v in written['synthesis'].items()},
            'dlatent_avg': written['top']['dlatent_avg']}
    assert set(ours) == set(original)
    for name, value in original.items():
        tol = 1e-7 if name.endswith('mod_bias') else 0            # x + 1 - 1 rounds
        np.testing.assert_allclose(ours[name], value, rtol=0, atol=tol, err_msg=name)
    d_written, d_original = tf_discriminator_variables(data['D']), D_rec.all_variables()
    assert set(d_written) == set(d_original)
    assert all(np.array_equal(d_written[k], d_original[k]) for k in d_original)


CONFIGS = {
    # name: (our Generator kwargs, TF G kwargs beyond the dims, synthesis build function)
    'conditional-ada': (dict(c_dim=3, mapping_kwargs=dict(num_layers=2)), dict(label_size=3, mapping_layers=2),
                        'G_synthesis'),
    'eight-mapping-layers': (dict(mapping_kwargs=dict(num_layers=8)), dict(mapping_layers=8), 'G_synthesis_stylegan2'),
    'other-widths': (dict(mapping_kwargs=dict(num_layers=3, layer_features=40), channel_base=512, channel_max=24),
                     dict(mapping_layers=3, mapping_fmaps=40), 'G_synthesis_stylegan2'),
    'resnet-no-noise': (dict(mapping_kwargs=dict(num_layers=2), architecture='resnet', use_noise=False),
                        dict(mapping_layers=2, architecture='resnet', use_noise=False), 'G_synthesis'),
    'orig-16px': (dict(mapping_kwargs=dict(num_layers=2), architecture='orig', resolution=16),
                  dict(mapping_layers=2, architecture='orig'), 'G_synthesis_stylegan2'),
}


def _random_generator(spec, seed=3):
    spec = dict(spec)
    res = spec.pop('resolution', 32)
    base, cap = spec.pop('channel_base', 1024), spec.pop('channel_max', 32)
    synthesis = dict(channel_base=base, channel_max=cap)
    for key in ('architecture', 'use_noise'):
        if key in spec:
            synthesis[key] = spec.pop(key)
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=24, w_dim=24, img_resolution=res, img_channels=3, synthesis_kwargs=synthesis,
                           **{'c_dim': 0, **spec}).eval()
    with torch.no_grad():                       # Non-trivial biases, noise strengths and mean, so each is tested.
        for name, p in G.named_parameters():
            if name.endswith(('bias', 'noise_strength')):
                p.add_(torch.randn_like(p) * 0.3)
        G.mapping.w_avg.normal_()
    return G


@pytest.mark.parametrize('config', sorted(CONFIGS))
def test_other_configurations_load_to_the_network_written(tmp_path, config):
    ours, tf_kwargs, synthesis_func = CONFIGS[config]
    G = _random_generator(ours)
    kwargs = {**dict(num_channels=3, resolution=G.img_resolution, label_size=0, latent_size=24, dlatent_size=24),
              **fmap_kwargs(G.img_resolution, G.synthesis._init_kwargs['channel_base'],
                            G.synthesis._init_kwargs['channel_max']), **tf_kwargs}
    path = tmp_path / 'net.pkl'
    path.write_bytes(dumps_tf(tf_generator(G, kwargs, synthesis_func=synthesis_func)))
    data = checkpoint.load_network_pkl(path)
    assert data['G'] is None and data['D'] is None
    H = data['G_ema']
    torch.manual_seed(0)
    z, c = torch.randn(3, 24), torch.eye(3)[[0, 2, 1]][:, :G.c_dim]
    with torch.no_grad():
        ws = G.mapping(z, c, truncation_psi=0.6)
        assert rel_err(H.mapping(z, c, truncation_psi=0.6), ws) <= 1e-6
        for mode in ('const', 'none'):
            assert rel_err(H.synthesis(ws, noise_mode=mode), G.synthesis(ws, noise_mode=mode)) <= 1e-5


@pytest.mark.parametrize('func, tf_kwargs, group, channels', [
    ('D_main', dict(label_size=2, mapping_layers=0), None, 1),      # StyleGAN2-ADA: whole-batch std by default
    ('D_main', dict(label_size=2, mapping_layers=2, mbstd_group_size=2), 2, 1),
    ('D_stylegan2', dict(architecture='skip'), 4, 1),                # the original code's default group of 4
    ('D_stylegan2', dict(mbstd_group_size=0), 4, 0),                 # 0 = no minibatch-std layer there
])
def test_discriminators_load_to_the_network_written(tmp_path, func, tf_kwargs, group, channels):
    c_dim = tf_kwargs.get('label_size', 0)
    mapping = dict(num_layers=tf_kwargs.get('mapping_layers', 0), lr_multiplier=0.1)   # TF's mapping_lrmul default
    torch.manual_seed(5)
    D = networks.Discriminator(c_dim=c_dim, img_resolution=16, img_channels=3, channel_base=512, channel_max=32,
                               architecture=tf_kwargs.get('architecture', 'resnet'), mapping_kwargs=mapping,
                               epilogue_kwargs=dict(mbstd_group_size=group, mbstd_num_channels=channels)).eval()
    path = tmp_path / 'd.pkl'
    path.write_bytes(dumps_tf(tf_discriminator(D, dict(resolution=16, **fmap_kwargs(16, 512, 32), **tf_kwargs), func)))
    E = checkpoint.load_network_pkl(path)['D']
    assert (E.b4.mbstd is None) == (channels == 0) and (E.b4.mbstd is None or E.b4.mbstd.group_size == group)
    img, c = torch.randn(4, 3, 16, 16), torch.eye(2)[[0, 1, 1, 0]][:, :c_dim]
    with torch.no_grad():
        assert rel_err(E(img, c), D(img, c)) <= 1e-5


def _write(tmp_path, obj, name='bad.pkl'):
    path = tmp_path / name
    path.write_bytes(dumps_tf(obj))
    return path


def _tiny_tf_generator(**static):
    G = _random_generator(dict(mapping_kwargs=dict(num_layers=2), resolution=8, channel_base=64, channel_max=8))
    kwargs = dict(resolution=8, latent_size=24, dlatent_size=24, mapping_layers=2, fmap_base=32, fmap_max=8, **static)
    return tf_generator(G, kwargs)


def _with_variable(record, component, name, value):
    target = record.state['components'][component] if component else record
    target.state['variables'].append((name, value))
    return record


REFUSED = {
    'StyleGAN1': (lambda: Network('G', 'G_style', {}, {'lod': np.zeros([], np.float32)}), 'StyleGAN1 generator'),
    'config B-D synthesis': (lambda: tf_generator(networks.Generator(8, 0, 8, 8, 3), dict(resolution=8),
                                                  synthesis_func='G_synthesis_stylegan_revised'), 'config B-D'),
    'config B-D discriminator': (lambda: Network('D', 'D_stylegan', {}, {}), 'config B-D discriminator'),
    'ToRGB_lod': (lambda: _with_variable(_tiny_tf_generator(), 'synthesis', 'ToRGB_lod0/weight',
                                         np.zeros([1, 1, 8, 3], np.float32)), 'ToRGB_lod'),
    'LabelConcat': (lambda: _with_variable(_tiny_tf_generator(), 'mapping', 'LabelConcat/weight',
                                           np.zeros([2, 24], np.float32)), 'LabelConcat'),
    'unknown setting': (lambda: _tiny_tf_generator(fmap_decay=0.5), 'fmap_decay=0.5'),
    'comparison method': (lambda: Network('D', 'D_main', dict(use_pagan=True), {}), 'comparison methods'),
    'original conditional D': (lambda: Network('D', 'D_stylegan2', dict(label_size=2), {}), 'raw labels'),
    'unknown variable': (lambda: _with_variable(_tiny_tf_generator(), 'synthesis', '8x8/Extra/weight',
                                                np.zeros([3], np.float32)), "'synthesis/8x8/Extra/weight'"),
    'missing variable': (lambda: _drop_variable(_tiny_tf_generator(), 'dlatent_avg'), 'no mapping.w_avg'),
    'version 3': (lambda: Network('G', 'G_main', {}, {}, version=3), 'version 3'),
    'two networks': (lambda: (_tiny_tf_generator(), _tiny_tf_generator()), "['G', 'G']"),
}


def _drop_variable(record, name):
    record.state['variables'] = [(k, v) for k, v in record.state['variables'] if k != name]
    return record


@pytest.mark.parametrize('case', sorted(REFUSED))
def test_unsupported_tensorflow_networks_are_refused_in_one_line(tmp_path, case):
    make, expected = REFUSED[case]
    path = _write(tmp_path, make())
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load_network_pkl(path)
    message = str(info.value)
    assert expected in message and str(path) in message and '\n' not in message, message
    assert not os.path.exists(tmp_path / 'SENTINEL')


def test_tiny_generator_writes_and_loads(tmp_path):
    """The refusal cases above start from a file that loads."""
    assert isinstance(checkpoint.load_network_pkl(_write(tmp_path, _tiny_tf_generator()))['G_ema'], networks.Generator)


def test_allow_list_has_the_tensorflow_record_only_as_inert_data():
    unpickler = safe_pickle.SafeUnpickler(io.BytesIO(b''))
    cls = unpickler.find_class('dnnlib.tflib.network', 'Network')
    with pytest.raises(checkpoint.PickleLoadError, match='without arguments'):
        cls.__new__(cls, 'x')
    record = cls.__new__(cls)
    with pytest.raises(checkpoint.PickleLoadError, match='unknown fields'):
        record.__setstate__(dict(version=4, name='G', variables=[], exec='x'))


@pytest.mark.parametrize('name', [f'{FIXTURE}.pkl', 'rosinality-stylegan2-32px-narrow.pt'])
def test_trusted_loading_gives_the_same_networks(name):
    """--trust-pickle reads the same formats (TF records stay inert: dnnlib.tflib is not importable here)."""
    notice = (lambda: pytest.warns(UserWarning, match='latent_avg')) if name.endswith('.pt') else contextlib.nullcontext
    with notice():
        safe = checkpoint.load_network_pkl(shared_fixture(name))
    with notice():
        trusted = checkpoint.load_network_pkl(shared_fixture(name), trust=True)
    for key in ('G', 'D', 'G_ema'):
        a, b = safe[key].state_dict(), trusted[key].state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
