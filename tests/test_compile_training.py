"""Gmain and Dmain compiled (training.compiled_phases) against the eager phases: one compiled iteration equals one
eager iteration (every random stream in use: style mixing, ADA, path length, R1), a killed and resumed compiled
run ends bitwise where the uninterrupted compiled run does, a compile failure leaves the eager run bitwise, and
auto's decision depends on the configuration only. Tiny 8 px networks (R = 32): compiling is what costs here (each
layer adds C++ kernels to build), so the GAN uses the fewest layers that still have every phase."""

import warnings

import pytest
import torch

from test_resume import assert_states_equal, config
from torch_utils import compiled
from training import snapshot
from training.compiled_phases import AUTO_MIN_STEPS, PhaseCompiler
from training.tiny_data import write_tiny_dataset
from training.training_loop import TrainingRun, training_loop

# Not pins_numbers: these compare compiled with eager on the same machine, and CI's second pass under another
# kernel set would compile every graph again (minutes of C++ builds on 2 cores).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures('one_thread')]


@pytest.fixture(scope='module')
def data8(tmp_path_factory):
    path = tmp_path_factory.mktemp('data') / 'tiny8.zip'
    write_tiny_dataset(str(path), num_images=24, resolution=8, seed=0)
    return str(path)


def _steps(data, tmp_path, mode, steps):
    """`steps` training steps of the test_resume configuration (step 0 runs all four phases) -> the run's state."""
    run = TrainingRun.from_kwargs(run_dir=str(tmp_path / mode), verbose=False, **dict(config(data, 0), compile=mode))
    try:
        for _ in range(steps):
            run.step()
        state = snapshot.capture_run_state(run)
        return state, run.phase_compiler.summary(), run.loss.compiled is not None
    finally:
        run.close()


def _assert_close_states(a, b, rtol):
    """Networks and Adam moments within `rtol` of their largest magnitude; counters, pl_mean's count and the RNG
    equal (the same random draws were made)."""
    for key in ('G', 'D', 'G_ema', 'augment_pipe'):
        for name, x in a['networks'][key].items():
            y = b['networks'][key][name]
            if x.is_floating_point():
                assert (x - y).abs().max() <= rtol * max(x.abs().max().item(), 1e-6), (key, name)
            else:
                assert torch.equal(x, y), (key, name)
    for key in ('G', 'D'):
        for idx, st in a['optimizers'][key]['state'].items():
            for name, x in st.items():
                y = torch.as_tensor(b['optimizers'][key]['state'][idx][name])
                x = torch.as_tensor(x)
                assert (x - y).abs().max() <= rtol * max(x.abs().max().item(), 1e-12), (key, idx, name)
    assert abs(float(a['loss']['pl_mean']) - float(b['loss']['pl_mean'])) <= rtol * abs(float(a['loss']['pl_mean']))
    assert a['progress'] == b['progress']
    assert torch.equal(a['rng'][0]['cpu'], b['rng'][0]['cpu'])


def test_compiled_iterations_equal_eager(data8, tmp_path):
    """Two iterations (the first runs Gmain, Greg, Dmain, Dreg; the second Gmain, Dmain): G, D, G_ema and both Adam
    states within 1e-4 of the eager ones, and the same random draws (the CPU generator ends in the same state)."""
    eager, _, used = _steps(data8, tmp_path, 'off', 2)
    assert not used
    fast, summary, used = _steps(data8, tmp_path, 'on', 2)
    assert used and summary['active'], summary['failure']
    assert summary['graphs'] == 4          # G with and without gradients, D frozen and trainable
    _assert_close_states(eager, fast, rtol=1e-4)


def test_killed_and_resumed_compiled_run_equals_uninterrupted(data8, tmp_path):
    c = dict(config(data8, 0), compile='on')
    full = training_loop(run_dir=str(tmp_path / 'full'), verbose=False, **c)
    ticks = []
    killed = training_loop(run_dir=str(tmp_path / 'killed'), verbose=False, **c,
                           progress_fn=lambda *a: ticks.append(a), abort_fn=lambda: len(ticks) >= 1)
    assert killed['aborted'] and killed['cur_nimg'] == 12
    resumed = training_loop(run_dir=str(tmp_path / 'killed'), verbose=False,
                            **dict(c, resume_pkl=killed['training_state']))
    assert resumed['cur_nimg'] == 32 and not resumed['aborted']
    log = (tmp_path / 'full' / 'log.txt').read_text()
    assert '--compile on: first-order phases compiled' in log and 'torch.compile failed' not in log
    assert_states_equal(snapshot.load_training_state(full['training_state']),
                        snapshot.load_training_state(resumed['training_state']))


def test_compile_failure_leaves_the_eager_run(data8, tmp_path, monkeypatch):
    """No C++ compiler: one warning, and the two iterations are bitwise the eager ones (nothing ran compiled)."""
    eager, _, _ = _steps(data8, tmp_path, 'off', 2)
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'empty-cache'))
    import torch._inductor.config
    with warnings.catch_warnings(record=True) as caught, \
            torch._inductor.config.patch({'cpp.cxx': ('/nonexistent/c++-for-test',)}):
        warnings.simplefilter('always')
        broken, summary, _ = _steps(data8, tmp_path, 'on', 2)
    fallbacks = [w for w in caught if issubclass(w.category, compiled.CompileFallbackWarning)]
    assert len(fallbacks) == 1 and not summary['active']
    assert_states_equal(eager, broken)


def test_auto_decides_from_the_configuration_only():
    cpu = torch.device('cpu')
    assert not PhaseCompiler('auto', estimates={'cpu': None}).wanted(cpu, 10**6)          # not measured
    assert not PhaseCompiler('auto', estimates={'cpu': 1.05}).wanted(cpu, 10**6)          # measured slower
    assert PhaseCompiler('auto', estimates={'cpu': 0.8}).wanted(cpu, AUTO_MIN_STEPS)
    assert not PhaseCompiler('auto', estimates={'cpu': 0.8}).wanted(cpu, AUTO_MIN_STEPS - 1)
    assert PhaseCompiler('on').wanted(cpu, 1) and not PhaseCompiler('off', estimates={'cpu': 0.1}).wanted(cpu, 10**9)
    with pytest.raises(ValueError, match='--compile'):
        PhaseCompiler('sometimes')


def test_presets_carry_the_switch(data8):
    from configs import presets
    assert presets.setup_training_config(cfg='auto', data=data8).compile == 'auto'
    assert presets.setup_training_config(cfg='auto', data=data8, compile='off').compile == 'off'
    with pytest.raises(ValueError, match="--compile must be auto, on or off, got 'fast'"):
        presets.setup_training_config(cfg='auto', data=data8, compile='fast')


def test_compiled_encoder_step_equals_eager():
    """The encoder loop's step (training.encoder_loss.EncoderLoss.terms: E, G's synthesis, LPIPS, latent MSE)
    compiled: the per-image losses and E's gradients equal the eager ones; the reports come from the same terms."""
    from conftest import tiny_generator_with_mean
    from inversion import losses
    from torch_utils import training_stats
    from training.encoder import Encoder
    from training.encoder_loss import EncoderLoss
    G = tiny_generator_with_mean(32, 8).requires_grad_(False)
    recon = losses.build_loss('random:64:0', seed=0, mse_weight=0.1)     # LPIPS of a 3-conv net: cheap to compile
    torch.manual_seed(4)
    E = Encoder.from_generator(G, 'W').train()
    loss = EncoderLoss(G, 'W', recon, latent_weight=1.0)
    torch.manual_seed(5)
    images, latents = loss.sample(2, torch.device('cpu'))
    grads, values = {}, {}
    for mode in ('off', 'on'):
        compiler = PhaseCompiler(mode)
        assert compiler.attach(loss, torch.device('cpu'), planned_steps=10**6) == (mode == 'on')
        E.zero_grad(set_to_none=True)
        collector = training_stats.Collector(regex='Loss/E/.*')
        per_image = loss(E, images, latents, kind='fake')
        per_image.sum().backward()
        collector.update()
        values[mode] = (per_image.detach(), collector.mean('Loss/E/latent'), collector.mean('Loss/E/lpips_fake'))
        grads[mode] = torch.cat([p.grad.flatten() for p in E.parameters() if p.grad is not None])
        if mode == 'on':
            assert compiler.summary()['active'] and compiler.summary()['graphs'] == 1
    torch.testing.assert_close(values['on'][0], values['off'][0], rtol=1e-5, atol=1e-7)
    assert abs(values['on'][1] - values['off'][1]) <= 1e-5 * abs(values['off'][1])
    assert abs(values['on'][2] - values['off'][2]) <= 1e-5 * abs(values['off'][2])
    assert (grads['on'] - grads['off']).norm() <= 1e-4 * grads['off'].norm()


def test_first_order_calls_take_the_compiled_G_only_at_full_row_spread():
    """StyleGAN2Loss.run_G: the compiled G (attached PhaseCompiler) for first-order terms at the paper's row spread
    (1); eagerly during a `--row-start spread` warm-up (spread < 1: a graph would be specialised to each value) and
    for the terms that take gradients of gradients."""
    from training.loss import StyleGAN2Loss

    class Recorder:
        def run_G(self, loss, z, c):
            return 'compiled', None

    class Loss:
        compiled = Recorder()

        def generate(self, z, c, spread=1.0):
            return 'eager', spread
    run_G = StyleGAN2Loss.run_G
    assert run_G(Loss(), None, None, 1.0, first_order=True) == ('compiled', None)
    assert run_G(Loss(), None, None, 0.5, first_order=True) == ('eager', 0.5)
    assert run_G(Loss(), None, None, 1.0) == ('eager', 1.0)
