"""Image datasets read from a zip or a folder (the layout dataset_tool.py writes), plus the training sampler.

`ImageFolderDataset[i]` is `(image, label)`: uint8 `[C, H, W]` and a float32 label vector (one-hot for integer class
labels, `[0]`-shaped without labels). The dataset has no randomness of its own: item `i` is always the same
image (mirrored or not), so data-loader workers never need seeding for exact resume.
"""

import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np
import PIL.Image
from torch.utils.data import Dataset as _TorchDataset

from torch_utils.image_io import IMAGE_EXTENSIONS
from torch_utils.misc import InfiniteSampler  # noqa: F401  (re-exported: the training loop shards data with it)


@dataclass
class ImageDetails:
    """What `Dataset.get_details(idx)` returns."""
    raw_idx: int
    xflip: bool
    raw_label: np.ndarray


def _checked_labels(labels, num_images, where):
    """Raw labels as stored: int64 `[N]` class indices or float32 `[N, D]` vectors (`[N, 0]` without labels)."""
    if labels is None:
        return np.zeros([num_images, 0], dtype=np.float32)
    labels = np.asarray(labels)
    if len(labels) != num_images:
        raise ValueError(f'{where}: {len(labels)} labels for {num_images} images')
    if labels.dtype == np.int64 and labels.ndim == 1 and (labels.size == 0 or labels.min() >= 0):
        return labels
    if labels.dtype == np.float32 and labels.ndim == 2:
        return labels
    raise ValueError(f'{where}: labels must be a flat list of int64 classes >= 0 or float32 vectors of equal length')


class Dataset(_TorchDataset):
    """Item selection over raw images: an optional seeded subset (max_size) and optional mirrored copies (xflip).

    Item `i` shows raw image `self._source[i]`, flipped left-right when `self._mirrored[i]`. Subclasses provide
    `read_image(raw_idx)` -> uint8 `[C, H, W]` and `read_labels()` -> int64 `[N]`, float32 `[N, D]` or None.
    """

    def __init__(self, name, raw_shape, max_size=None, use_labels=False, xflip=False, random_seed=0):
        self._name = name
        self._raw_shape = [int(s) for s in raw_shape]     # [N, C, H, W] of the raw images
        self._use_labels = bool(use_labels)
        self._labels = None                                # raw labels, read on first use

        num_raw = self._raw_shape[0]
        source = np.arange(num_raw, dtype=np.int64)
        if max_size is not None and max_size < num_raw:   # Reproducible subset, kept in raw order.
            chosen = np.random.RandomState(random_seed % (1 << 31)).permutation(num_raw)[:max_size]
            source = np.sort(chosen).astype(np.int64)
        mirrored = np.zeros(len(source), dtype=bool)
        if xflip:                                          # Mirrored copies form the second half.
            source, mirrored = np.tile(source, 2), np.repeat([False, True], len(source))
        self._source, self._mirrored = source, mirrored

    # Subclass interface.
    def read_image(self, raw_idx):
        raise NotImplementedError

    def read_labels(self):
        raise NotImplementedError

    def describe(self, raw_idx):
        """How error messages name raw image `raw_idx`."""
        return f'image {raw_idx}'

    def close(self):
        """Release file handles (subclasses that hold any override this)."""

    # Items.
    def raw_labels(self):
        """All raw labels (see `_checked_labels`), read once."""
        if self._labels is None:
            found = self.read_labels() if self._use_labels else None
            self._labels = _checked_labels(found, self._raw_shape[0], self._name)
        return self._labels

    def __len__(self):
        return len(self._source)

    def __getitem__(self, item):
        raw = int(self._source[item])
        image = self.read_image(raw)
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise TypeError(f'{self._name}: {self.describe(raw)} is not a uint8 array')
        if list(image.shape) != self.image_shape:
            raise ValueError(f'{self._name}: {self.describe(raw)} has shape {list(image.shape)}, expected '
                             f'{self.image_shape}; rebuild the data with dataset_tool.py')
        if self._mirrored[item]:
            image = np.flip(image, axis=2)
        return np.ascontiguousarray(image).copy(), self.get_label(item)

    def get_label(self, idx):
        """float32 label vector of item `idx` (one-hot for class labels)."""
        raw = self.raw_labels()[self._source[idx]]
        if raw.dtype != np.int64:
            return np.array(raw, dtype=np.float32)
        return np.eye(self.label_dim, dtype=np.float32)[int(raw)]

    def get_details(self, item):
        raw = int(self._source[item])
        return ImageDetails(raw_idx=raw, xflip=bool(self._mirrored[item]), raw_label=self.raw_labels()[raw].copy())

    # Shapes.
    @property
    def name(self):
        return self._name

    @property
    def image_shape(self):
        """[C, H, W]."""
        return self._raw_shape[1:]

    @property
    def num_channels(self):
        return self._raw_shape[1]

    @property
    def resolution(self):
        height, width = self._raw_shape[2:]
        if height != width:
            raise ValueError(f'{self._name}: images are {width}x{height}, not square')
        return height

    @property
    def label_shape(self):
        labels = self.raw_labels()
        if labels.dtype == np.int64:
            return [int(labels.max()) + 1 if labels.size else 0]
        return list(labels.shape[1:])

    @property
    def label_dim(self):
        shape = self.label_shape
        return shape[0] if shape else 0

    @property
    def has_labels(self):
        return any(dim != 0 for dim in self.label_shape)

    has_onehot_labels = property(lambda self: self.raw_labels().dtype == np.int64, doc='Class-index labels.')

    # Pickling (DataLoader workers) and clean-up.
    def __getstate__(self):
        state = dict(self.__dict__)
        state['_labels'] = None
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:   # Interpreter shutdown: nothing useful to do.
            pass


class ImageFolderDataset(Dataset):  # a zip or a folder of images
    """Images from a folder (searched recursively) or a zip, with optional `dataset.json` labels."""

    def __init__(self, path, resolution=None, use_labels=False, max_size=None, xflip=False, random_seed=0, **kwargs):
        self._path = str(path)
        self._zip, self._zip_owner = None, None
        is_folder = os.path.isdir(self._path)
        if is_folder:
            self._kind = 'dir'
            files = set()
            for root, dirs, names in os.walk(self._path):
                dirs.sort()
                files.update(os.path.relpath(os.path.join(root, n), self._path).replace(os.sep, '/') for n in names)
        elif os.path.isfile(self._path):
            if not zipfile.is_zipfile(self._path):
                raise ValueError(f"dataset '{self._path}' is not a zip file or folder; create one with dataset_tool.py")
            self._kind = 'zip'
            files = set(self._archive().namelist())
        else:
            raise FileNotFoundError(f"dataset path '{self._path}' does not exist; "
                                    'create one with: python dataset_tool.py --source ... --dest X.zip')
        self._files = files
        self._image_names = sorted(f for f in files if not f.startswith('__MACOSX/')
                                   and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
        if not self._image_names:
            raise ValueError(f"no images found in '{self._path}'")

        channels, height, width = self.read_image(0).shape
        if resolution is not None and (height, width) != (resolution, resolution):
            raise ValueError(f"images in '{self._path}' are {width}x{height} but resolution={resolution} was "
                             f'requested; rebuild with dataset_tool.py --resolution {resolution}')
        self.close()
        stem = os.path.splitext(os.path.basename(self._path.rstrip('/\\')))[0]
        super().__init__(name=stem, raw_shape=[len(self._image_names), channels, height, width], max_size=max_size,
                         use_labels=use_labels, xflip=xflip, random_seed=random_seed, **kwargs)

    def _archive(self):
        # One handle per process: a handle inherited through fork would share its file offset with the parent.
        if self._zip is None or self._zip_owner != os.getpid():
            self._zip, self._zip_owner = zipfile.ZipFile(self._path), os.getpid()
        return self._zip

    def _open(self, name):
        if self._kind == 'zip':
            return self._archive().open(name, 'r')
        return open(os.path.join(self._path, name), 'rb')

    def close(self):
        handle, self._zip = getattr(self, '_zip', None), None
        if handle is not None and getattr(self, '_zip_owner', None) == os.getpid():
            handle.close()

    def __getstate__(self):
        state = super().__getstate__()
        state.update(_zip=None, _zip_owner=None)
        return state

    @property
    def image_fnames(self):
        """Relative file names of the raw images, in raw-index order."""
        return list(self._image_names)

    def describe(self, raw_idx):
        return repr(self._image_names[raw_idx])

    def read_image(self, raw_idx):
        name = self._image_names[raw_idx]
        try:
            with self._open(name) as f, PIL.Image.open(f) as img:
                img.load()
                pixels = np.array(img if img.mode in ('L', 'RGB') else img.convert('RGB'), dtype=np.uint8)
        except (OSError, ValueError, zipfile.BadZipFile) as err:   # PIL's errors name a file object, not the file.
            raise ValueError(f"{self._path}: cannot read image '{name}' ({type(err).__name__}); "
                             'rebuild the data with dataset_tool.py') from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        return pixels.transpose(2, 0, 1)                                  # HWC -> CHW

    def read_labels(self):
        if 'dataset.json' not in self._files:
            return None
        with self._open('dataset.json') as f:
            entries = json.load(f).get('labels')
        if entries is None:
            return None
        by_name = {str(name).replace('\\', '/'): value for name, value in entries}
        missing = [n for n in self._image_names if n not in by_name]
        if missing:
            raise ValueError(f"'{missing[0]}' has no label in {self._path}/dataset.json "
                             f'({len(missing)} missing); fix the labels or use use_labels=False')
        try:
            values = np.array([by_name[n] for n in self._image_names])
        except ValueError:
            raise ValueError(f'labels in {self._path}/dataset.json have mixed lengths') from None
        if values.ndim == 1 and np.issubdtype(values.dtype, np.integer):
            return values.astype(np.int64)                                # class indices, one-hot in get_label
        if values.ndim == 1:
            values = values[:, None]                                      # scalar labels -> 1-vectors
        if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
            raise ValueError(f'labels in {self._path}/dataset.json must be ints or equal-length number lists')
        return values.astype(np.float32)
