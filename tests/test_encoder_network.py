"""The encoder network (training/encoder.py): output shapes in every latent space, the initial prediction,
the attention against a hand-written softmax, pickles through the safe loader, and the parameter formula.

Tiny seeded random generators (16 px), as in test_inversion.py.
"""

import math
import pickle
from pathlib import Path

import pytest
import torch

from conftest import tiny_generator_with_mean
from torch_utils import checkpoint, safe_pickle
from training.encoder import Encoder, load_encoder, load_encoder_pkl, parameter_count, save_encoder_pickle
from training.latent_spaces import LatentSpace

R = 32
VALID = [(None, 'w'), (None, 'w+'), (R, 'w'), (R, 'w+'), (R, 'W'), (R, 'W+')]


make_G = tiny_generator_with_mean


def random_images(n, resolution=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand([n, 3, resolution, resolution], generator=g) * 2 - 1


def randomise_head(E, seed=3):
    """Give the zero-initialised output layer random weights, so offsets depend on the image."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        E.head.weight.copy_(torch.randn(E.head.weight.shape, generator=g))
        E.head.bias.copy_(torch.randn(E.head.bias.shape, generator=g))
    return E


@pytest.mark.parametrize('latent_rows,space', VALID)
def test_output_shape_matches_the_latent_space_and_feeds_the_generator(latent_rows, space):
    G = make_G(latent_rows)
    E = Encoder.from_generator(G, space)
    expected = LatentSpace.for_generator(G, space).param_shape
    assert E.param_shape == expected
    assert (E.img_resolution, E.img_channels, E.space, E.num_ws, E.w_dim, E.latent_rows) == \
        (16, 3, space, G.num_ws, G.w_dim, latent_rows)
    params = randomise_head(E)(random_images(3))
    assert params.shape == (3, *expected)
    ws = LatentSpace.for_generator(G, space).to_ws(params)
    assert G.synthesis(ws, noise_mode='const').shape == (3, 3, 16, 16)
    assert torch.equal(E.to_ws(params), ws)                   # the encoder's own mapping is inversion's


def test_matrix_space_on_vector_generator_is_a_value_error():
    with pytest.raises(ValueError, match='overparameterized'):
        Encoder.from_generator(make_G(None), 'W')
    with pytest.raises(ValueError, match='Unknown latent space'):
        Encoder.from_generator(make_G(R), 'z')


@pytest.mark.parametrize('latent_rows,space', VALID)
def test_initial_prediction_is_the_mean_latent(latent_rows, space):
    G = make_G(latent_rows)
    E = Encoder.from_generator(G, space)
    assert torch.equal(E.w_avg, G.mapping.w_avg)
    params = E(random_images(4))
    expected = LatentSpace.for_generator(G, space).init_from_w_avg(G, 4)
    assert torch.allclose(params, expected, atol=1e-6, rtol=0)


def test_rows_and_layers_get_different_predictions():
    """Every (layer, row) has its own query: after randomising the head, rows and layers differ, images differ."""
    E = randomise_head(Encoder.from_generator(make_G(R), 'W+'))
    params = E(random_images(2))                              # [2, L, R, D]
    assert (params[:, :, 1:] - params[:, :, :1]).abs().amin(dim=-1).gt(0).all()        # rows
    assert (params[:, 1:] - params[:, :1]).abs().amax(dim=(-2, -1)).gt(1e-3).all()     # layers
    assert (params[1] - params[0]).abs().amax() > 1e-3                                  # images


def test_attention_matches_a_hand_written_softmax():
    E = randomise_head(Encoder.from_generator(make_G(R), 'W+', num_heads=2))
    img = random_images(2)
    with torch.no_grad():
        tokens = E.tokens(img)                                        # [N, T, c]
        keys = tokens @ (E.key.weight * E.key.weight_gain).T + E.key.bias
        values = tokens @ (E.value.weight * E.value.weight_gain).T + E.value.bias
        queries = torch.stack([E.layer_embed[l] + E.row_embed[r] for l in range(E.num_ws) for r in range(R)])
        heads, width = 2, queries.shape[1] // 2
        outs = []
        for h in range(heads):
            cols = slice(h * width, (h + 1) * width)
            logits = torch.einsum('qc,ntc->nqt', queries[:, cols], keys[:, :, cols]) / math.sqrt(width)
            outs.append(torch.einsum('nqt,ntc->nqc', logits.softmax(dim=-1), values[:, :, cols]))
        attended = torch.cat(outs, dim=-1) + queries
        offsets = attended @ (E.head.weight * E.head.weight_gain).T + E.head.bias
        expected = offsets.reshape(2, E.num_ws, R, E.w_dim) + E.w_avg
        assert torch.allclose(E(img), expected, atol=1e-4, rtol=1e-4)


def test_pickle_round_trip_through_the_safe_loader(tmp_path):
    G = make_G(R)
    E = randomise_head(Encoder.from_generator(G, 'W', token_resolution=2, attn_dim=16))
    path = tmp_path / 'encoder.pkl'
    save_encoder_pickle(path, E, generator_pkl='/some/G.pkl', kimg=12)
    with open(path, 'rb') as f:                                      # the safe unpickler itself accepts it
        raw = safe_pickle.read(f, trust=False)
    assert isinstance(raw['E'], Encoder)
    data = load_encoder_pkl(path)
    assert data['generator_pkl'] == '/some/G.pkl' and data['kimg'] == 12
    E2 = load_encoder(path)
    assert type(E2) is Encoder and E2 is not E
    assert E2.design == E.design and E2.param_shape == E.param_shape
    img = random_images(2)
    assert torch.equal(E2(img), E(img))
    assert torch.equal(E2.w_avg, G.mapping.w_avg)
    assert [p.requires_grad for p in E2.parameters()] == [p.requires_grad for p in E.parameters()]


def test_encoder_files_that_are_not_encoders_are_refused_in_one_line(tmp_path):
    gen = tmp_path / 'network-snapshot-000000.pkl'
    checkpoint.save_network_pkl(gen, dict(G_ema=make_G(None)))
    with pytest.raises(checkpoint.CheckpointError) as info:
        load_encoder(gen)
    message = str(info.value)
    assert '\n' not in message and str(gen) in message and 'not an encoder pickle' in message and 'G_ema' in message
    with pytest.raises(checkpoint.CheckpointError, match='check the path'):
        load_encoder(tmp_path / 'missing.pkl')
    junk = tmp_path / 'junk.pkl'
    junk.write_bytes(b'hello')
    with pytest.raises(checkpoint.CheckpointError, match='not a pickle'):
        load_encoder(junk)
    hostile = tmp_path / 'hostile.pkl'
    hostile.write_bytes(pickle.dumps({'E': print}))                  # a global that is not on the allow-list
    with pytest.raises(checkpoint.CheckpointError, match='allow-list'):
        load_encoder(hostile)
    with pytest.raises(TypeError):
        save_encoder_pickle(tmp_path / 'x.pkl', make_G(None))


DESIGNS = [dict(), dict(token_resolution=2), dict(attn_dim=16, num_heads=1), dict(channel_base=256, channel_max=16)]


@pytest.mark.parametrize('design', DESIGNS)
@pytest.mark.parametrize('latent_rows,space', VALID)
def test_parameter_count_formula(latent_rows, space, design):
    G = make_G(latent_rows)
    E = Encoder.from_generator(G, space, **design)
    counted = sum(p.numel() for p in E.parameters())
    assert counted == parameter_count(16, 3, space, G.num_ws, G.w_dim, latent_rows, **design)


# The docstring's table: (img_resolution, num_ws, R, w_dim) -> counts for w, w+, W, W+.
DOC_TABLE = {(32, 8, 64, 64): (172_864, 173_312, 176_896, 177_344),
             (256, 14, 512, 512): (8_397_888, 8_404_544, 8_659_520, 8_666_176)}


def test_documented_parameter_table():
    """The parameter counts of docs/encoder.md's table, from the formula and from the module."""
    doc = (Path(__file__).parent.parent / 'docs' / 'encoder.md').read_text()
    for (res, num_ws, rows, dim), counts in DOC_TABLE.items():
        for space, count in zip(('w', 'w+', 'W', 'W+'), counts):
            assert parameter_count(res, 3, space, num_ws, dim, rows) == count
            assert f'{count:,}' in doc
    E = Encoder(32, 3, 'W', 8, 64, 64)                            # the tiny preset, built
    assert sum(p.numel() for p in E.parameters()) == DOC_TABLE[(32, 8, 64, 64)][2]
