"""The one module that knows the host operating system (specs/platform.md).

Everything else in the package reads, writes, syncs, renames and probes host files
through here (image code through image/hostio.py, which adds the undo journal of an edit):

- positional I/O: os.pread/os.pwrite where the OS has them; elsewhere (Windows) a lock per
  descriptor around seek + read/write;
- allocated ranges: SEEK_DATA/SEEK_HOLE; on Windows FSCTL_QUERY_ALLOCATED_RANGES; where
  the host cannot tell, the blocks that are not all zeros (the file is read);
- sparse files: FSCTL_SET_SPARSE on Windows before a file is extended (POSIX files are
  sparse already);
- durability: fsync of files; of folders where the OS allows it; on Windows the rename
  itself is written through (MoveFileExW with MOVEFILE_WRITE_THROUGH);
- a one-line reason when another program holds a file open (Windows sharing violation).

VDISK_PLATFORM_FALLBACK=1 forces the non-POSIX paths on any host (no pread/pwrite, no
SEEK_DATA, no folder fsync): the test suite runs a second time that way on Linux.
The OS functions are looked up at call time (`os.pwrite`, never a local alias), so test
harnesses that interpose on them see every call.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import stat
import threading
from collections.abc import Iterator

FALLBACK_ENV = "VDISK_PLATFORM_FALLBACK"
HELD_OPEN = "another program holds the file open (VMware keeps a VM's disks open while it runs)"
HELD_OPEN_HINT = "power off the VM (or close the program that has the file open), then try again"
_SHARING_ERRORS = (32, 33)       # ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION
_INO_MASK = (1 << 64) - 1


@dataclasses.dataclass(frozen=True)
class Features:
    """What the host offers; `fallback` turns the POSIX-only ones off."""

    windows: bool
    positional: bool      # os.pread / os.pwrite
    seek_data: bool       # lseek SEEK_DATA / SEEK_HOLE
    dir_fsync: bool       # a folder can be opened and fsynced
    fallback: bool = False
    copy_file_range: bool = False   # os.copy_file_range (Linux): copies inside the kernel
    writeback: bool = False         # sync_file_range(2) (Linux): start writing dirty pages out


def detect(environ: dict[str, str] | os._Environ[str] | None = None) -> Features:
    env = os.environ if environ is None else environ
    forced = env.get(FALLBACK_ENV, "") not in ("", "0")
    windows = os.name == "nt"
    posix_ok = not forced and not windows
    return Features(windows=windows,
                    positional=posix_ok and hasattr(os, "pread") and hasattr(os, "pwrite"),
                    seek_data=posix_ok and hasattr(os, "SEEK_DATA"),
                    dir_fsync=posix_ok, fallback=forced,
                    copy_file_range=posix_ok and hasattr(os, "copy_file_range"),
                    writeback=posix_ok and os.uname().sysname == "Linux")


FEATURES = detect()


def _win32():  # noqa: ANN202 - the module, loaded only on Windows
    from . import _win32 as w
    return w


# -- opening -------------------------------------------------------------------------------
def open_fd(path: str, flags: int, mode: int = 0o644, nofollow: bool = False) -> int:
    """os.open in binary mode (Windows opens text mode otherwise), not inherited by child
    processes; a sharing violation says that another program holds the file."""
    flags |= getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    if nofollow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(path, flags, mode)
    except PermissionError:
        writable = flags & (os.O_WRONLY | os.O_RDWR) != 0
        if FEATURES.windows and _win32().open_error(path, writable) in _SHARING_ERRORS:
            raise PermissionError(errno.EACCES, HELD_OPEN, path) from None
        raise


def held_open(exc: BaseException) -> bool:
    """True for the error Windows gives when another process holds the file."""
    return isinstance(exc, OSError) and (
        getattr(exc, "winerror", None) in _SHARING_ERRORS or exc.strerror == HELD_OPEN)


def describe(exc: OSError) -> str:
    """The reason of an OS error as one line ends it."""
    return HELD_OPEN if held_open(exc) else (exc.strerror or str(exc))


# -- positional I/O ------------------------------------------------------------------------
_locks: dict[int, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(fd: int) -> threading.Lock:
    lock = _locks.get(fd)
    if lock is None:
        with _locks_guard:
            lock = _locks.setdefault(fd, threading.Lock())
    return lock


def pread(fd: int, length: int, offset: int) -> bytes:
    """Up to `length` bytes at `offset` (short only at the end of the file)."""
    if FEATURES.positional:
        return os.pread(fd, length, offset)
    parts = []
    with _lock(fd):
        os.lseek(fd, offset, os.SEEK_SET)
        while length > 0:
            chunk = os.read(fd, length)
            if not chunk:
                break
            parts.append(chunk)
            length -= len(chunk)
    return b"".join(parts)


def preadinto(fd: int, buf: memoryview, offset: int) -> int:
    """Fill `buf` from `offset`; returns the bytes read (short at the end of the file)."""
    if FEATURES.positional and hasattr(os, "preadv"):
        return os.preadv(fd, [buf], offset)
    data = pread(fd, len(buf), offset)
    buf[:len(data)] = data
    return len(data)


def pwrite(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
    """Write all of `data` at `offset`."""
    view = memoryview(data).cast("B")
    done = 0
    if FEATURES.positional:
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)
        return done
    with _lock(fd):
        os.lseek(fd, offset, os.SEEK_SET)
        while done < len(view):
            done += os.write(fd, view[done:])
    return done


def copy_file_range(src_fd: int, dst_fd: int, length: int, src_offset: int,
                    dst_offset: int) -> int:
    """One in-kernel copy step (os.copy_file_range); the host must have it
    (FEATURES.copy_file_range). Returns the bytes copied, 0 at the source's end."""
    return os.copy_file_range(src_fd, dst_fd, length, src_offset, dst_offset)


def ftruncate(fd: int, length: int) -> None:
    """Set the file's length; on Windows a file that grows is made sparse first."""
    if FEATURES.windows and length > os.fstat(fd).st_size:
        set_sparse(fd)
    os.ftruncate(fd, length)


def allocate(fd: int, offset: int, length: int) -> None:
    """Reserve disk space for [offset, offset+length) (posix_fallocate; where the host has
    none, zeros are written), extending the file if needed."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, offset, length)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    chunk = bytes(min(length, 1 << 20))
    done = 0
    while done < length:
        n = min(len(chunk), length - done)
        pwrite(fd, chunk[:n], offset + done)
        done += n


def fsync(fd: int) -> None:
    """Make the file's data durable (FlushFileBuffers on Windows)."""
    os.fsync(fd)


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: list = []     # the libc function, looked up once ([None] where absent)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing [offset, offset+length) of the file to its device
    without waiting (Linux sync_file_range(SYNC_FILE_RANGE_WRITE)): a long write's final
    fsync then finds most of it written. Only a hint, for speed; durability still comes
    from fsync. Nothing where the host lacks it."""
    if not FEATURES.writeback:
        return
    if not _sync_file_range:
        try:
            import ctypes
            fn = ctypes.CDLL(None, use_errno=True).sync_file_range
            fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _sync_file_range.append(fn)
        except (OSError, AttributeError):
            _sync_file_range.append(None)
    fn = _sync_file_range[0]
    if fn is not None:
        fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)   # a failure only loses the hint


# -- allocation ----------------------------------------------------------------------------
def data_ranges(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the ranges in [start, end) that the host file system stores;
    where it cannot tell, the blocks that hold a non-zero byte."""
    if FEATURES.seek_data:
        yield from _seek_data_ranges(fd, start, end)
        return
    if FEATURES.windows and not FEATURES.fallback:
        pos = start
        try:
            for lo, n in _win32().allocated_ranges(fd, start, end):
                yield lo, n
                pos = lo + n
            return
        except OSError:   # a FAT32 or exFAT volume keeps no allocation map
            start = pos
    yield from nonzero_ranges(fd, start, end)


ZERO_BLOCK_BYTES = 4096
_SCAN_BYTES = 1 << 20


def nonzero_ranges(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the 4 KiB blocks of [start, end) that hold a non-zero byte,
    joined; what a file system without an allocation map would have stored."""
    zero = bytes(ZERO_BLOCK_BYTES)
    run_start = -1
    pos = start
    while pos < end:
        chunk = pread(fd, min(_SCAN_BYTES, end - pos), pos)
        if not chunk:
            break
        if chunk.count(0) == len(chunk):
            blocks: list[bool] = []
        else:
            blocks = [chunk[i:i + ZERO_BLOCK_BYTES] != zero[:len(chunk) - i]
                      for i in range(0, len(chunk), ZERO_BLOCK_BYTES)]
        if not blocks:
            if run_start >= 0:
                yield run_start, pos - run_start
                run_start = -1
        for i, data in enumerate(blocks):
            at = pos + i * ZERO_BLOCK_BYTES
            if data and run_start < 0:
                run_start = at
            elif not data and run_start >= 0:
                yield run_start, at - run_start
                run_start = -1
        pos += len(chunk)
    if run_start >= 0:
        yield run_start, min(pos, end) - run_start


def _seek_data_ranges(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            yield pos, end - pos  # the file system cannot tell: treat all as data
            return
        if data >= end:
            return
        try:
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError:
            hole = end
        hole = min(hole, end)
        yield data, hole - data
        pos = hole


def set_sparse(fd: int) -> None:
    """Let the file hold holes before it is extended (Windows: FSCTL_SET_SPARSE; a volume
    without sparse files, such as FAT32, keeps the file as it is)."""
    if FEATURES.windows:
        try:
            _win32().set_sparse(fd)
        except OSError:
            pass


def set_length(path: str, length: int) -> None:
    """Truncate or extend `path` to `length` bytes, extended as a hole."""
    fd = open_fd(path, os.O_RDWR)
    try:
        ftruncate(fd, length)
    finally:
        os.close(fd)


# -- names and durability ------------------------------------------------------------------
def fsync_path(path: str) -> None:
    """fsync a file by name (Windows flushes only through a handle opened for writing);
    a folder as fsync_dir does."""
    if os.path.isdir(path):
        _fsync_folder(path)
        return
    fd = open_fd(path, os.O_RDWR if FEATURES.windows else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: str) -> None:
    if not FEATURES.dir_fsync:
        return   # Windows: renames are written through, NTFS logs the names (specs/platform.md)
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make the names in the folder of `path` durable, where the OS allows it."""
    _fsync_folder(os.path.dirname(os.path.abspath(path)) or ".")


def replace(src: str, dst: str) -> None:
    """Rename `src` over `dst` (a file, or a folder onto a missing or empty one). On Windows
    the rename reaches the disk before this returns; elsewhere fsync_dir makes it durable."""
    if FEATURES.windows:
        _win32().replace(src, dst)
    else:
        os.replace(src, dst)


def volume_path(path: str) -> str | None:
    """`path` named through its volume's GUID (\\\\?\\Volume{...}\\...) where the host has
    such names (Windows); None elsewhere or when the volume has none (a network share)."""
    if not FEATURES.windows:
        return None
    try:
        return _win32().volume_path(path)
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (os.kill(pid, 0) would end it on Windows)."""
    if FEATURES.windows:
        return bool(_win32().pid_alive(pid))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def file_id(st: os.stat_result) -> int:
    """The file's identity on its volume in 64 bits (Windows may give 128-bit ids)."""
    return st.st_ino & _INO_MASK


def removal_command(path: str) -> str:
    """The shell command that removes `path` as it is (PowerShell on Windows)."""
    is_dir = os.path.isdir(path) and not os.path.islink(path)
    if FEATURES.windows:
        quoted = "'" + path.replace("'", "''") + "'"
        return f"Remove-Item -LiteralPath {quoted}{' -Recurse' if is_dir else ''}"
    import shlex
    return f"rm {'-r ' if is_dir else ''}{shlex.quote(path)}"


# -- names: case -----------------------------------------------------------------------------
_case_cache: dict[str, bool] = {}


def case_insensitive(folder: str) -> bool:
    """Whether the file system of `folder` finds names whatever their case (NTFS and APFS
    by default, FAT anywhere): probed by asking for the folder with its case swapped."""
    if FEATURES.windows:
        return True
    real = os.path.realpath(folder)
    if real in _case_cache:
        return _case_cache[real]
    probe, result = real, False
    while True:
        head, tail = os.path.split(probe)
        if tail.swapcase() != tail:
            try:
                a = os.stat(probe)
                b = os.stat(os.path.join(head, tail.swapcase()))
                result = stat.S_ISDIR(b.st_mode) and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
            except OSError:
                result = False
            break
        if head == probe:
            break
        probe = head
    _case_cache[real] = result
    return result
