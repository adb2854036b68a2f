"""Fine-tuning a pretrained StyleGAN2 into R latent rows (training.finetune, `train.py --resume=PKL --rows R`):
the run starts from the checkpoint's architecture and weights (identical rows give the pretrained images, D is the
checkpoint's, w_avg carries over, a missing D starts fresh), refuses what it cannot start from with one line,
resumes bitwise after a kill, and draws its rows as training.row_start says (formula checked independently)."""

import json
import math
import os

import pytest
import torch
from click.testing import CliRunner

import train as train_cli
from configs import presets
from conftest import shared_fixture, tiny_discriminator_kwargs, tiny_generator_kwargs
from test_resume import assert_states_equal
from torch_utils import checkpoint
from training import networks, row_start, run_setup, snapshot
from training.finetune import FinetuneError, adopt_resume_source
from training.tiny_data import write_tiny_dataset
from training.training_loop import TrainingRun, training_loop

pytestmark = pytest.mark.usefixtures('one_thread')

ROWS = 64                               # the tiny-overparam preset's rows; >= every test network's widest layer

# Checkpoints to start from, one per format the loader reads (fixture name, or 'ours' for a pickle of our own):
# ours, NVIDIA's stylegan2-ada-pytorch and stylegan3-repository pickles, NVIDIA's TensorFlow pickle, rosinality's
# training checkpoint (a .pt: told from a training state by content).
PRETRAINED = ['ours', 'nvlabs-sg2ada-32px.pkl', 'nvlabs-sg3-stylegan2-32px-cond.pkl', 'tf-stylegan2-32px.pkl',
              'rosinality-stylegan2-32px-narrow.pt']


@pytest.fixture(scope='module')
def data32(tmp_path_factory):
    """16 shapes at 32 px with 3 classes (used by the conditional checkpoint only)."""
    path = tmp_path_factory.mktemp('data') / 'tiny32.zip'
    write_tiny_dataset(str(path), num_images=16, resolution=32, seed=0, labels=True)
    return str(path)


def our_pretrained(path, with_D=True, with_G=True, noise=True, rows=None):
    """A seeded tiny StyleGAN2 of our own (noise inputs, non-zero w_avg) pickled like a snapshot."""
    torch.manual_seed(5)
    G = networks.Generator(**tiny_generator_kwargs(latent_rows=rows, dim=32, use_noise=noise)).eval()
    G.mapping.w_avg.copy_(torch.randn(G.w_dim) * 0.3)
    G_ema = networks.Generator(**G._init_kwargs).eval()
    G_ema.load_state_dict({k: v + 0.01 * torch.randn_like(v) for k, v in G.state_dict().items()})
    D = networks.Discriminator(**tiny_discriminator_kwargs(dim=32)).eval()
    data = dict(G=G if with_G else None, G_ema=G_ema, D=D if with_D else None, augment_pipe=None)
    checkpoint.save_network_pkl(path, data)
    return str(path)


def pretrained_path(name, tmp_path):
    if name == 'ours':
        return our_pretrained(tmp_path / 'ours.pkl')
    return str(shared_fixture(name))


def config(data, resume, **overrides):
    """The tiny-overparam preset (64 rows) with 4-image steps; architecture left to the resume source."""
    opts = dict(cfg='tiny-overparam', data=data, resume=resume, workers=0, batch=4, mbstd=2, grid=2, kimg=0.016,
                tick=0.008, snap=1)
    opts.update(overrides)
    return presets.setup_training_config(**opts)


def same_rows(z, rows=ROWS):
    return z.unsqueeze(1).repeat(1, rows, 1)

#----------------------------------------------------------------------------
# The start.

def _check_start(name, tmp_path, data32):
    pkl = pretrained_path(name, tmp_path)
    c = config(data32, pkl)
    pre = checkpoint.load_network_pkl(pkl)
    run = TrainingRun.from_kwargs(run_dir=str(tmp_path / 'run'), verbose=False, **c)
    try:
        assert run.G.latent_rows == ROWS and run.progress.cur_nimg == 0 and run.fresh
        assert all(len(phase.opt.state) == 0 for phase in run.phases)        # fresh optimizers
        gen = torch.Generator().manual_seed(3)
        z = torch.randn([3, pre['G'].z_dim], generator=gen)
        c_lab = torch.nn.functional.one_hot(torch.tensor([0, 2, 1]), pre['G'].c_dim).float() if pre['G'].c_dim else None
        for key in ('G', 'G_ema'):
            ours = getattr(run, key)
            assert torch.equal(ours.mapping.w_avg, pre[key].mapping.w_avg), key
            ws_ref = pre[key].mapping(z, c_lab)
            img_ref = pre[key].synthesis(ws_ref, noise_mode='const', force_fp32=True)
            with torch.no_grad():
                img = ours.eval().synthesis(ours.mapping(same_rows(z), c_lab), noise_mode='const')
            assert img.shape == img_ref.shape
            torch.testing.assert_close(img, img_ref, atol=2e-4, rtol=0, msg=key)
            # Truncation pulls toward the carried-over w_avg: identical rows still give the pretrained images.
            with torch.no_grad():
                trunc = ours.synthesis(ours.mapping(same_rows(z), c_lab, truncation_psi=0.5), noise_mode='const')
                trunc_ref = pre[key].synthesis(pre[key].mapping(z, c_lab, truncation_psi=0.5), noise_mode='const',
                                               force_fp32=True)
            torch.testing.assert_close(trunc, trunc_ref, atol=2e-4, rtol=0, msg=key)
        D_state = run.D.state_dict()
        assert D_state.keys() == pre['D'].state_dict().keys()
        for param, tensor in pre['D'].state_dict().items():
            assert torch.equal(D_state[param], tensor), param
        record = c.finetune
        assert record['source'] == os.path.abspath(pkl) and record['latent_rows'] == ROWS
        assert record['weights']['D'] == 'checkpoint D' and record['conditional'] == (pre['G'].c_dim > 0)
        assert record['G_kwargs']['z_dim'] == pre['G'].z_dim and record['G_kwargs']['w_dim'] == pre['G'].w_dim
        log = open(tmp_path / 'run' / 'log.txt').read()
        assert f'Fine-tuning a pretrained StyleGAN2 into {ROWS} latent rows: {os.path.abspath(pkl)}' in log
    finally:
        run.close()


@pytest.mark.pins_numbers
@pytest.mark.parametrize('name', PRETRAINED)
def test_start_reproduces_the_pretrained_networks(name, tmp_path, data32):
    """Before the first step: G and G_ema given identical rows make the checkpoint's images (its architecture:
    noise inputs, widths, conditioning, z/w sizes), w_avg is the checkpoint's, D equals the checkpoint's D."""
    _check_start(name, tmp_path, data32)


def test_file_without_D_starts_a_fresh_D_and_says_so(tmp_path, data32):
    """A file with only an EMA generator and no D (a g_ema-only rosinality file): G and G_ema both start from it,
    D is the preset's fresh one (as a run without --resume builds it), and the log and record say so."""
    pkl = our_pretrained(tmp_path / 'g_ema_only.pkl', with_D=False, with_G=False)
    c = config(data32, pkl)
    assert c.finetune['weights']['D'].startswith('fresh') and 'no G' in c.finetune['weights']['G']
    pre = checkpoint.load_network_pkl(pkl)
    run = TrainingRun.from_kwargs(run_dir=str(tmp_path / 'run'), verbose=False, **c)
    try:
        for key in ('G', 'G_ema'):
            for param, tensor in pre['G_ema'].state_dict().items():
                assert torch.equal(getattr(run, key).state_dict()[param], tensor), (key, param)
        fresh = run_setup.build_networks(c, run.training_set, torch.device('cpu'))['D']
        for param, tensor in fresh.state_dict().items():
            assert torch.equal(run.D.state_dict()[param], tensor), param
        assert c.D_kwargs['channel_base'] == c.G_kwargs['synthesis_kwargs']['channel_base']
        log = open(tmp_path / 'run' / 'log.txt').read()
        assert 'D (fresh: the file has no D' in log
    finally:
        run.close()


def test_architecture_comes_from_the_checkpoint_and_training_from_the_options(tmp_path, data32):
    """The NVIDIA checkpoint's z 64, noise inputs and clamp-free FP32 under the 'auto' preset with other widths:
    widths, noise and sizes from the file; rows, precision, minibatch-std group and every hyperparameter from the
    options."""
    pkl = str(shared_fixture('nvlabs-sg2ada-32px.pkl'))
    c = presets.setup_training_config(cfg='auto', data=data32, resume=pkl, rows=ROWS, dim=32, cbase=256, cmax=32,
                                      batch=4, mbstd=2, lr=0.001, gamma=0.5, precision='fp32', workers=0)
    G, D = c.G_kwargs, c.D_kwargs
    assert (G['z_dim'], G['w_dim'], G['synthesis_kwargs']['channel_base'], G['synthesis_kwargs']['channel_max']) == \
        (64, 64, 1024, 64)
    assert G['latent_rows'] == ROWS and G['synthesis_kwargs']['num_fp16_res'] == 0
    assert G['synthesis_kwargs']['conv_clamp'] is None                   # the file's 256 is a precision option
    assert G['synthesis_kwargs'].get('use_noise', True) and D['epilogue_kwargs']['mbstd_group_size'] == 2
    assert (D['channel_base'], D['channel_max']) == (1024, 64) and 'img_resolution' not in G
    assert c.G_opt_kwargs['lr'] == 0.001 and c.loss_kwargs['r1_gamma'] == 0.5
    assert c.loss_kwargs['row_spread_kimg'] == 0 and c.finetune['row_start'] == 'paper'
    # The same options with the spread start; both choices are recorded.
    c2 = presets.setup_training_config(cfg='tiny-overparam', data=data32, resume=pkl, row_start='spread',
                                       row_spread_kimg=3, resume_kimg=1.5, workers=0)
    assert (c2.loss_kwargs['row_spread_kimg'], c2.loss_kwargs['row_spread_start_kimg']) == (3.0, 1.5)
    assert (c2.finetune['row_start'], c2.finetune['row_spread_kimg'], c2.finetune['start_kimg']) == ('spread', 3.0, 1.5)

#----------------------------------------------------------------------------
# Refusals: one line naming the file and the fix, non-zero exit, no run directory.

def _cli(args):
    return CliRunner().invoke(train_cli.main, args)


@pytest.mark.parametrize('case', ['other-rows', 'rows-to-vector', 'stylegan3', 'resolution', 'labels', 'too-few-rows'])
def test_refusals_are_one_line(case, tmp_path, data32):
    outdir = tmp_path / 'runs'
    short = ['--kimg', '0.004', '--batch', '4', '--mbstd', '2', '--workers', '0', '--device', 'cpu']  # if not refused
    args = ['--outdir', str(outdir), '--data', data32, '--cfg', 'tiny-overparam'] + short
    expect = {'other-rows': 'already overparameterized with 32 latent rows, not 64; continue it with --rows 32',
              'rows-to-vector': 'already overparameterized with 32 latent rows, not a latent vector',
              'stylegan3': 'StyleGAN3', 'resolution': 'makes 32x32 images with 3 channels but',
              'labels': 'is conditional on 3 classes but', 'too-few-rows': '--rows=40 is too small'}[case]
    if case in ('other-rows', 'rows-to-vector'):
        pkl = our_pretrained(tmp_path / 'over.pkl', rows=32)
        args += ['--resume', pkl] + (['--cfg', 'tiny'] if case == 'rows-to-vector' else [])
    elif case == 'stylegan3':
        args += ['--resume', str(shared_fixture('nvlabs-sg3-stylegan3t-32px.pkl'))]
    elif case == 'resolution':
        data16 = str(tmp_path / 'd16.zip')
        write_tiny_dataset(data16, num_images=4, resolution=16, seed=0)
        args = ['--outdir', str(outdir), '--data', data16, '--cfg', 'auto', '--rows', '64', *short,
                '--resume', str(shared_fixture('nvlabs-sg2ada-32px.pkl'))]
    elif case == 'labels':
        plain = str(tmp_path / 'plain.zip')
        write_tiny_dataset(plain, num_images=4, resolution=32, seed=0)
        args[3] = plain
        args += ['--resume', str(shared_fixture('nvlabs-sg3-stylegan2-32px-cond.pkl'))]
    else:
        args += ['--resume', str(shared_fixture('nvlabs-sg2ada-32px.pkl')), '--rows', '40', '--cbase', '256',
                 '--cmax', '32']
    result = _cli(args)
    assert result.exit_code != 0 and 'Traceback' not in result.output, result.output
    message = result.output.strip()
    assert message.count('\n') == 0 and message.startswith('Error:') and expect in message, message
    assert not outdir.exists()


def test_row_start_options_need_a_pretrained_network(data32):
    with pytest.raises(ValueError, match='give the pretrained StyleGAN2 with --resume'):
        presets.setup_training_config(cfg='tiny-overparam', data=data32, row_start='spread')

#----------------------------------------------------------------------------
# Exact resume.

@pytest.mark.slow
def test_killed_fine_tuning_run_resumes_bitwise_from_its_state(tmp_path, data32):
    """A fine-tuning run of the NVIDIA checkpoint (noise inputs, z 64: not the preset's architecture) with rows
    spreading over the first 16 images, killed after 12 (mid-spread) and resumed from its training state through
    the same option resolution as train.py, ends bitwise like the uninterrupted run."""
    pkl = str(shared_fixture('nvlabs-sg2ada-32px.pkl'))
    opts = dict(cfg='auto', data=data32, rows=ROWS, dim=32, cbase=256, cmax=32, batch=4, mbstd=2, precision='fp32',
                kimg=0.024, tick=0.008, snap=1, workers=0, grid=2, metrics=[], gamma=0.05, G_reg=2, D_reg=4,
                row_start='spread', row_spread_kimg=0.016)

    def cfg(resume):
        c = presets.setup_training_config(**dict(opts, resume=resume))
        c.keep_states = None
        return c
    full = training_loop(run_dir=str(tmp_path / 'full'), verbose=False, **cfg(pkl))
    ticks = []
    killed = training_loop(run_dir=str(tmp_path / 'killed'), verbose=False, **cfg(pkl),
                           progress_fn=lambda *a: ticks.append(a), abort_fn=lambda: len(ticks) >= 1)
    assert killed['aborted'] and killed['cur_nimg'] == 12
    cut = snapshot.load_training_state(killed['training_state'])
    assert cut['finetune']['row_spread_kimg'] == 0.016 and cut['finetune']['source'] == os.path.abspath(pkl)
    c = cfg(killed['training_state'])         # the preset's architecture, replaced by the recorded one
    assert c.G_kwargs['z_dim'] == 64 and c.finetune == cut['finetune'] and c.loss_kwargs['row_spread_kimg'] == 0.016
    resumed = training_loop(run_dir=str(tmp_path / 'killed'), verbose=False, **c)
    assert resumed['cur_nimg'] == 24 and not resumed['aborted']
    a, b = (snapshot.load_training_state(r['training_state']) for r in (full, resumed))
    assert a['progress']['batch_idx'] == 6 and a['finetune'] == b['finetune']
    assert_states_equal(a, b)


def test_cli_fine_tuning_then_resume_auto(tmp_path, data32):
    """`train.py --resume=PKL` fine-tunes (options file and log say what came from where); the same command with
    --resume=auto continues it from its state with the checkpoint's architecture, not the preset's."""
    outdir = tmp_path / 'runs'
    pkl = str(shared_fixture('nvlabs-sg2ada-32px.pkl'))
    args = ['--outdir', str(outdir), '--data', data32, '--cfg', 'auto', '--rows', str(ROWS), '--dim', '32', '--cbase',
            '256', '--cmax', '32', '--batch', '4', '--mbstd', '2', '--precision', 'fp32', '--tick', '0.008',
            '--snap', '1', '--workers', '0', '--grid', '2', '--metrics', 'none', '--device', 'cpu', '--row-start',
            'spread', '--row-spread-kimg', '0.008']
    result = _cli(args + ['--kimg', '0.008', '--resume', pkl])
    assert result.exit_code == 0, result.output
    (run_name,) = os.listdir(outdir)
    run_dir = outdir / run_name
    options = json.loads((run_dir / 'training_options.json').read_text())
    assert options['finetune']['source'] == pkl and options['G_kwargs']['z_dim'] == 64
    assert options['finetune']['row_start'] == 'spread' and options['loss_kwargs']['row_spread_kimg'] == 0.008
    result = _cli(args + ['--kimg', '0.016', '--resume', 'auto'])
    assert result.exit_code == 0, result.output
    assert os.listdir(outdir) == [run_name]
    log = (run_dir / 'log.txt').read_text()
    assert 'Resumed from' in log and 'kimg 0.008' in log and log.count('Row start (spread)') == 2
    final = snapshot.load_training_state(snapshot.list_states(str(run_dir))[-1])
    assert final['progress']['cur_nimg'] == 16 and final['finetune']['G_kwargs']['z_dim'] == 64

#----------------------------------------------------------------------------
# Row starts.

def test_row_spread_schedule_is_linear_from_the_start():
    for cur, expected in ((0, 0.0), (1000, 0.0), (1500, 0.25), (2000, 0.5), (3000, 1.0), (9000, 1.0)):
        assert row_start.row_spread(cur, spread_kimg=2, start_kimg=1) == pytest.approx(expected), cur
    assert row_start.row_spread(0, spread_kimg=0) == 1.0                  # 'paper': a = 1 from the first image


@pytest.mark.parametrize('a', [0.0, 0.3, 1.0])
def test_sample_z_rows_match_the_formula(a):
    """z_i = (a z~_i + z~) / sqrt(1 + a^2) from the same draws (z~ first, then the rows), whatever `a` is."""
    G = networks.Generator(**tiny_generator_kwargs(latent_rows=32, dim=32))
    got = G.sample_z(5, generator=torch.Generator().manual_seed(7), row_spread=a)
    gen = torch.Generator().manual_seed(7)
    shared = torch.randn([5, 1, 32], generator=gen).double()
    rows = torch.randn([5, 32, 32], generator=gen).double()
    expected = (a * rows + shared) / math.sqrt(1 + a * a)
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)
    if a == 1.0:   # the paper's sampling, bitwise as before
        assert torch.equal(got, G.sample_z(5, generator=torch.Generator().manual_seed(7)))
    # The stream moves by the same draws for every a (exact resume).
    g0, g1 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    G.sample_z(5, generator=g0, row_spread=a)
    G.sample_z(5, generator=g1)
    assert torch.equal(torch.randn(3, generator=g0), torch.randn(3, generator=g1))


@pytest.mark.pins_numbers
@pytest.mark.parametrize('a', [0.0, 0.5, 1.0])
def test_sample_z_rows_keep_unit_variance_and_spread_correlation(a):
    G = networks.Generator(**tiny_generator_kwargs(latent_rows=32, dim=32))
    z = G.sample_z(4000, generator=torch.Generator().manual_seed(1), row_spread=a).double()   # [N, R, D]
    assert z.var().item() == pytest.approx(1.0, abs=0.02)
    corr = (z[:, 0] * z[:, 1]).mean().item()                              # rows 0 and 1, unit variance each
    assert corr == pytest.approx(1 / (1 + a * a), abs=0.02)


def test_training_steps_draw_rows_with_the_schedule(tmp_path, data32):
    """Every latent a fine-tuning step draws (the loop's and style mixing's second one) uses the schedule's `a`
    at that step's image count: 0, 0.25, 0.5 for steps at images 0, 4, 8 of a 16-image spread."""
    pkl = our_pretrained(tmp_path / 'ours.pkl')
    c = config(data32, pkl, row_start='spread', row_spread_kimg=0.016)
    run = TrainingRun.from_kwargs(run_dir=str(tmp_path / 'run'), verbose=False, **c)
    seen = []
    real_sample_z = run.G.sample_z
    run.G.sample_z = lambda n, generator=None, device=None, row_spread=1.0: (
        seen.append((run.progress.cur_nimg, row_spread)), real_sample_z(n, generator, device, row_spread))[1]
    try:
        for _ in range(3):
            run.step()
    finally:
        run.close()
    assert {nimg for nimg, _ in seen} == {0, 4, 8} and len(seen) > 3    # the loop's draw and the mixing draws
    for nimg, spread in seen:
        assert spread == pytest.approx(nimg / 16), (nimg, spread)


def test_first_step_rows_are_identical_under_spread(tmp_path, data32):
    pkl = our_pretrained(tmp_path / 'ours.pkl')
    run = TrainingRun.from_kwargs(run_dir=str(tmp_path / 'run'), verbose=False,
                                  **config(data32, pkl, row_start='spread', row_spread_kimg=0.016))
    try:
        _, _, gen_z, _ = run.fetch_batch()
        z = torch.cat(gen_z)
        assert torch.equal(z, z[:, :1].expand_as(z))
        assert z.std().item() == pytest.approx(1.0, abs=0.1)
    finally:
        run.close()


def test_adopt_leaves_plain_runs_alone(data32):
    c = presets.setup_training_config(cfg='tiny-overparam', data=data32, workers=0)
    before = json.dumps(c, sort_keys=True)
    assert json.dumps(adopt_resume_source(c), sort_keys=True) == before and 'finetune' not in c
    assert issubclass(FinetuneError, ValueError)


def test_start_from_our_snapshot_ignores_its_training_state(tmp_path):
    """Our baseline run's snapshot has a training state beside it: a fine-tuning start takes the pickle's weights
    only (image 0, fresh optimizers), never the baseline run's counters and Adam moments."""
    data16 = str(tmp_path / 'd16.zip')
    write_tiny_dataset(data16, num_images=8, resolution=16, seed=0)
    opts = dict(cfg='auto', data=data16, dim=32, cbase=256, cmax=32, batch=4, mbstd=2, precision='fp32', kimg=0.008,
                tick=0.008, snap=1, workers=0, grid=2, metrics=[])
    base = training_loop(run_dir=str(tmp_path / 'base'), verbose=False, **presets.setup_training_config(**opts))
    assert snapshot.state_for_snapshot(base['snapshot_pkl']) is not None
    c = presets.setup_training_config(**dict(opts, rows=32, resume=base['snapshot_pkl']))
    run = TrainingRun.from_kwargs(run_dir=str(tmp_path / 'run'), verbose=False, **c)
    try:
        assert run.fresh and run.progress.cur_nimg == 0 and run.progress.batch_idx == 0
        assert all(len(phase.opt.state) == 0 for phase in run.phases)
        pre = checkpoint.load_network_pkl(base['snapshot_pkl'])
        for param, tensor in pre['G'].state_dict().items():
            assert torch.equal(run.G.state_dict()[param], tensor), param
    finally:
        run.close()
