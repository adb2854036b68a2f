"""Masked inversion: LPIPS on each layer's spatial map, masked pixel terms, --mask DIR, alpha, --crop pad.

Both LPIPS code paths are covered: the lpips package's (`vgg-random`; `vgg` is the same class with the
ImageNet trunk) and NVIDIA's flat TorchScript features (`vgg16-nvlabs`, here a small TorchScript stand-in
with the same call signature and the per-layer `[C, H, W]` block layout).
"""

import json

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import invert
from conftest import tiny_generator_with_mean
from inversion import losses, targets
from inversion.optimize import Inverter
from metrics import lpips, reconstruction
from torch_utils import checkpoint
from training.latent_spaces import LatentSpace

RES = 16
pytestmark = [pytest.mark.pins_numbers, pytest.mark.filterwarnings('ignore:.*torch.jit.*:FutureWarning')]


def make_G(resolution=RES, seed=1, latent_rows=None):
    return tiny_generator_with_mean(latent_rows, resolution, seed)


def random_images(n, resolution=RES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand([n, 3, resolution, resolution], generator=g) * 2 - 1


def left_half_mask(n, resolution=RES, soft=False):
    """[n, 1, R, R]: right half ignored (0), left half kept (1; with soft, the left quarter 0.5)."""
    m = torch.zeros([n, 1, resolution, resolution])
    m[..., : resolution // 2] = 1
    if soft:
        m[..., : resolution // 4] = 0.5
    return m

#----------------------------------------------------------------------------
# A TorchScript stand-in for NVIDIA's vgg16.pt: five layers at 1, 1/2, ... 1/16 of the input, channels
# normalised, scaled by 1/sqrt(H_k W_k), each flattened as [C, H, W] and concatenated.

class _LayeredFakeVGG(torch.nn.Module):
    def __init__(self, channels_last: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.w0 = torch.nn.Parameter(torch.randn([64, 3, 3, 3], generator=g) * 0.3)
        self.ws = torch.nn.ParameterList([torch.nn.Parameter(torch.randn([c, 64, 1, 1], generator=g) * 0.3)
                                          for c in (128, 256, 512, 512)])
        self.channels_last = channels_last

    def layers(self, x: torch.Tensor):
        x = x / 127.5 - 1
        f = torch.relu(F.conv2d(x, self.w0, padding=1)) + 0.01
        out = [f]
        for w in self.ws:
            f = F.max_pool2d(f, 2)
            out.append(torch.relu(F.conv2d(f, w)) + 0.01)
        return out

    def forward(self, x: torch.Tensor, resize_images: bool = True, return_lpips: bool = False) -> torch.Tensor:
        flat = []
        for f in self.layers(x):
            f = f / f.square().sum(dim=1, keepdim=True).sqrt()
            f = f / (f.shape[2] * f.shape[3]) ** 0.5
            if self.channels_last:                  # another layout: [H, W, C] per layer
                f = f.permute(0, 2, 3, 1)
            flat.append(f.flatten(1))
        return torch.cat(flat, dim=1)


@pytest.fixture(scope='module')
def fake_nvlabs(tmp_path_factory):
    """{'layered': path ([C, H, W] blocks), 'global': path ([H, W, C] blocks: no spatial map we can use)}."""
    root = tmp_path_factory.mktemp('vgg')
    paths = {}
    for key, last in (('layered', False), ('global', True)):
        paths[key] = root / f'{key}.pt'
        torch.jit.save(torch.jit.script(_LayeredFakeVGG(last)), str(paths[key]))
    return paths


@pytest.fixture(scope='module')
def package_loss():
    return losses.build_loss('vgg-random', seed=0)


@pytest.fixture(scope='module', params=['vgg-random', 'vgg16-nvlabs'])
def any_loss(request, package_loss, fake_nvlabs):
    if request.param == 'vgg-random':
        return package_loss
    return losses.build_loss(f'vgg16-nvlabs:{fake_nvlabs["layered"]}')

#----------------------------------------------------------------------------
# The loss.

def _weighted(map_k, mask):
    """Mean over positions of map_k [N, H_k, W_k] weighted by mask [N, 1, H, W] area-resized, over its mean."""
    m = F.adaptive_avg_pool2d(mask, map_k.shape[-2:])[:, 0]
    return (map_k * m).mean(dim=(1, 2)) / m.mean(dim=(1, 2))


def test_package_lpips_is_the_weighted_spatial_map(package_loss):
    x, y, mask = random_images(2, seed=1), random_images(2, seed=2), left_half_mask(2, soft=True)
    got = package_loss(x, package_loss.prepare_target(y, mask))['lpips']
    model = package_loss.perceptual.model
    keep = mask > 0
    xs, ys = (model.scaling_layer(torch.where(keep, v, 0.0)) for v in (x, y))
    expected = 0
    for lin, a, b in zip(model.lins, model.net(xs), model.net(ys)):
        d = a / (a.square().sum(1, keepdim=True).sqrt() + 1e-10) - b / (b.square().sum(1, keepdim=True).sqrt() + 1e-10)
        expected = expected + _weighted(lin(d.square())[:, 0], mask)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_nvlabs_lpips_is_the_weighted_spatial_map(fake_nvlabs):
    loss = losses.build_loss(f'vgg16-nvlabs:{fake_nvlabs["layered"]}')
    x, y, mask = random_images(2, seed=1), random_images(2, seed=2), left_half_mask(2, soft=True)
    got = loss(x, loss.prepare_target(y, mask))['lpips']
    net = _LayeredFakeVGG()
    keep = mask > 0
    la, lb = (net.layers((torch.where(keep, v, 0.0) + 1) * 127.5) for v in (x, y))
    expected = 0
    for a, b in zip(la, lb):
        na, nb = (f / f.square().sum(1, keepdim=True).sqrt() for f in (a, b))
        expected = expected + _weighted((na - nb).square().sum(1), mask)     # sum over C, mean over positions
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_mask_of_ones_is_bitwise_the_unmasked_loss(any_loss):
    loss = losses.InversionLoss(any_loss.perceptual, mse_weight=0.7, l1_weight=0.3)
    x, y = random_images(3, seed=3), random_images(3, seed=4)
    plain = loss(x, loss.prepare_target(y))
    ones = loss(x, loss.prepare_target(y, torch.ones([3, 1, RES, RES])))
    assert torch.equal(plain['loss'], ones['loss']) and torch.equal(plain['lpips'], ones['lpips'])
    # One masked image in the batch leaves the other images' values bitwise as they were.
    mixed_mask = torch.ones([3, 1, RES, RES])
    mixed_mask[1] = left_half_mask(1)[0]
    mixed = loss(x, loss.prepare_target(y, mixed_mask))
    assert torch.equal(mixed['loss'][[0, 2]], plain['loss'][[0, 2]]) and mixed['loss'][1] != plain['loss'][1]


def test_masked_pixel_terms_and_metrics_average_over_kept_pixels(package_loss):
    x, y, mask = random_images(2, seed=5), random_images(2, seed=6), left_half_mask(2, soft=True)
    d2 = ((x - y) / 2).square()
    expected_mse = (d2 * mask).sum(dim=(1, 2, 3)) / (3 * mask.sum(dim=(1, 2, 3)))
    torch.testing.assert_close(reconstruction.pixel_metrics(x, y, drange=(-1, 1), mask=mask, with_ssim=False,
                                                          dtype=torch.float32)['mse'], expected_mse)
    loss = losses.InversionLoss(package_loss.perceptual, mse_weight=2.0)
    out = loss(x, loss.prepare_target(y, mask))
    torch.testing.assert_close(out['loss'] - out['lpips'], 2.0 * expected_mse)


def test_nvlabs_without_spatial_layout_refuses_masks(fake_nvlabs):
    loss = losses.build_loss(f'vgg16-nvlabs:{fake_nvlabs["global"]}')
    with pytest.raises(lpips.MaskUnsupportedError, match='no spatial map'):
        loss.prepare_target(random_images(1), left_half_mask(1))
    loss(random_images(1), loss.prepare_target(random_images(1)))          # unmasked still works

#----------------------------------------------------------------------------
# The optimisation ignores the masked region.

def _invert(G, loss, target, mask, steps=6):
    space = LatentSpace.for_generator(G, 'w+')
    inv = Inverter(G, losses.MaskedLoss(loss, mask), target, space, steps=steps, truncation_psi=0.9,
                   truncation_until=0.5)
    for _ in inv.run():
        pass
    return inv.params.detach().clone()


def test_pixels_under_the_mask_do_not_change_the_latent(any_loss):
    G = make_G()
    loss = losses.InversionLoss(any_loss.perceptual, mse_weight=0.5, l1_weight=0.5)
    target, mask = random_images(2, seed=7), left_half_mask(2, soft=True)
    under, kept = target.clone(), target.clone()
    under[..., RES // 2:] = random_images(2, seed=8)[..., RES // 2:]           # mask 0 there
    kept[..., : RES // 4] = random_images(2, seed=9)[..., : RES // 4]           # mask 0.5 there
    base = _invert(G, loss, target, mask)
    assert torch.equal(_invert(G, loss, under, mask), base)
    assert not torch.equal(_invert(G, loss, kept, mask), base)
    assert not torch.equal(_invert(G, loss, under, None), base)   # without the mask the change does count

#----------------------------------------------------------------------------
# Decoding: --mask files, alpha, --crop pad.

def _save(path, array, mode=None):
    PIL.Image.fromarray(array, mode).save(path)
    return path


def test_crop_pad_pads_a_427x640_photo_and_masks_the_padding(tmp_path):
    data = pytest.importorskip('skimage.data')
    photo = np.asarray(PIL.Image.fromarray(data.coffee()).resize((640, 427), PIL.Image.LANCZOS))
    src = targets.scan_targets(_save(tmp_path / 'coffee.jpg', photo))[0]
    image, mask, _ = targets.decode_target_with_mask(src, 64, crop='pad')
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
    top = (640 - 427) // 2 * 64 / 640                                             # 10.6 px of padding at 64 px
    assert (mask[:10] == 0).all() and (mask[-10:] == 0).all() and (mask[12:-12] == 255).all()
    assert (image[:7] == targets.PAD_GREY).all() and (image[-7:] == targets.PAD_GREY).all()   # LANCZOS reach: 3 px
    assert mask.mean() / 255 == pytest.approx(427 / 640, abs=0.01) and top > 10
    centre = targets.decode_target_with_mask(src, 64, crop='center')
    assert centre[1] is None                                                     # nothing masked for a crop


def test_alpha_and_mask_files_combine_and_follow_the_crop(tmp_path):
    rng = np.random.RandomState(0)
    rgba = rng.randint(0, 256, (24, 32, 4), dtype=np.uint8)
    rgba[:, :, 3] = 255
    rgba[:, :16, 3] = 0                                                           # left half transparent
    src = targets.scan_targets(_save(tmp_path / 'a.png', rgba, 'RGBA'))[0]
    image, mask, _ = targets.decode_target_with_mask(src, 24, crop='center')     # crop columns 4..27
    assert (mask[:, :12] == 0).all() and (mask[:, 12:] == 255).all()
    (tmp_path / 'masks').mkdir()
    extra = np.full((24, 32), 255, np.uint8)
    extra[:12] = 128                                                              # top half at weight 1/2
    _save(tmp_path / 'masks' / 'a.jpg.png', extra)                               # another extension: not found
    with pytest.raises(targets.TargetError, match='no mask'):
        targets.decode_target_with_mask(src, 24, mask_dir=tmp_path / 'masks')
    _save(tmp_path / 'masks' / 'a.bmp', extra)                                  # same stem, any format
    _, both, _ = targets.decode_target_with_mask(src, 24, mask_dir=tmp_path / 'masks')
    assert (both[:, :12] == 0).all() and (np.abs(both[:12, 12:].astype(int) - 128) <= 1).all()
    assert (both[12:, 12:] == 255).all()
    _save(tmp_path / 'masks' / 'a.bmp', extra[:20])
    with pytest.raises(targets.TargetError, match='same size'):
        targets.decode_target_with_mask(src, 24, mask_dir=tmp_path / 'masks')

#----------------------------------------------------------------------------
# invert.py end to end.

@pytest.fixture(scope='module')
def network(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'G.pkl'
    checkpoint.save_network_pkl(path, dict(G_ema=make_G(resolution=32)))
    return path


def run_cli(*args):
    return CliRunner().invoke(invert.main, [str(a) for a in args], catch_exceptions=False)


def base_args(network, target, outdir, *extra):
    return ['--network', network, '--target', target, '--outdir', outdir, '--lpips', 'vgg-random', '--steps', 3,
            '--device', 'cpu', '--space', 'w+', '--batch', 2, '--mse-weight', 0.5, *extra]


def test_cli_alpha_mask_dir_and_missing_mask(network, tmp_path):
    rng = np.random.RandomState(1)
    rgb = rng.randint(0, 256, (32, 32, 3), dtype=np.uint8)
    alpha = np.full((32, 32), 255, np.uint8)
    alpha[:, 20:] = 0
    for k, folder in enumerate(('t1', 't2')):                                    # differ only where alpha = 0
        (tmp_path / folder).mkdir()
        img = rgb.copy()
        img[:, 20:] = rng.randint(0, 256, (32, 12, 3), dtype=np.uint8)
        _save(tmp_path / folder / 'x.png', np.dstack([img, alpha]), 'RGBA')
        _save(tmp_path / folder / 'y.jpg', rgb)
    (tmp_path / 'masks').mkdir()
    _save(tmp_path / 'masks' / 'x.png', np.full((32, 32), 255, np.uint8))       # y.jpg has no mask file
    for folder in ('t1', 't2'):
        assert run_cli(*base_args(network, tmp_path / folder, tmp_path / f'o{folder}')).exit_code == 0
    assert np.array_equal(np.load(tmp_path / 'ot1' / 'x.npy'), np.load(tmp_path / 'ot2' / 'x.npy'))
    rec = {r['name']: r for r in map(json.loads, (tmp_path / 'ot1' / 'results.jsonl').read_text().splitlines())}
    assert rec['x']['masked'] and rec['x']['mask_coverage'] == pytest.approx(20 / 32, abs=1e-6)
    assert not rec['y']['masked'] and rec['y']['mask_coverage'] == 1.0
    pair = PIL.Image.open(tmp_path / 'ot1' / 'x-pair.png')
    assert pair.size[0] == 3 * (128 + 4) + 4                                      # target | recon | mask

    out = tmp_path / 'with-mask-dir'
    result = run_cli(*base_args(network, tmp_path / 't1', out, '--mask', tmp_path / 'masks'))
    assert result.exit_code == 0, result.output
    skipped = json.loads((out / 'skipped.json').read_text())
    assert [(s['name'], 'no mask' in s['reason']) for s in skipped] == [('y', True)]
    assert json.loads((out / 'run.json').read_text())['settings']['mask'] == str(tmp_path / 'masks')
    # A white mask file keeps the alpha mask as it was. x is alone in its batch there (y is skipped), so the
    # reference inverts it alone too: the same kernels on the same shapes give the same bits on any CPU, where a
    # batch of 2 against a batch of 1 differs by float rounding that Adam's first steps amplify (up to 8.5e-4
    # relative seen on another CPU).
    alone = tmp_path / 'alpha-only-batch-1'
    assert run_cli(*base_args(network, tmp_path / 't1', alone, '--batch', 1)).exit_code == 0
    assert np.array_equal(np.load(out / 'x.npy'), np.load(alone / 'x.npy'))


def test_cli_crop_pad_coffee_end_to_end(network, tmp_path):
    data = pytest.importorskip('skimage.data')
    (tmp_path / 'in').mkdir()
    photo = np.asarray(PIL.Image.fromarray(data.coffee()).resize((640, 427), PIL.Image.LANCZOS))
    _save(tmp_path / 'in' / 'coffee.jpg', photo)
    out = tmp_path / 'out'
    result = run_cli(*base_args(network, tmp_path / 'in', out, '--crop', 'pad'))
    assert result.exit_code == 0, result.output
    record = json.loads((out / 'results.jsonl').read_text())
    assert record['masked'] and record['mask_coverage'] == pytest.approx(427 / 640, abs=0.01)
    assert np.isfinite(record['lpips']) and np.isfinite(record['psnr'])


def test_cli_mask_refused_by_an_lpips_without_spatial_map(network, fake_nvlabs, tmp_path):
    (tmp_path / 'in').mkdir()
    _save(tmp_path / 'in' / 'a.png', np.zeros((32, 32, 3), np.uint8))
    args = base_args(network, tmp_path / 'in', tmp_path / 'out', '--crop', 'pad')
    args[args.index('vgg-random')] = f'vgg16-nvlabs:{fake_nvlabs["global"]}'
    result = run_cli(*args)
    assert result.exit_code == 1 and 'no spatial map' in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / 'out').exists()
