"""Training dynamics against independently computed formulas (G loss, EMA decay and ramp-up, ADA's p step, the
correlated style-mixing latent), and the guards that keep running statistics finite (pl_mean, w_avg, G_ema, p)."""

import numpy as np
import pytest
import torch

from configs import presets
from conftest import tiny_discriminator_kwargs, tiny_generator_kwargs
from torch_utils import training_stats
from training import networks, phases as phase_lib
from training.augment import AugmentPipe
from training.loss import StyleGAN2Loss
from training.tiny_data import write_tiny_dataset
from training.training_loop import TrainingRun

R = 32


def make_nets(rows=None):
    torch.manual_seed(1)
    G = networks.Generator(**tiny_generator_kwargs(latent_rows=rows)).train()
    D = networks.Discriminator(**tiny_discriminator_kwargs()).train()
    return G, D

# ---------------------------------------------------------------------------- G loss


@pytest.mark.parametrize('rows', [None, R])
def test_generator_loss_and_gradient_match_non_saturating_formula(rows):
    """Gmain back-propagates gain * mean(softplus(-D(G(z)))) into G: compare with autograd of the formula."""
    G, D = make_nets(rows)
    z = G.sample_z(4, generator=torch.Generator().manual_seed(3))
    gain = 3.0
    params = list(G.parameters())
    logits = D(G(z, None), None)
    expect_loss = torch.log1p(torch.exp(-logits.detach().double())).mean()            # -log(sigmoid(f)), in float64
    expect = torch.autograd.grad(torch.nn.functional.softplus(-logits).mean() * gain, params, allow_unused=True)

    G.requires_grad_(True)
    D.requires_grad_(False)
    loss = StyleGAN2Loss('cpu', G, D, style_mixing_prob=0)
    collector = training_stats.Collector(regex='Loss/G/loss')
    loss.accumulate_gradients('Gmain', None, None, z, None, gain=gain, cur_nimg=0)
    collector.update()
    assert collector.mean('Loss/G/loss') == pytest.approx(float(expect_loss), rel=1e-5)
    for p, e in zip(params, expect):
        torch.testing.assert_close(p.grad, torch.zeros_like(p) if e is None else e, rtol=1e-4, atol=1e-7)
    # The direction: a step along -grad raises D's score of the fakes.
    with torch.no_grad():
        for p in params:
            p -= 1e-2 * p.grad / max(float(p.grad.abs().max()), 1e-12)
        assert D(G(z, None), None).mean() > logits.mean()

# ---------------------------------------------------------------------------- EMA


def test_ema_beta_is_half_life_in_images_with_rampup():
    # Half-life 10 kimg (ramp-up 0.05 * 1M images = 50k does not bind): after 10k images G_ema keeps half.
    beta = phase_lib.ema_beta(cur_nimg=1_000_000, batch_size=64, ema_kimg=10, ema_rampup=0.05)
    assert beta == pytest.approx(0.5 ** (64 / 10_000), rel=1e-12)
    assert beta ** (10_000 / 64) == pytest.approx(0.5, rel=1e-9)
    # Early on the ramp-up binds: half-life 0.05 * 2000 = 100 images.
    assert phase_lib.ema_beta(2000, 64, 10, 0.05) == pytest.approx(0.5 ** (64 / 100), rel=1e-12)
    assert phase_lib.ema_beta(2000, 64, 10, None) == pytest.approx(0.5 ** (64 / 10_000), rel=1e-12)
    assert phase_lib.ema_beta(0, 64, 10, 0.05) == pytest.approx(0.0, abs=1e-300)   # first step: G_ema = G


def test_update_ema_interpolates_parameters_and_copies_buffers():
    G, _ = make_nets()
    G_ema = networks.Generator(**tiny_generator_kwargs())
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    before = {k: v.clone() for k, v in G_ema.state_dict().items()}
    assert phase_lib.update_ema(G_ema, G, 0.75)
    params = dict(G.named_parameters())
    for name, tensor in G_ema.named_parameters():
        torch.testing.assert_close(tensor, 0.75 * before[name] + 0.25 * params[name], rtol=1e-5, atol=1e-5)
    assert torch.equal(G_ema.mapping.w_avg, G.mapping.w_avg)

# ---------------------------------------------------------------------------- ADA


@pytest.mark.parametrize('rt, sign', [(0.7, 1), (0.5, -1)])
def test_ada_step_direction_and_size(rt, sign):
    pipe = AugmentPipe(xflip=1)
    pipe.p.fill_(0.3)
    step = 64 * 4 / (500 * 1000)                                              # batch * interval / (ada_kimg * 1000)
    assert phase_lib.ada_step(rt, 0.6, 64, 4, 500) == pytest.approx(sign * step, rel=1e-12)
    assert phase_lib.adjust_augment_p(pipe, rt, 0.6, 64, 4, 500)
    assert float(pipe.p) == pytest.approx(0.3 + sign * step, rel=1e-6)
    pipe.p.fill_(0.0001)
    phase_lib.adjust_augment_p(pipe, 0.0, 0.6, 64, 4, 500)                     # p never goes below 0
    assert float(pipe.p) == 0


def test_ada_in_the_loop_uses_the_mean_real_sign_over_the_interval(tiny_run):
    run = tiny_run
    run.augment_pipe.p.fill_(0.5)
    run.progress.batch_idx = run.cfg.ada_interval                             # an adjustment is due
    run.ada_stats.update()
    training_stats.report('Loss/signs/real', torch.tensor([1.0, 1.0, 1.0, -1.0]))   # rt = 0.5 < target 0.6
    run._ada_update()
    step = run.cfg.batch_size * run.cfg.ada_interval / (run.cfg.ada_kimg * 1000)
    assert float(run.augment_pipe.p) == pytest.approx(0.5 - step, rel=1e-6)
    assert run.progress.ada_num == 0 and run.progress.ada_sum == 0

# ---------------------------------------------------------------------------- style mixing


def test_style_mixing_latent_has_the_papers_row_correlation():
    """The second latent of style mixing is a latent matrix with correlated rows, Z_i = (z~_i + z~) / sqrt(2)."""
    G, D = make_nets(R)
    captured = []

    def spy(module, args, kwargs):
        if kwargs.get('skip_w_avg_update'):
            captured.append(args[0].detach().clone())
    G.mapping.register_forward_pre_hook(spy, with_kwargs=True)
    z = G.sample_z(64, generator=torch.Generator().manual_seed(0))
    StyleGAN2Loss('cpu', G, D, style_mixing_prob=1).run_G(z, None)
    (second,) = captured
    assert second.shape == z.shape and not torch.equal(second, z)
    # Per image and w dimension, the mean over the R rows has variance 1/2 + 1/(2R) (shared part) vs 1/R if independent.
    row_mean_var = second.mean(dim=1).var().item()
    assert row_mean_var == pytest.approx(0.5 + 0.5 / R, rel=0.15)
    assert second.var().item() == pytest.approx(1.0, rel=0.1)               # unit variance per entry

# ---------------------------------------------------------------------------- guards


@pytest.fixture
def tiny_run(tmp_path):
    data = str(tmp_path / 'tiny16.zip')
    write_tiny_dataset(data, num_images=8, resolution=16, seed=0)
    c = presets.setup_training_config(cfg='auto', data=data, rows=R, dim=32, cbase=256, cmax=32, batch=4, mbstd=2,
                                      precision='fp32', kimg=0.016, tick=0.008, snap=1, workers=0, grid=2,
                                      metrics=[], gamma=0.05, G_reg=1, aug='ada', augpipe='bc')
    run = TrainingRun.from_kwargs(run_dir=str(tmp_path / 'run'), verbose=False, **c)
    yield run
    run.close()


def test_nonfinite_path_length_keeps_pl_mean(tiny_run, monkeypatch):
    run = tiny_run
    run.step()
    good = run.loss.pl_mean.clone()
    assert float(good) > 0
    original = run.loss.path_lengths

    def nan_lengths(z, c, *spread):
        img, grads, lengths = original(z, c, *spread)
        return img, grads, lengths * float('nan')
    monkeypatch.setattr(run.loss, 'path_lengths', nan_lengths)
    run.step()
    assert torch.equal(run.loss.pl_mean, good) and run.loss.pl_mean_skips == 1
    assert run.progress.skipped['pl_mean'] == 1 and run.progress.skipped['Greg'] == 1
    monkeypatch.undo()
    run.step()
    assert torch.isfinite(run.loss.pl_mean) and not torch.equal(run.loss.pl_mean, good)


def test_nonfinite_latent_keeps_w_avg(tiny_run, monkeypatch):
    run = tiny_run
    run.step()
    good = run.G.mapping.w_avg.clone()
    original = run.G.sample_z
    monkeypatch.setattr(run.G, 'sample_z', lambda n, **kw: original(n, **kw) * float('nan'))
    run.step()
    assert torch.equal(run.G.mapping.w_avg, good)
    assert run.progress.skipped['w_avg'] == 1
    assert torch.isfinite(run.G_ema.mapping.w_avg).all()
    monkeypatch.undo()
    run.step()
    assert not torch.equal(run.G.mapping.w_avg, good) and torch.isfinite(run.G.mapping.w_avg).all()


def test_nonfinite_generator_weights_keep_G_ema(tiny_run):
    run = tiny_run
    run.step()
    before = {k: v.clone() for k, v in run.G_ema.state_dict().items()}
    with torch.no_grad():
        run.G.synthesis.b16.torgb.bias[0] = float('inf')
    run.step()
    assert run.progress.skipped['G_ema'] == 1
    for name, tensor in run.G_ema.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_nonfinite_ada_statistic_keeps_p(tiny_run):
    run = tiny_run
    run.augment_pipe.p.fill_(0.25)
    run.progress.batch_idx = run.cfg.ada_interval
    run.ada_stats.update()
    training_stats.report('Loss/signs/real', torch.tensor([1.0, float('nan')]))
    run._ada_update()
    assert float(run.augment_pipe.p) == 0.25 and run.progress.skipped['augment_p'] == 1
    assert not phase_lib.adjust_augment_p(run.augment_pipe, float('nan'), 0.6, 4, 4, 500)
    assert float(run.augment_pipe.p) == 0.25


def test_a_nan_stat_shows_in_its_interval_only():
    """One NaN loss must not turn every later stats.jsonl value of that name into null."""
    collector = training_stats.Collector(regex='dyn/.*', keep_previous=False)
    other = training_stats.Collector(regex='dyn/.*')
    training_stats.report('dyn/x', [float('nan'), 1.0])
    collector.update()
    assert np.isnan(collector.mean('dyn/x')) and collector.num('dyn/x') == 2
    training_stats.report('dyn/x', [1.0, 3.0])
    collector.update()
    assert collector.mean('dyn/x') == 2.0 and collector.std('dyn/x') == 1.0
    other.update()                                                        # saw both intervals at once
    assert other.num('dyn/x') == 4 and np.isnan(other.mean('dyn/x'))
    training_stats.report('dyn/x', 5.0)
    other.update()
    assert other.mean('dyn/x') == 5.0
