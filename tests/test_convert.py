"""convert.py: any supported format in, ours or rosinality's out; atomic, one summary line, refusals write nothing."""

import os
from pathlib import Path

import torch
from click.testing import CliRunner

import convert
from conftest import shared_fixture, tiny_generator_kwargs
from torch_utils import checkpoint
from training import networks
from training.resume import check_resume_file
from training.snapshot import is_training_state_file


def _run(*args):
    return CliRunner().invoke(convert.main, [str(a) for a in args])


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tensorflow_release_to_ours(tmp_path):
    dest = tmp_path / 'sub' / 'ffhq.pkl'
    result = _run('--source', shared_fixture('tf-stylegan2-32px.pkl'), '--dest', dest, '--to', 'ours')
    assert result.exit_code == 0, result.output
    assert result.stdout.count('\n') == 1 and "from NVIDIA's TensorFlow pickle" in result.stdout
    assert 'Reading' in result.stderr and 'Writing' in result.stderr
    fmt, ours = checkpoint.read_network_file(dest)
    _, tf = checkpoint.read_network_file(shared_fixture('tf-stylegan2-32px.pkl'))
    assert fmt == checkpoint.OURS and os.listdir(dest.parent) == ['ffhq.pkl']
    assert all(_same_state(ours[k], tf[k]) for k in ('G', 'D', 'G_ema'))


def test_rosinality_round_trips_bit_for_bit_through_our_pickle(tmp_path):
    """rosinality -> our pickle -> rosinality: g_ema, g and d are his tensors, in his order."""
    source = shared_fixture('rosinality-stylegan2-32px-narrow.pt')
    assert _run('--source', source, '--dest', tmp_path / 'ours.pkl', '--to', 'ours').exit_code == 0
    result = _run('--source', tmp_path / 'ours.pkl', '--dest', tmp_path / 'back.pt', '--to', 'rosinality')
    assert result.exit_code == 0, result.output
    assert 'load it with his Generator(size=32, style_dim=64, n_mlp=2)' in result.stdout
    his, back = torch.load(source, weights_only=False), torch.load(tmp_path / 'back.pt', weights_only=True)
    assert set(back) == {'g_ema', 'latent_avg', 'g', 'd'}
    for key in ('g_ema', 'g', 'd'):
        assert list(back[key]) == list(his[key])
        assert all(torch.equal(back[key][name], value) for name, value in his[key].items()), key


def test_nvidia_pytorch_to_rosinality_notes_what_is_left_out(tmp_path):
    source = shared_fixture('nvlabs-sg2ada-32px.pkl')
    result = _run('--source', source, '--dest', tmp_path / 'g.pt', '--to', 'rosinality')
    assert result.exit_code == 0, result.output
    assert 'Note: d left out' in result.stderr and 'conv_clamp dropped' in result.stderr    # minibatch-std group 2
    assert set(torch.load(tmp_path / 'g.pt', weights_only=True)) == {'g_ema', 'latent_avg', 'g'}


def test_overparameterized_network_is_refused_and_nothing_written(tmp_path):
    torch.manual_seed(0)
    source = tmp_path / 'over.pkl'
    checkpoint.save_network_pkl(source, dict(G_ema=networks.Generator(**tiny_generator_kwargs(latent_rows=32))))
    dest = tmp_path / 'out' / 'over.pt'
    result = _run('--source', source, '--dest', dest, '--to', 'rosinality')
    errors = [line for line in result.stderr.splitlines() if line.startswith('Error:')]
    assert result.exit_code == 1 and len(errors) == 1 and 'overparameterized' in errors[0], result.output
    assert 'Traceback' not in result.output and not (tmp_path / 'out').exists()
    assert sorted(os.listdir(tmp_path)) == ['over.pkl']


def test_dest_folder_is_refused(tmp_path):
    result = _run('--source', shared_fixture('tf-stylegan2-32px.pkl'), '--dest', tmp_path, '--to', 'ours')
    assert result.exit_code == 1 and f'--dest {tmp_path} is a folder' in result.stderr


def test_resume_tells_training_states_from_network_files_by_content(tmp_path):
    """train.py --resume takes a rosinality .pt as a network file; a training state is one by name or content."""
    source = shared_fixture('rosinality-stylegan2-32px-narrow.pt')
    assert not is_training_state_file(source)
    check_resume_file(str(source))                                    # readable network file: no ResumeError
    renamed = tmp_path / 'my-state.pt'
    torch.save(dict(format=checkpoint.TRAINING_STATE_FORMAT, version=1), renamed)
    assert is_training_state_file(renamed) and is_training_state_file(tmp_path / 'training-state-000004.pt')


def test_committed_help_is_current():
    """docs/convert-help.txt is `python convert.py --help` (80 columns: width 78); regenerate it when options change."""
    result = CliRunner().invoke(convert.main, ['--help'], prog_name='convert.py', terminal_width=78)
    path = Path(__file__).parent.parent / 'docs' / 'convert-help.txt'
    assert result.exit_code == 0 and result.output == path.read_text()


def test_generate_reads_every_format(tmp_path):
    """The CLIs load through checkpoint's one loader: TF and rosinality files work as --network as they are."""
    import generate
    for name in ('tf-stylegan2-32px.pkl', 'rosinality-stylegan2-32px-narrow.pt'):
        out = tmp_path / name
        result = CliRunner().invoke(generate.main, ['--network', str(shared_fixture(name)), '--seeds', '0-1',
                                                    '--outdir', str(out), '--device', 'cpu'])
        assert result.exit_code == 0, result.output
        assert sorted(os.listdir(out)) == ['generate.json', 'grid.png', 'seed0000.png', 'seed0001.png']
