"""figures/: the PIL image sheets (geometry, nearest-neighbour upscaling, mask tint) and the matplotlib curves."""

import numpy as np
import PIL.Image

from figures import curves, sheets


def test_lpips_curves_png_mean_line_and_truncation_label(tmp_path):
    """Thin curves, a thick red mean, and a dotted truncation line with its label only when truncation ends."""
    data = {'a': np.linspace(0.5, 0.1, 11), 'b': np.linspace(0.4, 0.2, 9), 'c': np.full(9, 0.9)}   # NaN-padded
    curves.lpips_curves(tmp_path / 'curve.png', data, truncation_end=5)
    with PIL.Image.open(tmp_path / 'curve.png') as img:
        assert img.size == (800, 500)
        arr = np.asarray(img.convert('RGB')).astype(int)
    assert ((arr[..., 0] > 180) & (arr[..., 1] < 80) & (arr[..., 2] < 80)).sum() > 100   # the mean, tab:red
    ax = curves.lpips_curves_figure(data, truncation_end=5).axes[0]
    mean = ax.lines[-2]                                                                 # then the vertical line
    np.testing.assert_allclose(mean.get_ydata()[:9], (data['a'][:9] + data['b'] + data['c']) / 3)
    np.testing.assert_allclose(mean.get_ydata()[9:], data['a'][9:])
    assert [t.get_text() for t in ax.texts] == ['truncation off (step 5)']
    assert list(ax.lines[-1].get_xdata()) == [5, 5] and ax.lines[-1].get_linestyle() == ':'
    assert len(curves.lpips_curves_figure(data).axes[0].texts) == 0
    curves.lpips_curves(tmp_path / 'none.png', {})
    assert not (tmp_path / 'none.png').exists()


def test_quantile_bands_and_explained_variance_write_pngs(tmp_path):
    rng = np.random.RandomState(0)
    series = {'w': rng.rand(5, 12) + 0.1, 'W': rng.rand(7, 12) * 0.1 + 0.01}
    curves.quantile_bands(tmp_path / 'q.png', series, 'title', log_y=True, vline=(6, 'truncation off'))
    curves.explained_variance(tmp_path / 'ev.png', [0.5, 0.3, 0.2])
    for name in ('q.png', 'ev.png'):
        with PIL.Image.open(tmp_path / name) as img:
            assert min(img.size) >= 300
    median, lo, hi = curves.curve_quantiles(series['w'])
    np.testing.assert_allclose(median, np.median(series['w'], axis=0))
    np.testing.assert_allclose(lo, np.quantile(series['w'], 0.25, axis=0))
    assert (hi >= median).all() and (median >= lo).all()


def test_upscale_and_stack_rows():
    img = np.arange(12, dtype=np.uint8).reshape(2, 3, 2)[:, :, :1]                  # grey, 2 x 3
    big = sheets.upscale(img, 5)
    assert big.shape == (6, 9, 3)                                                   # k = 3: the shorter side >= 5
    np.testing.assert_array_equal(big[::3, ::3, 1], img[:, :, 0])
    rows = [np.zeros((2, 3, 3), np.uint8), np.zeros((1, 5, 1), np.uint8)]
    stacked = sheets.stack_rows(rows, gap=1)
    assert stacked.shape == (2 + 1 + 1 + 1, 5, 3)
    assert (stacked[:2, 3:] == 255).all() and (stacked[2] == 255).all() and (stacked[3] == 0).all()


def test_titled_panels_and_overview_are_upscaled_and_captioned():
    rng = np.random.RandomState(0)
    target, recon = (rng.randint(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2))
    mask = np.full((16, 16), 255, np.uint8)
    mask[:, 8:] = 0
    sheet = sheets.titled_panels([(target, 'target'), (recon, 'recon'), (sheets.mask_overlay(target, mask), 'm')],
                                  title='x')
    assert sheet.shape == (128 + 2 * 20 + 8, 3 * (128 + 4) + 4, 3)
    k = 128 // 16                                                                # nearest neighbour, 8x
    y0 = 4 + 20
    np.testing.assert_array_equal(sheet[y0:y0 + 128:k, 4:4 + 128:k], target)
    np.testing.assert_array_equal(sheet[y0:y0 + 128:k, 136:136 + 128:k], recon)
    overlay = sheet[y0:y0 + 128:k, 268:268 + 128:k].astype(int)
    np.testing.assert_array_equal(overlay[:, :8], target[:, :8])                 # kept: unchanged
    expected = np.rint(target[:, 8:] * 0.3 + np.array(sheets.MASK_TINT) * 0.7)
    np.testing.assert_allclose(overlay[:, 8:], expected, atol=1)                 # ignored: tinted
    caption = sheet[y0 + 128:, :]
    assert (caption < 100).any()                                                 # text under the panels
    entries = [(f'img{i}', target, recon, 0.1 * i, mask if i == 1 else None) for i in range(3)]
    overview = sheets.target_recon_overview(entries, 'title')
    assert overview.shape[1] >= 3 * 128 and overview.shape[0] >= 2 * 128


def test_points_and_levels_draws_sorted_points_and_reference_levels(tmp_path):
    series = {'a': [(10, 3.0), (0, 1.0), (2.5, 2.0)], 'b': [(5, 4.0)]}
    ax = curves.points_and_levels_figure(series, {'scratch': 2.5, 'w+': 0.5}, 'title', 'kimg', 'PSNR').axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines['a'].get_xdata()) == [0, 2.5, 10] and list(lines['a'].get_ydata()) == [1.0, 2.0, 3.0]
    assert list(lines['scratch'].get_ydata()) == [2.5, 2.5] and list(lines['w+'].get_ydata()) == [0.5, 0.5]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ['scratch', 'w+', 'a', 'b']
    curves.points_and_levels(tmp_path / 'p.png', series, {'scratch': 2.5}, 'title', 'kimg', 'PSNR')
    assert (tmp_path / 'p.png').stat().st_size > 1000
