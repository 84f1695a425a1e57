"""Every in-place read and write of an image's host files goes through here.

Outside an edit these are the plain OS calls. During an edit (image/edit.py) they are bound
to an undo journal (image/journal.py): writes to the files it covers are buffered, and
before a buffered page reaches a file its old bytes are in the journal, fsynced
(specs/journal.md). Reads of covered files see the buffered writes.

The OS functions are looked up at call time (`os.pwrite`, never a local alias), so test
harnesses that interpose on them see every call.
"""
from __future__ import annotations

import os
from typing import Protocol


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


def pwrite(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
    """Write all of `data` at `offset` (through the journal when it covers the file)."""
    hit = _covered(fd)
    if hit is not None:
        hit[0].write(hit[1], offset, data)
        return len(data)
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done


def pread(fd: int, length: int, offset: int) -> bytes:
    hit = _covered(fd)
    if hit is not None:
        return hit[0].read(hit[1], offset, length)
    return os.pread(fd, length, offset)


def preadinto(fd: int, buf: memoryview, offset: int) -> int:
    """Fill `buf` from `offset`; returns the bytes read (short at the end of the file)."""
    hit = _covered(fd)
    if hit is not None:
        data = hit[0].read(hit[1], offset, len(buf))
        buf[:len(data)] = data
        return len(data)
    return os.preadv(fd, [buf], offset)


def copy_range(src_fd: int, dst_fd: int, length: int, src_offset: int, dst_offset: int) -> int:
    """Copy bytes between two files inside the kernel (copy_file_range), as far as the
    source has them; returns the bytes copied (short where the source ends). Files an
    edit's journal covers are copied through pread/pwrite, so pending writes are seen."""
    done = 0
    fast = hasattr(os, "copy_file_range") and _covered(src_fd) is None \
        and _covered(dst_fd) is None
    while done < length:
        n = 0
        if fast:
            try:
                n = os.copy_file_range(src_fd, dst_fd, length - done, src_offset + done,
                                       dst_offset + done)
            except OSError:
                fast = False
                continue
        else:
            data = pread(src_fd, min(length - done, 1 << 20), src_offset + done)
            n = len(data)
            if n:
                pwrite(dst_fd, data, dst_offset + done)
        if n == 0:
            break
        done += n
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
    os.ftruncate(fd, length)


def fsync(fd: int) -> None:
    """Make the file's content durable (the journal first writes its pending pages)."""
    hit = _covered(fd)
    if hit is not None:
        hit[0].fsync(hit[1])
        return
    os.fsync(fd)


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
