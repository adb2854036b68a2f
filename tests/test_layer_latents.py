"""SynthesisNetwork hands a latent matrix to its layers through `_LayerLatents` (one gradient tensor for
all layers instead of one per block): image, first- and second-order gradients must equal those of the
plain per-block slices `ws.narrow(1, first, num_conv + num_torgb)`, bit for bit."""

import pytest
import torch

from conftest import tiny_generator_kwargs
from training import networks


def per_block_slices(G, ws):
    """The synthesis network written out with `narrow` per block (the path vectors still take)."""
    x = img = None
    first = 0
    for res in G.synthesis.block_resolutions:
        block = getattr(G.synthesis, f'b{res}')
        x, img = block(x, img, ws.narrow(1, first, block.num_conv + block.num_torgb))
        first += block.num_conv
    return img


def gradients(G, ws, synthesis, create_graph):
    """img, d<img, y>/d ws and (with create_graph) d |d<img, y>/d ws|^2 / d (ws, parameters)."""
    img = synthesis(ws)
    y = torch.randn(img.shape, generator=torch.Generator().manual_seed(3))
    grad, = torch.autograd.grad((img * y).sum(), [ws], create_graph=create_graph)
    out = [img, grad]
    if create_graph:
        second = torch.autograd.grad(grad.square().sum(), [ws, *G.synthesis.parameters()], allow_unused=True)
        out += [g if g is not None else torch.zeros([0]) for g in second]
    return out


@pytest.mark.parametrize('rows', [40, 32, 1])
@pytest.mark.parametrize('create_graph', [False, True])
def test_layer_latents_equal_per_block_slices(rows, create_graph):
    torch.manual_seed(0)
    G = networks.Generator(**tiny_generator_kwargs(latent_rows=rows, resolution=16)).train()
    ws = torch.randn([2, G.num_ws, rows, G.w_dim], generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    ours = gradients(G, ws, G.synthesis, create_graph)
    reference = gradients(G, ws, lambda w: per_block_slices(G, w), create_graph)
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        assert torch.equal(a, b)
    assert create_graph is False or len(ours) > 20
    grad = ours[1]
    if rows > 32:
        # Rows no layer reads get exactly zero gradient; the shared toRGB/conv0 latents get both layers' parts.
        assert torch.count_nonzero(grad[:, :, 32:]) == 0
    assert torch.count_nonzero(grad[:, :, :3]) == grad[:, :, :3].numel()


def test_vector_latents_keep_the_slices():
    torch.manual_seed(0)
    G = networks.Generator(**tiny_generator_kwargs(resolution=16)).train()
    ws = torch.randn([2, G.num_ws, G.w_dim])
    spans = G.synthesis._latents_per_block(ws, [getattr(G.synthesis, f'b{r}') for r in G.synthesis.block_resolutions])
    assert all(isinstance(s, torch.Tensor) and s.ndim == 3 for s in spans)
