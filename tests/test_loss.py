"""StyleGAN2Loss at 32 px for latent vectors and R=32 latent matrices: phases, R1, path length, style mixing."""

import numpy as np
import pytest
import torch

from conftest import tiny_discriminator_kwargs, tiny_generator_kwargs
from torch_utils import training_stats
from training import networks
from training.augment import AugmentPipe
from training.loss import PHASES, StyleGAN2Loss, mix_styles, mixing_cutoff, path_lengths_from_grads

pytestmark = pytest.mark.pins_numbers

R = 32              # rows of the tiny overparameterized latent
ROWS = [None, R]    # baseline, overparameterized
BATCH = 4


def make_nets(latent_rows):
    torch.manual_seed(1)
    G = networks.Generator(**tiny_generator_kwargs(latent_rows=latent_rows)).train()
    D = networks.Discriminator(**tiny_discriminator_kwargs()).train()
    return G, D


def make_batch(G, n=BATCH):
    gen = torch.Generator().manual_seed(2)
    real = torch.rand([n, 3, 32, 32], generator=gen) * 2 - 1
    return real, None, G.sample_z(n, generator=gen), None


def grad_norm(module):
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return sum(g.square().sum() for g in grads).sqrt().item() if grads else 0.0


def zero_grads(*modules):
    for m in modules:
        for p in m.parameters():
            p.grad = None


def stats_since(collector):
    """{name: mean} of the Loss/ stats reported since the collector's previous update."""
    collector.update()
    return {name: entry.mean for name, entry in collector.as_dict().items()}

# ---------------------------------------------------------------------------- phases


@pytest.mark.parametrize('latent_rows', ROWS)
@pytest.mark.parametrize('phase', PHASES)
def test_phase_runs_and_reaches_expected_parameters(latent_rows, phase):
    G, D = make_nets(latent_rows)
    loss = StyleGAN2Loss('cpu', G, D, r1_gamma=1.0)
    real, real_c, z, c = make_batch(G)
    collector = training_stats.Collector(regex='Loss/.*')                  # sees only what follows
    loss.accumulate_gradients(phase, real, real_c, z, c, gain=2.0, cur_nimg=0)

    g, d = grad_norm(G), grad_norm(D)
    assert np.isfinite(g) and np.isfinite(d)
    assert all(torch.isfinite(p.grad).all() for p in [*G.parameters(), *D.parameters()] if p.grad is not None)
    if phase.startswith('G'):
        assert g > 0, 'G phases must reach G'
        if phase != 'Greg':                                                # the path length does not involve D
            assert d > 0, 'D is in the G graph (the training loop freezes it with requires_grad)'
        assert G.mapping.fc0.weight.grad.abs().sum() > 0
    else:
        assert g == 0, 'D phases run G without a graph'
        assert d > 0

    stats = stats_since(collector)
    expected = {'Gmain': ['Loss/G/loss', 'Loss/scores/fake'], 'Greg': ['Loss/pl_penalty', 'Loss/G/reg'],
                'Dmain': ['Loss/D/loss', 'Loss/scores/real', 'Loss/signs/fake'],
                'Dreg': ['Loss/r1_penalty', 'Loss/D/reg']}
    for part in ('main', 'reg'):
        if phase.endswith(part) or phase.endswith('both'):
            for name in expected[phase[0] + part]:
                assert name in stats and np.isfinite(stats[name]), name


def test_unknown_phase_and_disabled_regularizers():
    G, D = make_nets(None)
    real, real_c, z, c = make_batch(G)
    with pytest.raises(ValueError, match='phase'):
        StyleGAN2Loss('cpu', G, D).accumulate_gradients('Gmian', real, real_c, z, c, gain=1, cur_nimg=0)
    loss = StyleGAN2Loss('cpu', G, D, r1_gamma=0, pl_weight=0)
    for phase in ('Greg', 'Dreg'):
        loss.accumulate_gradients(phase, real, real_c, z, c, gain=1, cur_nimg=0)
    assert grad_norm(G) == 0 and grad_norm(D) == 0 and loss.pl_mean.item() == 0


def test_main_losses_match_formulas():
    G, D = make_nets(None)
    real, real_c, z, c = make_batch(G)
    loss = StyleGAN2Loss('cpu', G, D, style_mixing_prob=0)
    collector = training_stats.Collector(regex='Loss/.*')
    loss.accumulate_gradients('Dmain', real, real_c, z, c, gain=1, cur_nimg=0)
    with torch.no_grad():
        fake_logits, real_logits = D(G(z, c), c), D(real, real_c)
    expect = torch.nn.functional.softplus(fake_logits) + torch.nn.functional.softplus(-real_logits)
    assert stats_since(collector)['Loss/D/loss'] == pytest.approx(expect.mean().item(), rel=1e-5)

# ---------------------------------------------------------------------------- R1


def test_r1_penalty_and_gradients_match_independent_computation():
    G, D = make_nets(None)
    real, real_c, z, c = make_batch(G)
    gamma, gain = 0.5, 16.0
    loss = StyleGAN2Loss('cpu', G, D, r1_gamma=gamma)

    x = real.clone().requires_grad_(True)
    grad_x, = torch.autograd.grad(D(x, None).sum(), x, create_graph=True)
    penalty = grad_x.square().sum(dim=[1, 2, 3])
    _, ours = loss.r1_penalty(real, real_c)
    torch.testing.assert_close(ours, penalty, rtol=1e-5, atol=1e-8)

    params = list(D.parameters())
    expect = torch.autograd.grad((penalty * gamma / 2).mean() * gain, params, allow_unused=True)
    zero_grads(G, D)
    loss.accumulate_gradients('Dreg', real, real_c, z, c, gain=gain, cur_nimg=0)
    for p, e in zip(params, expect):
        torch.testing.assert_close(p.grad, torch.zeros_like(p) if e is None else e, rtol=1e-4, atol=1e-7)
    assert grad_norm(G) == 0

# ---------------------------------------------------------------------------- path length


def fork_path_length(grads, ppl_power):
    """The authors' fork, written out: ws [N, L*R, w_dim] into stylegan2-ada-pytorch's formula, times R ** ppl_power.

    Per image: square the gradient, sum over w_dim, average over the num_ws * R vectors, sqrt, times R ** ppl_power.
    """
    n, w_dim = grads.shape[0], grads.shape[-1]
    rows = grads.shape[2] if grads.ndim == 4 else 1
    vectors = grads.reshape(n, -1, w_dim).double()                         # [N, L * R, w_dim]
    out = []
    for per_img in vectors:
        total = sum(float((v * v).sum()) for v in per_img)
        out.append(np.sqrt(total / len(per_img)) * rows ** ppl_power)
    return torch.tensor(out)


@pytest.mark.parametrize('reduction, ppl_power', [('sum', 0.5), ('mean', 0.0)])
@pytest.mark.parametrize('latent_rows', ROWS)
def test_path_length_matches_independent_autograd(latent_rows, reduction, ppl_power):
    G, D = make_nets(latent_rows)
    _, _, z, c = make_batch(G, n=2)
    loss = StyleGAN2Loss('cpu', G, D, style_mixing_prob=0, pl_row_reduction=reduction)

    torch.manual_seed(5)
    img, pl_grads, lengths = loss.path_lengths(z, c)

    torch.manual_seed(5)
    ws = G.mapping(z, c).detach().clone().requires_grad_(True)             # a leaf [N, L, *w_shape]
    img2 = G.synthesis(ws)
    noise = torch.randn_like(img2) / 32                                    # sqrt(H * W)
    grads, = torch.autograd.grad((img2 * noise).sum(), ws)
    assert pl_grads.shape == (2, G.num_ws, *G.w_shape)
    torch.testing.assert_close(pl_grads, grads, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(lengths.double(), fork_path_length(grads, ppl_power).double(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(img, img2)

    if latent_rows is not None:
        assert pl_grads.abs().sum() > 0, 'the latent matrix must receive a gradient'
        # Rows beyond a layer's output channels are unused; the toRGB layer uses 3 rows only.
        assert pl_grads[:, -1, 3:].abs().max() == 0 and pl_grads[:, -1, :3].abs().max() > 0
        # The two reductions differ by sqrt(R) in length (R in the penalty for the same pl_weight).
        other = path_lengths_from_grads(pl_grads, 'mean' if reduction == 'sum' else 'sum')
        ratio = np.sqrt(R) if reduction == 'sum' else 1 / np.sqrt(R)
        torch.testing.assert_close(lengths, other * ratio)


def test_default_path_length_is_the_forks_default():
    """StyleGAN2Loss and the paper presets default to ppl_power 0.5 ('sum'), the authors' default."""
    G, D = make_nets(R)
    assert StyleGAN2Loss('cpu', G, D).pl_row_reduction == 'sum'
    from configs import presets
    assert presets.COMMON['pl_rows'] == 'sum'


@pytest.mark.parametrize('latent_rows', ROWS)
def test_greg_updates_pl_mean_and_reaches_mapping(latent_rows):
    G, D = make_nets(latent_rows)
    real, real_c, z, c = make_batch(G)
    loss = StyleGAN2Loss('cpu', G, D, pl_batch_shrink=2, pl_decay=0.01)
    torch.manual_seed(3)
    _, _, lengths = loss.path_lengths(z[:2], c)
    loss.pl_mean.zero_()
    torch.manual_seed(3)
    loss.accumulate_gradients('Greg', real, real_c, z, c, gain=4, cur_nimg=0)
    assert loss.pl_mean.item() == pytest.approx(0.01 * lengths.mean().item(), rel=1e-4)
    assert G.mapping.fc0.weight.grad.abs().sum() > 0
    before = loss.pl_mean.clone()
    state = loss.state_dict()
    loss.accumulate_gradients('Greg', real, real_c, z, c, gain=4, cur_nimg=0)
    assert loss.pl_mean.item() != before.item()
    loss.load_state_dict(state)
    assert loss.pl_mean.item() == before.item()


def test_pl_row_reduction_validated():
    G, D = make_nets(R)
    with pytest.raises(ValueError, match='pl_row_reduction'):
        StyleGAN2Loss('cpu', G, D, pl_row_reduction='median')

# ---------------------------------------------------------------------------- style mixing


@pytest.mark.parametrize('w_shape', [(8,), (R, 8)])
def test_mix_styles_swaps_whole_layers(w_shape):
    n, L = 3, 6
    ws1 = torch.randn([n, 1, *w_shape]).expand(n, L, *w_shape)            # expand views, as G.mapping returns
    ws2 = torch.randn([n, 1, *w_shape]).expand(n, L, *w_shape)
    copies = ws1.clone(), ws2.clone()
    for cutoff in (torch.tensor([2]), torch.tensor([1, 3, 6])):
        mixed = mix_styles(ws1, ws2, cutoff)
        assert mixed.shape == (n, L, *w_shape)
        for i in range(n):
            k = int(cutoff[i if len(cutoff) > 1 else 0])
            assert torch.equal(mixed[i, :k], ws1[i, :k]) and torch.equal(mixed[i, k:], ws2[i, k:])
    assert torch.equal(ws1, copies[0]) and torch.equal(ws2, copies[1])


@pytest.mark.parametrize('per_image', [False, True])
def test_mixing_cutoff_distribution(per_image):
    torch.manual_seed(0)
    cut = torch.cat([mixing_cutoff(4, 6, 0.9, per_image=per_image) for _ in range(500)])
    assert cut.shape == (2000 if per_image else 500,)
    assert cut.min() >= 1 and cut.max() <= 6
    assert set(cut.tolist()) == {1, 2, 3, 4, 5, 6}
    assert (cut == 6).float().mean().item() == pytest.approx(0.1, abs=0.04)
    assert (mixing_cutoff(4, 6, 0.0) == 6).all() and (mixing_cutoff(4, 6, 1.0, per_image=True) < 6).all()


@pytest.mark.parametrize('per_image', [False, True])
@pytest.mark.parametrize('latent_rows', ROWS)
def test_run_G_style_mixing(latent_rows, per_image):
    G, D = make_nets(latent_rows)
    _, _, z, c = make_batch(G)
    ws1 = G.mapping(z, c).detach()

    _, ws = StyleGAN2Loss('cpu', G, D, style_mixing_prob=0).run_G(z, c)
    assert torch.equal(ws, ws1)

    torch.manual_seed(7)
    _, ws = StyleGAN2Loss('cpu', G, D, style_mixing_prob=1, style_mixing_per_image=per_image).run_G(z, c)
    assert ws.shape == (BATCH, G.num_ws, *G.w_shape)
    cutoffs = []
    for i in range(BATCH):
        same = [torch.equal(ws[i, l], ws1[i, l]) for l in range(G.num_ws)]
        k = same.index(False)
        assert k >= 1 and not any(same[k:]), 'layers < cutoff from latent 1, layers >= cutoff from latent 2'
        assert all(torch.equal(ws[i, l], ws[i, k]) for l in range(k, G.num_ws)), 'one second latent for all layers'
        cutoffs.append(k)
    if not per_image:
        assert len(set(cutoffs)) == 1

# ---------------------------------------------------------------------------- augmentation in the loss


def test_gradients_flow_through_augment_pipe():
    G, D = make_nets(R)
    real, real_c, z, c = make_batch(G)
    pipe = AugmentPipe(xflip=1, xint=1, brightness=1, saturation=1)
    loss = StyleGAN2Loss('cpu', G, D, augment_pipe=pipe)
    loss.accumulate_gradients('Gmain', real, real_c, z, c, gain=1, cur_nimg=0)
    assert G.synthesis.b32.torgb.weight.grad.abs().sum() > 0
    loss.accumulate_gradients('Dreg', real, real_c, z, c, gain=1, cur_nimg=0)
    assert all(torch.isfinite(p.grad).all() for p in D.parameters() if p.grad is not None)

# ---------------------------------------------------------------------------- bitwise reference of the four terms


def reference_phase_grads(G, D, phase, real, z, gain, r1_gamma, pl_mean, pl_decay=0.01, pl_weight=2.0):
    """The four terms written out directly (no style mixing, no augmentation), for torch.equal comparisons.

    Gmain: mean(softplus(-D(G(z)))) * gain. Greg: lengths of the first half of the batch, target lerped toward their
    mean, mean((len - target)^2 * w + 0 * img) * gain. Dmain: mean(softplus(D(G(z)))) * gain, then mean(0 * f(x) +
    softplus(-f(x))) * gain. Dreg: mean(0 * f(x) + r1 * gamma / 2) * gain.
    """
    sp = torch.nn.functional.softplus
    if phase in ('Gmain', 'Gboth'):
        sp(-D(G.synthesis(G.mapping(z, None)), None)).mean().mul(gain).backward()
    if phase in ('Greg', 'Gboth'):
        n = z.shape[0] // 2
        ws = G.mapping(z[:n], None)
        img = G.synthesis(ws)
        y = torch.randn_like(img) / np.sqrt(img.shape[2] * img.shape[3])
        g, = torch.autograd.grad([(img * y).sum()], [ws], create_graph=True)
        sq = g.square().sum(-1)
        lengths = (sq.sum(2) if sq.ndim == 3 else sq).flatten(1).mean(1).sqrt()
        target = pl_mean.lerp(lengths.mean(), pl_decay)
        (img[:, 0, 0, 0] * 0 + (lengths - target).square() * pl_weight).mean().mul(gain).backward()
    if phase in ('Dmain', 'Dboth'):
        with torch.no_grad():
            fake = G.synthesis(G.mapping(z, None))
        sp(D(fake, None)).mean().mul(gain).backward()
    if phase[0] == 'D':
        x = real.detach().requires_grad_(phase != 'Dmain')
        f = D(x, None)
        total = f * 0
        if phase != 'Dreg':
            total = total + sp(-f)
        if phase != 'Dmain':
            gx, = torch.autograd.grad([f.sum()], [x], create_graph=True)
            total = total + (gx.square().sum([1, 2, 3]) * (r1_gamma / 2)).unsqueeze(1)
        total.mean().mul(gain).backward()


@pytest.mark.parametrize('latent_rows', ROWS)
@pytest.mark.parametrize('phase', PHASES)
def test_phase_gradients_bitwise_equal_to_reference(latent_rows, phase):
    grads = []
    for use_reference in (False, True):
        G, D = make_nets(latent_rows)
        real, _, z, _ = make_batch(G)
        G.requires_grad_(phase[0] == 'G')
        D.requires_grad_(phase[0] == 'D')
        pl_mean = torch.tensor(0.3)
        torch.manual_seed(11)
        if use_reference:
            reference_phase_grads(G, D, phase, real, z, gain=3.0, r1_gamma=1.5, pl_mean=pl_mean)
        else:
            loss = StyleGAN2Loss('cpu', G, D, r1_gamma=1.5, style_mixing_prob=0)
            loss.pl_mean.copy_(pl_mean)
            loss.accumulate_gradients(phase, real, None, z, None, gain=3.0, cur_nimg=0)
        grads.append([None if p.grad is None else p.grad.clone() for p in [*G.parameters(), *D.parameters()]])
    assert any(g is not None for g in grads[0])
    for ours, ref in zip(*grads):
        assert (ours is None) == (ref is None)
        assert ours is None or torch.equal(ours, ref)
