"""invert.py end to end on tiny random checkpoints: outputs, resume after a kill, one-line errors.

Uses `--lpips vgg-random` (LPIPS with a seeded random VGG16 trunk: no download; for tests only).
"""

import hashlib
import json

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import invert
from conftest import Killed, kill_inversion_at, shared_fixture, tiny_generator_kwargs
from inversion import optimize
from torch_utils import checkpoint
from training import networks

R = 32


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """{'overparam': path, 'baseline': path}: tiny 32 px generators saved with save_network_pkl."""
    root = tmp_path_factory.mktemp('ckpt')
    paths = {}
    for key, rows in (('overparam', R), ('baseline', None)):
        torch.manual_seed(2)
        G = networks.Generator(**tiny_generator_kwargs(latent_rows=rows)).eval()
        G.mapping.w_avg.copy_(torch.randn(G.w_dim) * 0.3)
        paths[key] = root / f'{key}.pkl'
        checkpoint.save_network_pkl(paths[key], dict(G_ema=G))
    return paths


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory):
    """Three readable images of other sizes and modes, one corrupt file, one non-image."""
    root = tmp_path_factory.mktemp('targets')
    rng = np.random.RandomState(0)
    PIL.Image.fromarray(rng.randint(0, 256, (40, 56, 3), dtype=np.uint8)).save(root / 'a.png')
    PIL.Image.fromarray(rng.randint(0, 256, (32, 32), dtype=np.uint8), 'L').save(root / 'b.jpg')
    PIL.Image.fromarray(rng.randint(0, 256, (64, 48, 4), dtype=np.uint8), 'RGBA').save(root / 'c.webp')
    (root / 'corrupt.png').write_bytes(b'not a png')
    (root / 'readme.txt').write_text('not an image: listed in skipped.json')
    return root


def run_cli(*args):
    result = CliRunner().invoke(invert.main, [str(a) for a in args], catch_exceptions=False)
    return result


def base_args(network, target, outdir, *extra):
    return ['--network', network, '--target', target, '--outdir', outdir, '--lpips', 'vgg-random', '--steps', 4,
            '--device', 'cpu', *extra]


def test_cli_writes_all_outputs(checkpoints, image_dir, tmp_path):
    out = tmp_path / 'out'
    result = run_cli(*base_args(checkpoints['overparam'], image_dir, out, '--space', 'W', '--batch', 2,
                                '--save-every', 2, '--save-video', '--video-every', 2))
    assert result.exit_code == 0, result.output
    assert 'Inverted 3 images into W' in result.output
    names = ['a', 'b', 'c']
    for n in names:
        assert np.load(out / f'{n}.npy').shape == (R, 32)
        assert PIL.Image.open(out / f'{n}-recon.png').size == (32, 32)
        pair = PIL.Image.open(out / f'{n}-pair.png')           # titled panels, each upscaled 4x to 128 px
        assert pair.size == ((3 if n == 'c' else 2) * (128 + 4) + 4, 128 + 2 * 20 + 8), n   # c.webp: alpha mask
        assert (sorted(p.name for p in (out / 'frames' / n).iterdir())
                == ['step00000.png', 'step00002.png', 'step00004.png'])
    with np.load(out / 'latents.npz') as npz:
        assert list(npz['names']) == names and npz['latents'].shape == (3, R, 32)
        assert str(npz['space']) == 'W'
        assert str(npz['checkpoint_sha256']) == hashlib.sha256(checkpoints['overparam'].read_bytes()).hexdigest()
        assert np.array_equal(npz['latents'][1], np.load(out / 'b.npy'))
    records = [json.loads(line) for line in (out / 'results.jsonl').read_text().splitlines()]
    assert [r['name'] for r in records] == names
    for r in records:
        assert r['steps'] == 4 and 0 <= r['lpips'] and r['mse'] > 0 and np.isfinite(r['psnr']) and r['seconds'] > 0
    assert [r['masked'] for r in records] == [False, False, True]             # c.webp's alpha channel is a mask
    alpha = np.asarray(PIL.Image.open(image_dir / 'c.webp'))[:, :, 3]
    assert records[2]['mask_coverage'] == pytest.approx(alpha[8:56].mean() / 255, abs=0.02)   # centre crop of 64x48
    assert records[0]['mask_coverage'] == 1.0
    overview = PIL.Image.open(out / 'overview.png')
    assert overview.size[0] >= 3 * 128 and overview.size[1] >= 2 * 128
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['images'] == 3 and summary['space'] == 'W' and summary['steps'] == 4
    assert summary['images_per_second'] > 0 and summary['skipped'] == 2
    assert summary['lpips_mean'] == pytest.approx(np.mean([r['lpips'] for r in records]))
    skipped = json.loads((out / 'skipped.json').read_text())
    assert [s['name'] for s in skipped] == ['corrupt', 'readme']              # Every file is processed or listed.
    assert all(s['reason'] for s in skipped) and 'not an image file' in skipped[1]['reason']
    curve = PIL.Image.open(out / 'lpips_curve.png')
    assert curve.size[0] > 100 and len(np.unique(np.asarray(curve.convert('L')))) > 2
    with np.load(out / 'lpips_curves.npz') as npz:
        assert npz['curves'].shape == (3, 5)                       # 4 steps + the final value.
    assert 'Batch of 2 done' in (out / 'log.txt').read_text()
    assert not list((out / 'state').glob('*.pt'))                  # Finished batches leave no state.


def test_cli_resume_after_kill_reproduces_uninterrupted(checkpoints, image_dir, tmp_path, monkeypatch):
    full, killed = tmp_path / 'full', tmp_path / 'killed'
    args = ['--space', 'W', '--batch', 2, '--save-every', 2, '--steps', 5]
    assert run_cli(*base_args(checkpoints['overparam'], image_dir, full, *args)).exit_code == 0

    revive = kill_inversion_at(monkeypatch, 3)       # State was saved at step 2; step 3 is lost.
    with pytest.raises(Killed):
        run_cli(*base_args(checkpoints['overparam'], image_dir, killed, *args))
    assert len(list((killed / 'state').glob('*.pt'))) == 1 and not (killed / 'results.jsonl').exists()
    revive()

    result = run_cli('--resume', killed, '--batch', 2)             # Settings come from run.json.
    assert result.exit_code == 0, result.output
    assert 'Resuming a batch of 2 at step 2/5' in (killed / 'log.txt').read_text()
    for n in ('a', 'b', 'c'):
        np.testing.assert_array_equal(np.load(killed / f'{n}.npy'), np.load(full / f'{n}.npy'))
    names = [json.loads(line)['name'] for line in (killed / 'results.jsonl').read_text().splitlines()]
    assert names == ['a', 'b', 'c']

    # Running again skips finished images; other settings into the same outdir are refused.
    again = run_cli(*base_args(checkpoints['overparam'], image_dir, killed, *args))
    assert again.exit_code == 0 and len((killed / 'results.jsonl').read_text().splitlines()) == 3
    other = run_cli(*base_args(checkpoints['overparam'], image_dir, killed, '--space', 'W+', '--steps', 5))
    assert other.exit_code == 1 and 'other settings: space' in other.output


def test_cli_vector_network_spaces_and_errors(checkpoints, image_dir, tmp_path):
    single = image_dir / 'a.png'
    ok = run_cli(*base_args(checkpoints['baseline'], single, tmp_path / 'w', '--space', 'w', '--steps', 2))
    assert ok.exit_code == 0, ok.output
    assert np.load(tmp_path / 'w' / 'a.npy').shape == (32,)

    bad_space = run_cli(*base_args(checkpoints['baseline'], single, tmp_path / 'x', '--space', 'W'))
    assert bad_space.exit_code == 1 and 'needs an overparameterized generator' in bad_space.output
    assert len(bad_space.output.strip().splitlines()) == 1

    (tmp_path / 'empty').mkdir()
    empty = run_cli(*base_args(checkpoints['baseline'], tmp_path / 'empty', tmp_path / 'y'))
    assert empty.exit_code == 1 and 'No images' in empty.output and len(empty.output.strip().splitlines()) == 1

    missing = run_cli(*base_args(tmp_path / 'nope.pkl', single, tmp_path / 'z'))
    assert missing.exit_code == 1 and 'Cannot load --network' in missing.output

    bad_lpips = run_cli(*base_args(checkpoints['baseline'], single, tmp_path / 'z', '--lpips', 'alex'))
    assert bad_lpips.exit_code == 2 and 'Unknown --lpips' in bad_lpips.output


def test_cli_channels(tmp_path, image_dir):
    """Grey generators invert grey targets (LPIPS sees them repeated to RGB); 4 channels are refused."""
    for channels in (1, 4):
        torch.manual_seed(0)
        G = networks.Generator(**dict(tiny_generator_kwargs(), img_channels=channels)).eval()
        checkpoint.save_network_pkl(tmp_path / f'g{channels}.pkl', dict(G_ema=G))
    ok = run_cli(*base_args(tmp_path / 'g1.pkl', image_dir / 'a.png', tmp_path / 'grey', '--steps', 2))
    assert ok.exit_code == 0, ok.output
    assert PIL.Image.open(tmp_path / 'grey' / 'a-recon.png').mode == 'L'
    assert PIL.Image.open(tmp_path / 'grey' / 'a-pair.png').size == (2 * (128 + 4) + 4, 128 + 2 * 20 + 8)
    refused = run_cli(*base_args(tmp_path / 'g4.pkl', image_dir / 'a.png', tmp_path / 'rgba'))
    assert refused.exit_code == 1 and '4-channel images' in refused.output
    assert not (tmp_path / 'rgba').exists()                        # Nothing written for a refused run.


def test_cli_on_stylegan2_ada_pickle(tmp_path, image_dir):
    """NVIDIA's pickles are vector networks: w+ works, W is refused."""
    pkl = shared_fixture('nvlabs-sg2ada-32px.pkl')
    out = tmp_path / 'nv'
    result = run_cli(*base_args(pkl, image_dir / 'a.png', out, '--space', 'w+', '--steps', 2))
    assert result.exit_code == 0, result.output
    assert np.load(out / 'a.npy').shape == (8, 64)
    refused = run_cli(*base_args(pkl, image_dir / 'a.png', tmp_path / 'nv2', '--space', 'W'))
    assert refused.exit_code == 1 and 'use w or w+' in refused.output


def test_overview_after_a_resume_shows_the_earlier_images(checkpoints, image_dir, tmp_path, monkeypatch):
    """Images finished by an earlier process are decoded again for overview.png (3 columns, not 1)."""
    out = tmp_path / 'out'
    args = base_args(checkpoints['overparam'], image_dir, out, '--space', 'W', '--batch', 2, '--steps', 2)
    original_run = optimize.Inverter.run

    def die_on_second_batch(self, max_steps=None):
        if self.num_images == 1:
            raise Killed()
        yield from original_run(self, max_steps)

    monkeypatch.setattr(optimize.Inverter, 'run', die_on_second_batch)
    with pytest.raises(Killed):
        run_cli(*args)
    one_batch = PIL.Image.open(out / 'overview.png').size
    monkeypatch.setattr(optimize.Inverter, 'run', original_run)
    assert run_cli(*args).exit_code == 0
    assert PIL.Image.open(out / 'overview.png').size[0] > one_batch[0] + 128


@pytest.mark.pins_numbers
def test_first_steps_follow_adam_with_the_papers_betas(checkpoints, tmp_path):
    """invert.py's defaults take the paper's Adam steps: lr 0.05, betas (0.9, 0.999), eps 1e-8. Three steps from the
    mean latent (truncation off) against Adam written out here, with gradients of the same loss on the same image.

    Adam's first step is lr * sign(g) for any betas; the second and third show them (swapped betas move them by
    ~lr)."""
    from inversion.losses import build_loss
    from inversion.targets import decode_target_with_mask, to_tensor
    from training.latent_spaces import LatentSpace
    rng = np.random.RandomState(3)
    (tmp_path / 'in').mkdir()
    PIL.Image.fromarray(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / 'in' / 'a.png')
    steps = 3
    result = run_cli(*base_args(checkpoints['overparam'], tmp_path / 'in', tmp_path / 'out', '--steps', steps,
                                '--truncation', 1, '--mse-weight', 0.5, '--batch', 1))
    assert result.exit_code == 0, result.output
    got = np.load(tmp_path / 'out' / 'a.npy')

    G = checkpoint.load_network(checkpoints['overparam']).eval().requires_grad_(False)
    loss = build_loss('vgg-random', mse_weight=0.5)
    image = decode_target_with_mask(tmp_path / 'in' / 'a.png', G.img_resolution)[0]
    target = loss.prepare_target(to_tensor(image[None].copy()))
    space = LatentSpace.for_generator(G, 'W')
    x = space.init_from(G.mapping.w_avg, 1).double()
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    lr, beta1, beta2, eps = 0.05, 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        params = x.float().requires_grad_(True)
        images = G.synthesis(space.to_ws(params), noise_mode='const', force_fp32=True)
        g = torch.autograd.grad(loss(images, target)['loss'].sum(), [params])[0].double()
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        x = x - lr * (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps)
    np.testing.assert_allclose(got, x[0].numpy(), rtol=0, atol=1e-4 * lr)     # float32 steps vs these float64 ones
    assert np.abs(got - space.init_from(G.mapping.w_avg, 1)[0].numpy()).max() > lr / 2    # it did move
