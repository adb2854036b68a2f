"""A stylegan2-ada-pytorch snapshot, loaded with the safe loader, reproduces NVIDIA's outputs."""

import numpy as np
import pytest
import torch

from conftest import shared_fixture
from torch_utils import checkpoint
from training import networks

pytestmark = pytest.mark.pins_numbers

def load_snapshot(stem):
    """(networks loaded with the safe loader, expected outputs as tensors) of fixture `stem`.pkl."""
    data = checkpoint.load_network_pkl(shared_fixture(f'{stem}.pkl'))            # safe mode is the default
    expected = dict(np.load(shared_fixture(f'{stem}-expected.npz')))
    return data, {k: torch.from_numpy(v) for k, v in expected.items()}


def assert_close(actual, expected, rtol=1e-4):
    """Max abs error within `rtol` of the expected tensor's largest magnitude."""
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rtol * scale + 1e-6, f'max abs error {err:.3g} vs scale {scale:.3g}'


_close = assert_close


def assert_generator_matches(G, ex):
    """G's mapping (psi 1 and 0.7) and synthesis (const noise, no noise; FP32) give the expected outputs."""
    with torch.no_grad():
        assert_close(G.mapping(ex['z'], ex['c']), ex['ws'])
        assert_close(G.mapping(ex['z'], ex['c'], truncation_psi=0.7), ex['ws_psi07'])
        assert_close(G.synthesis(ex['ws'], noise_mode='const', force_fp32=True), ex['img_const'])
        assert_close(G.synthesis(ex['ws_psi07'], noise_mode='none', force_fp32=True), ex['img_psi07_nonoise'])


@pytest.fixture(scope='module')
def snapshot():
    return load_snapshot('nvlabs-sg2ada-32px')


def test_snapshot_rebuilds_our_classes(snapshot):
    data, _ = snapshot
    assert isinstance(data['G'], networks.Generator)
    assert isinstance(data['G_ema'], networks.Generator)
    assert isinstance(data['D'], networks.Discriminator)
    G = data['G_ema']
    assert G.z_shape == (64,) and G.w_shape == (64,) and G.num_ws == 8
    assert G.synthesis.b4.conv1.use_noise                # the fixture has noise inputs
    assert data['training_set_kwargs']['resolution'] == 32


def test_mapping_and_synthesis_match(snapshot):
    data, ex = snapshot
    assert_generator_matches(data['G_ema'], ex)


def test_discriminator_matches(snapshot):
    data, ex = snapshot
    with torch.no_grad():
        _close(data['D'](ex['img_const'], ex['c']), ex['d_logits'])


def test_training_mode_path_matches(snapshot):
    """The non-fused modulation used while training gives the same image as the fused one."""
    data, ex = snapshot
    G = data['G_ema']
    with torch.no_grad():
        img = G.synthesis(ex['ws'], noise_mode='const', force_fp32=True, fused_modconv=False)
    _close(img, ex['img_const'])
