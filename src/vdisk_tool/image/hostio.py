"""Every in-place read and write of an image's host files goes through here.

Outside an edit these are the plain OS calls. During an edit (image/edit.py) they are bound
to an undo journal (image/journal.py): writes to the files it covers are buffered, and
before a buffered page reaches a file its old bytes are in the journal, fsynced
(specs/journal.md). Reads of covered files see the buffered writes.

Outside the journal the calls go to image/platform.py, the one module that knows the host
OS (os.pread/os.pwrite where present, seek + read/write under a lock elsewhere).
"""
from __future__ import annotations

import errno
import os
from typing import Protocol

from . import platform


class Journal(Protocol):
    """What a bound journal offers (image/journal.py: UndoJournal)."""

    def index_of(self, fd: int) -> int | None: ...

    def write(self, idx: int, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def read(self, idx: int, offset: int, length: int) -> bytes: ...

    def truncate(self, idx: int, length: int) -> None: ...

    def fsync(self, idx: int) -> None: ...

    def settle(self, idx: int) -> None: ...

    def fd_for(self, path: str) -> int | None: ...

    def length(self, idx: int) -> int: ...


_bound: list[Journal] = []


def bind(journal: Journal) -> None:
    """Route the I/O of the journal's files through it until unbind()."""
    if _bound:
        raise RuntimeError("an undo journal is already bound")
    _bound.append(journal)


def unbind(journal: Journal) -> None:
    if _bound and _bound[0] is journal:
        _bound.clear()


def _covered(fd: int) -> tuple[Journal, int] | None:
    if not _bound:
        return None
    j = _bound[0]
    idx = j.index_of(fd)
    return None if idx is None else (j, idx)


def any_journal() -> bool:
    """Whether an undo journal is bound (its I/O is driven by one thread)."""
    return bool(_bound)


class Writeback:
    """Starts the device writes of a file being filled front to back, every `step` bytes
    of progress (platform.start_writeback), so that its final fsync waits for little. Not
    for a file bound to the undo journal, whose writes wait in the journal."""

    def __init__(self, fd: int, step: int = 8 << 20) -> None:
        self.fd, self.step, self.done = fd, step, 0
        self.on = not journalled(fd)

    def upto(self, offset: int) -> None:
        if self.on and offset - self.done >= self.step:
            platform.start_writeback(self.fd, self.done, offset - self.done)
            self.done = offset


def journalled(fd: int) -> bool:
    """Whether writes to `fd` go through a bound undo journal (which one thread drives)."""
    return _covered(fd) is not None


def pwrite(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
    """Write all of `data` at `offset` (through the journal when it covers the file)."""
    hit = _covered(fd)
    if hit is not None:
        hit[0].write(hit[1], offset, data)
        return len(data)
    return platform.pwrite(fd, data, offset)


def pread(fd: int, length: int, offset: int) -> bytes:
    hit = _covered(fd)
    if hit is not None:
        return hit[0].read(hit[1], offset, length)
    return platform.pread(fd, length, offset)


def preadinto(fd: int, buf: memoryview, offset: int) -> int:
    """Fill `buf` from `offset`; returns the bytes read (short at the end of the file)."""
    hit = _covered(fd)
    if hit is not None:
        data = hit[0].read(hit[1], offset, len(buf))
        buf[:len(data)] = data
        return len(data)
    return platform.preadinto(fd, buf, offset)


# errnos by which copy_file_range says "not here" (another file system, an old kernel, a
# file system or file type that cannot): the copy then goes through pread/pwrite
_NO_COPY_RANGE = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP,
                            errno.EINVAL, errno.ETXTBSY})
# False sends every copy_range through pread/pwrite, as on a host without copy_file_range
USE_COPY_FILE_RANGE = True
COPY_CHUNK_BYTES = 1 << 20


def copy_range(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, length: int) -> int:
    """Copy `length` bytes from one file to another; returns the bytes copied (fewer only
    where the source ends).

    In the kernel with copy_file_range(2) where the host has it (no copy through user
    space; a reflink on file systems that share extents), else with pread/pwrite. A file
    bound to the undo journal is always copied through it (pread/pwrite here), so an edit
    never bypasses its journal.
    """
    done = 0
    if USE_COPY_FILE_RANGE and platform.FEATURES.copy_file_range \
            and _covered(src_fd) is None and _covered(dst_fd) is None:
        try:
            while done < length:
                n = platform.copy_file_range(src_fd, dst_fd, length - done, src_offset + done,
                                             dst_offset + done)
                if n == 0:
                    return done
                done += n
            return done
        except OSError as exc:
            if exc.errno not in _NO_COPY_RANGE:
                raise
    while done < length:
        data = pread(src_fd, min(COPY_CHUNK_BYTES, length - done), src_offset + done)
        if not data:
            break
        pwrite(dst_fd, data, dst_offset + done)
        done += len(data)
    return done


def file_bytes(fd: int) -> int:
    """The file's length as the edit sees it."""
    hit = _covered(fd)
    if hit is not None:
        return hit[0].length(hit[1])
    return os.fstat(fd).st_size


def ftruncate(fd: int, length: int) -> None:
    hit = _covered(fd)
    if hit is not None:
        hit[0].truncate(hit[1], length)
        return
    platform.ftruncate(fd, length)


def allocate(fd: int, offset: int, length: int) -> None:
    """Reserve host space for [offset, offset+length) (qemu's preallocation=falloc); within
    an edit, zeros are written through the journal instead."""
    hit = _covered(fd)
    if hit is not None:
        zeros = bytes(min(length, 1 << 20))
        for pos in range(offset, offset + length, len(zeros)):
            hit[0].write(hit[1], pos, zeros[:min(len(zeros), offset + length - pos)])
        return
    platform.allocate(fd, offset, length)


def fsync(fd: int) -> None:
    """Make the file's content durable (the journal first writes its pending pages)."""
    hit = _covered(fd)
    if hit is not None:
        hit[0].fsync(hit[1])
        return
    platform.fsync(fd)


def settle(fd: int) -> None:
    """Let pending writes reach the file before something looks at it below the page level
    (SEEK_DATA/SEEK_HOLE, another open of the path)."""
    hit = _covered(fd)
    if hit is not None:
        hit[0].settle(hit[1])


def fd_for(path: str) -> int | None:
    """The bound journal's descriptor of `path` (None outside an edit or for other files)."""
    return _bound[0].fd_for(path) if _bound else None


def bound() -> bool:
    return bool(_bound)
