"""Files a run writes: atomic writes (temporary file, then rename), JSON and JSONL, output folders and their locks,
and clearing what a killed process left behind."""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import tempfile

#----------------------------------------------------------------------------
# Atomic writes.

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


def save_json(path, obj, indent=2):
    """Write JSON atomically."""
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=indent)
            f.write('\n')
    atomic_write(path, write)


def append_jsonl(path, obj):
    """Append one JSON line (a line is written whole with one `write`)."""
    append_line(path, json.dumps(obj))
