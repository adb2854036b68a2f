"""Inversion library: latent spaces, truncation schedule, batching, resume, LPIPS wrappers, targets.

Tiny random generators (16 px) and LPIPS with a seeded random VGG16 trunk (`pnet_rand=True`,
no download) through the same code path as the real loss.
"""

import io
import os
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_generator_with_mean
from inversion import losses, run_files, targets
from inversion.optimize import Inverter, invert, truncation_steps
from metrics import lpips
from training.latent_spaces import LatentSpace

pytestmark = pytest.mark.pins_numbers

R = 32   # rows of the tiny overparameterized latent (>= widest layer)
VALID = [(None, 'w'), (None, 'w+'), (R, 'w'), (R, 'w+'), (R, 'W'), (R, 'W+')]


make_G = tiny_generator_with_mean


@pytest.fixture(scope='module')
def lpips_loss():
    """LPIPS with a seeded random VGG16 trunk (built once: constructing VGG16 takes about a second)."""
    return losses.build_loss('vgg-random', seed=0)


def with_options(loss, **kwargs):
    """Another InversionLoss around the same perceptual network."""
    return losses.InversionLoss(loss.perceptual, **kwargs)


def random_targets(n, resolution=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand([n, 3, resolution, resolution], generator=g) * 2 - 1

#----------------------------------------------------------------------------
# Latent spaces.

@pytest.mark.parametrize('latent_rows,name', VALID)
def test_space_shapes_views_and_gradients(latent_rows, name):
    G = make_G(latent_rows)
    space = LatentSpace.for_generator(G, name)
    expected = {'w': (G.w_dim,), 'w+': (G.num_ws, G.w_dim), 'W': (R, G.w_dim), 'W+': (G.num_ws, R, G.w_dim)}[name]
    assert space.param_shape == expected
    params = space.init_from_w_avg(G, 2)
    assert params.shape == (2, *expected) and params.is_contiguous()
    assert torch.equal(params, G.mapping.w_avg.expand_as(params))          # Mean latent everywhere.
    params.requires_grad_(True)
    ws = space.to_ws(params)
    assert ws.shape == (2, G.num_ws, *G.w_shape)
    assert ws.untyped_storage().data_ptr() == params.untyped_storage().data_ptr()   # An expand view.
    G.synthesis(ws, noise_mode='const').square().sum().backward()
    grad = params.grad
    assert torch.isfinite(grad).all()
    per_unit = grad.flatten(2).abs().sum(-1) if space.per_layer else grad.flatten(1).abs().sum(-1, keepdim=True)
    assert (per_unit > 0).all()                                             # Every image (and layer) gets a gradient.


def test_vector_latent_on_matrix_network_is_row_tied():
    """w on an overparameterized network = W with every row equal to that vector."""
    G = make_G(R)
    v = torch.randn(2, G.w_dim)
    w_space, W_space = LatentSpace.for_generator(G, 'w'), LatentSpace.for_generator(G, 'W')
    img_w = G.synthesis(w_space.to_ws(v), noise_mode='const')
    img_W = G.synthesis(W_space.to_ws(v.unsqueeze(1).repeat(1, R, 1)), noise_mode='const')
    torch.testing.assert_close(img_w, img_W, rtol=0, atol=1e-6)


def test_matrix_space_on_vector_network_is_an_error():
    G = make_G(None)
    for name in ('W', 'W+'):
        with pytest.raises(ValueError, match='needs an overparameterized generator'):
            LatentSpace.for_generator(G, name)
    with pytest.raises(ValueError, match='Unknown latent space'):
        LatentSpace.for_generator(G, 'z')


def test_truncate_formula():
    space = LatentSpace('W+', num_ws=3, w_dim=4, latent_rows=5)
    w_avg = torch.randn(4)
    params = torch.randn(2, *space.param_shape)
    expected = w_avg + 0.7 * (params - w_avg)
    out = space.truncate_(params, w_avg, 0.7)
    assert out is params
    torch.testing.assert_close(params, expected)

#----------------------------------------------------------------------------
# The optimisation loop.

@pytest.mark.parametrize('steps,until,psi,expected', [
    (6, 0.5, 0.9, [0, 1, 2]),         # The paper's schedule: first half only.
    (5, 0.5, 0.9, [0, 1]),            # floor(2.5) = 2.
    (4, 1.0, 0.9, [0, 1, 2, 3]),
    (4, 0.0, 0.9, []),
    (4, 0.5, 1.0, []),                # psi = 1 disables it.
])
def test_truncation_schedule_instrumented(lpips_loss, steps, until, psi, expected):
    G = make_G(R)
    space = LatentSpace.for_generator(G, 'W')
    calls = []
    original = space.truncate_
    inv = None

    def recording_truncate(params, w_avg, p):
        calls.append((inv.step, p))
        return original(params, w_avg, p)

    space.truncate_ = recording_truncate
    inv = Inverter(G, lpips_loss, random_targets(1), space, steps=steps, truncation_psi=psi, truncation_until=until)
    flags = [info['truncated'] for info in inv.run()]
    assert [s for s, _ in calls] == expected and all(p == psi for _, p in calls)
    assert [i for i, f in enumerate(flags) if f] == expected
    if psi != 1:
        assert truncation_steps(steps, until) == len(expected)


def test_truncation_pulls_toward_the_mean(lpips_loss):
    """With lr 0 only truncation moves the latent: k truncations shrink the offset by psi^k."""
    G = make_G(None)
    space = LatentSpace.for_generator(G, 'w+')
    offset = torch.randn(1, *space.param_shape)
    init = G.mapping.w_avg + offset
    inv = Inverter(G, lpips_loss, random_targets(1), space, steps=4, lr=0.0, truncation_psi=0.5,
                   truncation_until=0.5, init=init)
    for _ in inv.run():
        pass
    torch.testing.assert_close(inv.params.detach() - G.mapping.w_avg, offset * 0.5 ** 2)


def test_optimisation_reduces_lpips(lpips_loss):
    G = make_G(R)
    space = LatentSpace.for_generator(G, 'W')
    target = G.synthesis(space.to_ws(space.init_from_w_avg(G, 1) + 0.5 * torch.randn(1, *space.param_shape)))
    inv = Inverter(G, lpips_loss, target.detach(), space, steps=10, truncation_psi=1)
    for _ in inv.run():
        pass
    final = inv.evaluate()
    assert final['lpips'].item() < 0.7 * inv.history[0].item()
    assert all(p.grad is None for p in G.parameters()) and not any(p.requires_grad for p in G.parameters())


@pytest.mark.parametrize('latent_rows,name', [(None, 'w+'), (R, 'W'), (R, 'W+')])
def test_batched_equals_single_runs(lpips_loss, latent_rows, name):
    """k images in one batch follow the trajectories of k single runs.

    Float32 rounding differs between batched and single kernels; where it flips a ReLU/max-pool
    of the VGG or an lrelu of G, or meets a gradient near Adam's eps, it moves some elements by
    more than rounding. So: every element within 2 % of one lr step, 99 % of them within 2e-5.
    """
    G = make_G(latent_rows)
    space = LatentSpace.for_generator(G, name)
    k = 3
    tg = random_targets(k, seed=5)
    start = space.init_from_w_avg(G, k) + 0.1 * torch.randn(k, *space.param_shape)

    # The summed loss gives each image the gradient it has on its own (a mean would divide it by k).
    def grad(params, tgt):
        params = params.clone().requires_grad_(True)
        out = lpips_loss(G.synthesis(space.to_ws(params), noise_mode='const'), lpips_loss.prepare_target(tgt))
        out['loss'].sum().backward()
        return params.grad
    g_batch = grad(start, tg)
    for i in range(k):
        g_single = grad(start[i:i + 1], tg[i:i + 1])
        torch.testing.assert_close(g_batch[i:i + 1], g_single, rtol=0, atol=2e-2 * g_single.abs().max().item())

    kwargs = dict(steps=3, truncation_psi=0.9, truncation_until=0.5, init=start)
    batched, batched_eval = invert(G, lpips_loss, tg, space, **kwargs)
    for i in range(k):
        kwargs['init'] = start[i:i + 1]
        single, single_eval = invert(G, lpips_loss, tg[i:i + 1], space, **kwargs)
        diff = (batched[i] - single[0]).abs().flatten()
        assert diff.max() < 0.02 * 0.05 and diff.quantile(0.99) < 2e-5, (diff.max(), diff.quantile(0.99))
        torch.testing.assert_close(batched_eval['lpips'][i:i + 1], single_eval['lpips'], rtol=1e-3, atol=1e-6)


def test_resume_after_kill_reproduces_uninterrupted(lpips_loss, tmp_path):
    G = make_G(R)
    space = LatentSpace.for_generator(G, 'W')
    tg = random_targets(2, seed=3)
    kwargs = dict(steps=8, truncation_psi=0.9, truncation_until=0.5)

    full = Inverter(G, lpips_loss, tg, space, **kwargs)
    for _ in full.run():
        pass

    first = Inverter(G, lpips_loss, tg, space, **kwargs)
    for info in first.run():
        if info['step'] == 2:                      # Snapshot inside the truncated phase...
            run_files.save_state(tmp_path / 'state.pt', first.state_dict())
        if info['step'] == 5:                      # ... and "killed" later: steps 3-5 are lost.
            break
    resumed = Inverter(G, lpips_loss, tg, space, **kwargs)
    resumed.load_state_dict(run_files.load_state(tmp_path / 'state.pt'))
    assert resumed.step == 2
    for _ in resumed.run():
        pass
    assert torch.equal(resumed.params, full.params)
    assert torch.equal(resumed.history, full.history)
    opt_full, opt_res = full.optimizer.state_dict()['state'][0], resumed.optimizer.state_dict()['state'][0]
    assert torch.equal(opt_full['exp_avg_sq'], opt_res['exp_avg_sq']) and float(opt_res['step']) == 8

#----------------------------------------------------------------------------
# Losses.

def test_lpips_wrapper_matches_package_and_is_per_image(lpips_loss):
    x, y = random_targets(3, resolution=32, seed=1), random_targets(3, resolution=32, seed=2)
    state = lpips_loss.prepare_target(y)
    ours = lpips_loss(x, state)['lpips']
    assert ours.shape == (3,)
    reference = lpips_loss.perceptual.model(x, y).flatten()          # lpips.LPIPS.forward
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)
    single = torch.cat([lpips_loss(x[i:i + 1], lpips_loss.prepare_target(y[i:i + 1]))['lpips'] for i in range(3)])
    torch.testing.assert_close(ours, single, rtol=1e-5, atol=1e-7)
    assert lpips_loss(y, state)['lpips'].abs().max() < 1e-6


def test_lpips_downsamples_large_images_with_area(lpips_loss):
    loss = with_options(lpips_loss, resolution=16)
    x, y = random_targets(2, resolution=32, seed=1), random_targets(2, resolution=32, seed=2)
    small = with_options(lpips_loss, resolution=None)
    expect = small(F.interpolate(x, size=16, mode='area'), small.prepare_target(F.interpolate(y, size=16, mode='area')))
    torch.testing.assert_close(loss(x, loss.prepare_target(y))['lpips'], expect['lpips'])


def test_pixel_weights_add_to_lpips(lpips_loss):
    base = lpips_loss
    weighted = with_options(lpips_loss, mse_weight=2.0, l1_weight=0.5)
    x, y = random_targets(2, seed=1), random_targets(2, seed=2)
    b, w = base(x, base.prepare_target(y)), weighted(x, weighted.prepare_target(y))
    d = (x - y) / 2
    torch.testing.assert_close(w['loss'], b['lpips'] + 2.0 * d.square().mean((1, 2, 3)) + 0.5 * d.abs().mean((1, 2, 3)))
    torch.testing.assert_close(w['lpips'], b['lpips'])


class _FakeNvlabsVGG(torch.nn.Module):
    """Same call signature as NVIDIA's vgg16.pt: [0, 255] images -> unit-normalised features."""

    def forward(self, x: torch.Tensor, resize_images: bool = True, return_lpips: bool = False) -> torch.Tensor:
        f = x.flatten(1) - 127.5
        return f / f.square().sum(dim=1, keepdim=True).sqrt()


@pytest.mark.filterwarnings('ignore:.*torch.jit.*:FutureWarning')
def test_nvlabs_torchscript_loss_from_local_path(tmp_path):
    path = tmp_path / 'vgg16.pt'
    torch.jit.save(torch.jit.script(_FakeNvlabsVGG()), str(path))
    assert lpips.parse_lpips_spec(f'vgg16-nvlabs:{path}') == ('vgg16-nvlabs', str(path))
    assert lpips.parse_lpips_spec('vgg16-nvlabs') == ('vgg16-nvlabs', lpips.VGG16_URL)
    with pytest.raises(ValueError):
        lpips.parse_lpips_spec('alex')
    loss = losses.build_loss(f'vgg16-nvlabs:{path}')
    x, y = random_targets(2, seed=1), random_targets(2, seed=2)
    fx, fy = F.normalize(x.flatten(1), dim=1), F.normalize(y.flatten(1), dim=1)   # (x+1)*127.5 - 127.5 = 127.5 x
    torch.testing.assert_close(loss(x, loss.prepare_target(y))['lpips'], (fx - fy).square().sum(1))

#----------------------------------------------------------------------------
# Targets.

def _png_bytes(img, **kwargs):
    buf = io.BytesIO()
    img.save(buf, **kwargs)
    return buf.getvalue()


def _make_target_files(root):
    rng = np.random.RandomState(0)
    (root / 'sub').mkdir(parents=True)
    PIL.Image.fromarray(rng.randint(0, 256, (20, 30, 3), dtype=np.uint8)).save(root / 'rgb.png')
    PIL.Image.fromarray(rng.randint(0, 256, (24, 24), dtype=np.uint8), 'L').save(root / 'sub' / 'gray.png')
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)                      # Fully transparent black.
    PIL.Image.fromarray(rgba, 'RGBA').save(root / 'alpha.png')
    PIL.Image.fromarray(rng.randint(0, 256, (16, 16, 3), dtype=np.uint8)).convert('P').save(root / 'palette.bmp')
    PIL.Image.new('CMYK', (16, 16), (0, 255, 255, 0)).save(root / 'cmyk.jpg')            # Red in CMYK.
    PIL.Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)).save(root / 'deep.tif')
    (root / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    (root / 'truncated.jpg').write_bytes(_png_bytes(PIL.Image.new('RGB', (16, 16)), format='JPEG')[:40])
    (root / 'notes.txt').write_text('not an image')
    (root / '.hidden.png').write_bytes(b'')
    frames = [PIL.Image.new('P', (16, 16), color) for color in (1, 2, 3)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    frames[0].save(root / 'anim.gif', save_all=True, append_images=frames[1:], duration=50)   # Red, green, blue.
    frames[2].save(root / 'still.gif')                                                           # Blue, palette.
    PIL.Image.fromarray(rng.randint(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / 'noext', format='PNG')


def test_targets_folder_conversions_and_bad_files(tmp_path):
    _make_target_files(tmp_path / 'imgs')
    sources, ignored = targets.list_targets(tmp_path / 'imgs')
    names = [s.name for s in sources]
    assert names == ['alpha', 'anim', 'broken', 'cmyk', 'deep', 'noext', 'notes', 'palette', 'rgb', 'still',
                     'sub_gray', 'truncated']                          # Every file, whatever its extension...
    assert [(os.path.basename(p), 'hidden' in why) for p, why in ignored] == [('.hidden.png', True)]  # ...or a reason.
    loaded, bad, notes = {}, {}, {}
    for src in sources:
        try:
            loaded[src.name], notes[src.name] = targets.decode_target(src, 16)
        except targets.TargetError as err:
            bad[src.name] = str(err)
    assert sorted(bad) == ['broken', 'notes', 'truncated']
    assert 'not an image file' in bad['notes'] and not any('0x' in why for why in bad.values())
    assert (loaded['anim'] == (255, 0, 0)).all() and 'first frame' in notes['anim'] and '3 frames' in notes['anim']
    assert (loaded['still'] == (0, 0, 255)).all() and notes['still'] is None
    assert notes['rgb'] is None and loaded['noext'].shape == (16, 16, 3)
    assert all(a.shape == (16, 16, 3) and a.dtype == np.uint8 for a in loaded.values())
    assert (loaded['alpha'] == 255).all()                                 # Transparent -> white.
    assert (loaded['deep'] == 255).all()                                  # 16-bit white -> 255.
    r, g, b = loaded['cmyk'].reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60
    assert targets.load_target(sources[names.index('sub_gray')], 16, channels=1).shape == (16, 16, 1)


def test_targets_zip_single_file_and_center_crop(tmp_path):
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, :10] = (255, 0, 0)
    wide[:, 10:20] = (0, 255, 0)
    wide[:, 20:] = (0, 0, 255)
    PIL.Image.fromarray(wide).save(tmp_path / 'wide.png')
    single = targets.scan_targets(tmp_path / 'wide.png')
    assert [s.name for s in single] == ['wide']
    crop = targets.load_target(single[0], 10, crop='center')
    assert (crop == (0, 255, 0)).all()                                    # Only the middle third.
    squash = targets.load_target(single[0], 10, crop='none')
    assert squash[:, 0, 0].mean() > 200 and squash[:, -1, 2].mean() > 200
    with zipfile.ZipFile(tmp_path / 'set.zip', 'w') as zf:
        zf.write(tmp_path / 'wide.png', 'a/wide.png')
        zf.writestr('__MACOSX/a/._wide.png', b'junk')
        zf.writestr('a/bad.jpg', b'junk')
    zipped = targets.scan_targets(tmp_path / 'set.zip')
    assert [s.name for s in zipped] == ['a_bad', 'a_wide']
    assert np.array_equal(targets.load_target(zipped[1], 10), crop)
    with pytest.raises(targets.TargetError):
        targets.load_target(zipped[0], 10)


def test_target_name_collisions_are_made_unique(tmp_path):
    for ext in ('png', 'jpg'):
        PIL.Image.new('RGB', (4, 4)).save(tmp_path / f'a.{ext}')
    assert sorted(s.name for s in targets.scan_targets(tmp_path)) == ['a_jpg', 'a_png']


#----------------------------------------------------------------------------
# Output files.

def test_results_jsonl_survives_a_torn_write(tmp_path):
    path = tmp_path / 'results.jsonl'
    run_files.append_result(path, dict(name='a', lpips=0.1))
    with open(path, 'a') as f:
        f.write('{"name": "b", "lpi')                                  # Killed mid-write.
    assert list(run_files.read_results(path)) == ['a']
    run_files.append_result(path, dict(name='c', lpips=0.2))
    assert list(run_files.read_results(path)) == ['a', 'c']
