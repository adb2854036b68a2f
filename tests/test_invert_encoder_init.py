"""invert.py --init encoder:PKL end to end on tiny random generators and fresh random encoders (training/encoder.py):
--steps 0 is exactly G(E(x)), the optimisation starts from E(x), --space auto takes the encoder's space, the
truncation default, resume, and one-line errors.

Uses `--lpips vgg-random` (LPIPS with a seeded random VGG16 trunk: no download; for tests only).
"""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import invert
from conftest import Killed, kill_inversion_at, tiny_generator_with_mean
from inversion import optimize
from inversion.targets import to_tensor
from torch_utils import checkpoint
from torch_utils.image_io import to_uint8
from training.encoder import Encoder, save_encoder_pickle
from training.latent_spaces import LatentSpace

R = 32
NAMES = ('a', 'b', 'c')


def make_G(latent_rows, resolution=32):
    return tiny_generator_with_mean(latent_rows, resolution, seed=2)


def make_E(G, space, seed=5):
    """A fresh encoder whose zero-initialised head is made random (small), so E(x) depends on x and is not w_avg."""
    torch.manual_seed(seed)
    E = Encoder.from_generator(G, space, token_resolution=4).eval()
    with torch.no_grad():
        E.head.weight.normal_(0, 0.2)
    return E


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Paths of generators, encoders and a folder of three 32x32 RGB targets (decoded as they are)."""
    root = tmp_path_factory.mktemp('enc-init')
    paths = {}
    for key, rows in (('overparam', R), ('baseline', None)):
        G = make_G(rows)
        paths[key] = root / f'{key}.pkl'
        checkpoint.save_network_pkl(paths[key], dict(G_ema=G))
        for space in (('W', 'W+', 'w+') if rows else ('w+',)):
            paths[f'{key}-{space}'] = root / f'enc-{key}-{space}.pkl'
            save_encoder_pickle(paths[f'{key}-{space}'], make_E(G, space), generator_pkl=str(paths[key]))
    small = make_G(R, resolution=16)
    paths['enc16'] = root / 'enc16.pkl'
    save_encoder_pickle(paths['enc16'], make_E(small, 'W'))
    targets = root / 'targets'
    targets.mkdir()
    rng = np.random.RandomState(0)
    for name in NAMES:
        PIL.Image.fromarray(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(targets / f'{name}.png')
    paths['targets'] = targets
    return paths


def target_batch(files, names=NAMES):
    return to_tensor(np.stack([np.asarray(PIL.Image.open(files['targets'] / f'{n}.png')) for n in names]))


def run_cli(*args):
    return CliRunner().invoke(invert.main, [str(a) for a in args], catch_exceptions=False)


def args_for(files, net, outdir, *extra):
    return ['--network', files[net], '--target', files['targets'], '--outdir', outdir, '--lpips', 'vgg-random',
            '--device', 'cpu', *extra]


def test_steps_0_is_exactly_the_encoder_reconstruction(files, tmp_path):
    out = tmp_path / 'out'
    result = run_cli(*args_for(files, 'overparam', out, '--init', f'encoder:{files["overparam-W"]}', '--steps', 0,
                               '--batch', 3))
    assert result.exit_code == 0, result.output
    assert 'Inverted 3 images into W' in result.output
    G, E = make_G(R), make_E(make_G(R), 'W')
    with torch.no_grad():
        params = E(target_batch(files))                                        # one batch of 3, as the run
        recon = to_uint8(G.synthesis(LatentSpace.for_generator(G, 'W').to_ws(params), noise_mode='const',
                                     force_fp32=True))
    for i, name in enumerate(NAMES):
        assert np.array_equal(np.load(out / f'{name}.npy'), params[i].numpy())
        assert np.array_equal(np.asarray(PIL.Image.open(out / f'{name}-recon.png')), recon[i])
    records = [json.loads(line) for line in (out / 'results.jsonl').read_text().splitlines()]
    assert [(r['init'], r['steps']) for r in records] == [('encoder', 0)] * 3
    run = json.loads((out / 'run.json').read_text())
    assert run['init'] == f'encoder:{files["overparam-W"]}'
    assert run['settings']['init'] == 'encoder' and run['settings']['truncation'] == 1.0   # the encoder default
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['init'] == 'encoder' and summary['steps'] == 0 and summary['images_per_second'] > 0
    with np.load(out / 'lpips_curves.npz') as npz:
        assert npz['curves'].shape == (3, 1)                                   # just the final value


class _Recorder:
    """Patches Inverter.run to record (latents, truncation psi) when a batch's optimisation starts."""

    def __init__(self, monkeypatch):
        self.starts = []
        original = optimize.Inverter.run
        recorder = self

        def run(inverter, max_steps=None):
            recorder.starts.append((inverter.params.detach().clone(), inverter.truncation_psi))
            yield from original(inverter, max_steps)
        monkeypatch.setattr(optimize.Inverter, 'run', run)


def test_optimisation_starts_from_the_prediction(files, tmp_path, monkeypatch):
    recorder = _Recorder(monkeypatch)
    enc = files['overparam-W+']
    assert run_cli(*args_for(files, 'overparam', tmp_path / 'e', '--init', f'encoder:{enc}', '--steps', 2,
                             '--batch', 3)).exit_code == 0
    assert run_cli(*args_for(files, 'overparam', tmp_path / 'e5', '--init', f'encoder:{enc}', '--steps', 2,
                             '--batch', 3, '--truncation', 0.5)).exit_code == 0
    assert run_cli(*args_for(files, 'overparam', tmp_path / 'm', '--space', 'W+', '--steps', 2,
                             '--batch', 3)).exit_code == 0
    G = make_G(R)
    with torch.no_grad():
        predicted = make_E(G, 'W+')(target_batch(files))
    (start_e, psi_e), (start_e5, psi_e5), (start_m, psi_m) = recorder.starts
    assert torch.equal(start_e, predicted) and torch.equal(start_e5, predicted)
    assert torch.equal(start_m, LatentSpace.for_generator(G, 'W+').init_from_w_avg(G, 3))
    assert (psi_e, psi_e5, psi_m) == (1.0, 0.5, 0.9)                  # explicit --truncation still applies
    assert not torch.allclose(start_e, start_m)


@pytest.mark.parametrize('net,space,shape', [('overparam', 'W+', (8, R, 32)), ('overparam', 'w+', (8, 32)),
                                             ('baseline', 'w+', (8, 32))])
def test_space_auto_takes_the_encoder_space(files, tmp_path, net, space, shape):
    out = tmp_path / 'out'
    result = run_cli(*args_for(files, net, out, '--init', f'encoder:{files[f"{net}-{space}"]}', '--steps', 0))
    assert result.exit_code == 0, result.output
    assert f'into {space}:' in result.output and np.load(out / 'a.npy').shape == shape


def test_resume_of_an_encoder_run_reproduces_uninterrupted(files, tmp_path, monkeypatch):
    full, killed = tmp_path / 'full', tmp_path / 'killed'
    args = ['--init', f'encoder:{files["overparam-W"]}', '--batch', 3, '--save-every', 2, '--steps', 4]
    assert run_cli(*args_for(files, 'overparam', full, *args)).exit_code == 0

    revive = kill_inversion_at(monkeypatch, 3)
    with pytest.raises(Killed):
        run_cli(*args_for(files, 'overparam', killed, *args))
    revive()
    result = run_cli('--resume', killed, '--batch', 3)                 # init and truncation come from run.json
    assert result.exit_code == 0, result.output
    assert 'Resuming a batch of 3 at step 2/4' in (killed / 'log.txt').read_text()
    for name in NAMES:
        np.testing.assert_array_equal(np.load(killed / f'{name}.npy'), np.load(full / f'{name}.npy'))
    other = run_cli(*args_for(files, 'overparam', killed, '--batch', 3, '--save-every', 2, '--steps', 4))
    assert other.exit_code == 1 and 'other settings' in other.output    # a mean start into the encoder run's folder


def _one_line_error(result):
    lines = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert result.exit_code != 0 and len(lines) == 1 and 'Traceback' not in result.output, result.output
    return lines[0]


def test_errors_are_one_line(files, tmp_path):
    out = tmp_path / 'out'
    enc = files['overparam-W']
    line = _one_line_error(run_cli(*args_for(files, 'overparam', out, '--init', f'encoder:{enc}', '--space', 'w+')))
    assert '--space w+ does not match' in line and 'predicts W' in line
    line = _one_line_error(run_cli(*args_for(files, 'overparam', out, '--init', f'encoder:{files["enc16"]}')))
    assert 'reads 16 px' in line and 'makes 32 px' in line
    line = _one_line_error(run_cli(*args_for(files, 'baseline', out, '--init', f'encoder:{enc}')))
    assert 'num_ws, w_dim, R' in line
    line = _one_line_error(run_cli(*args_for(files, 'overparam', out, '--init', f'encoder:{files["overparam"]}')))
    assert 'not an encoder pickle (it holds G_ema)' in line
    line = _one_line_error(run_cli(*args_for(files, 'overparam', out, '--init', f'encoder:{tmp_path / "no.pkl"}')))
    assert 'no such file' in line
    line = _one_line_error(run_cli(*args_for(files, 'overparam', out, '--init', 'median')))
    assert '--init' in line and 'encoder:PKL' in line
    assert not out.exists()                                            # nothing written before the checks


def test_inverter_with_zero_steps_evaluates_its_start():
    G = make_G(R, resolution=16)
    space = LatentSpace.for_generator(G, 'W')
    targets = torch.zeros([2, 3, 16, 16])
    init = torch.randn([2, R, 32])

    class Loss:
        def prepare_target(self, t):
            return dict(image=t)

        def __call__(self, images, state):
            return dict(loss=images.square().mean(dim=(1, 2, 3)), lpips=images.abs().mean(dim=(1, 2, 3)))
    inverter = optimize.Inverter(G, Loss(), targets, space, steps=0, init=init)
    assert list(inverter.run()) == [] and inverter.done and torch.equal(inverter.params, init)
    assert torch.equal(inverter.evaluate()['images'], inverter.synthesize(init))
    with pytest.raises(ValueError, match='steps'):
        optimize.Inverter(G, Loss(), targets, space, steps=-1)


def test_committed_help_is_current():
    """docs/invert-help.txt is `COLUMNS=120 python invert.py --help`; regenerate it when the options change."""
    result = CliRunner().invoke(invert.main, ['--help'], prog_name='invert.py', terminal_width=118)
    path = Path(__file__).parent.parent / 'docs' / 'invert-help.txt'
    assert result.exit_code == 0 and result.output == path.read_text()
