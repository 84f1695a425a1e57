"""Edits of big flat images in place, under an undo journal (specs/vmdk.md §Crash safety).

Copying a large flat extent (a thick vSphere disk, a raw image) to change a few sectors
would cost its whole size. Instead the old bytes of every block about to change are
appended to a journal beside the image and fsynced before the first write; the writes
are buffered and applied in batches. When the edit is complete the journal is deleted.
If the process dies in between, `recover(path)` (run by the next edit, and by
`vdisk check --repair`) writes the old bytes back: the image is exactly as before.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from typing import Any

from .base import Run, check_range
from .safe import fsync_dir

SUFFIX = ".vdisk-journal-edit"
BLOCK = 4096
BATCH_BYTES = 16 << 20
_REC = struct.Struct("<QI")


def journal_path(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}{SUFFIX}")


def _digest(path: str | None) -> str | None:
    if not path or not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(1 << 20)).hexdigest()


class JournalledDisk:
    """A writable Disk whose writes are journalled (undo) before they reach the files.

    Everything but the BlockDevice methods is delegated to the wrapped Disk."""

    def __init__(self, disk: Any, path: str, dry_run: bool = False) -> None:
        self._disk = disk
        self.path = path
        self.size_bytes = disk.size_bytes
        self.writable = True
        self.dry_run = dry_run
        self._overlay: dict[int, bytearray] = {}
        self._jpath = journal_path(path)
        self._jfd = -1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._disk, name)

    # -- reads see pending writes ----------------------------------------------------------
    def read_at(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        if not self._overlay:
            return self._disk.read_at(offset, length)
        out = bytearray(self._disk.read_at(offset, length))
        first, last = offset // BLOCK, (offset + length - 1) // BLOCK if length else -1
        for b in range(first, last + 1):
            blk = self._overlay.get(b)
            if blk is None:
                continue
            lo, hi = max(offset, b * BLOCK), min(offset + length, b * BLOCK + len(blk))
            out[lo - offset:hi - offset] = blk[lo - b * BLOCK:hi - b * BLOCK]
        return bytes(out)

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        check_range(self, offset, len(data))
        view = memoryview(data)
        pos = offset
        while view:
            b, within = divmod(pos, BLOCK)
            n = min(BLOCK - within, len(view))
            blk = self._overlay.get(b)
            if blk is None:
                size = min(BLOCK, self.size_bytes - b * BLOCK)
                blk = bytearray(self._disk.read_at(b * BLOCK, size)) if n < size else bytearray(size)
                self._overlay[b] = blk
            blk[within:within + n] = view[:n]
            view = view[n:]
            pos += n
        if len(self._overlay) * BLOCK >= BATCH_BYTES:
            self._apply()

    def runs(self) -> Iterator[Run]:
        return self._disk.runs()

    # -- the journal -------------------------------------------------------------------------
    def _open_journal(self) -> None:
        header = json.dumps({"image": os.path.abspath(self.path),
                             "descriptor_sha256": _digest(self._disk.descriptor_path)}).encode()
        fd = os.open(self._jpath, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o600)
        os.write(fd, struct.pack("<I", len(header)) + header)
        self._jfd = fd

    def _apply(self) -> None:
        """Journal the old bytes of every pending block (fsync), then write the blocks."""
        if not self._overlay or self.dry_run:
            return
        if self._jfd < 0:
            self._open_journal()
        blocks = sorted(self._overlay)
        for b in blocks:
            old = self._disk.read_at(b * BLOCK, len(self._overlay[b]))
            os.write(self._jfd, _REC.pack(b * BLOCK, len(old)) + old)
        os.fsync(self._jfd)
        fsync_dir(self._jpath)
        for b in blocks:
            self._disk.write_at(b * BLOCK, bytes(self._overlay[b]))
        self._overlay.clear()

    def flush(self) -> None:
        self._apply()
        if not self.dry_run:
            self._disk.flush()

    def commit(self) -> None:
        """The edit is complete and durable: forget the undo records."""
        self.flush()
        if self._jfd >= 0:
            os.close(self._jfd)
            self._jfd = -1
            os.unlink(self._jpath)
            fsync_dir(self._jpath)

    def close(self) -> None:
        if self._jfd >= 0:
            os.close(self._jfd)
            self._jfd = -1
        self._disk.close()


def recover(path: str) -> bool:
    """Undo an interrupted journalled edit of `path`. True when a journal was found."""
    jp = journal_path(path)
    if not os.path.exists(jp):
        return False
    from .disk import open_image
    with open(jp, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            (hlen,) = struct.unpack("<I", f.read(4))
            header = json.loads(f.read(min(hlen, 1 << 16)))
        except (struct.error, ValueError):
            header = None   # the journal never got its header: nothing was written yet
        records = []        # (journal offset of the old bytes, image offset, length)
        pos = 4 + hlen if header is not None else size
        while pos + _REC.size <= size:
            f.seek(pos)
            off, n = _REC.unpack(f.read(_REC.size))
            if n > BLOCK or pos + _REC.size + n > size:
                break       # a record cut short: its block was never written
            records.append((pos + _REC.size, off, n))
            pos += _REC.size + n
        if header is not None and records:
            with open_image(path, writable=True) as disk:
                if _digest(disk.descriptor_path) == header.get("descriptor_sha256"):
                    for jpos, off, n in reversed(records):
                        f.seek(jpos)
                        disk.write_at(off, f.read(n))
                    disk.flush()
    os.unlink(jp)
    fsync_dir(jp)
    return True
