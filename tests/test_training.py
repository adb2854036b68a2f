"""Training loop on CPU at 16 px: tiny runs of both generators, snapshots, resume, interrupted writes, the
non-finite gradient guard, presets and `train.py --dry-run`."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import train as train_cli
from configs import presets
from conftest import shared_fixture
from torch_utils import checkpoint
from training import phases as phase_lib, snapshot
from training.augment import AUGPIPE_SPECS
from training.loss import StyleGAN2Loss
from training.networks import Generator
from training.run_setup import setup_backends as _setup_backends
from training.tiny_data import write_tiny_dataset
from training.training_loop import TrainingRun, training_loop

ROWS = 32   # latent rows of the tiny overparameterized generator (>= its widest layer, 32 channels)


@pytest.fixture(autouse=True)
def _one_thread():
    # Small CPU convolutions: with 2 threads on a loaded 2-core machine OpenMP contention makes them ~100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def data16(tmp_path_factory):
    path = tmp_path_factory.mktemp('data') / 'tiny16.zip'
    write_tiny_dataset(str(path), num_images=32, resolution=16, seed=0)
    return str(path)


def tiny_config(data, rows=None, **overrides):
    """4 images per step at 16 px; 4 steps (0.016 kimg), a tick every 2 steps, a snapshot every tick."""
    opts = dict(cfg='auto', data=data, rows=rows, dim=32, cbase=256, cmax=32, batch=4, mbstd=2, precision='fp32',
                kimg=0.016, tick=0.008, snap=1, workers=0, grid=2, metrics=[], gamma=0.05)
    opts.update(overrides)
    return presets.setup_training_config(**opts)


def read_stats(run_dir):
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        return [json.loads(line) for line in f]


def opt_states(run):
    return {key: opt.state_dict() for key, opt in phase_lib.optimizers(run.phases).items()}


def assert_same_opt_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        sa, sb = a[key]['state'], b[key]['state']
        assert sa.keys() == sb.keys() and len(sa) > 0
        for idx in sa:
            for name, value in sa[idx].items():
                assert torch.equal(torch.as_tensor(value).cpu(), torch.as_tensor(sb[idx][name]).cpu()), (key, idx, name)

#----------------------------------------------------------------------------

@pytest.mark.parametrize('rows, aug', [(None, 'noaug'), (ROWS, 'noaug'), (None, 'ada')],
                         ids=['baseline', 'overparam', 'baseline-ada'])
def test_tiny_run_trains_and_snapshots(data16, tmp_path, rows, aug):
    run_dir = str(tmp_path / 'run')
    summary = training_loop(run_dir=run_dir, verbose=False, **tiny_config(data16, rows=rows, aug=aug))
    assert summary['cur_nimg'] == 16 and summary['batch_idx'] == 4 and summary['skipped_steps'] == 0
    for name in ['network-snapshot-000000.016.pkl', 'training-state-000000.016.pt', 'reals.png', 'fakes_init.png',
                 'fakes000000.016.png', 'log.txt', 'stats.jsonl']:
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert not [f for f in os.listdir(run_dir) if '.tmp' in f]

    stats = read_stats(run_dir)
    assert [round(s['Progress/kimg']['mean'], 3) for s in stats] == [0.004, 0.012, 0.016]
    for key in ['Loss/G/loss', 'Loss/D/loss', 'Loss/r1_penalty', 'Loss/pl_penalty']:
        values = [s[key]['mean'] for s in stats if key in s]
        assert values and all(v is not None and np.isfinite(v) for v in values), key

    data = checkpoint.load_network_pkl(os.path.join(run_dir, 'network-snapshot-000000.016.pkl'))
    assert {'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'} <= set(data)
    assert data['cur_nimg'] == 16 and data['G'].latent_rows == rows
    if aug == 'ada':   # p starts at 0 and moves by 4 * 4 / 500k at batch 4 (up only if D's real signs exceed 0.6)
        assert float(data['augment_pipe'].p) in (0.0, pytest.approx(16 / 500e3))
    else:
        assert data['augment_pipe'] is None
    assert data['training_set_kwargs']['path'] == data16
    # Training moved G away from its initialization, and G_ema lags behind G.
    torch.manual_seed(0)                                            # the loop builds G first with random_seed 0
    G_init = Generator(**data['G']._init_kwargs)
    moved = [not torch.equal(a, b) for a, b in zip(G_init.parameters(), data['G'].parameters())]
    assert any(moved)
    assert any(not torch.equal(a, b) for a, b in zip(data['G'].parameters(), data['G_ema'].parameters()))


def test_resume_restores_counter_and_optimizer_state(data16, tmp_path):
    run1 = str(tmp_path / 'run1')
    training_loop(run_dir=run1, verbose=False, **tiny_config(data16, rows=ROWS))
    state_path = os.path.join(run1, 'training-state-000000.016.pt')
    saved = snapshot.load_training_state(state_path)
    assert saved['progress']['cur_nimg'] == 16 and saved['progress']['batch_idx'] == 4

    # Resuming from the pickle finds its training state: counters, optimizers, weights and loss state come back.
    cfg = dict(tiny_config(data16, rows=ROWS, kimg=0.032),
               resume_pkl=os.path.join(run1, 'network-snapshot-000000.016.pkl'))
    run = TrainingRun.from_kwargs(run_dir=str(tmp_path / 'run2'), verbose=False, **cfg)
    try:
        assert run.progress.cur_nimg == 16 and run.progress.batch_idx == 4 and not run.fresh
        assert_same_opt_state(opt_states(run), saved['optimizers'])
        for name, tensor in run.G.state_dict().items():
            assert torch.equal(tensor, saved['networks']['G'][name]), name
        assert torch.equal(run.loss.pl_mean, saved['loss']['pl_mean'])
        lr = cfg['G_opt_kwargs']['lr'] * 4 / 5                       # mb_ratio of G_reg_interval 4
        assert phase_lib.optimizers(run.phases)['G'].param_groups[0]['lr'] == pytest.approx(lr)
        summary = run.train()
    finally:
        run.close()
    assert summary['cur_nimg'] == 32 and summary['batch_idx'] == 8
    kimgs = [s['Progress/kimg']['mean'] for s in read_stats(str(tmp_path / 'run2'))]
    assert min(kimgs) > 0.016 and max(kimgs) == pytest.approx(0.032)
    # Adam step counts continue: G = 8 Gmain + Greg at batch 0 and 4; D = 8 Dmain + Dreg at batch 0 only.
    final = snapshot.load_training_state(summary['training_state'])
    steps = {key: float(final['optimizers'][key]['state'][0]['step']) for key in 'GD'}
    assert steps == {'G': 10.0, 'D': 9.0}


def test_weights_only_resume_from_nvidia_pickle(tmp_path):
    """NVIDIA's snapshot (32 px, noise inputs) loads into the tiny preset, even into the overparameterized G."""
    pkl = str(shared_fixture('nvlabs-sg2ada-32px.pkl'))
    data32 = str(tmp_path / 'tiny32.zip')
    write_tiny_dataset(data32, num_images=8, resolution=32, seed=0)
    c = presets.setup_training_config(cfg='tiny-overparam', data=data32, noise=True, workers=0, resume=pkl,
                                      resume_kimg=1.5)
    run = TrainingRun.from_kwargs(run_dir=str(tmp_path / 'run'), verbose=False, **c)
    try:
        nv = checkpoint.load_network_pkl(pkl)
        assert run.progress.cur_nimg == 1500 and run.fresh and run.G.latent_rows == 64
        for key in ['G', 'D', 'G_ema']:
            ours = getattr(run, key).state_dict()
            for name, tensor in nv[key].state_dict().items():
                assert torch.equal(ours[name], tensor), (key, name)
        assert all(len(opt.state) == 0 for opt in phase_lib.optimizers(run.phases).values())
    finally:
        run.close()


def test_weights_only_resume_from_a_released_generator_pt(tmp_path):
    """A rosinality .pt holding g_ema alone (as NVIDIA's TF Gs, converted) resumes by content despite its .pt
    name: G_ema and G both start from g_ema, D stays fresh."""
    from training.formats import rosinality
    tf = checkpoint.load_network_pkl(shared_fixture('tf-stylegan2-32px.pkl'))
    pt = tmp_path / '550000.pt'
    torch.save(rosinality.to_rosinality(tf['G_ema'])[0], pt)
    data32 = str(tmp_path / 'tiny32.zip')
    write_tiny_dataset(data32, num_images=8, resolution=32, seed=0)
    c = presets.setup_training_config(cfg='tiny', data=data32, noise=True, workers=0, resume=str(pt))
    run = TrainingRun.from_kwargs(run_dir=str(tmp_path / 'run'), verbose=False, **c)
    try:
        for key in ['G', 'G_ema']:
            ours = getattr(run, key).state_dict()
            for name, tensor in tf['G_ema'].state_dict().items():
                assert torch.equal(ours[name], tensor), (key, name)
        assert 'not in the pickle: D' in open(os.path.join(str(tmp_path / 'run'), 'log.txt')).read()
    finally:
        run.close()


class SimulatedKill(BaseException):
    """Not an Exception: like a signal that interrupts the write."""


def test_interrupted_snapshot_keeps_previous(data16, tmp_path, monkeypatch):
    run_dir = str(tmp_path / 'run')
    training_loop(run_dir=run_dir, verbose=False, **tiny_config(data16))
    before = {name: open(os.path.join(run_dir, name), 'rb').read()
              for name in ['network-snapshot-000000.016.pkl', 'training-state-000000.016.pt']}

    def dump_half(obj, f, protocol=None):
        f.write(pickle.dumps(obj, protocol=protocol)[:1000])
        raise SimulatedKill()
    monkeypatch.setattr(checkpoint.pickle, 'dump', dump_half)
    cfg = dict(tiny_config(data16, kimg=0.032), resume_pkl=os.path.join(run_dir, 'training-state-000000.016.pt'))
    with pytest.raises(SimulatedKill):
        training_loop(run_dir=run_dir, verbose=False, **cfg)
    monkeypatch.undo()

    names = sorted(os.listdir(run_dir))
    assert not [n for n in names if '.tmp' in n], names
    for name, content in before.items():
        assert open(os.path.join(run_dir, name), 'rb').read() == content, name
    assert checkpoint.load_network_pkl(os.path.join(run_dir, 'network-snapshot-000000.016.pkl'))['cur_nimg'] == 16

    # The same for the training state: a failed torch.save leaves the old file and no temporary one.
    def save_half(obj, f, *args, **kwargs):
        f.write(b'\x00' * 100)
        raise SimulatedKill()
    monkeypatch.setattr(snapshot.torch, 'save', save_half)
    with pytest.raises(SimulatedKill):
        snapshot.save_training_state(os.path.join(run_dir, 'training-state-000000.016.pt'), {'x': 1})
    monkeypatch.undo()
    assert sorted(os.listdir(run_dir)) == names
    assert snapshot.load_training_state(
        os.path.join(run_dir, 'training-state-000000.016.pt'))['progress']['cur_nimg'] == 16


def test_nan_gradient_skips_step(data16, tmp_path, monkeypatch):
    run = TrainingRun.from_kwargs(run_dir=str(tmp_path / 'unit'), verbose=False, **tiny_config(data16))
    try:
        real_img, real_c, gen_z, gen_c = run.fetch_batch()
        phase = next(p for p in run.phases if p.name == 'Dmain')
        original = run.loss.accumulate_gradients

        def poisoned(**kwargs):
            original(**kwargs)
            next(p for p in phase.module.parameters() if p.grad is not None).grad.view(-1)[0] = float('nan')
        monkeypatch.setattr(run.loss, 'accumulate_gradients', poisoned)
        before = [p.detach().clone() for p in phase.module.parameters()]
        assert not phase_lib.run_phase(phase, run.loss, real_img, real_c, gen_z[2].split(4), gen_c[2].split(4), 0)
        assert all(torch.equal(a, b) for a, b in zip(before, phase.module.parameters()))
        assert len(phase.opt.state) == 0                              # Adam never saw the step
        monkeypatch.setattr(run.loss, 'accumulate_gradients', original)
        assert phase_lib.run_phase(phase, run.loss, real_img, real_c, gen_z[2].split(4), gen_c[2].split(4), 0)
        assert not all(torch.equal(a, b) for a, b in zip(before, phase.module.parameters()))
    finally:
        run.close()

    # In the loop: every Gmain step gets an Inf gradient; the run finishes, counts and logs the skips.
    def inf_in_gmain(self, phase, **kwargs):
        original_fn(self, phase=phase, **kwargs)
        if phase == 'Gmain':
            next(p for p in self.G.parameters() if p.grad is not None).grad.view(-1)[0] = float('inf')
    original_fn = StyleGAN2Loss.accumulate_gradients
    monkeypatch.setattr(StyleGAN2Loss, 'accumulate_gradients', inf_in_gmain)
    run_dir = str(tmp_path / 'loop')
    summary = training_loop(run_dir=run_dir, verbose=False, **tiny_config(data16))
    assert summary['skipped_steps'] == 4
    assert read_stats(run_dir)[-1]['Progress/skipped_steps']['mean'] == 4
    assert 'non-finite gradients in Gmain' in open(os.path.join(run_dir, 'log.txt')).read()

def test_metrics_hook(data16, tmp_path):
    calls = []

    def fake_metric(name, G, dataset_kwargs, num_gpus, rank, device):
        calls.append((name, G.latent_rows, dataset_kwargs['path'], num_gpus, rank, str(device)))
        return dict(results=dict(score=1.5), metric=name)
    cfg = tiny_config(data16, rows=ROWS, kimg=0.004, metrics=['fake'])
    training_loop(run_dir=str(tmp_path / 'a'), verbose=False, **dict(cfg, metric_fn=fake_metric))
    assert calls == [('fake', ROWS, data16, 1, 0, 'cpu')]
    (line,) = [json.loads(x) for x in open(tmp_path / 'a' / 'metric-fake.jsonl')]
    assert line['results'] == dict(score=1.5) and line['kimg'] == 0.004
    assert line['snapshot_pkl'] == 'network-snapshot-000000.004.pkl'

    # A metric module that cannot be imported costs one warning, not the run. abort_fn stops after a tick.
    progress = []
    summary = training_loop(run_dir=str(tmp_path / 'b'), verbose=False,
                            **dict(cfg, total_kimg=1, metric_fn='no_such_package.metric_main.calc_metric',
                                   abort_fn=lambda: len(progress) >= 1, progress_fn=lambda *a: progress.append(a)))
    assert summary['aborted'] and summary['cur_nimg'] == 12 and progress == [(4, 1000), (12, 1000)]
    assert os.path.isfile(tmp_path / 'b' / 'network-snapshot-000000.012.pkl')
    assert not os.path.exists(tmp_path / 'b' / 'metric-fake.jsonl')
    assert 'Warning: metrics fake skipped: cannot import' in open(tmp_path / 'b' / 'log.txt').read()

#----------------------------------------------------------------------------
# Presets, precision and the CLI.

def test_paper_presets_match_auto_at_256px_on_4_gpus(tmp_path):
    data256 = str(tmp_path / 'd256.zip')
    write_tiny_dataset(data256, num_images=2, resolution=256, seed=0)
    auto = presets.auto_options(256, 4)
    assert auto == dict(batch=64, batch_gpu=16, mbstd=4, cbase=16384, lr=0.0025, gamma=pytest.approx(0.2048), ema=20)
    for cfg, rows in [('paper256-baseline', None), ('paper256-overparam', 512)]:
        c = presets.setup_training_config(cfg=cfg, data=data256)
        assert c.batch_size == 64 and c.batch_gpu == 16 and c.ema_kimg == 20 and c.ema_rampup == 0.05
        assert c.loss_kwargs['r1_gamma'] == pytest.approx(0.2048) and c.loss_kwargs['style_mixing_prob'] == 0.9
        assert (c.G_opt_kwargs == dict(class_name='torch.optim.Adam', lr=0.0025, betas=[0, 0.99], eps=1e-8)
                == c.D_opt_kwargs)
        syn = c.G_kwargs['synthesis_kwargs']
        assert (c.G_kwargs['latent_rows'] == rows
                and c.G_kwargs['mapping_kwargs'] == dict(num_layers=2, lr_multiplier=0.01))
        assert (syn['channel_base'], syn['channel_max'], syn['use_noise']) == (16384, 512, False)
        assert c.precision == 'fp32' and syn['num_fp16_res'] == 0 and syn['conv_clamp'] is None
        assert (c.D_kwargs['epilogue_kwargs']['mbstd_group_size'] == 4
                and (c.G_reg_interval, c.D_reg_interval) == (4, 16))
        # NVIDIA's default augmentation: ADA with the 'bgc' pipe at target 0.6, p from 0, 500 kimg speed, no x-flips.
        assert c.augment_kwargs == dict(class_name='training.augment.AugmentPipe',
                                        **AUGPIPE_SPECS[presets.DEFAULT_AUGPIPE])
        assert c.ada_target == 0.6 and c.augment_p == 0 and not c.training_set_kwargs['xflip']
        assert c.loss_kwargs['pl_row_reduction'] == 'sum' and c.loss_kwargs['pl_weight'] == 2
    plain = presets.setup_training_config(cfg='paper256-overparam', data=data256, aug='noaug', mirror=True,
                                          pl_rows='mean')
    assert plain.augment_kwargs is None and plain.ada_target is None and plain.training_set_kwargs['xflip']
    assert plain.loss_kwargs['pl_row_reduction'] == 'mean'
    mixed = presets.setup_training_config(cfg='paper256-overparam', data=data256, precision='mixed', gamma=1, gpus=4,
                                          aug='ada')
    assert mixed.G_kwargs['synthesis_kwargs']['num_fp16_res'] == 4 and mixed.D_kwargs['conv_clamp'] == 256
    assert mixed.loss_kwargs['r1_gamma'] == 1 and mixed.batch_gpu == 16 and mixed.ada_target == 0.6
    with pytest.raises(ValueError, match='set up for 32x32 images'):
        presets.setup_training_config(cfg='tiny', data=data256)
    with pytest.raises(ValueError, match='must divide'):
        presets.setup_training_config(cfg='paper256-baseline', data=data256, batch_gpu=24)
    with pytest.raises(ValueError, match='too small'):
        presets.setup_training_config(cfg='paper256-baseline', data=data256, rows=256)


def test_precision_sets_and_restores_backend_flags():
    G_kwargs, D_kwargs = dict(synthesis_kwargs=dict(num_fp16_res=0)), dict(num_fp16_res=0)
    old = _setup_backends('tf32', False, G_kwargs, D_kwargs)
    try:
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        _setup_backends('fp32', False, G_kwargs, D_kwargs)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = old
    with pytest.raises(ValueError, match='num_fp16_res=4'):
        _setup_backends('fp32', False, dict(synthesis_kwargs=dict(num_fp16_res=4)), D_kwargs)


def test_cli_dry_run_and_auto_resume(data16, tmp_path):
    outdir = str(tmp_path / 'runs')
    args = ['--outdir', outdir, '--data', data16, '--cfg', 'auto', '--rows', str(ROWS), '--dim', '32', '--cbase', '256',
            '--cmax', '32', '--batch', '4', '--mbstd', '2', '--precision', 'fp32', '--tick', '0.008', '--snap', '1',
            '--workers', '0', '--grid', '2', '--metrics', 'none', '--device', 'cpu', '--gamma', '0.05']
    result = CliRunner().invoke(train_cli.main, args + ['--kimg', '0.008', '--dry-run'])
    assert result.exit_code == 0, result.output
    assert '"latent_rows": 32' in result.output and 'Dry run: exiting.' in result.output
    assert not os.path.exists(outdir)

    result = CliRunner().invoke(train_cli.main, args + ['--kimg', '0.008'])
    assert result.exit_code == 0, result.output
    (run_name,) = os.listdir(outdir)
    assert run_name == '00000-tiny16-auto-gpus1-batch4-gamma0.05-rows32'
    options = json.load(open(os.path.join(outdir, run_name, 'training_options.json')))
    assert options['G_kwargs']['latent_rows'] == ROWS and options['cfg'] == 'auto' and options['total_kimg'] == 0.008

    # --resume auto: same command with a longer schedule continues in the same run directory.
    result = CliRunner().invoke(train_cli.main, args + ['--kimg', '0.016', '--resume', 'auto'])
    assert result.exit_code == 0, result.output
    assert os.listdir(outdir) == [run_name]
    log = open(os.path.join(outdir, run_name, 'log.txt')).read()
    assert 'Resumed from' in log and 'kimg 0.008' in log
    assert read_stats(os.path.join(outdir, run_name))[-1]['Progress/kimg']['mean'] == pytest.approx(0.016)

    result = CliRunner().invoke(train_cli.main, args + ['--batch', '3', '-n'])
    assert result.exit_code != 0 and '--mbstd=2 must divide --batch-gpu=3' in result.output


def test_committed_help_is_current():
    """docs/train-help.txt is `python train.py --help`; regenerate it when the options change."""
    result = CliRunner().invoke(train_cli.main, ['--help'], prog_name='train.py')
    path = os.path.join(os.path.dirname(__file__), '..', 'docs', 'train-help.txt')
    assert result.exit_code == 0 and result.output == open(path).read()

#----------------------------------------------------------------------------


def test_dataset_path_is_recorded_absolute(tmp_path, monkeypatch):
    """Snapshots record the dataset so that calc_metrics.py finds it from any folder."""
    write_tiny_dataset(str(tmp_path / 'd16.zip'), num_images=2, resolution=32, seed=0)
    monkeypatch.chdir(tmp_path)
    c = presets.setup_training_config(cfg='tiny', data='d16.zip')
    assert c.training_set_kwargs['path'] == str(tmp_path / 'd16.zip')
