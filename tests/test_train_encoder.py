"""train_encoder.py and training.encoder_loop: the loss formula, a CPU run lowering the loss from its known start,
exact resume by rerunning with --resume=auto, the run directory's files, and one-line errors on bad input.
Tiny: a seeded random 16 px generator (R = 16 rows of 16), the random-VGG LPIPS, a few steps of 4 images."""

import hashlib
import json
import os
import pickle

import pytest
import torch
from click.testing import CliRunner

import train_encoder as cli
from configs import encoder_presets
from conftest import tiny_generator_kwargs
from inversion.losses import build_loss
from torch_utils import checkpoint
from training import launch, snapshot
from training.encoder import Encoder, load_encoder, load_encoder_pkl
from training.encoder_loop import EncoderRun, encoder_loop
from training.encoder_loss import EncoderLoss
from training.networks import Generator
from training.tiny_data import write_tiny_dataset

RES = 16


pytestmark = pytest.mark.usefixtures('one_thread')


def make_generator(rows, seed=0):
    torch.manual_seed(seed)
    G = Generator(**tiny_generator_kwargs(latent_rows=rows, resolution=RES, dim=16)).eval()
    with torch.no_grad():   # A running mean as training leaves it: the mean over mapped samples.
        G.mapping.w_avg.copy_(G.mapping(G.sample_z(256), None, skip_w_avg_update=True).mean(dim=(0, 1, 2)
                              if rows else (0, 1)))
    return G


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Generator pickles (matrix R = 16 and vector) and a 16 px dataset zip."""
    root = tmp_path_factory.mktemp('enc')
    paths = dict(matrix=str(root / 'G-rows16.pkl'), vector=str(root / 'G-vector.pkl'), data=str(root / 'tiny16.zip'))
    checkpoint.save_network_pkl(paths['matrix'], dict(G_ema=make_generator(16), cur_nimg=0))
    checkpoint.save_network_pkl(paths['vector'], dict(G_ema=make_generator(None, seed=1)))
    write_tiny_dataset(paths['data'], num_images=24, resolution=RES, seed=0)
    return paths


def config(network, **overrides):
    opts = dict(cfg='tiny', network=network, res=RES, batch=4, batch_gpu=4, kimg=0.024, tick=0.008, snap=1,
                workers=0, design=dict(token_resolution=4, num_heads=2))
    opts.update(overrides)
    c = encoder_presets.setup_encoder_config(**opts)
    c.keep_states = None
    return c

#----------------------------------------------------------------------------
# The objective.

class FixedPrediction:
    """An 'encoder' that predicts given latents whatever the image (E's layout for the synthesis)."""

    def __init__(self, E, params):
        self.params, self.to_ws = params, E.to_ws

    def __call__(self, images):
        return self.params.expand(images.shape[0], *self.params.shape[1:])


def test_loss_is_latent_plus_lpips_plus_pixel_terms(files):
    """EncoderLoss = latent_weight * latent MSE + LPIPS + mse_weight * pixel MSE, each computed here by hand."""
    G = checkpoint.load_network(files['matrix'])
    recon = build_loss('vgg-random', mse_weight=0.5)
    loss = EncoderLoss(G, 'W', recon, latent_weight=3.0)
    torch.manual_seed(1)
    images, latents = loss.sample(3, torch.device('cpu'))
    ws = G.mapping(G.sample_z(3, generator=torch.Generator().manual_seed(1)), None)
    torch.testing.assert_close(latents, ws[:, 0], rtol=0, atol=0)        # W = layer 0's matrix (all layers equal)
    torch.testing.assert_close(images, G.synthesis(ws, noise_mode='const'), rtol=0, atol=0)

    pred = latents + 0.3 * torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    out = loss(FixedPrediction(Encoder.from_generator(G, 'W', token_resolution=4), pred), images, latents)
    again = G.synthesis(pred[:, None].expand(-1, G.num_ws, -1, -1), noise_mode='const')
    lpips = recon.perceptual.distance(recon.features(again), recon.features(images))
    pixel = ((again - images) / 2).square().mean(dim=(1, 2, 3))
    expected = 3.0 * (pred - latents).square().mean(dim=(1, 2)) + lpips + 0.5 * pixel
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert out.shape == (3,) and float(lpips.detach().min()) > 0


#----------------------------------------------------------------------------
# Training lowers the loss from its known starting value.

def _eval_loss(run, n=8):
    """Mean loss of run.E on n fixed G samples (forked RNG), and the loss of predicting w_avg on them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        images, latents = run.loss.sample(n, run.device)
    with torch.no_grad():
        now = run.loss(run.E.eval(), images, latents).mean()
        start = run.loss(FixedPrediction(run.E, run.E.w_avg.expand(1, *run.E.param_shape)), images, latents).mean()
    run.E.train()
    return float(now), float(start)


# Measured here (seed 0, 40 Adam steps of 4 G samples, lr 3e-3; re-measure when the encoder's design changes): loss
# on 8 fixed samples W 0.9053 -> 0.8700 (-3.9%: most of it is the latent MSE of rows that a 16 px image of a random
# G barely shows), w+ 2.1116 -> 1.9212 (-9.0%). The start is the loss of predicting w_avg, computed independently.
@pytest.mark.pins_numbers
@pytest.mark.parametrize('network,space,start,end', [('matrix', 'W', 0.9053, 0.8700), ('vector', 'w+', 2.1116, 1.9212)])
def test_training_steps_lower_the_loss(files, tmp_path, network, space, start, end):
    c = config(files[network], space=space, lr=3e-3)
    run = EncoderRun.from_kwargs(run_dir=str(tmp_path / 'run'), verbose=False, **c)
    try:
        before, at_mean = _eval_loss(run)
        # The zero-initialised head predicts w_avg exactly: the loss starts at that of the optimisation's start.
        assert before == pytest.approx(at_mean, rel=1e-6)
        assert before == pytest.approx(start, rel=1e-3)
        for _ in range(40):
            run.step()
        after, _ = _eval_loss(run)
    finally:
        run.close()
    assert after < 0.98 * before and after == pytest.approx(end, rel=0.02), (before, after)


def test_real_images_add_a_reconstruction_term(files, tmp_path):
    c = config(files['matrix'], data=files['data'], real_fraction=0.5)
    run = EncoderRun.from_kwargs(run_dir=str(tmp_path / 'run'), verbose=False, **c)
    try:
        assert (run.round_fake, run.round_real) == (2, 2)
        run.step()
        stats = run.stats
        stats.update()
        assert stats.num('Loss/E/lpips_real') == 2 and stats.num('Loss/E/latent') == 2
        assert stats.num('Loss/E/loss') == 4
    finally:
        run.close()

def test_non_finite_gradients_skip_the_step(files, tmp_path, monkeypatch):
    """A step whose loss is Inf is not taken: E and Adam stay as they were, the skip is counted and logged, and
    the next finite step trains again."""
    c = config(files['matrix'])
    run = EncoderRun.from_kwargs(run_dir=str(tmp_path / 'run'), verbose=False, **c)
    original = EncoderLoss.__call__
    try:
        before = [p.detach().clone() for p in run.E.parameters()]
        monkeypatch.setattr(EncoderLoss, '__call__', lambda self, *a, **k: original(self, *a, **k) * float('inf'))
        run.step()
        assert all(torch.equal(a, b) for a, b in zip(before, run.E.parameters()))
        assert len(run.phases[0].opt.state) == 0
        assert (run.progress.skipped_steps, run.progress.skipped, run.progress.cur_nimg) == (1, {'Emain': 1}, 4)
        monkeypatch.setattr(EncoderLoss, '__call__', original)
        run.step()
        assert not all(torch.equal(a, b) for a, b in zip(before, run.E.parameters()))
        assert run.progress.skipped_steps == 1
    finally:
        run.close()
    assert 'non-finite gradients in Emain: step at kimg 0.000: skipped (1 so far)' in \
        open(os.path.join(str(tmp_path / 'run'), 'log.txt')).read()

#----------------------------------------------------------------------------
# Exact resume.

def _assert_states_equal(a, b):
    assert a['networks']['E'].keys() == b['networks']['E'].keys()
    for name, tensor in a['networks']['E'].items():
        assert torch.equal(tensor, b['networks']['E'][name]), name
    sa, sb = a['optimizers']['E']['state'], b['optimizers']['E']['state']
    assert sa.keys() == sb.keys() and len(sa) > 0
    for idx in sa:
        for name, value in sa[idx].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb[idx][name])), (idx, name)
    for key in ('cur_nimg', 'batch_idx', 'cur_tick', 'skipped_steps'):
        assert a['progress'][key] == b['progress'][key], key
    assert torch.equal(a['rng'][0]['cpu'], b['rng'][0]['cpu'])


@pytest.mark.parametrize('with_data', [False, True])
def test_stopped_and_rerun_with_resume_auto_is_bitwise_equal(files, tmp_path, with_data):
    extra = dict(data=files['data'], real_fraction=0.5) if with_data else {}
    c = config(files['matrix'], **extra)
    full_dir = launch.launch_training(config(files['matrix'], **extra), str(tmp_path / 'full'), 'enc',
                                      device_type='cpu', loop=encoder_loop, verbose=False)
    ticks = []
    stopped = launch.launch_training(config(files['matrix'], **extra, resume='auto'), str(tmp_path / 'cut'), 'enc',
                                     device_type='cpu', loop=encoder_loop, verbose=False,
                                     progress_fn=lambda *a: ticks.append(a), abort_fn=lambda: len(ticks) >= 1)
    assert snapshot.list_states(stopped)[-1].endswith('training-state-000000.012.pt')   # ticks at 4 and 12 images
    resumed = launch.launch_training(config(files['matrix'], **extra, resume='auto'), str(tmp_path / 'cut'), 'enc',
                                     device_type='cpu', loop=encoder_loop, verbose=False)
    assert resumed == stopped and os.listdir(tmp_path / 'cut') == ['00000-enc']
    assert 'Resumed from' in open(os.path.join(resumed, 'log.txt')).read()
    a = snapshot.load_training_state(snapshot.list_states(full_dir)[-1])
    b = snapshot.load_training_state(snapshot.list_states(resumed)[-1])
    assert a['progress']['cur_nimg'] == c.total_kimg * 1000 == 24
    _assert_states_equal(a, b)

#----------------------------------------------------------------------------
# The command line and the run directory.

def cli_args(outdir, network, *extra):
    return ['--outdir', str(outdir), '--network', str(network), '--cfg', 'tiny', '--batch', '4', '--kimg', '0.016',
            '--tick', '0.008', '--snap', '1', '--workers', '0', '--device', 'cpu',
            '--design', '{"token_resolution": 4, "num_heads": 2}', *extra]


def _run(args):
    return CliRunner().invoke(cli.main, args, catch_exceptions=False)


def test_run_directory_contents(files, tmp_path, monkeypatch):
    monkeypatch.setitem(encoder_presets.ENCODER_PRESETS, 'tiny', dict(encoder_presets.ENCODER_PRESETS['tiny'], res=RES))
    result = _run(cli_args(tmp_path, files['matrix'], '--data', files['data']))
    assert result.exit_code == 0, result.output + result.stderr
    (name,) = os.listdir(tmp_path)
    assert name == '00000-G-rows16-tiny-W-gpus1-batch4-tiny16'
    run_dir = tmp_path / name
    found = set(os.listdir(run_dir))
    # Ticks (and snapshots) after the first step and every 8 images: at 4, 12 and 16 images.
    assert {'training_options.json', 'log.txt', 'stats.jsonl', 'recon_init.png', 'recon000000.004.png',
            'recon000000.016.png', 'encoder-snapshot-000000.004.pkl', 'encoder-snapshot-000000.012.pkl',
            'encoder-snapshot-000000.016.pkl', 'training-state-000000.016.pt'} <= found
    assert not [f for f in found if '.tmp' in f]
    opts = json.load(open(run_dir / 'training_options.json'))
    assert opts['space'] == 'W' and opts['network_pkl'] == files['matrix'] and opts['cfg'] == 'tiny'
    assert opts['loss_kwargs']['spec'] == 'vgg-random' and opts['real_fraction'] == 0.5
    stats = [json.loads(line) for line in open(run_dir / 'stats.jsonl')]
    assert len(stats) == 3 and stats[-1]['Progress/kimg']['mean'] == pytest.approx(0.016)
    assert stats[1]['Loss/E/latent']['num'] == 4 and stats[1]['Loss/E/lpips_real']['num'] == 4   # 2 steps x 2
    log = open(run_dir / 'log.txt').read()
    assert sum(line.startswith('tick ') for line in log.splitlines()) == 3
    assert ' latent ' in log and ' lpips_real ' in log and 'augment' not in log
    data = load_encoder_pkl(str(run_dir / 'encoder-snapshot-000000.016.pkl'))
    assert data['generator_sha256'] == hashlib.sha256(open(files['matrix'], 'rb').read()).hexdigest()
    assert data['generator_pkl'] == files['matrix']
    assert data['cur_nimg'] == 16 and data['space'] == 'W'
    E = data['E']
    state = snapshot.load_training_state(str(run_dir / 'training-state-000000.016.pt'))
    for key, tensor in E.state_dict().items():
        assert torch.equal(tensor, state['networks']['E'][key]), key
    assert E(torch.zeros(1, 3, RES, RES)).shape == (1, 16, 16)

    again = _run(cli_args(tmp_path, files['matrix'], '--data', files['data'], '--resume', 'auto', '--kimg', '0.024'))
    assert again.exit_code == 0 and os.listdir(tmp_path) == [name]
    assert 'encoder-snapshot-000000.024.pkl' in os.listdir(run_dir)


def test_dry_run_writes_nothing(files, tmp_path, monkeypatch):
    monkeypatch.setitem(encoder_presets.ENCODER_PRESETS, 'tiny', dict(encoder_presets.ENCODER_PRESETS['tiny'], res=RES))
    result = _run(cli_args(tmp_path / 'out', files['vector'], '-n'))
    assert result.exit_code == 0 and '"space": "w+"' in result.output and not os.path.exists(tmp_path / 'out')

#----------------------------------------------------------------------------
# Bad input: one line naming the file or option and the fix, non-zero exit, no traceback, no run directory.

def assert_one_line_error(result, *names):
    assert result.exit_code not in (0, None), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert 'Traceback' not in result.output + result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])


def test_bad_inputs(files, tmp_path, monkeypatch):
    monkeypatch.setitem(encoder_presets.ENCODER_PRESETS, 'tiny', dict(encoder_presets.ENCODER_PRESETS['tiny'], res=RES))
    out = tmp_path / 'out'
    junk = tmp_path / 'junk.pkl'
    junk.write_bytes(b'not a pickle')
    with open(tmp_path / 'list.pkl', 'wb') as f:
        pickle.dump([1, 2], f)
    gan_state = tmp_path / 'training-state-000000.004.pt'
    snapshot.save_training_state(str(gan_state), dict(format=snapshot.STATE_FORMAT, version=snapshot.STATE_VERSION,
                                 networks=dict(G={}, D={}), optimizers={}, loss={}, rng=[], progress={}, world_size=1))
    data32 = tmp_path / 'tiny32.zip'
    write_tiny_dataset(str(data32), num_images=4, resolution=32, seed=0)
    cases = [
        (cli_args(out, tmp_path / 'missing.pkl'), ['missing.pkl']),
        (cli_args(out, junk), ['junk.pkl']),
        (cli_args(out, files['vector'], '--space', 'W'), ['--space W', 'w or w+']),
        (cli_args(out, files['matrix'], '--space', 'w'), ['--space w', '--latent-weight 0']),
        (cli_args(out, files['matrix'], '--data', str(data32)), ['--data', 'tiny32.zip', '--resolution=16']),
        (cli_args(out, files['matrix'], '--real-fraction', '0.5'), ['--real-fraction needs --data']),
        (cli_args(out, files['matrix'], '--batch', '6', '--batch-gpu', '4'), ['--batch-gpu=4']),
        (cli_args(out, files['matrix'], '--design', '{"channels": '), ['--design']),
        (cli_args(out, files['matrix'], '--lpips', 'alex'), ['--lpips']),
        (cli_args(out, files['matrix'], '--resume', str(gan_state)), ['--resume', 'not of an encoder']),
        (cli_args(out, files['matrix'], '--resume', str(junk)), ['--resume', 'junk.pkl']),
        (cli_args(out, files['matrix'], '--resume', str(tmp_path / 'list.pkl')), ['--resume', 'list.pkl']),
        (cli_args(out, files['matrix'], '--resume', str(tmp_path / 'nope.pt')), ['--resume', 'does not exist']),
    ]
    for args, names in cases:
        assert_one_line_error(_run(args), *names)
        assert not out.exists(), args
    wrong_res = _run(cli_args(out, files['matrix'], '--cfg', 'paper256'))
    assert_one_line_error(wrong_res, "preset 'paper256'", '16x16', '--cfg=tiny')


def test_snapshot_loads_through_the_safe_loader(files, tmp_path):
    summary = encoder_loop(run_dir=str(tmp_path / 'run'), verbose=False, **config(files['vector'], kimg=0.004))
    E = load_encoder(summary['snapshot_pkl'])
    assert E.space == 'w+' and E.param_shape == (E.num_ws, 16)
    # --resume=PKL: the pickle's weights (fresh optimizer), the counter from --resume-kimg.
    c = dict(config(files['vector'], kimg=0.008), resume_pkl=summary['snapshot_pkl'], resume_kimg=0.004)
    run = EncoderRun.from_kwargs(run_dir=str(tmp_path / 'again'), verbose=False, **c)
    try:
        assert run.progress.cur_nimg == 4 and not run.phases[0].opt.state
        assert 'Resumed weights from' in open(tmp_path / 'again' / 'log.txt').read()
        for key, tensor in E.state_dict().items():
            assert torch.equal(run.E.state_dict()[key], tensor), key
    finally:
        run.close()

#----------------------------------------------------------------------------


def test_committed_help_is_current():
    """docs/train-encoder-help.txt is `python train_encoder.py --help`; regenerate it when the options change."""
    result = CliRunner().invoke(cli.main, ['--help'], prog_name='train_encoder.py')
    path = os.path.join(os.path.dirname(__file__), '..', 'docs', 'train-encoder-help.txt')
    assert result.exit_code == 0 and result.output == open(path).read()


@pytest.mark.slow
def test_two_process_run(files, tmp_path):
    """--gpus 2 on the CPU (spawned Gloo processes, as train.py): one run directory written by rank 0, each step's
    stats summed over both ranks, and the ranks' encoders identical at every snapshot (checked while capturing)."""
    c = config(files['matrix'], batch=4, batch_gpu=2, gpus=2, kimg=0.008, tick=0.004)
    run_dir = launch.launch_training(c, str(tmp_path / 'runs'), 'dist', gpus=2, device_type='cpu', loop=encoder_loop)
    assert os.listdir(tmp_path / 'runs') == ['00000-dist']
    assert open(os.path.join(run_dir, 'log.txt')).read().count('Exiting...') == 1
    stats = [json.loads(line) for line in open(os.path.join(run_dir, 'stats.jsonl'))]
    assert stats[-1]['Progress/kimg']['mean'] == pytest.approx(0.008)
    assert stats[0]['Loss/E/loss']['num'] == 4                  # tick 0 = one step: 2 images on each of 2 ranks
    assert 'encoder-snapshot-000000.008.pkl' in os.listdir(run_dir)


def test_compile_option_is_carried_and_checked(files):
    assert config(files['matrix']).compile == 'auto' and config(files['matrix'], compile='off').compile == 'off'
    with pytest.raises(ValueError, match="--compile must be auto, on or off, got 'fast'"):
        config(files['matrix'], compile='fast')
