"""invert.py --align --paste-back and dataset_tool.py --align on offline photos (scikit-image's astronaut and
coffee), with a tiny random 32 px generator and the random-trunk LPIPS (`vgg-random`)."""

import json
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dataset_tool
import invert
from conftest import tiny_generator_kwargs
from torch_utils import checkpoint
from training import networks


@pytest.fixture(scope='module')
def photo_dir(tmp_path_factory):
    pytest.importorskip('dlib', reason='face alignment needs dlib-bin (requirements.txt)')
    data = pytest.importorskip('skimage.data', reason='the offline test photos come with scikit-image')
    from preprocess.landmarks import DetectorUnavailable, DlibDetector
    try:
        DlibDetector()
    except DetectorUnavailable as err:
        pytest.skip(str(err))
    root = tmp_path_factory.mktemp('photos')
    PIL.Image.fromarray(data.astronaut()).save(root / 'astronaut.png')
    PIL.Image.fromarray(data.coffee()).save(root / 'coffee.jpg', quality=95)
    return root


@pytest.fixture(scope='module')
def network(tmp_path_factory):
    torch.manual_seed(3)
    G = networks.Generator(**tiny_generator_kwargs(resolution=32)).eval()
    path = tmp_path_factory.mktemp('ckpt') / 'G.pkl'
    checkpoint.save_network_pkl(path, dict(G_ema=G))
    return path


def test_invert_align_paste_back_end_to_end(photo_dir, network, tmp_path):
    out = tmp_path / 'out'
    args = ['--network', network, '--target', photo_dir, '--outdir', out, '--lpips', 'vgg-random', '--steps', 2,
            '--device', 'cpu', '--batch', 1, '--align', '--align-resolution', 64, '--paste-back']
    result = CliRunner().invoke(invert.main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert 'coffee.jpg: --align: no face detected (not inverted)' in result.output
    # The aligned crop is what was inverted; the record files of the aligned folder are no targets.
    assert PIL.Image.open(out / 'aligned' / 'astronaut.png').size == (64, 64)
    names = [json.loads(line)['name'] for line in (out / 'results.jsonl').read_text().splitlines()]
    assert names == ['astronaut']
    skipped = json.loads((out / 'skipped.json').read_text())
    assert [(s['source'], s['reason']) for s in skipped] == [(str(photo_dir / 'coffee.jpg'),
                                                             '--align: no face detected')]
    assert json.loads((out / 'run.json').read_text())['settings']['target'] == str(out / 'aligned')
    # The composite: the photo's size, changed inside the face's square only (the blend mask), written atomically.
    photo = np.asarray(PIL.Image.open(photo_dir / 'astronaut.png'))
    pasted = np.asarray(PIL.Image.open(out / 'pasted' / 'astronaut.png'))
    mask = np.asarray(PIL.Image.open(out / 'pasted' / 'astronaut-mask.png'))
    assert pasted.shape == photo.shape and mask.shape == photo.shape[:2]
    changed = np.abs(pasted.astype(int) - photo).max(axis=2) > 0
    assert changed.any() and not changed[mask == 0].any() and (mask > 0).mean() < 0.5
    summary = json.loads((out / 'pasted' / 'summary.json').read_text())
    assert (summary['photos'], summary['pasted'], summary['skipped']) == (1, 1, 0)

    # --paste-back alone is refused in one line.
    refused = CliRunner().invoke(invert.main, [str(a) for a in args[:12]] + ['--outdir', str(tmp_path / 'x'),
                                                                          '--paste-back'])
    assert refused.exit_code == 2 and '--paste-back needs --align' in refused.output


def test_dataset_tool_align(photo_dir, tmp_path):
    dest = tmp_path / 'faces.zip'
    result = CliRunner().invoke(dataset_tool.main, ['--source', str(photo_dir), '--dest', str(dest), '--resolution',
                                                    '32', '--align', '--quiet'], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert 'Aligned 1 faces of 2 photos (1 skipped' in result.output
    with zipfile.ZipFile(dest) as zf:
        images = [n for n in zf.namelist() if n.endswith('.png')]
        assert len(images) == 1
        assert PIL.Image.open(zf.open(images[0])).size == (32, 32)
        skipped = json.loads(zf.read('skipped.json')) if 'skipped.json' in zf.namelist() else []
    assert skipped == []                                  # the aligned folder's record files are not images
    assert (tmp_path / 'faces-aligned' / 'alignment.jsonl').is_file()
