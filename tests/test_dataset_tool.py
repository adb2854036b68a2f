"""Tests for dataset_tool.py and training/dataset_convert.py."""

import json
import os
import zipfile

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import dataset_tool
from training.dataset import ImageFolderDataset
from training.dataset_convert import ConversionError, convert_dataset, parse_resolution, transform_image
from training.tiny_data import render_shapes

RES = 16


def _noise(rng, h, w, c=3):
    shape = (h, w, c) if c > 1 else (h, w)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture
def messy_folder(tmp_path):
    """Good RGB, grayscale JPEG, RGBA, non-square, palette, CMYK, corrupt and too-small files."""
    rng = np.random.default_rng(0)
    src = tmp_path / 'src'
    (src / 'sub').mkdir(parents=True)
    PIL.Image.fromarray(_noise(rng, 20, 20), 'RGB').save(src / 'a_rgb.png')
    PIL.Image.fromarray(_noise(rng, 24, 24, 1), 'L').save(src / 'b_gray.jpg', quality=95)
    PIL.Image.fromarray(_noise(rng, 20, 20, 4), 'RGBA').save(src / 'c_rgba.png')
    PIL.Image.fromarray(_noise(rng, 20, 40), 'RGB').save(src / 'sub' / 'd_wide.png')
    PIL.Image.fromarray(_noise(rng, 20, 20), 'RGB').convert('P').save(src / 'sub' / 'e_palette.bmp')
    PIL.Image.fromarray(_noise(rng, 20, 20), 'RGB').convert('CMYK').save(src / 'f_cmyk.tif')
    (src / 'g_corrupt.png').write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    PIL.Image.fromarray(_noise(rng, 8, 8), 'RGB').save(src / 'h_small.png')
    (src / 'notes.txt').write_text('not an image')
    labels = [['a_rgb.png', 0], ['b_gray.jpg', 1], ['c_rgba.png', 2], ['sub/d_wide.png', 3],
              ['sub/e_palette.bmp', 4], ['f_cmyk.tif', 5], ['g_corrupt.png', 6], ['h_small.png', 7]]
    (src / 'dataset.json').write_text(json.dumps({'labels': labels}))
    return src


def test_messy_folder_via_cli(messy_folder, tmp_path):
    dest = tmp_path / 'out' / 'data.zip'
    res = CliRunner().invoke(dataset_tool.main, ['--source', str(messy_folder), '--dest', str(dest),
                                                 '--resolution', str(RES), '--quiet'])
    assert res.exit_code == 0, res.output
    assert 'wrote 6 images at 16x16' in res.output and 'skipped 3 files' in res.output
    listed = res.output.splitlines()[1:]                              # Every skipped file printed with its reason.
    assert sorted(line.split(':')[0].strip() for line in listed) == ['g_corrupt.png', 'h_small.png', 'notes.txt']
    assert '0x' not in res.output and 'BytesIO' not in res.output
    with zipfile.ZipFile(dest) as zf:
        names = zf.namelist()
        images = sorted(n for n in names if n.endswith('.png'))
        assert images == [f'00000/img{i:08d}.png' for i in range(6)]
        for n in images:
            with zf.open(n) as fp, PIL.Image.open(fp) as img:
                assert img.mode == 'RGB' and img.size == (RES, RES)
        skipped = json.loads(zf.read('skipped.json'))['skipped']
        meta = json.loads(zf.read('dataset.json'))
    assert {s['file'] for s in skipped} == {'g_corrupt.png', 'h_small.png', 'notes.txt'}
    assert 'not an image file' in next(s for s in skipped if s['file'] == 'g_corrupt.png')['reason']
    assert 'too small' in next(s for s in skipped if s['file'] == 'h_small.png')['reason']
    # Sorted source order: a, b, c, f (root files) then sub/d, sub/e; labels follow their files.
    assert [label for _, label in meta['labels']] == [0, 1, 2, 5, 3, 4]
    assert not [p for p in os.listdir(dest.parent) if p.endswith('.tmp')]  # temp file renamed away

    ds = ImageFolderDataset(str(dest), use_labels=True)
    assert len(ds) == 6 and ds.image_shape == [3, RES, RES] and ds.label_dim == 6
    assert np.argmax(ds.get_label(3)) == 5 and np.argmax(ds.get_label(5)) == 4


def test_conversion_preserves_content(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))  # 32x32 horizontal ramp
    PIL.Image.fromarray(gray, 'L').save(src / 'ramp.png')
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 16:, 3] = 255  # left half transparent -> composited on white
    PIL.Image.fromarray(rgba, 'RGBA').save(src / 'zalpha.png')
    dest = tmp_path / 'd.zip'
    convert_dataset(str(src), str(dest), resolution=32, transform='none', progress=False)
    ds = ImageFolderDataset(str(dest))
    ramp, alpha = ds[0][0], ds[1][0]
    assert np.array_equal(ramp[0], gray) and np.array_equal(ramp[1], gray) and np.array_equal(ramp[2], gray)
    assert (alpha[:, :, :16] == 255).all()
    assert (alpha[:, :, 16:].transpose(1, 2, 0) == [200, 0, 0]).all()


def test_zip_source_roundtrip_and_max_images(messy_folder, tmp_path):
    first = tmp_path / 'first.zip'
    convert_dataset(str(messy_folder), str(first), resolution=RES, progress=False)
    second = tmp_path / 'second.zip'
    result = convert_dataset(str(first), str(second), transform='none', max_images=4, progress=False)
    assert result.num_images == 4 and result.resolution == RES and not result.skipped
    a, b = ImageFolderDataset(str(first), use_labels=True), ImageFolderDataset(str(second), use_labels=True)
    assert len(b) == 4
    for i in range(4):
        assert np.array_equal(a[i][0], b[i][0]) and np.array_equal(a.get_label(i), b.get_label(i)[:6])


def test_tiny_source(tmp_path):
    dest = tmp_path / 'tiny.zip'
    res = CliRunner().invoke(dataset_tool.main, ['--source', 'tiny:10:4', '--dest', str(dest), '--quiet'])
    assert res.exit_code == 0, res.output
    ds = ImageFolderDataset(str(dest), resolution=32)
    assert len(ds) == 10 and not ds.has_labels
    assert np.array_equal(ds[9][0], render_shapes(10, 32, seed=4)[9].transpose(2, 0, 1))


def test_transforms():
    rng = np.random.default_rng(1)
    wide = PIL.Image.fromarray(_noise(rng, 20, 40), 'RGB')
    arr, reason = transform_image(wide, 16, 'center-crop-wide')
    assert reason is None and arr.shape == (16, 16, 3)
    assert (arr[:4] == 0).all() and (arr[-4:] == 0).all() and arr[4:12].any()  # letterboxed 16x8 band
    arr, reason = transform_image(wide, 16, 'none')
    assert arr is None and '40x20' in reason
    small = PIL.Image.fromarray(_noise(rng, 8, 8), 'RGB')
    assert transform_image(small, 16, 'center-crop')[0] is None
    assert transform_image(small, 16, 'center-crop', upscale=True)[0].shape == (16, 16, 3)


def test_one_line_errors(tmp_path):
    runner = CliRunner()
    missing = str(tmp_path / 'nope')
    res = runner.invoke(dataset_tool.main,
                        ['--source', missing, '--dest', str(tmp_path / 'o.zip'), '--resolution', '16'])
    assert res.exit_code != 0 and f"--source '{missing}' does not exist" in res.output
    assert 'Traceback' not in res.output
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(ConversionError, match='no images found'):
        convert_dataset(str(empty), str(tmp_path / 'o.zip'), resolution=16, progress=False)
    with pytest.raises(ConversionError, match='must end with .zip'):
        convert_dataset('tiny:2', str(tmp_path / 'o.tar'), progress=False)
    with pytest.raises(ConversionError, match='--resolution is required'):
        (empty / 'x.png').write_bytes(b'junk')
        convert_dataset(str(empty), str(tmp_path / 'o.zip'), progress=False)
    with pytest.raises(ConversionError, match='no usable images'):
        convert_dataset(str(empty), str(tmp_path / 'o.zip'), resolution=16, progress=False)
    assert not os.path.exists(tmp_path / 'o.zip') and not list(tmp_path.glob('*.tmp'))
    with pytest.raises(ConversionError, match='power of two'):
        parse_resolution('24')
    assert parse_resolution('32x32') == 32 and parse_resolution(None) is None


def test_missing_label_is_reported(messy_folder, tmp_path):
    (messy_folder / 'dataset.json').write_text(json.dumps({'labels': [['a_rgb.png', 0]]}))
    with pytest.raises(ConversionError, match="has no entry in dataset.json"):
        convert_dataset(str(messy_folder), str(tmp_path / 'o.zip'), resolution=RES, progress=False)


def test_gif_and_any_pillow_format_are_converted_and_every_file_accounted_for(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    frames = [PIL.Image.new('RGB', (16, 16), c).convert('P') for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(src / 'anim.gif', save_all=True, append_images=frames[1:], duration=40)
    PIL.Image.new('RGB', (16, 16), (0, 0, 255)).convert('P').save(src / 'still.gif')
    PIL.Image.new('RGB', (16, 16), (9, 9, 9)).save(src / 'picture.data', format='PNG')   # Unknown extension.
    (src / 'notes.md').write_text('# not an image')
    (src / '.DS_Store').write_bytes(b'\x00\x01')
    dest = tmp_path / 'd.zip'
    res = CliRunner().invoke(dataset_tool.main, ['--source', str(src), '--dest', str(dest), '--resolution', '16',
                                                 '--quiet'])
    assert res.exit_code == 0, res.output
    assert 'wrote 3 images' in res.output
    assert 'anim.gif: animated GIF with 2 frames: used the first frame' in res.output
    assert '.DS_Store: hidden file' in res.output and 'notes.md: not an image file' in res.output
    ds = ImageFolderDataset(str(dest))
    colours = sorted(tuple(ds[i][0][:, 0, 0]) for i in range(len(ds)))
    assert colours == sorted([(255, 0, 0), (0, 0, 255), (9, 9, 9)])            # First frame of the animation.
    with zipfile.ZipFile(dest) as zf:
        skipped = json.loads(zf.read('skipped.json'))['skipped']
    assert sorted(s['file'] for s in skipped) == ['.DS_Store', 'notes.md']
