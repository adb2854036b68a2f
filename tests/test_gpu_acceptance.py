"""`python -m benchmarks.gpu_acceptance --dry-run`: the GPU acceptance command end to end on the CPU,
so that the first minute on a GPU is not spent on a typo."""

import json

from click.testing import CliRunner

from benchmarks import gpu_acceptance


def test_dry_run_end_to_end(tmp_path, monkeypatch):
    # Generous budgets: on a busy CI machine a part must not skip items here (budgets: next test).
    monkeypatch.setitem(gpu_acceptance.DRY, 'budgets', {name: 600 for name in gpu_acceptance.PARTS})
    report = gpu_acceptance.run(str(tmp_path), dry_run=True)
    assert set(report['parts']) == set(gpu_acceptance.PARTS)
    failed = {n: p['error'] for n, p in report['parts'].items() if p['status'] == 'failed'}
    assert not failed, failed
    saved = json.loads((tmp_path / 'gpu-acceptance.json').read_text())
    assert saved['dry_run'] is True and saved['parts'].keys() == report['parts'].keys()
    parts = saved['parts']
    tests = parts['tests']['results']
    assert tests['passed'] == 1 and tests['failed'] == 0 and tests['skipped'] == 1     # the CUDA test skips on CPU
    assert tests['files']['test_custom_ops']['passed'] >= 1
    assert [r['precision'] for r in parts['modconv_layers']['results']['layers']] == ['fp32'] * 4
    assert {'what': 'fused kernel', 'why': 'no CUDA device'} in parts['modconv_layers']['skipped']
    gen = parts['generator']['results']['fp32']
    assert gen['time_ratio'] > 0 and gen['tiny-overparam']['latent_shape'][0] == 64   # R rows
    runs = parts['training']['results']['runs']
    assert [(r['preset'], r['steps']) for r in runs] == [('tiny', 2), ('tiny-overparam', 2)]
    assert parts['tests']['results']['returncodes'] == {'test_custom_ops': 0}
    assert all(r['sec_per_kimg'] > 0 for r in runs)
    inv = parts['inversion']['results']['runs']
    assert [r['batch'] for r in inv] == [1, 2] and all(r['s_per_image_1000_steps'] > 0 for r in inv)
    compiled = parts['compiled']['results']             # eager vs compiled, without CUDA graphs on the CPU
    assert [(r['precision'], r['batch'], r['cuda_graphs'], r['failure']) for r in compiled['inversion']] == \
        [('fp32', 1, False, None)]
    assert compiled['inversion'][0]['compiled_ms'] > 0 and compiled['inversion'][0]['compile_s'] > 0
    assert compiled['training']['compile']['graphs'] == 4 and compiled['training']['ratio'] > 0
    md = (tmp_path / 'gpu-acceptance.md').read_text()
    assert '| part | status |' in md and 'DRY RUN' in md and '| training |' in md and '| compiled |' in md


def test_budget_stops_a_part_and_records_what_it_skipped():
    part = gpu_acceptance.Part('training', budget=0)
    assert not part.over('first run')          # the first item always runs
    assert part.over('second run') and part.over('third run')
    assert [s['what'] for s in part.skipped] == ['second run', 'third run']
    assert 'time budget of 0 s' in part.skipped[0]['why']


def test_bad_arguments_one_line(tmp_path):
    not_a_dir = tmp_path / 'file'
    not_a_dir.write_text('x')
    result = CliRunner().invoke(gpu_acceptance.main, ['--out', str(not_a_dir), '--dry-run'])
    assert result.exit_code != 0 and 'Traceback' not in result.output
    result = CliRunner().invoke(gpu_acceptance.main, ['--out', str(tmp_path / 'o'), '--parts', 'tests,bogus'])
    assert result.exit_code == 2 and 'bogus' in result.output
