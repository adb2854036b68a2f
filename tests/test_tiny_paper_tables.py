"""benchmarks.tiny_paper_tables in its smoke mode (train both tiny generators briefly, 4 images, 6 steps),
with its numbers recomputed independently: PSNR from the PNGs, LPIPS through the lpips package's own
forward, the interpolation path length frame by frame; and its report helpers on hand-made numbers."""

import json
import math

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from benchmarks import tiny_paper_tables as tables, tiny_tables_report as report
from torch_utils import checkpoint

pytestmark = pytest.mark.slow

#----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    outdir = tmp_path_factory.mktemp('tables')
    doc = outdir / 'doc.md'
    doc.write_text(f'# Title\n\nbefore\n\n{report.BEGIN}\nold block\n{report.END}\n\nafter\n')
    result = CliRunner().invoke(tables.main, ['--outdir', str(outdir / 'run'), '--smoke', '--update-doc', str(doc)])
    assert result.exit_code == 0, result.output
    return outdir / 'run', doc, json.loads((outdir / 'run' / 'tables.json').read_text())


def lpips_package_model():
    """The lpips package's LPIPS with the random VGG16 trunk drawn as `vgg-random` (seed 0) draws it."""
    import lpips
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return lpips.LPIPS(net='vgg', pretrained=True, pnet_rand=True, verbose=False).eval()


def read_pngs(paths):
    return np.stack([np.asarray(PIL.Image.open(p).convert('RGB')) for p in paths])


def test_smoke_writes_every_table_figure_and_the_doc_block(smoke):
    run, doc, res = smoke
    labels = ['baseline w', 'baseline w+', 'overparam W', 'overparam W+']
    assert list(res['table2']) == labels and list(res['table3']) == labels
    assert set(res['table1']) == {'baseline', 'overparam'}
    assert res['table1']['overparam']['ppl_space'] == 'W' and res['table1']['baseline']['ppl_space'] == 'w'
    n = res['settings']['images']
    for r in res['table3'].values():
        assert r['num_pairs'] == n * (n - 1) // 2 and math.isfinite(r['fid_midpoints'])
    assert res['settings']['feature_detector'].startswith('random:') and res['settings']['lpips'] == 'vgg-random'
    assert res['training']['baseline']['cfg'] == 'tiny' and res['training']['overparam']['cfg'] == 'tiny-overparam'
    assert res['training']['baseline']['kimg'] == res['training']['overparam']['kimg'] == 0.016
    for name in (report.FIG5, report.FIG6):
        img = PIL.Image.open(run / name)
        assert img.width >= 300 and img.height >= 300
        assert (doc.parent / 'images' / name).is_file()
    text = doc.read_text()
    assert text.startswith('# Title\n\nbefore\n\n' + report.BEGIN) and text.endswith(report.END + '\n\nafter\n')
    assert 'old block' not in text and '**Table 2**' in text and (run / 'tables.md').read_text().strip() in text
    curves = np.load(run / 'invert-overparam-W' / 'lpips_curves.npz')['curves']
    assert curves.shape == (n, res['settings']['steps'] + 1)


def test_table2_matches_psnr_and_lpips_recomputed_from_the_pngs(smoke):
    run, _doc, res = smoke
    model = lpips_package_model()
    names = sorted(p.name[:-len('.png')] for p in (run / 'heldout').glob('*.png'))
    target = read_pngs([run / 'heldout' / f'{n}.png' for n in names]).astype(np.float64)
    for model_name, space in tables.RUNS:
        folder = run / tables.run_folder(model_name, space)
        recon = read_pngs([folder / f'{n}-recon.png' for n in names]).astype(np.float64)
        mse = (((recon - target) / 255) ** 2).mean(axis=(1, 2, 3))
        row = res['table2'][tables.run_label(model_name, space)]
        assert row['psnr'] == pytest.approx(float(np.mean(-10 * np.log10(mse))), abs=1e-9)
        assert row['mse'] == pytest.approx(float(mse.mean()), abs=1e-12)
        to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1   # noqa: E731
        with torch.no_grad():
            expect = model(to_t(recon), to_t(target)).flatten().numpy()
        assert row['lpips'] == pytest.approx(float(expect.mean()), rel=1e-4, abs=1e-7)
        assert row['lpips_median'] == pytest.approx(float(np.median(expect)), rel=1e-4, abs=1e-7)


def test_table3_path_length_recomputed_frame_by_frame(smoke):
    run, _doc, res = smoke
    model = lpips_package_model()
    G = checkpoint.load_frozen_network(res['networks']['overparam'])[0]
    with np.load(run / 'invert-overparam-W' / 'latents.npz') as data:
        latents = torch.from_numpy(np.asarray(data['latents'], dtype=np.float32))       # [N, R, w_dim]
    assert latents.shape[1:] == (G.latent_rows, G.w_dim)
    ws = latents[:, None].repeat(1, G.num_ws, 1, 1)                                   # one matrix for all layers
    lengths = []
    with torch.no_grad():
        for i in range(len(ws)):
            for j in range(i + 1, len(ws)):
                frames = [G.synthesis((ws[i] + (ws[j] - ws[i]) * (k / 5))[None], noise_mode='const', force_fp32=True)
                          for k in range(6)]
                lengths.append(sum(float(model(a, b).flatten()[0]) for a, b in zip(frames[:-1], frames[1:])))
    got = res['table3']['overparam W']
    assert got['ppl_mean'] == pytest.approx(float(np.mean(lengths)), rel=1e-3)
    assert got['ppl_median'] == pytest.approx(float(np.median(lengths)), rel=1e-3)

#----------------------------------------------------------------------------
# Report helpers on numbers made up for the purpose.

def _t2(w_plus, big_w, big_w_plus):
    return {'baseline w+': w_plus, 'overparam W': big_w, 'overparam W+': big_w_plus}


def test_orderings_follow_each_metric():
    good = dict(lpips=0.01, psnr=30.0, ssim=0.9)
    bad = dict(lpips=0.05, psnr=20.0, ssim=0.5)
    mixed = dict(lpips=0.005, psnr=19.0, ssim=0.95)                 # better LPIPS and SSIM, worse PSNR
    t3 = _t2(dict(fid_midpoints=10.0, ppl_mean=0.2), dict(fid_midpoints=11.0, ppl_mean=0.3),
             dict(fid_midpoints=7.0, ppl_mean=0.21))
    result = {o['claim']: o['holds'] for o in report.orderings(_t2(bad, good, mixed), t3)}
    assert result['overparam W LPIPS < baseline w+ LPIPS'] and result['overparam W PSNR > baseline w+ PSNR']
    assert result['overparam W SSIM > baseline w+ SSIM'] and result['overparam W+ LPIPS < overparam W LPIPS']
    assert not result['overparam W+ PSNR > baseline w+ PSNR'] and result['overparam W+ SSIM > baseline w+ SSIM']
    close = {k: v for k, v in result.items() if 'close' in k}
    assert close == {'overparam W midpoint FID close to baseline w+ (ratio in [0.8, 1.25])': True,      # 1.1
                     'overparam W path length close to baseline w+ (ratio in [0.8, 1.25])': False,     # 1.5
                     'overparam W+ midpoint FID close to baseline w+ (ratio in [0.8, 1.25])': False,   # 0.7
                     'overparam W+ path length close to baseline w+ (ratio in [0.8, 1.25])': True}     # 1.05
    flipped = {o['claim']: o['holds'] for o in report.orderings(_t2(good, bad, bad), t3)}
    assert not any(v for k, v in flipped.items() if 'baseline w+' in k and 'close' not in k)


def test_replace_block_needs_its_markers(tmp_path):
    doc = tmp_path / 'doc.md'
    doc.write_text('no markers here\n')
    with pytest.raises(ValueError, match='no generated block'):
        report.replace_block(doc, f'{report.BEGIN}\nx\n{report.END}\n')
    assert doc.read_text() == 'no markers here\n'


def test_read_training_log_takes_the_last_progress_line(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'log.txt').write_text('Dataset: 1000 images\n'
                                 'tick 0     kimg 0.016    time 4s           sec/tick 1.6\n'
                                 'tick 29    kimg 29.248   time 32m 29s      sec/tick 37.1\n'
                                 'tick 30    kimg 30.000   time 1h 02m 58s   sec/tick 28.1\n'
                                 'Exiting...\n')
    (run / 'training_options.json').write_text(json.dumps(dict(cfg='tiny', random_seed=0, total_kimg=30)))
    info = tables.read_training_log(run / 'network-snapshot-000030.pkl')
    assert info['kimg'] == 30.0 and info['seconds'] == 3600 + 2 * 60 + 58
    assert (info['cfg'], info['seed'], info['total_kimg']) == ('tiny', 0, 30)


def test_missing_network_is_one_line(tmp_path):
    result = CliRunner().invoke(tables.main, ['--outdir', str(tmp_path / 'o'), '--networks', str(tmp_path / 'a.pkl'),
                                              str(tmp_path / 'b.pkl')])
    assert result.exit_code != 0 and 'a.pkl' in result.output and 'Traceback' not in result.output
    assert not (tmp_path / 'o').exists()


def test_folder_busy_sees_another_holder_of_the_outdir_lock(tmp_path):
    from torch_utils.files import outdir_lock
    assert not tables.folder_busy(tmp_path)                                  # no .lock yet
    with outdir_lock(tmp_path, 'invert run'):
        assert tables.folder_busy(tmp_path)
    assert not tables.folder_busy(tmp_path)                                  # released


def test_report_only_rewrites_the_same_block_from_tables_json(smoke):
    run, _doc, _res = smoke
    before = (run / 'tables.md').read_text()
    (run / 'tables.md').unlink()
    result = CliRunner().invoke(tables.main, ['--outdir', str(run), '--report-only'])
    assert result.exit_code == 0, result.output
    assert (run / 'tables.md').read_text() == before
