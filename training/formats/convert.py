"""Converting a network file of any supported format into ours or rosinality's (the work behind convert.py)."""

import os
import warnings

import torch

import dnnlib
from torch_utils import checkpoint, files
from training.formats import rosinality

TARGETS = ('ours', 'rosinality')
FORMAT_NAMES = {checkpoint.OURS: 'our pickle', checkpoint.NVLABS: "NVIDIA's PyTorch pickle",
                checkpoint.TENSORFLOW: "NVIDIA's TensorFlow pickle", checkpoint.ROSINALITY: "rosinality's checkpoint"}


class ConvertError(ValueError):
    """A conversion that cannot be done; one line naming the option and the reason."""


def _write_torch(path, obj):
    def write(tmp):
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
    files.atomic_write(path, write, fsync=True)


def convert(source, dest, to, trust=False, log=print):
    """Read `source` (path or URL, any supported format), write it to `dest` in format `to` ('ours' or
    'rosinality'), atomically; nothing is written when the networks cannot be expressed there.

    `log` receives progress lines and notes. Returns a summary dict (source format, keys written, notes and,
    for rosinality, the constructor call of his Generator that loads the file).
    """
    if to not in TARGETS:
        raise ConvertError(f'--to {to}: expected one of {", ".join(TARGETS)}')
    if os.path.isdir(dest):
        raise ConvertError(f'--dest {dest} is a folder; give the file to write')
    log(f'Reading {source} ...')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        file_format, data = checkpoint.read_network_file(source, trust=trust)
    notes = [dnnlib.util.one_line(w.message) for w in caught]
    nets = {key: type(value).__name__ for key, value in data.items() if isinstance(value, torch.nn.Module)}
    log(f'Read {FORMAT_NAMES[file_format]}: {", ".join(f"{k} ({v})" for k, v in nets.items()) or "no networks"}')
    summary = dict(source=str(source), source_format=file_format, dest=str(dest), to=to)
    if to == 'ours':
        payload, written = data, sorted(str(k) for k, v in data.items() if v is not None)
        write = lambda path: checkpoint.save_network_pkl(path, payload)      # noqa: E731
    else:
        G_ema = checkpoint.network_in(data, source, 'G_ema', option='--source')
        payload, more = rosinality.to_rosinality(G_ema, G=data.get('G'), D=data.get('D'))
        notes += more
        written = list(payload)
        summary['load_with'] = rosinality.his_constructor(G_ema)
        write = lambda path: _write_torch(path, payload)                      # noqa: E731
    for note in notes:
        log(f'Note: {note}')
    log(f'Writing {dest} ...')
    try:
        write(dest)
    except OSError as err:
        raise ConvertError(f'--dest {dest}: cannot write it ({dnnlib.util.one_line(err)})') from err
    return dict(summary, written=written, notes=notes)
