"""Which LPIPS network is used and reported: StyleGAN2's (NVIDIA's vgg16.pt, `vgg16-nvlabs`) by
default in invert.py, upsample.py and the metrics; one clear line when it cannot be had offline;
the quickstart's explicit fallback to the random stand-in. A small TorchScript module with
vgg16.pt's calling convention stands in for NVIDIA's file (same code path: path + torch.jit)."""

import json
import os
import shutil
import socket
import urllib.error
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dnnlib
import invert
import quickstart
import upsample
from conftest import tiny_generator_kwargs
from inversion import losses
from metrics import detectors, lpips as lpips_lib, metric_main
from torch_utils import checkpoint
from training import networks
from training.tiny_data import write_tiny_images


class _FakeVGG16(torch.nn.Module):
    """vgg16.pt's interface: images `[N, 3, H, W]` in [0, 255]; with return_lpips, unit-normalised
    features `[N, F]` (here: one fixed 3x3 conv, flattened)."""

    def __init__(self):
        super().__init__()
        self.register_buffer('weight', torch.randn([4, 3, 3, 3], generator=torch.Generator().manual_seed(0)))

    def forward(self, images: torch.Tensor, resize_images: bool = True, return_lpips: bool = False,
                return_features: bool = False) -> torch.Tensor:
        f = torch.nn.functional.conv2d(images / 255, self.weight).flatten(1)
        return f / f.square().sum(dim=1, keepdim=True).sqrt() if return_lpips else f


@pytest.fixture
def fake_vgg16(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        path = tmp_path / 'vgg16.pt'
        torch.jit.script(_FakeVGG16()).save(str(path))
    return path


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """An empty download cache and no network (name resolution fails, as on an offline machine)."""
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setattr(dnnlib.util, '_cache_dir_override', None)
    monkeypatch.delenv(detectors.DETECTOR_PATH_ENV, raising=False)

    def no_network(url, timeout=60.0):
        raise urllib.error.URLError(socket.gaierror(-3, 'Temporary failure in name resolution'))
    monkeypatch.setattr(dnnlib.util, '_fetch_url', no_network)
    detectors.clear_cache()
    yield
    detectors.clear_cache()


@pytest.fixture
def tiny_pkl(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / 'G.pkl'
    checkpoint.save_network_pkl(path, dict(G_ema=networks.Generator(**tiny_generator_kwargs()).eval()))
    write_tiny_images(tmp_path / 'targets', num_images=2, resolution=32)
    return path

#----------------------------------------------------------------------------

def test_nvlabs_lpips_distance_and_name(fake_vgg16):
    """vgg16-nvlabs:PATH: images in [-1, 1] go to the net in [0, 255]; the distance is the squared
    L2 distance of its unit-normalised features, computed here by hand."""
    loss = losses.build_loss(f'vgg16-nvlabs:{fake_vgg16}', resolution=None)
    assert loss.lpips_network == f'vgg16-nvlabs:{fake_vgg16}'
    x, y = torch.rand([2, 3, 8, 8]) * 2 - 1, torch.rand([2, 3, 8, 8]) * 2 - 1
    w = torch.randn([4, 3, 3, 3], generator=torch.Generator().manual_seed(0))

    def feats(img):
        f = torch.nn.functional.conv2d((img + 1) * 127.5 / 255, w).flatten(1)
        return f / f.norm(dim=1, keepdim=True)
    expect = (feats(x) - feats(y)).square().sum(dim=1)
    torch.testing.assert_close(loss(x, loss.prepare_target(y))['lpips'], expect, rtol=1e-5, atol=1e-6)
    assert lpips_lib.lpips_network_name('vgg16-nvlabs') == 'vgg16-nvlabs'
    assert (lpips_lib.lpips_network_name('vgg') == 'vgg'
            and losses.build_loss('vgg-random').lpips_network == 'vgg-random')


def test_default_lpips_is_nvlabs_and_fails_offline_in_one_line(tmp_path):
    assert lpips_lib.DEFAULT_LPIPS == 'vgg16-nvlabs'
    with pytest.raises(lpips_lib.LpipsUnavailableError) as info:
        losses.build_loss()
    message = str(info.value)
    assert '\n' not in message and 'vgg16-nvlabs:PATH' in message and 'vgg-random' in message
    with pytest.raises(lpips_lib.LpipsUnavailableError, match='not found'):
        losses.build_loss(f'vgg16-nvlabs:{tmp_path / "missing.pt"}')


@pytest.mark.parametrize('cli', ['invert', 'upsample'])
def test_cli_default_lpips_offline_error(cli, tiny_pkl, tmp_path):
    """Without --lpips, both CLIs ask for NVIDIA's vgg16.pt and, offline, say in one line how to supply it."""
    if cli == 'invert':
        main, args = invert.main, ['--steps', '1', '--device', 'cpu']
    else:
        main, args = upsample.main, ['--steps', '1', '--factor', '4', '--device', 'cpu']
    result = CliRunner().invoke(main, ['--network', str(tiny_pkl), '--target', str(tmp_path / 'targets'),
                                       '--outdir', str(tmp_path / 'out'), *args])
    assert result.exit_code == 1, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert len(error_lines) == 1 and 'Traceback' not in result.output
    assert 'vgg16-nvlabs:PATH' in error_lines[0] and 'vgg-random' in error_lines[0]


def test_upsample_records_lpips(tiny_pkl, tmp_path, fake_vgg16):
    result = CliRunner().invoke(upsample.main, ['--network', str(tiny_pkl), '--target', str(tmp_path / 'targets'),
                                                '--outdir', str(tmp_path / 'out'), '--steps', '1', '--factor', '4',
                                                '--device', 'cpu', '--lpips', f'vgg16-nvlabs:{fake_vgg16}'])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert summary['lpips'] == summary['lpips_network'] == f'vgg16-nvlabs:{fake_vgg16}'


def test_invert_records_the_lpips_network_per_image_and_run(tiny_pkl, tmp_path):
    result = CliRunner().invoke(invert.main, ['--network', str(tiny_pkl), '--target', str(tmp_path / 'targets'),
                                              '--outdir', str(tmp_path / 'out'), '--steps', '1', '--device', 'cpu',
                                              '--lpips', 'vgg-random'])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / 'out' / 'results.jsonl').read_text().splitlines()]
    assert records and all(r['lpips_network'] == 'vgg-random' for r in records)
    assert json.loads((tmp_path / 'out' / 'summary.json').read_text())['lpips_network'] == 'vgg-random'


def test_quickstart_picks_the_random_stand_in_offline(fake_vgg16):
    lpips, notice = quickstart.pick_lpips()
    assert lpips == 'vgg-random' and 'vgg-random' in notice and 'vgg16.pt' in notice
    cached = dnnlib.util.url_cache_path(lpips_lib.VGG16_URL)          # once cached, the real one is used
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    shutil.copy(fake_vgg16, cached)
    assert quickstart.pick_lpips() == ('vgg16-nvlabs', None)

#----------------------------------------------------------------------------
# The metrics report their LPIPS network.

def test_metrics_report_lpips_network(fake_vgg16):
    torch.manual_seed(0)
    G = networks.Generator(**tiny_generator_kwargs()).eval()
    kw = dict(G=G, device='cpu', num_gen=4)
    res = metric_main.calc_metric('ppl2_wend', detector_path=str(fake_vgg16.parent), **kw)
    assert res.lpips_network == f'vgg16-nvlabs:{fake_vgg16}' and np.isfinite(res.results.ppl2_wend)
    assert metric_main.calc_metric('ppl2_wend', detector_path='random:8:0', **kw).lpips_network == 'random:8:0'
    with pytest.raises(detectors.DetectorUnavailableError, match='random:64:0'):     # offline: how to get a stand-in
        metric_main.calc_metric('ppl2_wend', **kw)
    assert lpips_lib.lpips_network_name(lpips_lib.spec_from_detector(detectors.VGG16_URL)) == 'vgg16-nvlabs'


def test_interpolate_lpips_choice_and_offline_error(tiny_pkl, tmp_path, fake_vgg16):
    import interpolate
    base = ['--network', str(tiny_pkl), '--seeds', '0-1', '--metrics', '--no-grid', '--device', 'cpu', '--no-progress']
    result = CliRunner().invoke(interpolate.main, base + ['--lpips', f'vgg16-nvlabs:{fake_vgg16}', '--outdir',
                                                          str(tmp_path / 'a')])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / 'a' / 'interpolation.json').read_text())['summary']
    assert summary['lpips_network'] == f'vgg16-nvlabs:{fake_vgg16}' and summary['ppl_mean'] > 0
    assert f'vgg16-nvlabs:{fake_vgg16} LPIPS' in result.output
    result = CliRunner().invoke(interpolate.main, base + ['--outdir', str(tmp_path / 'b')])     # default, offline
    assert result.exit_code == 1 and 'Traceback' not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert len(error_lines) == 1 and '--detector-path' in error_lines[0] and 'random:64:0' in error_lines[0]


def test_one_spec_grammar_for_inversion_and_metrics():
    """Every LPIPS spec works both as the inversion's loss and as the metrics' distance, with the same values."""
    assert lpips_lib.parse_lpips_spec('random:16:1') == ('random', (16, 1))
    assert lpips_lib.parse_lpips_spec('vgg') == ('vgg', None)
    with pytest.raises(ValueError, match='vgg16-nvlabs:PATH'):
        lpips_lib.parse_lpips_spec('random:x')
    assert lpips_lib.spec_from_detector('random:8:0') == 'random:8:0'
    assert lpips_lib.spec_from_detector('/x/vgg16.pt') == 'vgg16-nvlabs:/x/vgg16.pt'
    rng = torch.Generator().manual_seed(0)
    a, b = (torch.rand([2, 3, 32, 32], generator=rng) * 255 for _ in range(2))
    for spec in ('vgg-random', 'random:16:1'):
        loss = losses.build_loss(spec, resolution=None)
        via_loss = loss.perceptual.distance(loss.features(a / 127.5 - 1), loss.features(b / 127.5 - 1))
        via_metric = lpips_lib.lpips_distance_fn(spec)(a, b)
        torch.testing.assert_close(via_metric, via_loss, rtol=1e-5, atol=1e-7)
        assert loss.lpips_network == lpips_lib.lpips_distance_fn(spec).lpips_network == spec
        assert (via_metric > 0).all()
