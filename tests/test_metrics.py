"""metrics/: FID/KID/PR against independent numpy computations, PPL against the analytic path
length of a linear toy generator, detector loading (offline errors, local files, cache), the
dataset-stats cache, SSIM and the inversion-run reader. All CPU, tiny, seeded."""

import json
import math
import os
import socket
import urllib.error

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
from conftest import float64_copy, tiny_generator_kwargs
from inversion import run_files
from metrics import detectors, feature_stats, frechet, lpips, metric_main, ppl, precision_recall, reconstruction
from training.networks import Generator
from training.tiny_data import write_tiny_dataset

pytestmark = pytest.mark.pins_numbers

@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Empty dnnlib cache per test, no network, no detector shared between tests."""
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setattr(dnnlib.util, '_cache_dir_override', None)
    monkeypatch.delenv(detectors.DETECTOR_PATH_ENV, raising=False)

    def offline(url, timeout=60.0):
        raise urllib.error.URLError(socket.gaierror(-3, 'Temporary failure in name resolution'))
    monkeypatch.setattr(dnnlib.util, '_fetch_url', offline)
    detectors.clear_cache()
    yield
    detectors.clear_cache()


def _dataset_kwargs(path):
    return dict(class_name='training.dataset.ImageFolderDataset', path=str(path))


def _opts(**kwargs):
    return feature_stats.MetricOptions(device='cpu', num_workers=0, batch_size=16, batch_gen=16, **kwargs)

#----------------------------------------------------------------------------
# FID / KID / precision-recall on synthetic features.

def _fid_by_eigen(mu1, s1, mu2, s2):
    """Independent FID: tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), via symmetric eigendecompositions."""
    vals, vecs = np.linalg.eigh(s1)
    root1 = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(inner, 0, None)))


def test_fid_matches_eigen_formula_on_gaussian_features():
    rnd = np.random.RandomState(0)
    a = rnd.randn(400, 12) @ rnd.randn(12, 12) + 0.3
    b = rnd.randn(300, 12) @ rnd.randn(12, 12) * 0.7
    stats_a = feature_stats.FeatureStats(capture_mean_cov=True)
    for chunk in np.array_split(a, 7):                      # accumulation in chunks = one-shot moments
        stats_a.append(chunk)
    mu_a, cov_a = stats_a.get_mean_cov()
    np.testing.assert_allclose(mu_a, a.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cov_a, np.cov(a.astype(np.float32), rowvar=False, bias=True), rtol=1e-4, atol=1e-4)
    mu_b, cov_b = b.mean(0), np.cov(b, rowvar=False, bias=True)
    got = frechet.frechet_distance(mu_a, cov_a, mu_b, cov_b)
    assert got == pytest.approx(_fid_by_eigen(mu_a, cov_a, mu_b, cov_b), rel=1e-6)
    assert frechet.frechet_distance(mu_b, cov_b, mu_b, cov_b) == pytest.approx(0, abs=1e-6)


def test_fid_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expect = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expect, rel=1e-9)


def _poly_kernel(x, y):
    return (np.dot(x, y) / len(x) + 1) ** 3


def _mmd2_unbiased_loops(x, y):
    m = len(x)
    kxx = sum(_poly_kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(_poly_kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(_poly_kernel(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy


def test_kid_equals_explicit_unbiased_mmd():
    rnd = np.random.RandomState(1)
    real, gen = rnd.randn(9, 5), rnd.randn(9, 5) * 1.3 + 0.2
    # One subset holding every row: a permutation of each set, so KID is exactly the set's MMD^2.
    assert frechet.kernel_distance(real, gen, num_subsets=1, max_subset_size=100) == pytest.approx(
        _mmd2_unbiased_loops(gen, real), rel=1e-9)
    # Several subsets, drawn in the documented order (generated, then real) from RandomState(seed).
    real, gen = rnd.randn(14, 4), rnd.randn(11, 4) + 0.5
    pick = np.random.RandomState(3)
    expect = []
    for _ in range(4):
        x = gen[pick.choice(11, 6, replace=False)]
        y = real[pick.choice(14, 6, replace=False)]
        expect.append(_mmd2_unbiased_loops(x, y))
    got = frechet.kernel_distance(real, gen, num_subsets=4, max_subset_size=6, seed=3)
    assert got == pytest.approx(np.mean(expect), rel=1e-9)


def test_precision_recall_matches_brute_force():
    rnd = np.random.RandomState(2)
    real, gen = rnd.randn(30, 3), rnd.randn(25, 3) * 1.5 + 0.5

    def cover(manifold, probes, k=3):
        d = np.linalg.norm(manifold[:, None] - manifold[None], axis=2)
        radius = np.sort(d, axis=1)[:, k]                    # index 0 is the point itself
        dp = np.linalg.norm(probes[:, None] - manifold[None], axis=2)
        return np.mean([(dp[i] <= radius).any() for i in range(len(probes))])
    p, r = precision_recall.precision_recall(torch.from_numpy(real), torch.from_numpy(gen), 3, row_batch_size=7,
                                             col_batch_size=4)
    assert p == pytest.approx(cover(real, gen)) and r == pytest.approx(cover(gen, real))
    assert 0 < p < 1 and p < r   # the wider generated cloud covers the real one better than the reverse


def _half_reference_pr(real, gen, k=3):
    """NVIDIA's arithmetic written out in one piece: features rounded to float16, the whole
    float16 distance matrix in one cdist call, the k-th neighbour in float32 rounded to float16,
    probe inside when its float16 distance <= that radius; float32 mean."""
    def cover(manifold, probes):
        radius = torch.cdist(manifold[None], manifold[None])[0].float().sort(dim=1).values[:, k].half()
        inside = (torch.cdist(probes[None], manifold[None])[0] <= radius[None]).any(dim=1)
        return float(inside.float().mean())
    real, gen = real.to(torch.float16), gen.to(torch.float16)
    return cover(real, gen), cover(gen, real)


def test_precision_recall_float16_blocks_equal_one_piece_reference():
    """Row batches and zero-padded equal column blocks change nothing (43 = 5 blocks of 9 with 2 pad rows)."""
    rnd = np.random.RandomState(5)
    real = torch.from_numpy(rnd.randn(43, 6).astype(np.float32) * 3)
    gen = torch.from_numpy(rnd.randn(37, 6).astype(np.float32) * 3 + 0.7)
    got = precision_recall.precision_recall(real.half(), gen.half(), 3, row_batch_size=7, col_batch_size=9)
    assert got == _half_reference_pr(real, gen)
    blocks, count = precision_recall.column_blocks(real, 9)
    assert count == 43 and [b.shape[0] for b in blocks] == [9] * 5 and torch.equal(torch.cat(blocks)[:43], real)


class _FixedFeatures:
    def __init__(self, rows):
        self.rows = np.asarray(rows, dtype=np.float32)

    def get_all(self):
        return self.rows


def test_pr_metric_rounds_features_to_float16_like_nvidia(monkeypatch):
    """A probe 8.00098 away from a point whose 3rd-neighbour radius is 8: in float16 both are 8.0, so
    it is covered (NVIDIA's recall), in float32 it is not. Values: exact float16 numbers, so the
    only rounding is the distance's. Recall 2/7: the far probe and the 4-point cluster (there so
    that the real set has k + 1 points) are never covered."""
    gen = [[0, 0], [0, 8], [0, 8], [0, 8]]                        # radius of (0, 0): 8; of the copies of (0, 8): 8
    real = [[0.125, -8], [0, 4], [0, -20], [40, 40], [40, 41], [41, 40], [41, 41]]
    d = np.hypot(0.125, 8)
    assert d > 8 and np.float16(d) == 8                            # the case in point
    calls = iter([_FixedFeatures(real), _FixedFeatures(gen)])
    monkeypatch.setattr(precision_recall, 'compute_feature_stats_for_dataset', lambda *a, **k: next(calls))
    monkeypatch.setattr(precision_recall, 'compute_feature_stats_for_generator', lambda *a, **k: next(calls))
    res = metric_main.calc_metric('pr50k3_full', G=torch.nn.Identity(), device='cpu',
                                  detector_path='random:2:0').results
    assert res.pr50k3_full_recall == float(np.float32(2 / 7))       # a float32 mean, as NVIDIA reports it
    assert res.pr50k3_full_precision == 1.0                         # the ball of (0, 4) has radius > 50
    p32, r32 = precision_recall.precision_recall(torch.tensor(real), torch.tensor(gen, dtype=torch.float32))
    assert r32 == pytest.approx(1 / 7)                             # float32 arithmetic misses the boundary probe

#----------------------------------------------------------------------------
# Detectors.

def test_random_detector_is_seeded():
    images = torch.randint(0, 256, [3, 3, 32, 32], dtype=torch.uint8)
    a = detectors.load_detector('random:16:0')(images, return_features=True)
    b = detectors.load_detector('random:16:0')(images, return_features=True)
    c = detectors.load_detector('random:16:1')(images, return_features=True)
    assert a.shape == (3, 16) and torch.equal(a, b) and not torch.allclose(a, c)
    lp = detectors.load_detector('random:16:0')(images.float(), resize_images=False, return_lpips=True)
    assert lp.shape[0] == 3 and torch.isfinite(lp).all()
    with pytest.raises(ValueError, match='random:<dim>:<seed>'):
        detectors.parse_random_spec('random:x')


def test_offline_detector_error_names_the_option():
    with pytest.raises(detectors.DetectorUnavailableError) as info:
        detectors.load_detector(detectors.INCEPTION_URL)
    msg = str(info.value)
    assert '--detector-path' in msg and '\n' not in msg and 'inception-2015-12-05' in msg


class _ScriptDetector(torch.nn.Module):
    def forward(self, images, return_features: bool = False, return_lpips: bool = False, resize_images: bool = True):
        return images.to(torch.float32).mean(dim=[2, 3])


def test_torchscript_detector_from_path_folder_and_url_cache(tmp_path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        scripted = torch.jit.script(_ScriptDetector())
    folder = tmp_path / 'detectors'
    folder.mkdir()
    scripted.save(str(folder / 'inception-2015-12-05.pt'))
    images = torch.full([2, 3, 8, 8], 7, dtype=torch.uint8)

    spec = detectors.resolve_detector(detectors.INCEPTION_URL, str(folder))            # a folder
    assert spec == str(folder / 'inception-2015-12-05.pt')
    assert torch.equal(detectors.load_detector(spec)(images, return_features=True), torch.full([2, 3], 7.0))
    pairs = f'inception={folder / "inception-2015-12-05.pt"},vgg16=random:8:0'      # name=spec pairs
    assert detectors.resolve_detector(detectors.VGG16_URL, pairs) == 'random:8:0'
    assert detectors.resolve_detector(detectors.INCEPTION_URL, pairs).endswith('inception-2015-12-05.pt')
    with pytest.raises(detectors.DetectorUnavailableError, match='--detector-path'):   # folder without vgg16.pt
        detectors.load_detector(detectors.resolve_detector(detectors.VGG16_URL, str(folder)))

    cached = dnnlib.util.url_cache_path(detectors.INCEPTION_URL)                        # the URL, from the cache
    os.makedirs(os.path.dirname(cached))
    scripted.save(cached)
    assert detectors.get_detector(detectors.INCEPTION_URL)(images, return_features=True).shape == (2, 3)

    bad = tmp_path / 'not-a-model.pt'
    bad.write_bytes(b'hello')
    with pytest.raises(detectors.DetectorUnavailableError, match='TorchScript'):
        detectors.load_detector(str(bad))

def test_detector_path_from_environment(monkeypatch):
    monkeypatch.setenv(detectors.DETECTOR_PATH_ENV, 'random:8:3')
    assert detectors.resolve_detector(detectors.INCEPTION_URL) == 'random:8:3'
    assert detectors.resolve_detector(detectors.INCEPTION_URL, 'random:4:0') == 'random:4:0'   # an explicit path wins

#----------------------------------------------------------------------------
# Dataset statistics and their cache.

def test_dataset_stats_cache_skips_the_detector(tmp_path):
    data = write_tiny_dataset(tmp_path / 'data.zip', num_images=20, resolution=32, seed=1)
    opts = _opts(dataset_kwargs=_dataset_kwargs(data))
    detector = detectors.get_detector('random:8:0', device='cpu')
    calls = []
    handle = detector.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    try:
        kw = dict(return_features=True)
        first = feature_stats.compute_feature_stats_for_dataset(opts, 'random:8:0', kw, capture_mean_cov=True,
                                                                capture_all=True)
        assert sum(calls) == 20 and first.num_items == 20
        second = feature_stats.compute_feature_stats_for_dataset(opts, 'random:8:0', kw, capture_mean_cov=True,
                                                                 capture_all=True)
        assert sum(calls) == 20                                            # read from the cache
        np.testing.assert_array_equal(first.get_all(), second.get_all())
        np.testing.assert_array_equal(first.get_mean_cov()[1], second.get_mean_cov()[1])
        feature_stats.compute_feature_stats_for_dataset(opts, 'random:8:0', kw, max_items=10, capture_all=True)
        assert sum(calls) == 30                                            # other options: other entry
        os.utime(data, ns=(1, 1))                                          # the data changed: recompute
        feature_stats.compute_feature_stats_for_dataset(opts, 'random:8:0', kw, capture_mean_cov=True, capture_all=True)
        assert sum(calls) == 50
        cache_files = os.listdir(dnnlib.util.make_cache_dir_path('gan-metrics'))
        assert len(cache_files) == 3 and all(f.startswith('data-random-8-0-') and f.endswith('.npz')
                                             for f in cache_files)
    finally:
        handle.remove()


class _ReplayG(torch.nn.Module):
    """Toy 'generator' replaying a dataset's images in order through the public API."""

    def __init__(self, images):
        super().__init__()
        self.register_buffer('images', torch.from_numpy(images))
        self.c_dim, self.num_ws, self.img_resolution, self.img_channels = 0, 1, images.shape[-1], images.shape[1]
        self.z_shape, self.w_shape, self.next = (1,), (1,), 0

    def sample_z(self, n, generator=None, device=None):
        idx = torch.arange(self.next, self.next + n, dtype=torch.float32) % len(self.images)
        self.next += n
        return idx[:, None].to(device)

    def mapping(self, z, c, **kwargs):
        return z[:, None]

    def synthesis(self, ws, **kwargs):
        return (self.images[ws[:, 0, 0].long()].to(torch.float32) - 127.5) / 127.5


def test_fid_pipeline_is_zero_for_the_dataset_itself(tmp_path):
    """Generated images that are the real images give (numerically) zero FID: the uint8
    conversion, batching and the two feature paths agree."""
    data = write_tiny_dataset(tmp_path / 'data.zip', num_images=24, resolution=32, seed=2)
    from training.dataset import ImageFolderDataset
    images = np.stack([ImageFolderDataset(data)[i][0] for i in range(24)])
    result = metric_main.calc_metric('fid50k_full', G=_ReplayG(images), dataset_kwargs=_dataset_kwargs(data),
                                     device='cpu', detector_path='random:8:0', num_gen=24, num_workers=0, batch_size=8,
                                     batch_gen=4)
    assert abs(result.results.fid50k_full) < 1e-3 and result.overrides['num_gen'] == 24

#----------------------------------------------------------------------------
# Perceptual path length.

class _LinearG(torch.nn.Module):
    """img = reshape(vec(W) @ A), W = Z @ M: a linear toy with the generator's public API (float64)."""

    def __init__(self, rows=None, dim=4, res=4, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.z_shape = (dim,) if rows is None else (rows, dim)
        self.w_shape, self.num_ws, self.c_dim = self.z_shape, 3, 0
        self.img_resolution, self.img_channels = res, 3
        self.M = torch.randn([dim, dim], generator=gen, dtype=torch.float64) / dim ** 0.5
        self.A = torch.randn([int(np.prod(self.z_shape)), 3 * res * res], generator=gen, dtype=torch.float64) * 0.05
        self.mapped = []

    def sample_z(self, n, generator=None, device=None):
        return torch.randn([n, *self.z_shape], generator=generator, dtype=torch.float64)

    def mapping(self, z, c, **kwargs):
        w = z @ self.M
        self.mapped.append(w)
        return w.unsqueeze(1).expand(w.shape[0], self.num_ws, *w.shape[1:])

    def synthesis(self, ws, **kwargs):
        return (ws[:, 0].flatten(1) @ self.A).reshape(-1, 3, self.img_resolution, self.img_resolution)


def _pixel_l2(img0, img1):
    return ppl.l2_distance(img0, img1) / 127.5 ** 2          # undo the [-1, 1] -> [0, 255] scaling


@pytest.mark.parametrize('rows', [None, 3])
@pytest.mark.parametrize('sampling', ['end', 'full'])
def test_ppl_of_linear_generator_is_analytic(rows, sampling):
    G = _LinearG(rows=rows)
    n = 600
    got = ppl.sample_path_lengths(G, _pixel_l2, n, epsilon=1e-4, space='w', sampling=sampling, batch_size=50,
                                  generator=torch.Generator().manual_seed(5))
    # Linear g: ||g(lerp(t + eps)) - g(lerp(t))||^2 / eps^2 = ||vec(W1 - W0) A||^2 for every t.
    expect = []
    for w in G.mapped:
        w0, w1 = w.chunk(2)
        expect.append(((w1 - w0).flatten(1) @ G.A).square().sum(1))
    expect = torch.cat(expect).numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    ordered = np.sort(expect)                                  # trimmed mean written out by hand
    lo, hi = ordered[int(math.floor(0.01 * (n - 1)))], ordered[int(math.ceil(0.99 * (n - 1)))]
    assert ppl.trimmed_mean(got) == pytest.approx(expect[(expect >= lo) & (expect <= hi)].mean(), rel=1e-9)
    # Closed form of the expectation: W1 - W0 = (Z1 - Z0) M with Z entries N(0, 1): 2 tr(A^T (M^T M (x) I) A).
    R = 1 if rows is None else rows
    cov = torch.kron(torch.eye(R, dtype=torch.float64), G.M.T @ G.M)            # of vec(W) (row-major)
    analytic = float(2 * torch.trace(G.A.T @ cov @ G.A))
    assert expect.mean() == pytest.approx(analytic, rel=0.1)


def test_slerp_rowwise_and_face_crop():
    a, b = torch.randn(2, 3, 5, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64).reshape(2, 1, 1)
    out = ppl.slerp(a, b, t)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 3, dtype=torch.float64))
    torch.testing.assert_close(out[0], a[0] / a[0].norm(dim=-1, keepdim=True))
    torch.testing.assert_close(out[1], b[1] / b[1].norm(dim=-1, keepdim=True))
    half = ppl.slerp(a, b, torch.full([2, 1, 1], 0.5, dtype=torch.float64))       # equal angles to both ends
    na, nb = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    torch.testing.assert_close((half * na).sum(-1), (half * nb).sum(-1))
    img = torch.arange(16 * 16).reshape(1, 1, 16, 16)
    crop = ppl.face_crop(img)
    assert crop.shape == (1, 1, 8, 8) and crop[0, 0, 0, 0] == 6 * 16 + 4 and crop[0, 0, -1, -1] == 13 * 16 + 11


@pytest.mark.parametrize('rows', [None, 32])
def test_ppl_of_tiny_generators_is_finite_and_seed_stable(rows):
    G = Generator(**tiny_generator_kwargs(latent_rows=rows, resolution=16)).eval()
    values = [metric_main.calc_metric('ppl2_wend', G=G, device='cpu', detector_path='random:32:0', num_gen=128, seed=s,
                                      ppl_batch_size=32).results.ppl2_wend for s in (0, 1)]
    assert all(np.isfinite(v) and v > 0 for v in values)
    assert abs(values[0] - values[1]) / np.mean(values) < 0.3, values

#----------------------------------------------------------------------------
# Reconstruction metrics.

def _gaussian_ssim_loops(x, y, L=255.0):
    """SSIM of one-channel float64 images at every valid 11x11 window, by explicit weighted sums."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return np.mean(vals)


def test_ssim_mse_psnr():
    rnd = np.random.RandomState(4)
    x = rnd.randint(0, 256, [2, 3, 14, 13]).astype(np.float64)
    y = np.clip(x + rnd.randn(*x.shape) * 20, 0, 255)
    got = reconstruction.ssim(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    expect = [np.mean([_gaussian_ssim_loops(x[n, c], y[n, c]) for c in range(3)]) for n in range(2)]
    np.testing.assert_allclose(got, expect, rtol=1e-9)
    assert reconstruction.ssim(torch.from_numpy(x), torch.from_numpy(x)).numpy() == pytest.approx([1, 1])
    m = reconstruction.pixel_metrics(torch.full([1, 3, 12, 12], 100.0), torch.full([1, 3, 12, 12], 151.0))
    assert float(m['mse'][0]) == pytest.approx(0.04) and float(m['psnr'][0]) == pytest.approx(10 * np.log10(25))


def _fake_inversion_run(tmp_path, n=4, res=16):
    """A run folder as invert.py writes it: results.jsonl, <name>-recon.png, <name>-pair.png, summary.json;
    image 0 has a targets/ file instead of a pair, image 1 only its recorded source."""
    rnd = np.random.RandomState(0)
    run, src = tmp_path / 'run', tmp_path / 'targets-src'
    run.mkdir()
    src.mkdir()
    targets = rnd.randint(0, 256, [n, res, res, 3]).astype(np.uint8)
    recons = np.clip(targets.astype(int) + rnd.randint(-30, 31, targets.shape), 0, 255).astype(np.uint8)
    lines = []
    for i in range(n):
        name = f'img{i}'
        PIL.Image.fromarray(targets[i]).save(src / f'{name}.png')
        PIL.Image.fromarray(recons[i]).save(run / f'{name}-recon.png')
        if i == 0:
            (run / 'targets').mkdir()
            PIL.Image.fromarray(targets[i]).save(run / 'targets' / f'{name}.png')
        elif i > 1:
            PIL.Image.fromarray(np.concatenate([targets[i], recons[i]], axis=1)).save(run / f'{name}-pair.png')
        lines.append(json.dumps(dict(name=name, source=str(src / f'{name}.png'), lpips=0.1 * i)))
    (run / 'results.jsonl').write_text('\n'.join(lines) + '\n{"torn": \n')
    (run / 'summary.json').write_text(json.dumps(dict(args=dict(target=str(src)))))
    return run, targets, recons


def test_read_inversion_run_and_recon_metrics(tmp_path):
    run, targets, recons = _fake_inversion_run(tmp_path)
    data = run_files.read_pairs(run)
    assert data['names'] == ['img0', 'img1', 'img2', 'img3'] and data['missing'] == []
    np.testing.assert_array_equal(data['target'], targets)
    np.testing.assert_array_equal(data['recon'], recons)
    res = metric_main.calc_metric('recon_pixel', inversion_pairs=run_files.read_pairs(run), device='cpu').results
    mse = ((recons.astype(np.float64) - targets) / 255) ** 2
    assert res.recon_mse == pytest.approx(mse.mean()) and res.recon_num_images == 4
    assert res.recon_psnr == pytest.approx(np.mean(-10 * np.log10(mse.mean(axis=(1, 2, 3)))))
    assert 0 < res.recon_ssim < 1 and res.recon_recorded_lpips == pytest.approx(0.15)
    full_result = metric_main.calc_metric('recon', inversion_pairs=run_files.read_pairs(run), device='cpu',
                                          detector_path='random:16:0')
    full = full_result.results
    assert full.recon_lpips > 0 and np.isfinite(full.recon_fid) and full.recon_fid > 0
    assert full_result.lpips_network == 'random:16:0'              # recon_lpips says which LPIPS it is
    # Perfect reconstructions: zero LPIPS and FID, SSIM 1.
    for i in range(4):
        PIL.Image.fromarray(targets[i]).save(run / f'img{i}-recon.png')
    perfect = metric_main.calc_metric('recon', inversion_pairs=run_files.read_pairs(run), device='cpu',
                                      detector_path='random:16:0').results
    assert perfect.recon_lpips == pytest.approx(0, abs=1e-9) and perfect.recon_fid == pytest.approx(0, abs=1e-4)
    assert perfect.recon_ssim == pytest.approx(1)

#----------------------------------------------------------------------------
# Registry and reporting.

def test_registry_and_report(tmp_path, capsys):
    names = metric_main.list_valid_metrics()
    for name in ('fid50k_full', 'kid50k_full', 'pr50k3_full', 'ppl2_wend', 'fid50k', 'ppl_zfull', 'recon'):
        assert name in names
    with pytest.raises(ValueError, match='fid50k_full'):
        metric_main.calc_metric('fid1k')
    result = dnnlib.EasyDict(results=dnnlib.EasyDict(fid50k_full=1.5), metric='fid50k_full', total_time=1.0, num_gpus=1)
    for _ in range(2):
        metric_main.report_metric(result, run_dir=str(tmp_path), snapshot_pkl=str(tmp_path / 'net.pkl'))
    lines = (tmp_path / 'metric-fid50k_full.jsonl').read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])['snapshot_pkl'] == 'net.pkl'
    assert json.loads(lines[1])['results']['fid50k_full'] == 1.5 and 'fid50k_full' in capsys.readouterr().out


@pytest.mark.parametrize('name, expect', [('fid50k_full', dict(max_size=None, xflip=False)),
                                          ('pr50k3_full', dict(max_size=None, xflip=False)),
                                          ('fid50k', dict(max_size=None, xflip=True))])
def test_registry_applies_dataset_options(monkeypatch, name, expect):
    """*_full metrics read the whole dataset without x-flips; the legacy ones keep the caller's x-flip."""
    seen = {}

    def fake(opts, **kwargs):
        seen.update(opts.dataset_kwargs, **{k: kwargs[k] for k in ('max_real', 'num_gen')})
        return (0.5, 0.5) if name.startswith('pr') else 1.0
    monkeypatch.setattr(frechet, 'compute_fid', fake)
    monkeypatch.setattr(precision_recall, 'compute_pr', fake)
    metric_main.calc_metric(name, G=torch.nn.Identity(), dataset_kwargs=dict(class_name='x', max_size=10, xflip=True),
                            device='cpu')
    assert {k: seen[k] for k in expect} == expect
    assert (seen['max_real'], seen['num_gen']) == {'fid50k_full': (None, 50000), 'pr50k3_full': (200000, 50000),
                                                   'fid50k': (50000, 50000)}[name]

#----------------------------------------------------------------------------
# Two processes (gloo): sharded features equal the single-process ones; results reach every rank.

def _two_rank_worker(rank, init_file, data, out_dir):
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        opts = _opts(dataset_kwargs=_dataset_kwargs(data), num_gpus=2, rank=rank, cache=False)
        stats = feature_stats.compute_feature_stats_for_dataset(opts, 'random:8:0', dict(return_features=True),
                                                                capture_all=True)
        G = _LinearG(rows=2, res=8)
        fid = metric_main.calc_metric('fid50k_full', G=G, dataset_kwargs=_dataset_kwargs(data), num_gpus=2, rank=rank,
                                      device='cpu', detector_path='random:8:0', num_gen=10, num_workers=0, cache=False)
        length = metric_main.calc_metric('ppl2_wend', G=G, num_gpus=2, rank=rank, device='cpu', num_gen=30,
                                         distance_fn=_pixel_l2)
        np.savez(os.path.join(out_dir, f'rank{rank}.npz'), features=stats.get_all(), fid=fid.results.fid50k_full,
                 ppl=length.results.ppl2_wend)
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_shard_and_gather(tmp_path):
    data = write_tiny_dataset(tmp_path / 'data.zip', num_images=11, resolution=16, seed=4)   # odd: ranks wrap around
    torch.multiprocessing.spawn(_two_rank_worker, args=(str(tmp_path / 'init'), str(data), str(tmp_path)), nprocs=2)
    single = feature_stats.compute_feature_stats_for_dataset(_opts(dataset_kwargs=_dataset_kwargs(data), cache=False),
                                                             'random:8:0', dict(return_features=True), capture_all=True)
    r0, r1 = np.load(tmp_path / 'rank0.npz'), np.load(tmp_path / 'rank1.npz')
    np.testing.assert_allclose(r0['features'], single.get_all(), rtol=1e-5, atol=1e-5)   # original order, 11 rows
    np.testing.assert_array_equal(r0['features'], r1['features'])
    assert np.isfinite(r0['fid']) and float(r0['fid']) == float(r1['fid'])           # broadcast from rank 0
    assert float(r0['ppl']) > 0 and float(r0['ppl']) == float(r1['ppl'])


#----------------------------------------------------------------------------
# Values pinned before the clean-room rewrite of metrics/ (same seeds, random detectors).

# The baseline (None) values are those of the code before the rewrite. The R = 32 values (and the
# interpolation ones) were re-recorded once after folded demodulation changed the per-row generator's
# float32 rounding (issue 15); the metric code between the two recordings is the rewritten one, whose
# baseline values did not move.
# FID, KID and PR run in float32, as the metrics do. Across CPU kernel sets (tests/cpu_matrix.sh: ATen default /
# AVX2 / AVX-512 x oneDNN native / AVX2 / SSE4.1) their values moved by at most 2.3e-6 relative: pinned at 2e-5.
PINNED = {  # (latent_rows, metric) -> results
    (32, 'fid50k_full'): dict(fid50k_full=1.760190466823924),
    (32, 'kid50k_full'): dict(kid50k_full=0.5435778311579611),
    (32, 'pr50k3_full'): dict(pr50k3_full_precision=0.5, pr50k3_full_recall=0.4000000059604645),
    (None, 'fid50k'): dict(fid50k=3.497288976662828),
}
# PPL divides the LPIPS distance of two images 1e-4 apart by 1e-8: in float32 the convolutions' rounding moved it by up
# to 1.2e-3 relative across those kernel sets, so a float32 pin could only be loose. These run the same networks
# converted to float64 (generator and LPIPS net, `float64_copy`; z and noise then drawn in float64 too), where every
# kernel set gives the same bits but one: without AVX2 (ATen 'default') torch.randn's float32 draws of the networks'
# random weights differ in their last bit, which moves the values by up to 2.8e-6. Pinned at 3e-5. (Recorded when
# the PPL pins moved to float64, which also changed the z and noise draws.)
PINNED_FLOAT64 = {
    (32, 'ppl2_wend'): dict(ppl2_wend=9.566725324184901),
    (32, 'ppl_zfull'): dict(ppl_zfull=31.789235987956843),
    (None, 'ppl_wfull'): dict(ppl_wfull=7.9069053242005225),
}


@pytest.fixture(scope='module')
def pinned_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('pinned')
    data = write_tiny_dataset(root / 'data.zip', num_images=40, resolution=32, seed=1)
    nets = {}
    for rows in (None, 32):
        torch.manual_seed(5)
        nets[rows] = Generator(**tiny_generator_kwargs(latent_rows=rows, use_noise=True)).eval()
    return data, nets


def _pinned_kwargs(name):
    return dict(detector_path='random:16:1', num_gen=24, max_real=30, num_workers=0, batch_size=8, batch_gen=4, seed=3,
                G_kwargs=dict(truncation_psi=0.8) if name == 'fid50k' else None,
                num_subsets=5 if 'kid' in name else None)


@pytest.mark.parametrize('rows, name', list(PINNED))
def test_metric_values_did_not_move(pinned_setup, rows, name):
    data, nets = pinned_setup
    got = metric_main.calc_metric(name, G=nets[rows], dataset_kwargs=_dataset_kwargs(data), device='cpu',
                                  **_pinned_kwargs(name)).results
    assert dict(got) == pytest.approx(PINNED[(rows, name)], rel=2e-5, abs=0)


@pytest.mark.parametrize('rows, name', list(PINNED_FLOAT64))
def test_ppl_values_in_float64_did_not_move(pinned_setup, rows, name):
    lpips64 = lpips.lpips_distance(float64_copy(detectors.get_detector('random:16:1')))
    got = metric_main.calc_metric(name, G=float64_copy(pinned_setup[1][rows]), device='cpu', distance_fn=lpips64,
                                  **_pinned_kwargs(name)).results
    assert dict(got) == pytest.approx(PINNED_FLOAT64[(rows, name)], rel=3e-5, abs=0)


def test_interpolation_values_did_not_move(pinned_setup):
    """Float32, as the metric runs: across the CPU kernel sets the path lengths moved by at most 6e-7 relative and the
    midpoint FID by 1.1e-6 (tests/cpu_matrix.sh), so both are pinned at 1e-5."""
    from metrics import interpolation as interp
    G = pinned_setup[1][32]
    ws = G.mapping(G.sample_z(4, torch.Generator().manual_seed(1)), torch.zeros([4, 0]))
    inception = detectors.get_detector('random:16:2')
    res = interp.interpolation_metrics(G, ws, interp.all_pairs(4), lpips.lpips_distance_fn('random:16:1'),
                                       feature_fn=lambda im: inception(im, return_features=True),
                                       real_features=np.random.RandomState(0).randn(50, 16), batch_size=3)
    assert res['path_lengths'] == pytest.approx([0.9906461536884308, 2.0770636051893234, 1.8892269730567932,
                                                 2.4564965963363647, 2.588534861803055, 2.042646884918213], rel=1e-5)
    assert res['fid_midpoints'] == pytest.approx(21.70624471754801, rel=1e-5)


def test_lpips_input_box_downsamples_large_images():
    """Above 256 px the LPIPS input is the mean of f x f blocks (f = res // 256), mapped to [0, 255]."""
    img = torch.rand([2, 1, 1024, 512], dtype=torch.float64) * 2 - 1
    got = ppl.to_lpips_range(img, img_resolution=1024)
    expect = (torch.nn.functional.avg_pool2d(img, 4) + 1) * 127.5
    assert got.shape == (2, 3, 256, 128)
    torch.testing.assert_close(got, expect.expand(-1, 3, -1, -1), rtol=1e-12, atol=1e-10)
    small = torch.rand([1, 3, 32, 32]) * 2 - 1
    torch.testing.assert_close(ppl.to_lpips_range(small), (small + 1) * 127.5)
