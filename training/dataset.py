"""Image datasets read from a zip or a folder (format written by dataset_tool.py), plus an infinite sampler.

``ImageFolderDataset[i]`` returns ``(image, label)``: a uint8 array [C, H, W] and
a float32 label vector (one-hot for integer class labels, empty without labels).
"""

import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from torch_utils.misc import InfiniteSampler  # noqa: F401  (re-exported: the training loop shards data with it)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff')


@dataclass
class ImageDetails:
    """What ``Dataset.get_details(idx)`` returns."""
    raw_idx: int
    xflip: bool
    raw_label: np.ndarray


class Dataset(torch.utils.data.Dataset):
    """Base class: index selection (max_size), x-flip augmentation and label handling.

    Subclasses implement ``_load_raw_image(raw_idx)`` -> uint8 [C, H, W] and
    ``_load_raw_labels()`` -> array [N] (int classes) or [N, D] (float), or None.
    """

    def __init__(self, name, raw_shape, max_size=None, use_labels=False, xflip=False, random_seed=0):
        self._name = name
        self._raw_shape = list(raw_shape)
        self._use_labels = bool(use_labels)
        self._raw_labels = None
        self._label_shape = None

        # Pick a random but reproducible subset when max_size is smaller than the data.
        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and self._raw_idx.size > max_size:
            rng = np.random.RandomState(random_seed % (1 << 31))
            self._raw_idx = np.sort(rng.permutation(self._raw_idx)[:max_size])

        # X-flip doubles the dataset: the second half are mirrored copies.
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.concatenate([self._raw_idx, self._raw_idx])
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    def _get_raw_labels(self):
        if self._raw_labels is None:
            labels = self._load_raw_labels() if self._use_labels else None
            if labels is None:
                labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            labels = np.asarray(labels)
            if labels.shape[0] != self._raw_shape[0]:
                raise ValueError(f'{self._name}: {labels.shape[0]} labels for {self._raw_shape[0]} images')
            if labels.dtype == np.int64:
                if labels.ndim != 1 or (labels.size and labels.min() < 0):
                    raise ValueError(f'{self._name}: integer labels must be a flat list of classes >= 0')
            elif labels.dtype == np.float32:
                if labels.ndim != 2:
                    raise ValueError(f'{self._name}: float labels must be vectors of equal length')
            else:
                raise ValueError(f'{self._name}: labels must be int64 classes or float32 vectors')
            self._raw_labels = labels
        return self._raw_labels

    def close(self):  # Release file handles; subclasses override.
        pass

    def _load_raw_image(self, raw_idx):
        raise NotImplementedError

    def _load_raw_labels(self):
        raise NotImplementedError

    def _raw_name(self, raw_idx):  # For error messages.
        return f'image {raw_idx}'

    def __getstate__(self):
        return dict(self.__dict__, _raw_labels=None)

    def __del__(self):
        try:
            self.close()
        except Exception:  # Interpreter shutdown: nothing useful to do.
            pass

    def __len__(self):
        return self._raw_idx.size

    def __getitem__(self, idx):
        image = self._load_raw_image(int(self._raw_idx[idx]))
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8):
            raise TypeError(f'{self._name}: image {idx} is not a uint8 array')
        if list(image.shape) != self.image_shape:
            raise ValueError(f'{self._name}: {self._raw_name(int(self._raw_idx[idx]))} has shape {list(image.shape)}, '
                             f'expected {self.image_shape}; rebuild the data with dataset_tool.py')
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    def get_label(self, idx):
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            return onehot
        return label.copy()

    def get_details(self, idx):
        return ImageDetails(raw_idx=int(self._raw_idx[idx]), xflip=bool(self._xflip[idx]),
                            raw_label=self._get_raw_labels()[self._raw_idx[idx]].copy())

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self):
        return list(self._raw_shape[1:])

    @property
    def num_channels(self):
        return self.image_shape[0]

    @property
    def resolution(self):
        _, h, w = self.image_shape
        if h != w:
            raise ValueError(f'{self._name}: images are {w}x{h}, not square')
        return h

    @property
    def label_shape(self):
        if self._label_shape is None:
            raw = self._get_raw_labels()
            if raw.dtype == np.int64:
                self._label_shape = [int(raw.max()) + 1 if raw.size else 0]
            else:
                self._label_shape = list(raw.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self):
        return self.label_shape[0] if self.label_shape else 0

    @property
    def has_labels(self):
        return any(dim != 0 for dim in self.label_shape)

    @property
    def has_onehot_labels(self):
        return self._get_raw_labels().dtype == np.int64


class ImageFolderDataset(Dataset):
    """Images from a folder (searched recursively) or a zip, with optional ``dataset.json`` labels."""

    def __init__(self, path, resolution=None, use_labels=False, max_size=None, xflip=False,
                 random_seed=0, **kwargs):
        self._path = str(path)
        self._zipfile = None
        self._zip_pid = None
        if os.path.isdir(self._path):
            self._type = 'dir'
            names = []
            for root, dirs, files in os.walk(self._path):
                dirs.sort()
                names += [os.path.relpath(os.path.join(root, f), self._path).replace(os.sep, '/')
                          for f in files]
            self._all_fnames = set(names)
        elif os.path.isfile(self._path):
            if not zipfile.is_zipfile(self._path):
                raise ValueError(f"dataset '{self._path}' is not a zip file or folder; "
                                 'create one with dataset_tool.py')
            self._type = 'zip'
            self._all_fnames = set(self._get_zipfile().namelist())
        else:
            raise FileNotFoundError(f"dataset path '{self._path}' does not exist; "
                                    'create one with: python dataset_tool.py --source ... --dest X.zip')
        self._image_fnames = sorted(
            f for f in self._all_fnames
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and not f.startswith('__MACOSX/'))
        if not self._image_fnames:
            raise ValueError(f"no images found in '{self._path}'")

        name = os.path.splitext(os.path.basename(self._path.rstrip('/\\')))[0]
        first = self._load_raw_image(0)
        raw_shape = [len(self._image_fnames)] + list(first.shape)
        if resolution is not None and (raw_shape[2] != resolution or raw_shape[3] != resolution):
            raise ValueError(f"images in '{self._path}' are {raw_shape[3]}x{raw_shape[2]} but "
                             f'resolution={resolution} was requested; rebuild with '
                             f'dataset_tool.py --resolution {resolution}')
        self.close()
        super().__init__(name=name, raw_shape=raw_shape, max_size=max_size, use_labels=use_labels,
                         xflip=xflip, random_seed=random_seed, **kwargs)

    def _get_zipfile(self):
        # Reopen in each process: a handle inherited through fork shares its file offset.
        if self._zipfile is None or self._zip_pid != os.getpid():
            self._zipfile = zipfile.ZipFile(self._path)
            self._zip_pid = os.getpid()
        return self._zipfile

    def _open_file(self, fname):
        if self._type == 'dir':
            return open(os.path.join(self._path, fname), 'rb')
        return self._get_zipfile().open(fname, 'r')

    def close(self):
        zf, self._zipfile = getattr(self, '_zipfile', None), None
        if zf is not None and getattr(self, '_zip_pid', None) == os.getpid():
            zf.close()

    def __getstate__(self):
        return dict(super().__getstate__(), _zipfile=None, _zip_pid=None)

    @property
    def image_fnames(self):
        """Relative file names of the raw images, in raw-index order."""
        return list(self._image_fnames)

    def _raw_name(self, raw_idx):
        return repr(self._image_fnames[raw_idx])

    def _load_raw_image(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        with self._open_file(fname) as fp:
            with PIL.Image.open(fp) as img:
                img.load()
                if img.mode not in ('L', 'RGB'):
                    img = img.convert('RGB')
                image = np.array(img, dtype=np.uint8)
        if image.ndim == 2:
            image = image[:, :, np.newaxis]  # HW -> HWC
        return image.transpose(2, 0, 1)  # HWC -> CHW

    def _load_raw_labels(self):
        fname = 'dataset.json'
        if fname not in self._all_fnames:
            return None
        with self._open_file(fname) as fp:
            labels = json.load(fp).get('labels')
        if labels is None:
            return None
        labels = {str(k).replace('\\', '/'): v for k, v in labels}
        missing = [f for f in self._image_fnames if f not in labels]
        if missing:
            raise ValueError(f"'{missing[0]}' has no label in {self._path}/dataset.json "
                             f'({len(missing)} missing); fix the labels or use use_labels=False')
        try:
            labels = np.array([labels[f] for f in self._image_fnames])
        except ValueError:
            raise ValueError(f'labels in {self._path}/dataset.json have mixed lengths') from None
        if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
            return labels.astype(np.int64)  # Class indices -> one-hot in get_label.
        if labels.ndim == 1:
            labels = labels[:, np.newaxis]  # Scalar float labels -> 1-vectors.
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.number):
            raise ValueError(f'labels in {self._path}/dataset.json must be ints or equal-length number lists')
        return labels.astype(np.float32)


