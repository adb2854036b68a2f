"""Pickles made by NVIDIA's stylegan3 repository: its StyleGAN2 (`training.networks_stylegan2`, synthesis
options at the Generator's top level) loads into our classes with NVIDIA's outputs; its StyleGAN3
(`training.networks_stylegan3`, alias-free) is refused with one clear line."""

import io

import pytest
import torch

from conftest import shared_fixture
from test_nvlabs_fixture import assert_close as _close, assert_generator_matches, load_snapshot
from torch_utils import checkpoint
from training import networks, nvlabs_layouts

pytestmark = pytest.mark.pins_numbers

@pytest.fixture(scope='module')
def snapshot():
    return load_snapshot('nvlabs-sg3-stylegan2-32px-cond')


def test_rebuilt_in_our_layout(snapshot):
    data, _ = snapshot
    G, D = data['G_ema'], data['D']
    assert type(G) is networks.Generator and type(D) is networks.Discriminator
    assert G.z_shape == (48,) and G.w_shape == (56,) and G.num_ws == 8 and G.c_dim == 3
    syn = G._init_kwargs['synthesis_kwargs']                       # nested, as our Generator takes them
    assert (syn['channel_base'], syn['channel_max'], syn['num_fp16_res'], syn['conv_clamp']) == (768, 48, 1, 256)
    assert 'channel_base' not in G._init_kwargs
    assert G.mapping.w_avg_beta == 0.998                           # the stylegan3 repository's default
    assert [G.synthesis.b32.use_fp16, G.synthesis.b16.use_fp16] == [True, False]
    assert D.b32.use_fp16 and not D.b16.use_fp16 and D.b4.conv.conv_clamp == 256


def test_mapping_and_synthesis_match(snapshot):
    data, ex = snapshot
    assert_generator_matches(data['G_ema'], ex)


def test_fp16_blocks_compute_in_fp32_off_cuda(snapshot):
    """NVIDIA's stylegan3-repository blocks use FP16 on CUDA only: plain calls on the CPU match too."""
    data, ex = snapshot
    with torch.no_grad():
        _close(data['G_ema'].synthesis(ex['ws'], noise_mode='const'), ex['img_const'])
        _close(data['D'](ex['img_const'], ex['c']), ex['d_logits'])


def test_modulation_stays_fused_in_training_mode(snapshot):
    """`fused_modconv_default=True` (stylegan3 repository): training mode runs the same fused path."""
    data, ex = snapshot
    G = data['G_ema']
    with torch.no_grad():
        img_eval = G.synthesis(ex['ws'], noise_mode='const')
        img_train = G.train().synthesis(ex['ws'], noise_mode='const')
    G.eval()
    assert torch.equal(img_train, img_eval)


def test_pickles_again_in_our_layout(snapshot, tmp_path):
    data, ex = snapshot
    path = tmp_path / 'resaved.pkl'
    checkpoint.save_network_pkl(path, dict(G_ema=data['G_ema'], D=data['D']))
    assert b'training.networks' in path.read_bytes() and b'networks_stylegan2' not in path.read_bytes()
    again = checkpoint.load_network_pkl(path)
    with torch.no_grad():
        assert torch.equal(again['G_ema'].synthesis(ex['ws'], noise_mode='const'),
                           data['G_ema'].synthesis(ex['ws'], noise_mode='const'))
        assert torch.equal(again['D'](ex['img_const'], ex['c']), data['D'](ex['img_const'], ex['c']))


def test_stylegan3_is_refused_in_one_line():
    path = shared_fixture('nvlabs-sg3-stylegan3t-32px.pkl')
    for load in (lambda: checkpoint.load_network_pkl(path), lambda: checkpoint.load_network(str(path))):
        with pytest.raises(checkpoint.CheckpointError, match=r'StyleGAN3 \(alias-free') as info:
            load()
        assert isinstance(info.value.__cause__, nvlabs_layouts.UnsupportedNetworkError)
        assert 'does not implement' in str(info.value) and '\n' not in str(info.value)
        assert str(path) in str(info.value) and 'damaged' not in str(info.value)


def test_stylegan3_refused_even_when_trusted():
    blob = io.BytesIO(shared_fixture('nvlabs-sg3-stylegan3t-32px.pkl').read_bytes())
    with pytest.raises(checkpoint.CheckpointError, match='StyleGAN3') as info:
        checkpoint.load_network_pkl(blob, trust=True)
    assert isinstance(info.value.__cause__, nvlabs_layouts.UnsupportedNetworkError)
