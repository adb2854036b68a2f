"""Tests for training/tiny_data.py and training/dataset.py (ImageFolderDataset, InfiniteSampler)."""

import itertools
import json
import os
import pickle
import time
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from training.dataset import ImageFolderDataset, InfiniteSampler
from training.dataset_convert import write_image_zip
from training.tiny_data import HELDOUT_SEED, render_shapes, write_tiny_dataset, write_tiny_images

# ---------------------------------------------------------------------------- tiny data

def test_tiny_deterministic_and_prefix_stable():
    a = render_shapes(20, 32, seed=5)
    b = render_shapes(20, 32, seed=5)
    assert a.shape == (20, 32, 32, 3) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    assert np.array_equal(render_shapes(7, 32, seed=5), a[:7])  # image i depends only on (seed, i)
    assert not np.array_equal(render_shapes(20, 32, seed=6), a)


def test_tiny_variety():
    imgs, labels = render_shapes(64, 32, seed=0, return_labels=True)
    flat = imgs.reshape(64, -1)
    assert len({row.tobytes() for row in flat}) == 64  # all distinct
    assert flat.astype(np.float32).std(axis=0).mean() > 40  # pixels vary a lot across images
    per_image_std = imgs.reshape(64, -1, 3).astype(np.float32).std(axis=1).mean(axis=1)
    assert (per_image_std > 5).mean() > 0.9  # images are not flat colour
    assert set(labels.tolist()) == {0, 1, 2}
    assert imgs.min() < 30 and imgs.max() > 225  # uses the full range


def test_tiny_fast():
    t0 = time.perf_counter()
    render_shapes(1000, 32, seed=1)
    assert time.perf_counter() - t0 < 3.0


def test_tiny_bad_args():
    with pytest.raises(ValueError):
        render_shapes(4, 32, seed=-1)
    with pytest.raises(ValueError):
        render_shapes(4, 2)


def test_write_tiny_dataset_and_images(tmp_path):
    path = write_tiny_dataset(str(tmp_path / 'tiny.zip'), num_images=12, resolution=16, seed=3, labels=True)
    ds = ImageFolderDataset(path, use_labels=True)
    assert len(ds) == 12 and ds.image_shape == [3, 16, 16] and ds.resolution == 16
    assert ds.name == 'tiny' and ds.has_onehot_labels and ds.label_dim == 3
    expected = render_shapes(12, 16, seed=3)
    for i in (0, 11):
        assert np.array_equal(ds[i][0], expected[i].transpose(2, 0, 1))

    paths = write_tiny_images(str(tmp_path / 'held'), num_images=3, resolution=16)
    assert [os.path.basename(p) for p in paths] == ['tiny_00000.png', 'tiny_00001.png', 'tiny_00002.png']
    held = np.stack([np.array(PIL.Image.open(p)) for p in paths])
    assert np.array_equal(held, render_shapes(3, 16, seed=HELDOUT_SEED))
    assert not np.array_equal(held, render_shapes(3, 16, seed=0))  # held-out differs from training


# ---------------------------------------------------------------------------- ImageFolderDataset

def _make_zip(tmp_path, n=6, res=8, labels=None, name='data.zip'):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, res, res, 3), dtype=np.uint8)
    return write_image_zip(str(tmp_path / name), images, labels=labels), images


def test_zip_basic_attributes(tmp_path):
    path, images = _make_zip(tmp_path)
    ds = ImageFolderDataset(path)
    assert ds.name == 'data' and len(ds) == 6
    assert ds.image_shape == [3, 8, 8] and ds.num_channels == 3 and ds.resolution == 8
    assert ds.label_shape == [0] and ds.label_dim == 0 and not ds.has_labels
    img, label = ds[2]
    assert img.dtype == np.uint8 and img.shape == (3, 8, 8)
    assert np.array_equal(img, images[2].transpose(2, 0, 1))
    assert label.dtype == np.float32 and label.shape == (0,)
    details = ds.get_details(2)
    assert details.raw_idx == 2 and details.xflip is False


def test_zip_and_folder_agree(tmp_path):
    path, _ = _make_zip(tmp_path, labels=[0, 1, 2, 0, 1, 2])
    folder = tmp_path / 'unzipped'
    with zipfile.ZipFile(path) as zf:
        zf.extractall(folder)
    a = ImageFolderDataset(path, use_labels=True)
    b = ImageFolderDataset(str(folder), use_labels=True)
    assert len(a) == len(b) and a.image_shape == b.image_shape and a.label_shape == b.label_shape
    for i in range(len(a)):
        assert np.array_equal(a[i][0], b[i][0]) and np.array_equal(a[i][1], b[i][1])


def test_onehot_and_float_labels(tmp_path):
    path, _ = _make_zip(tmp_path, labels=[3, 0, 1, 3, 2, 0])
    ds = ImageFolderDataset(path, use_labels=True)
    assert ds.has_labels and ds.has_onehot_labels and ds.label_shape == [4] and ds.label_dim == 4
    assert np.array_equal(ds.get_label(0), np.array([0, 0, 0, 1], np.float32))
    assert ds.get_details(4).raw_label == 2
    no_labels = ImageFolderDataset(path, use_labels=False)
    assert not no_labels.has_labels and no_labels[0][1].shape == (0,)

    vec = [[0.5, -1.0], [1, 2], [0, 0], [3, 4], [5, 6], [7, 8.5]]
    path2, _ = _make_zip(tmp_path, labels=vec, name='vec.zip')
    ds2 = ImageFolderDataset(path2, use_labels=True)
    assert ds2.label_shape == [2] and not ds2.has_onehot_labels
    assert np.allclose(ds2.get_label(5), [7, 8.5]) and ds2.get_label(5).dtype == np.float32


def test_xflip_doubles_and_flips(tmp_path):
    path, images = _make_zip(tmp_path, labels=[0, 1, 2, 0, 1, 2])
    ds = ImageFolderDataset(path, xflip=True, use_labels=True)
    assert len(ds) == 12
    for i in range(6):
        orig, flipped = ds[i][0], ds[i + 6][0]
        assert np.array_equal(orig, images[i].transpose(2, 0, 1))
        assert np.array_equal(flipped, orig[:, :, ::-1])
        assert np.array_equal(ds.get_label(i), ds.get_label(i + 6))
    assert ds.get_details(7).xflip is True and ds.get_details(7).raw_idx == 1


def test_max_size_is_seeded_subset(tmp_path):
    path, images = _make_zip(tmp_path, n=10)
    a = ImageFolderDataset(path, max_size=4, random_seed=1)
    b = ImageFolderDataset(path, max_size=4, random_seed=1)
    idx_a = [a.get_details(i).raw_idx for i in range(len(a))]
    assert len(a) == 4 and idx_a == sorted(idx_a) and len(set(idx_a)) == 4
    assert idx_a == [b.get_details(i).raw_idx for i in range(4)]
    assert np.array_equal(a[0][0], images[idx_a[0]].transpose(2, 0, 1))


def test_grayscale_folder_has_one_channel(tmp_path):
    for i in range(3):
        PIL.Image.fromarray(np.full((4, 4), i * 50, np.uint8), 'L').save(tmp_path / f'g{i}.png')
    ds = ImageFolderDataset(str(tmp_path))
    assert ds.image_shape == [1, 4, 4] and ds[2][0][0, 0, 0] == 100


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ImageFolderDataset(str(tmp_path / 'missing.zip'))
    path, _ = _make_zip(tmp_path)
    with pytest.raises(ValueError, match='resolution=16'):
        ImageFolderDataset(path, resolution=16)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no images'):
        ImageFolderDataset(str(tmp_path / 'empty'))
    (tmp_path / 'notzip.bin').write_bytes(b'hello')
    with pytest.raises(ValueError, match='not a zip'):
        ImageFolderDataset(str(tmp_path / 'notzip.bin'))


def test_missing_label_entry(tmp_path):
    folder = tmp_path / 'f'
    folder.mkdir()
    for i in range(2):
        PIL.Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / f'{i}.png')
    (folder / 'dataset.json').write_text(json.dumps({'labels': [['0.png', 1]]}))
    ds = ImageFolderDataset(str(folder), use_labels=True)
    with pytest.raises(ValueError, match="'1.png' has no label"):
        ds.get_label(0)


def test_pickle_and_dataloader_workers(tmp_path):
    path, images = _make_zip(tmp_path, n=8)
    ds = ImageFolderDataset(path)
    _ = ds[0]  # opens the zip in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone[3][0], images[3].transpose(2, 0, 1))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = [x for x, _ in loader]
    got = torch.cat(batches).numpy()
    assert np.array_equal(got, images.transpose(0, 3, 1, 2))


# ---------------------------------------------------------------------------- InfiniteSampler

def test_infinite_sampler_shards_disjoint_and_cover():
    data = list(range(20))
    s0 = iter(InfiniteSampler(data, rank=0, num_replicas=2, seed=3))
    s1 = iter(InfiniteSampler(data, rank=1, num_replicas=2, seed=3))
    for _ in range(3):  # three passes over the data
        a = list(itertools.islice(s0, 10))
        b = list(itertools.islice(s1, 10))
        assert not set(a) & set(b)  # disjoint within a pass
        assert sorted(a + b) == data  # together cover everything once
    for _ in range(5):  # per step, the ranks never draw the same item
        assert next(s0) != next(s1)


def test_infinite_sampler_shuffle_and_order():
    data = list(range(50))
    plain = list(itertools.islice(iter(InfiniteSampler(data, shuffle=False)), 100))
    assert plain == data + data
    shuf = iter(InfiniteSampler(data, seed=1))
    first, second = list(itertools.islice(shuf, 50)), list(itertools.islice(shuf, 50))
    assert sorted(first) == data and sorted(second) == data
    assert first != data and first != second  # shuffled and drifting between passes
    again = list(itertools.islice(iter(InfiniteSampler(data, seed=1)), 50))
    assert again == first  # seeded
    with pytest.raises(ValueError):
        InfiniteSampler(data, rank=2, num_replicas=2)
