"""EasyDict, cached URL opening, building objects from dotted names, atomic writing, output folders,
and the one-line error reporting shared by the command-line tools."""

import contextlib
import errno
import fcntl
import functools
import hashlib
import http.client
import importlib
import io
import os
import pickle
import re
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile

import click

# ----------------------------------------------------------------------------
# Dictionary with attribute access, as used for every `*_kwargs` config tree.


class EasyDict(dict):
    """A `dict` whose keys can also be read and written as attributes.

    Dunder names (`__setstate__`, `__reduce_ex__`, ...) are never looked up among the keys: Python and
    pickle probe for those, and a key must not be able to pose as a method (a hand-made pickle could
    otherwise make unpickling call an allow-listed function through an `__setstate__` key).
    """

    def __getattr__(self, name):
        if name.startswith('__') and name.endswith('__'):
            raise AttributeError(f'{name} (dunder names are not looked up among the keys)')
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


# ----------------------------------------------------------------------------
# Human-readable durations.


def format_time(seconds):
    """Format a duration as e.g. '5s', '3m 04s', '2h 03m 04s' or '1d 02h 03m'."""
    s = int(round(max(float(seconds), 0.0)))
    if s < 60:
        return f'{s}s'
    if s < 60 * 60:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 24 * 60 * 60:
        return f'{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s'
    return f'{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m'


# ----------------------------------------------------------------------------
# Looking up and calling objects by their dotted name (config `class_name`s).


def get_module_from_obj_name(obj_name):
    """Split 'pkg.module.Class.attr' into (imported module, 'Class.attr'), preferring the longest module."""
    parts = obj_name.split('.')
    for i in range(len(parts) - 1, 0, -1):
        module_name = '.'.join(parts[:i])
        try:
            found = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            # Only skip when this candidate itself is missing, not one of its imports.
            if err.name is not None and (module_name == err.name or module_name.startswith(err.name + '.')):
                continue
            raise
        return found, '.'.join(parts[i:])
    if '.' not in obj_name:
        return importlib.import_module('builtins'), obj_name
    raise ImportError(f'Cannot find a module for {obj_name!r}')


def get_obj_by_name(name):
    """Return the object named by a dotted path, e.g. 'training.networks.Generator'."""
    module, attr_path = get_module_from_obj_name(name)
    obj = module
    for attr in attr_path.split('.'):
        if not hasattr(obj, attr):
            raise ImportError(f'Cannot find {name!r}: {module.__name__!r} has no attribute path {attr_path!r}')
        obj = getattr(obj, attr)
    return obj


def call_func_by_name(*args, func_name=None, **kwargs):
    """Look up a function by dotted name and call it."""
    if not isinstance(func_name, str):
        raise TypeError('func_name must be a dotted name string')
    func = get_obj_by_name(func_name)
    if not callable(func):
        raise TypeError(f'{func_name!r} is not callable')
    return func(*args, **kwargs)


def construct_class_by_name(*args, class_name=None, **kwargs):
    """Look up a class by dotted name and instantiate it, e.g. from a `*_kwargs` config dict."""
    if not isinstance(class_name, str):
        raise TypeError('class_name must be a dotted name string')
    return call_func_by_name(func_name=class_name, *args, **kwargs)


# ----------------------------------------------------------------------------
# Cache directory.

_cache_dir_override = None


def set_cache_dir(path):
    """Override the cache root for this process (None = back to the default)."""
    global _cache_dir_override
    _cache_dir_override = path


def make_cache_dir_path(*paths):
    """Path inside the cache root: set_cache_dir(), else $DNNLIB_CACHE_DIR, else ~/.cache/dnnlib."""
    if _cache_dir_override is not None:
        root = _cache_dir_override
    elif os.environ.get('DNNLIB_CACHE_DIR'):
        root = os.environ['DNNLIB_CACHE_DIR']
    else:
        home = os.path.expanduser('~')
        root = os.path.join(home, '.cache', 'dnnlib') if home != '~' else os.path.join(tempfile.gettempdir(), 'dnnlib')
    return os.path.join(root, *paths)


# ----------------------------------------------------------------------------
# Opening URLs and local paths, with an on-disk download cache.

_URL_SCHEME = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*://')


def is_url(obj):
    """True for strings that look like 'scheme://...'."""
    return isinstance(obj, str) and _URL_SCHEME.match(obj) is not None


def url_cache_path(url, cache_dir=None):
    """Where `open_url` caches `url`: '<cache_dir>/<md5 of url>_<basename>'."""
    root = make_cache_dir_path('downloads') if cache_dir is None else cache_dir
    basename = os.path.basename(urllib.parse.urlparse(url).path) or 'download'
    basename = re.sub(r'[^0-9A-Za-z._-]', '_', basename)[-64:]
    return os.path.join(root, f'{hashlib.md5(url.encode("utf-8")).hexdigest()}_{basename}')


def _fetch_url(url, timeout=60.0):
    """One download attempt; returns the response body. Tests replace this to forbid network access."""
    request = urllib.request.Request(url, headers={'User-Agent': 'overparam-stylegan'})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def _download(url, num_attempts, verbose):
    last_err = None
    for attempt in range(num_attempts):
        if verbose:
            print(f'Downloading {url} ...', end='', file=sys.stderr, flush=True)
        try:
            data = _fetch_url(url)
            if verbose:
                print(' done', file=sys.stderr, flush=True)
            return data
        except (OSError, http.client.HTTPException, ValueError) as err:
            last_err = err
            if verbose:
                print(' failed', file=sys.stderr, flush=True)
            if isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500 and err.code not in (408, 429):
                break  # The server said no; asking again will not help.
            if isinstance(err, urllib.error.URLError) and isinstance(err.reason, socket.gaierror):
                break  # Name resolution failed: most likely offline.
            if attempt + 1 < num_attempts:
                time.sleep(min(0.5 * 2**attempt, 8.0))
    raise last_err


def open_url(url, cache_dir=None, num_attempts=10, verbose=True, return_filename=False, cache=True):
    """Open a local path, a file:// URL or an http(s) URL as a binary file.

    http(s) downloads are stored once in `cache_dir` (default: make_cache_dir_path('downloads')) and
    reused later without network access. With return_filename=True, return a local path instead.
    Raises OSError with instructions for a manual download when the download fails.
    """
    if num_attempts < 1:
        raise ValueError('num_attempts must be at least 1')
    url = os.fspath(url)

    # Local paths and file:// URLs.
    if not is_url(url):
        return url if return_filename else open(url, 'rb')
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == 'file':
        path = urllib.request.url2pathname(parsed.path)
        if parsed.netloc not in ('', 'localhost'):
            path = '//' + parsed.netloc + path
        return path if return_filename else open(path, 'rb')
    if parsed.scheme not in ('http', 'https'):
        raise ValueError(f'Unsupported URL scheme {parsed.scheme!r} in {url!r}')
    if return_filename and not cache:
        raise ValueError('return_filename=True needs cache=True (a download has no file name otherwise)')

    # Cache hit.
    cache_path = url_cache_path(url, cache_dir) if cache else None
    if cache and os.path.isfile(cache_path):
        return cache_path if return_filename else open(cache_path, 'rb')

    # Download.
    try:
        data = _download(url, num_attempts=num_attempts, verbose=verbose)
    except Exception as err:
        hint = f', or save it as {cache_path} so that it is found in the download cache' if cache else ''
        raise OSError(
            f'Could not download {url} ({type(err).__name__}: {err}). This machine may be offline. '
            f'Download the file manually and pass its local path instead of the URL{hint}.'
        ) from err
    if not cache:
        return io.BytesIO(data)

    # Write to a temporary file, then rename: an interrupted download leaves no partial cache entry.
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    tmp_path = f'{cache_path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    try:
        with open(tmp_path, 'xb') as f:
            f.write(data)
        os.replace(tmp_path, cache_path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    return cache_path if return_filename else open(cache_path, 'rb')

#----------------------------------------------------------------------------
# Atomic file writing and output folders.

_TMP_TAG = '.tmp-'          # Temporaries are '.<name>.tmp-XXXXXXXX<suffix>' beside their destination.
_STALE_TMP = re.compile(r'^\..+(\.tmp-[a-z0-9_]{8}.*|\.[a-z0-9_]{8}\.tmp)$')   # This and the older naming.


def file_sha256(path, chunk=1 << 20):
    """Hex SHA-256 of a file's bytes, read `chunk` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


class DiskFullError(OSError):
    """Writing failed because the file system holding `path` is full."""


class OutdirError(ValueError):
    """An output folder that cannot be used (a file, not writable); the message names the option."""


def current_umask():
    """The process umask (read without changing it for longer than two system calls)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _is_disk_full(err, folder):
    """ENOSPC/EDQUOT, or an error from a writer that hides the errno (torch.save) while `folder` has no space."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(err, (OSError, RuntimeError)):
        try:
            st = os.statvfs(folder)
        except OSError:
            return False
        return st.f_bavail == 0 or (st.f_favail == 0 and st.f_files > 0)
    return False


def atomic_write(path, write_fn, suffix='.tmp', fsync=False):
    """Call `write_fn(tmp_path)` on a temporary file beside `path`, then rename it onto `path`.

    A kill or an exception leaves the previous `path` intact; an exception leaves no temporary file
    (a SIGKILL can: `remove_stale_temporaries` clears those). The file gets mode 0o666 minus the
    umask, like one made by `open()`. fsync: flush the file to disk before the rename (snapshots
    and checkpoints). A full disk raises `DiskFullError` naming the folder.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}{_TMP_TAG}', suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())          # mkstemp creates 0600.
        if fsync:
            with open(tmp, 'rb+') as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        if _is_disk_full(err, folder):
            raise DiskFullError(errno.ENOSPC, f'no space left on device at {folder} (while writing '
                                f'{os.path.basename(path)}); free some space or write elsewhere') from err
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def append_line(path, line):
    """Append `line` (plus a newline) to the text file `path` with one write; a full disk raises `DiskFullError`."""
    try:
        with open(path, 'a') as f:
            f.write(line + '\n')
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(errno.ENOSPC, f'no space left on device at {os.path.dirname(os.path.abspath(path))} '
                                f'(while appending to {os.path.basename(path)}); free some space or write '
                                f'elsewhere') from err
        raise


def remove_stale_temporaries(folder, recursive=True):
    """Delete temporaries that `atomic_write` left behind when its process was killed; returns their paths.

    Call it only while no other process writes into `folder` (e.g. while holding `outdir_lock`).
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    walker = os.walk(folder) if recursive else [(folder, [], os.listdir(folder))]
    for root, _dirs, files in walker:
        for name in files:
            if _STALE_TMP.match(name):
                path = os.path.join(root, name)
                try:
                    os.remove(path)
                    removed.append(path)
                except FileNotFoundError:
                    pass
    return removed


def check_outdir(path, option='--outdir'):
    """Raise `OutdirError` unless `path` is (or can be made as) a folder this process can write into.

    Creates nothing: the nearest existing ancestor is probed with a temporary folder that is removed
    at once, so bad inputs found later leave no empty output folder behind. Returns `path`.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        where = 'is a file' if probe == path else f'is inside {probe}, which is a file'
        raise OutdirError(f'{option} {path} {where}; pass a folder')
    try:
        os.rmdir(tempfile.mkdtemp(prefix='.write-test-', dir=probe))
    except OSError as err:
        reason = 'no space left on device' if err.errno in (errno.ENOSPC, errno.EDQUOT) else \
            (err.strerror or type(err).__name__).lower()
        raise OutdirError(f'{option} {path}: cannot write in {probe} ({reason}); choose another folder') from err
    return path


def make_outdir(path, option='--outdir'):
    """`check_outdir`, then create the folder (and its parents); returns the absolute path."""
    path = check_outdir(path, option)
    os.makedirs(path, exist_ok=True)
    return path

@contextlib.contextmanager
def outdir_lock(folder, what='run'):
    """Hold an exclusive lock on `folder` (flock on `<folder>/.lock`) while the block runs.

    A second process asking for the same folder gets `OutdirError` at once, naming the holder's pid.
    The kernel drops the lock when its holder exits, however it exits, so a killed run never blocks
    the next one; the `.lock` file itself stays (empty of meaning once unlocked).
    """
    path = os.path.join(os.fspath(folder), '.lock')
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode('ascii', 'replace').strip() or 'unknown'
            raise OutdirError(f'{folder} is in use by another {what} (pid {holder}); wait for it to finish, or use '
                              f'another --outdir') from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'{os.getpid()}\n'.encode('ascii'), 0)
        yield
    finally:
        os.close(fd)                                       # Closing releases the lock.

#----------------------------------------------------------------------------
# One-line errors for the command-line tools.

# What a CLI reports as one line instead of a traceback: bad values (ValueError, which includes
# torch_utils.checkpoint.CheckpointError and OutdirError), file-system problems (OSError, which
# includes DiskFullError), and what broken files raise while being read.
EXPECTED_ERRORS = (ValueError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, UnicodeDecodeError)


def one_line(err):
    """The message of an exception on one line (whitespace runs collapsed), or its type when it has none."""
    text = ' '.join(str(err).split())
    if isinstance(err, KeyError) and text.startswith("'"):
        text = f'missing key {text}'
    return text or type(err).__name__


def cli_errors(*extra_types):
    """Decorator for a click command's function: expected errors become one-line `click.ClickException`s.

    `extra_types` adds exception classes of the caller's own (e.g. InversionError). Set the environment
    variable DNNLIB_TRACEBACK=1 to get the traceback instead (for bug reports). Usage::

        @click.command()
        @click.option(...)
        @dnnlib.util.cli_errors(InversionError)
        def main(...): ...
    """
    if len(extra_types) == 1 and callable(extra_types[0]) and not isinstance(extra_types[0], type):
        return cli_errors()(extra_types[0])                 # Used bare: @cli_errors
    caught = EXPECTED_ERRORS + tuple(extra_types)

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except click.ClickException:
                raise
            except caught as err:
                if os.environ.get('DNNLIB_TRACEBACK'):
                    raise
                raise click.ClickException(one_line(err)) from err
        return wrapper
    return decorate

#----------------------------------------------------------------------------
# Command-line helpers.

def parse_range(text):
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]."""
    if isinstance(text, (list, tuple)):
        return list(text)
    values = []
    for part in str(text).split(','):
        m = re.fullmatch(r'\s*(\d+)\s*(?:-\s*(\d+)\s*)?', part)
        if m is None:
            raise ValueError(f"cannot parse '{part}' in '{text}': expected e.g. '0-3,7'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        values.extend(range(lo, hi + 1))
    return values
