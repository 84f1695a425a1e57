"""The BlockDevice protocol and the simplest backends (a host file, a slice of a device).

Every layer above image/ sees a disk only through this protocol: a size, random reads,
optional writes, and the runs that hold data, so that work can skip what is not allocated.
"""
from __future__ import annotations

import enum
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import ImageError, UnsupportedError
from . import hostio, platform

SECTOR_BYTES = 512


class RunKind(str, enum.Enum):
    DATA = "data"            # bytes stored in a file
    ZERO = "zero"            # explicitly zero (zeroed grain, ZERO extent)
    UNALLOCATED = "unallocated"  # nothing stored; reads as zeros
    PARENT = "parent"        # nothing stored here; read from the parent link


@dataclass(frozen=True)
class Run:
    """A stretch of virtual bytes of one kind. file_offset is where DATA lives, if known."""

    offset: int
    length_bytes: int
    kind: RunKind
    file: str | None = None
    file_offset: int | None = None

    @property
    def end(self) -> int:
        return self.offset + self.length_bytes


@runtime_checkable
class BlockDevice(Protocol):
    """What every backend offers. Offsets and lengths are in bytes."""

    size_bytes: int
    writable: bool

    def read_at(self, offset: int, length: int) -> bytes: ...

    def write_at(self, offset: int, data: bytes) -> None: ...

    def runs(self) -> Iterator[Run]: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def check_range(dev: BlockDevice, offset: int, length: int) -> None:
    """Refuse reads and writes that fall outside the device."""
    if offset < 0 or length < 0 or offset + length > dev.size_bytes:
        raise ImageError(
            f"access of {length} bytes at {offset} is outside the device ({dev.size_bytes} bytes)")


def merge_runs(runs: Iterator[Run]) -> Iterator[Run]:
    """Join adjacent runs of the same kind (DATA only when file offsets are contiguous)."""
    pending: Run | None = None
    for run in runs:
        if run.length_bytes <= 0:
            continue
        if pending is not None and pending.kind == run.kind and pending.end == run.offset:
            if run.kind != RunKind.DATA or (
                    pending.file == run.file and pending.file_offset is not None
                    and run.file_offset == pending.file_offset + pending.length_bytes):
                pending = Run(pending.offset, pending.length_bytes + run.length_bytes,
                              pending.kind, pending.file, pending.file_offset)
                continue
        if pending is not None:
            yield pending
        pending = run
    if pending is not None:
        yield pending


def host_data_ranges(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the ranges in [start, end) that the host file system stores
    (image/platform.py: SEEK_DATA/SEEK_HOLE, or Windows' allocated ranges)."""
    return platform.data_ranges(fd, start, end)


COPY_CHUNK_BYTES = 1 << 20    # the unit in which copy_data looks for zeros
COPY_STEP_BYTES = 64 << 20    # the most one copy_range call is given
PEEK_BYTES = 4096
_ZERO_CHUNK = bytes(COPY_CHUNK_BYTES)


def copy_data(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, length: int,
              path: str, progress: Callable[[int], None] | None = None) -> None:
    """Copy stored bytes file to file (hostio.copy_range: in the kernel where possible),
    leaving out the MiB chunks that hold only zeros (allocated zeros: a thick flat extent,
    a raw file written with zeros). A chunk is read only when its first 4 KiB are zero;
    any other chunk is copied without passing through this process. A source that
    ends early raises ImageError (a short extent is never read as zeros)."""
    def flush(lo: int, hi: int) -> None:
        while lo < hi:
            n = min(COPY_STEP_BYTES, hi - lo)
            if hostio.copy_range(src_fd, src_offset + lo, dst_fd, dst_offset + lo, n) != n:
                raise ImageError(f"short read: wanted {n} bytes at {src_offset + lo}, file ends",
                                 path=path, offset=src_offset + lo)
            lo += n
            if progress:
                progress(lo)

    start = pos = 0
    while pos < length:
        n = min(COPY_CHUNK_BYTES - (dst_offset + pos) % COPY_CHUNK_BYTES, length - pos)
        if _starts_zero(src_fd, src_offset + pos, n):
            flush(start, pos)
            data = hostio.pread(src_fd, n, src_offset + pos)
            if len(data) != n:
                raise ImageError(f"short read: wanted {n} bytes at {src_offset + pos}, "
                                 "file ends", path=path, offset=src_offset + pos)
            if data != _ZERO_CHUNK[:n]:
                hostio.pwrite(dst_fd, data, dst_offset + pos)
            start = pos + n
        pos += n
    flush(start, length)


def _starts_zero(fd: int, offset: int, n: int) -> bool:
    """Whether the chunk's first PEEK_BYTES read as zeros (or the file ends there): only
    such a chunk can be all zero."""
    k = min(PEEK_BYTES, n)
    data = hostio.pread(fd, k, offset)
    return len(data) < k or data == _ZERO_CHUNK[:k]


class HandlePool:
    """At most `limit` files open among the devices of one disk: a disk of thousands of
    extents (twoGbMaxExtent* over 2 TiB) must not hold thousands of descriptors. The
    least recently used device is parked (its file closed) and reopens on its next access."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._open: OrderedDict[int, ReopenableFile] = OrderedDict()

    def touch(self, dev: ReopenableFile) -> None:
        key = id(dev)
        if key in self._open:
            self._open.move_to_end(key)
            return
        self._open[key] = dev
        while len(self._open) > self.limit:
            _, old = self._open.popitem(last=False)
            old.park()

    def forget(self, dev: ReopenableFile) -> None:
        self._open.pop(id(dev), None)

    @property
    def open_count(self) -> int:
        return len(self._open)


class ReopenableFile:
    """The file descriptor of a device, which a HandlePool may close while the device
    stays usable: the next access reopens the same path in the same mode."""

    path: str
    writable: bool
    _handle: int = -1
    _parked: bool = False
    pool: HandlePool | None = None

    def _open_file(self, create: bool = False) -> int:
        flags = os.O_RDWR if self.writable else os.O_RDONLY
        if create:
            flags |= os.O_CREAT
        try:
            return platform.open_fd(self.path, flags)
        except OSError as exc:
            raise ImageError(f"cannot open: {platform.describe(exc)}", path=self.path,
                             hint=platform.HELD_OPEN_HINT if platform.held_open(exc) else None
                             ) from None

    @property
    def _fd(self) -> int:
        if self._handle < 0 and self._parked:
            self._handle = self._open_file()
            self._parked = False
        if self.pool is not None and self._handle >= 0:
            self.pool.touch(self)
        return self._handle

    @_fd.setter
    def _fd(self, value: int) -> None:
        self._handle = value

    def park(self) -> None:
        """Close the file for now (written bytes stay in the page cache; flush() fsyncs
        through a reopened descriptor, which flushes the file, not the descriptor)."""
        if self._handle >= 0:
            os.close(self._handle)
            self._handle = -1
            self._parked = True

    def _close_file(self) -> None:
        if self.pool is not None:
            self.pool.forget(self)
        if self._handle >= 0:
            os.close(self._handle)
        self._handle = -1
        self._parked = False


class FileDevice(ReopenableFile):
    """A host file (raw image or flat extent) seen as a device, optionally a window of it."""

    def __init__(self, path: str | os.PathLike[str], writable: bool = False,
                 base_offset: int = 0, size_bytes: int | None = None,
                 create: bool = False) -> None:
        self.path = os.fspath(path)
        self.writable = writable
        self._fd = self._open_file(create)
        file_bytes = os.fstat(self._fd).st_size
        self.base_offset = base_offset
        self.size_bytes = file_bytes - base_offset if size_bytes is None else size_bytes

    @property
    def file_bytes(self) -> int:
        return os.fstat(self._fd).st_size

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        data = hostio.pread(self._fd, length, self.base_offset + offset)
        if len(data) < length:
            # a window that reaches past the end of its file reads as zeros there only if the
            # file is genuinely shorter than declared: that is a short extent, an error.
            raise ImageError(f"short read: wanted {length} bytes at {offset}, file ends",
                             path=self.path, offset=self.base_offset + offset)
        return data

    def write_at(self, offset: int, data: bytes) -> None:
        if not self.writable:
            raise UnsupportedError("device is read-only", path=self.path)
        check_range(self, offset, len(data))
        hostio.pwrite(self._fd, data, self.base_offset + offset)

    def runs(self) -> Iterator[Run]:
        hostio.settle(self._fd)   # SEEK_DATA sees only what reached the file
        pos = 0
        # bytes the window needs but the file does not have are a DATA run: reading it
        # raises (short extent), it never passes for zeros
        have = max(0, min(self.size_bytes, self.file_bytes - self.base_offset))
        for start, length in host_data_ranges(self._fd, self.base_offset,
                                              self.base_offset + have):
            voff = start - self.base_offset
            if voff > pos:
                yield Run(pos, voff - pos, RunKind.UNALLOCATED)
            yield Run(voff, length, RunKind.DATA, self.path, start)
            pos = voff + length
        if pos < have:
            yield Run(pos, have - pos, RunKind.UNALLOCATED)
            pos = have
        if pos < self.size_bytes:
            yield Run(pos, self.size_bytes - pos, RunKind.DATA, self.path, self.base_offset + pos)

    def truncate(self, file_bytes: int) -> None:
        hostio.ftruncate(self._fd, file_bytes)

    @property
    def fd(self) -> int:
        return self._fd

    def flush(self) -> None:
        if self.writable:
            hostio.fsync(self._fd)

    def close(self) -> None:
        self._close_file()

    def __enter__(self) -> FileDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SliceDevice:
    """A window [start, start+length) of another device, e.g. one partition."""

    def __init__(self, parent: BlockDevice, start_bytes: int, length_bytes: int) -> None:
        if start_bytes < 0 or length_bytes < 0 or start_bytes + length_bytes > parent.size_bytes:
            raise ImageError(
                f"slice {start_bytes}+{length_bytes} lies outside the device ({parent.size_bytes} bytes)")
        self.parent = parent
        self.start_bytes = start_bytes
        self.size_bytes = length_bytes
        self.writable = parent.writable

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        return self.parent.read_at(self.start_bytes + offset, length)

    def write_at(self, offset: int, data: bytes) -> None:
        check_range(self, offset, len(data))
        self.parent.write_at(self.start_bytes + offset, data)

    def runs(self) -> Iterator[Run]:
        lo, hi = self.start_bytes, self.start_bytes + self.size_bytes
        for run in self.parent.runs():
            a, b = max(run.offset, lo), min(run.end, hi)
            if a >= b:
                continue
            fo = None if run.file_offset is None else run.file_offset + (a - run.offset)
            yield Run(a - lo, b - a, run.kind, run.file, fo)

    def flush(self) -> None:
        self.parent.flush()

    def close(self) -> None:
        """A slice does not own its parent."""


def iter_chunks(dev: BlockDevice, chunk_bytes: int = 1 << 20
                ) -> Iterator[tuple[int, int, bytes | None]]:
    """Yield (offset, length, data) over the whole device; data is None where it reads as zeros
    without being stored (unallocated or zero runs), so callers can skip that work."""
    for run in dev.runs():
        if run.kind in (RunKind.ZERO, RunKind.UNALLOCATED):
            yield run.offset, run.length_bytes, None
            continue
        pos = run.offset
        while pos < run.end:
            n = min(chunk_bytes, run.end - pos)
            yield pos, n, dev.read_at(pos, n)
            pos += n
