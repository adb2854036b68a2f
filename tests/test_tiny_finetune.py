"""benchmarks.tiny_finetune in its smoke mode (train both tiny generators for a step, fine-tune the baseline with
each row start in two segments, invert 3 images for 4 steps), its numbers recomputed from the PNGs and its
Goal re-derived by hand; and the Goal's thresholds on hand-made numbers."""

import json
import math

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

from benchmarks import tiny_finetune as bench, tiny_finetune_report as report

pytestmark = [pytest.mark.usefixtures('one_thread'), pytest.mark.slow]


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    outdir = tmp_path_factory.mktemp('finetune')
    doc = outdir / 'finetune.md'
    doc.write_text(f'# Fine-tuning\n\nbefore\n\n{report.BEGIN}\nold\n{report.END}\n\nafter\n')
    result = CliRunner().invoke(bench.main, ['--outdir', str(outdir / 'run'), '--smoke', '--update-doc', str(doc)])
    assert result.exit_code == 0, result.output
    return outdir / 'run', doc, json.loads((outdir / 'run' / 'finetune.json').read_text())


def read_pngs(paths):
    return np.stack([np.asarray(PIL.Image.open(p).convert('RGB')) for p in paths]).astype(np.float64)


def test_smoke_fine_tunes_each_row_start_along_one_run(smoke):
    run, doc, res = smoke
    assert [(f['row_start'], f['kimg']) for f in res['finetunes']] == [
        ('paper', 0), ('paper', 0.016), ('paper', 0.032), ('spread', 0), ('spread', 0.016), ('spread', 0.032)]
    starts = {f['snapshot'] for f in res['finetunes'] if f['kimg'] == 0}
    assert len(starts) == 1 and bench.finetune_tag('spread', 0) == bench.finetune_tag('paper', 0)
    for name in ('paper', 'spread'):
        pkls = [f['snapshot'] for f in res['finetunes'] if f['row_start'] == name and f['kimg'] > 0]
        run_dir = {str(p).rsplit('/', 1)[0] for p in pkls}
        assert len(run_dir) == 1                                    # both lengths: snapshots of one run
        log = open(f'{run_dir.pop()}/log.txt').read()
        assert f'Row start ({name})' in log and 'Resumed from' in log and 'training-state-000000.016.pt' in log
        options = json.load(open(f'{pkls[0].rsplit("/", 1)[0]}/training_options.json'))
        assert options['finetune']['source'] == res['networks']['baseline']
        assert options['loss_kwargs']['row_spread_kimg'] == (0.016 if name == 'spread' else 0.0)
    for key in ('baseline', 'overparam'):
        assert math.isfinite(res['fid'][key])
    for name in (report.FIG_PSNR, report.FIG_RECON):
        assert PIL.Image.open(run / name).width >= 300 and (doc.parent / 'images' / name).is_file()
    text = doc.read_text()
    assert text.startswith('# Fine-tuning\n\nbefore\n\n' + report.BEGIN) and text.endswith(report.END + '\n\nafter\n')
    assert 'old' not in text.split(report.BEGIN)[1] and (run / 'finetune.md').read_text().strip() in text


def test_smoke_psnr_recomputed_from_the_pngs_and_goal_by_hand(smoke):
    run, _doc, res = smoke
    names = sorted(p.name[:-len('.png')] for p in (run / 'heldout').glob('*.png'))
    target = read_pngs([run / 'heldout' / f'{n}.png' for n in names])

    def psnr(folder):
        recon = read_pngs([run / folder / f'{n}-recon.png' for n in names])
        return float(np.mean(-10 * np.log10((((recon - target) / 255) ** 2).mean(axis=(1, 2, 3)))))
    base = psnr('invert-baseline-wplus')
    scratch = psnr('invert-overparam-W')
    assert res['inversions']['baseline w+']['psnr'] == pytest.approx(base, abs=1e-9)
    assert res['inversions']['overparam W']['psnr'] == pytest.approx(scratch, abs=1e-9)
    g = res['goal']
    assert g['scratch_gain_db'] == pytest.approx(scratch - base, abs=1e-9)
    for f, row in zip(res['finetunes'], g['rows']):
        mine = psnr(bench.inversion_folder(bench.finetune_tag(f['row_start'], f['target_kimg'])))
        assert f['W']['psnr'] == pytest.approx(mine, abs=1e-9)
        assert row['gain_fraction'] == pytest.approx((mine - base) / (scratch - base), rel=1e-9)
        assert row['fid_ratio'] == pytest.approx(f['fid'] / res['fid']['overparam'], rel=1e-12)
        assert row['kimg_fraction'] == pytest.approx(f['kimg'] / 0.016, rel=1e-12)
        assert row['kimg_ok'] == (f['kimg'] == 0)               # 0.016 and 0.032 kimg > a third of 0.016
        assert row['met'] == (row['kimg_ok'] and row['gain_fraction'] >= 0.9 and row['fid_ratio'] <= 1.2)
    assert g['met'] == any(r['met'] for r in g['rows'])
    assert g['best_within']['kimg'] == 0


def _result(psnrs, fids, kimgs, scratch_kimg=30.0):
    """A hand-made result: baseline w+ 20 dB, scratch W 30 dB (gain 10 dB), scratch FID 1.0."""
    return dict(inversions={'baseline w+': dict(psnr=20.0), 'overparam W': dict(psnr=30.0)},
                training=dict(overparam=dict(kimg=scratch_kimg)), fid=dict(overparam=1.0),
                finetunes=[dict(row_start='paper', kimg=k, fid=f, W=dict(psnr=p))
                           for p, f, k in zip(psnrs, fids, kimgs)])


def test_goal_thresholds_on_hand_made_numbers():
    g = report.goal(_result([29.0, 28.99, 29.5, 29.5, 29.5], [1.2, 1.0, 1.21, 1.0, 1.0], [10.0, 5.0, 5.0, 10.01, 2.0]))
    assert [r['met'] for r in g['rows']] == [True, False, False, False, True]
    assert [r['gain_ok'] for r in g['rows']] == [True, False, True, True, True]     # 90 % of 10 dB = 29 dB
    assert [r['fid_ok'] for r in g['rows']] == [True, True, False, True, True]      # FID <= 1.2 x scratch
    assert [r['kimg_ok'] for r in g['rows']] == [True, True, True, False, True]     # <= 30 / 3 kimg
    assert g['met'] and g['first_met']['kimg'] == 2.0
    assert g['rows'][0]['gain_fraction'] == pytest.approx(0.9) and g['scratch_gain_db'] == 10.0
    none = report.goal(_result([25.0], [1.0], [10.0]))
    assert not none['met'] and none['best_within']['gain_fraction'] == pytest.approx(0.5)
