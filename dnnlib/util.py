"""EasyDict, cached URL opening, building objects from dotted names, and error messages on one line.

Files and output folders: `torch_utils.files`; the command-line tools' helpers: `dnnlib.cli`."""

import hashlib
import http.client
import importlib
import io
import os
import re
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

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

def one_line(err):
    """The message of an exception on one line (whitespace runs collapsed), or its type when it has none."""
    text = ' '.join(str(err).split())
    if isinstance(err, KeyError) and text.startswith("'"):
        text = f'missing key {text}'
    return text or type(err).__name__
