"""The undo journal of in-place edits, at host-file level, like SQLite's rollback journal
(specs/journal.md).

During an edit every write to the image's files (image/hostio.py) lands in 4 KiB pages
held in memory. A batch of pages reaches the files only after the old bytes of each page
not journalled before are appended to `.<image>.vdisk-journal-edit` and fsynced; bytes
past a file's length at the start need no old copy (recovery truncates the file back).
Commit: write the last batch, fsync the files, delete the journal, fsync the folder.
`recover(path)` writes the old bytes back, truncates, fsyncs and deletes the journal.
A journal whose header never became durable is dropped (no image byte was written
before it was); one whose files are not these files is never applied, only reported.
"""
from __future__ import annotations

import os
import random
import struct
import zlib
from dataclasses import dataclass, field

from ..errors import Finding, ImageError, RefusedError, Severity
from . import platform
from .platform import fsync_dir
from .safe import EDIT_JOURNAL_SUFFIX, sidecar_path

SUFFIX = EDIT_JOURNAL_SUFFIX
MAGIC = b"VDISKJNL"
VERSION = 1
PAGE = 4096
MAX_FILES = 256
MAX_NAME = 4096
MAX_RECORD = 1 << 20
_HEAD = struct.Struct("<8sIII")     # magic, version, nonce, file count
_FILE = struct.Struct("<QQQH")      # st_dev, st_ino, length at start, name bytes
_REC = struct.Struct("<IQI")        # file index, offset, length (then the old bytes)
_CRC = struct.Struct("<I")


def journal_path(path: str) -> str:
    return sidecar_path(path, SUFFIX)


def batch_bytes() -> int:
    """Pending pages are written (after their old bytes are journalled) every this many
    bytes: memory stays bounded whatever the size of the edit."""
    return max(PAGE, int(os.environ.get("VDISK_JOURNAL_BATCH_BYTES", str(8 << 20))))


def _write_all(fd: int, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
    if offset is not None:
        platform.pwrite(fd, data, offset)
        return
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@dataclass
class _File:
    path: str
    fd: int
    dev: int
    ino: int
    length: int        # at the start of the edit: what recovery truncates back to
    vlen: int          # as the edit sees it (pending writes included)
    real_end: int      # bytes of the host file that still hold valid content


@dataclass
class UndoJournal:
    """The journal of one edit; bound to image/hostio.py for the edit's duration."""

    image_path: str
    paths: list[str]
    dry_run: bool = False
    files: list[_File] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.jpath = journal_path(self.image_path)
        self._pages: dict[tuple[int, int], bytearray] = {}
        self._saved: set[tuple[int, int]] = set()
        self._jfd = -1
        self._nonce = random.getrandbits(32)
        self._batch = batch_bytes()
        self.journal_bytes = 0
        self.current = self.image_path      # the file being written (for error messages)
        flags = os.O_RDONLY if self.dry_run else os.O_RDWR
        try:
            for p in self.paths:
                fd = platform.open_fd(p, flags)
                st = os.fstat(fd)
                self.files.append(_File(p, fd, st.st_dev, platform.file_id(st), st.st_size,
                                        st.st_size, st.st_size))
        except OSError as exc:
            self.close()
            raise ImageError(f"cannot open for writing: {platform.describe(exc)}",
                             path=exc.filename) from None
        self._by_id = {(f.dev, f.ino): i for i, f in enumerate(self.files)}
        self._by_fd = {f.fd: i for i, f in enumerate(self.files)}

    # -- the hostio side ----------------------------------------------------------------------
    def index_of(self, fd: int) -> int | None:
        idx = self._by_fd.get(fd)
        if idx is not None:
            return idx
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        return self._by_id.get((st.st_dev, platform.file_id(st)))

    def fd_for(self, path: str) -> int | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        idx = self._by_id.get((st.st_dev, platform.file_id(st)))
        return None if idx is None else self.files[idx].fd

    def length(self, idx: int) -> int:
        return self.files[idx].vlen

    def write(self, idx: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        f = self.files[idx]
        view = memoryview(data).cast("B")
        pos, i = offset, 0
        while i < len(view):
            pno, within = divmod(pos, PAGE)
            n = min(PAGE - within, len(view) - i)
            page = self._pages.get((idx, pno))
            if page is None:
                page = bytearray(PAGE) if n == PAGE else self._load(f, pno)
                self._pages[(idx, pno)] = page
            page[within:within + n] = view[i:i + n]
            pos += n
            i += n
        f.vlen = max(f.vlen, offset + len(view))
        if len(self._pages) * PAGE >= self._batch:
            self.flush()

    def _load(self, f: _File, pno: int) -> bytearray:
        start = pno * PAGE
        have = max(0, min(PAGE, f.real_end - start))
        page = bytearray(platform.pread(f.fd, have, start) if have else b"")
        page.extend(bytes(PAGE - len(page)))
        return page

    def read(self, idx: int, offset: int, length: int) -> bytes:
        f = self.files[idx]
        end = min(offset + length, f.vlen)
        if end <= offset:
            return b""
        real = max(0, min(end, f.real_end) - offset)
        out = bytearray(platform.pread(f.fd, real, offset) if real else b"")
        out.extend(bytes(end - offset - len(out)))
        if self._pages:
            for pno in range(offset // PAGE, (end - 1) // PAGE + 1):
                page = self._pages.get((idx, pno))
                if page is not None:
                    lo, hi = max(offset, pno * PAGE), min(end, pno * PAGE + PAGE)
                    out[lo - offset:hi - offset] = page[lo - pno * PAGE:hi - pno * PAGE]
        return bytes(out)

    def truncate(self, idx: int, length: int) -> None:
        f = self.files[idx]
        if self.dry_run:
            for key in [k for k in self._pages if k[0] == idx and k[1] * PAGE >= length]:
                del self._pages[key]
            f.vlen = length
            f.real_end = min(f.real_end, length)
            return
        self.flush()
        # the old bytes past the new end (none when the file grows), and the header first
        self._journal([(idx, p) for p in range(length // PAGE, -(-f.length // PAGE))])
        self.current = f.path
        platform.ftruncate(f.fd, length)
        f.vlen = f.real_end = length

    def fsync(self, idx: int) -> None:
        self.flush()
        if not self.dry_run:
            self.current = self.files[idx].path
            platform.fsync(self.files[idx].fd)

    def settle(self, idx: int) -> None:
        self.flush()

    # -- batches ---------------------------------------------------------------------------------
    def flush(self) -> None:
        """Journal the old bytes of the pending pages (fsync), then write the pages."""
        if not self._pages or self.dry_run:
            return
        keys = sorted(self._pages)
        self._journal(keys)
        run: list[tuple[int, int]] = []
        for key in keys:
            if run and (key[0] != run[-1][0] or key[1] != run[-1][1] + 1):
                self._write_run(run)
                run = []
            run.append(key)
        if run:
            self._write_run(run)
        self._pages.clear()

    def _write_run(self, run: list[tuple[int, int]]) -> None:
        f = self.files[run[0][0]]
        start = run[0][1] * PAGE
        data = b"".join(self._pages[k] for k in run)[:max(0, f.vlen - start)]
        self.current = f.path
        _write_all(f.fd, data, start)
        f.real_end = max(f.real_end, start + len(data))

    def _journal(self, keys: list[tuple[int, int]]) -> None:
        """Append the old bytes of every page in `keys` not journalled yet; fsync."""
        todo = [k for k in keys if k not in self._saved and k[1] * PAGE < self.files[k[0]].length]
        self._open()
        if not todo:
            return
        out = bytearray()
        i = 0
        while i < len(todo):
            idx, first = todo[i]
            j = i + 1
            while (j < len(todo) and todo[j] == (idx, todo[j - 1][1] + 1)
                   and (j - i + 1) * PAGE <= MAX_RECORD):
                j += 1
            f = self.files[idx]
            start = first * PAGE
            n = min((j - i) * PAGE, f.length - start)
            old = platform.pread(f.fd, n, start)
            if len(old) != n:
                raise ImageError("short read while journalling", path=f.path, offset=start)
            head = _REC.pack(idx, start, n)
            out += head + old + _CRC.pack(zlib.crc32(old, zlib.crc32(head, self._nonce)))
            i = j
        self.current = self.jpath
        _write_all(self._jfd, out)
        platform.fsync(self._jfd)
        self.journal_bytes += len(out)
        self._saved.update(todo)

    def _open(self) -> None:
        """Create the journal: header (the files, their identity and length), fsync, and
        fsync the folder, before the first byte of the image changes."""
        if self._jfd >= 0:
            return
        body = bytearray(_HEAD.pack(MAGIC, VERSION, self._nonce, len(self.files)))
        folder = os.path.dirname(self.jpath)
        for f in self.files:
            name = os.path.relpath(os.path.abspath(f.path), folder).encode("utf-8", "surrogateescape")
            body += _FILE.pack(f.dev, f.ino, f.length, len(name)) + name
        body += _CRC.pack(zlib.crc32(body))
        self.current = self.jpath
        try:
            self._jfd = platform.open_fd(self.jpath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600,
                                         nofollow=True)
        except FileExistsError:
            raise ImageError("an undo journal appeared beside the image during the edit: is "
                             "another vdisk writing to it?", path=self.jpath) from None
        _write_all(self._jfd, body)
        platform.fsync(self._jfd)
        fsync_dir(self.jpath)
        self.journal_bytes = len(body)

    # -- the end of an edit --------------------------------------------------------------------
    def commit(self) -> None:
        """Write the last batch, make the files durable, then forget the undo records."""
        if self.dry_run:
            return
        self.flush()
        for f in self.files:
            self.current = f.path
            platform.fsync(f.fd)
        if self._jfd >= 0:
            os.close(self._jfd)
            self._jfd = -1
            os.unlink(self.jpath)
            fsync_dir(self.jpath)

    def abort(self) -> None:
        """Undo whatever of the edit reached the files (nothing if no batch was written)."""
        self._pages.clear()
        if self._jfd < 0:
            return
        os.close(self._jfd)
        self._jfd = -1
        recover_journal(self.jpath)

    def bytes_needed(self) -> int:
        """What the edit had asked the file system for so far: journal plus growth."""
        pending = len(self._pages) * (PAGE + _REC.size + _CRC.size)
        return self.journal_bytes + pending + sum(max(0, f.vlen - f.length) for f in self.files)

    def close(self) -> None:
        if self._jfd >= 0:
            os.close(self._jfd)
            self._jfd = -1
        for f in self.files:
            if f.fd >= 0:
                os.close(f.fd)
                f.fd = -1


# -- reading a journal back ----------------------------------------------------------------------
@dataclass
class JournalState:
    """What a journal file holds. status: 'valid' (to roll back), 'torn' (its header never
    became durable: nothing was written to the image) or 'foreign' (never applied)."""

    path: str
    status: str
    reason: str = ""
    files: list[tuple[str, int, int]] = field(default_factory=list)   # (path, st_ino, length)
    records: list[tuple[int, int, int, int]] = field(default_factory=list)  # idx, off, n, jpos


def read_journal(jpath: str) -> JournalState:
    """Parse and verify a journal: header checksum, each record's checksum (the first bad
    record ends the journal: a torn tail was never followed by an image write), bounds,
    and that the files it names are the files it was written for (same inode)."""
    folder = os.path.dirname(os.path.abspath(jpath))
    with open(jpath, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size or head[:8] == bytes(8):
            return JournalState(jpath, "torn", "the journal's header is incomplete")
        magic, version, nonce, count = _HEAD.unpack(head)
        if magic != MAGIC or version != VERSION:
            return JournalState(jpath, "foreign", "not a version-1 vdisk undo journal")
        if count > MAX_FILES:
            return JournalState(jpath, "torn", "the journal's header is damaged")
        body = bytearray(head)
        files: list[tuple[str, int, int]] = []
        for _ in range(count):
            raw = f.read(_FILE.size)
            if len(raw) < _FILE.size:
                return JournalState(jpath, "torn", "the journal's header is incomplete")
            _dev, ino, length, nlen = _FILE.unpack(raw)
            name = f.read(min(nlen, MAX_NAME))
            body += raw + name
            files.append((os.path.join(folder, name.decode("utf-8", "surrogateescape")), ino, length))
        crc = f.read(_CRC.size)
        if len(crc) < _CRC.size or _CRC.unpack(crc)[0] != zlib.crc32(body):
            return JournalState(jpath, "torn", "the journal's header fails its checksum")
        state = JournalState(jpath, "valid", files=files)
        pos = len(body) + _CRC.size
        while pos + _REC.size + _CRC.size <= size:
            head = f.read(_REC.size)
            idx, off, n = _REC.unpack(head)
            if idx >= count or n > MAX_RECORD or off + n > files[idx][2] \
                    or pos + _REC.size + n + _CRC.size > size:
                break
            old = f.read(n)
            (want,) = _CRC.unpack(f.read(_CRC.size))
            if zlib.crc32(old, zlib.crc32(head, nonce)) != want:
                break
            state.records.append((idx, off, n, pos + _REC.size))
            pos += _REC.size + n + _CRC.size
    for path, ino, _ in files:
        problem = identity_problem(path, ino)
        if problem:
            return JournalState(jpath, "foreign", problem)
    return state


def identity_problem(path: str, ino: int) -> str | None:
    """Why `path` is not the file a journal was written for (None when it is)."""
    try:
        st = os.stat(path)
    except OSError:
        return f"{os.path.basename(path)}, which it names, is missing"
    if platform.file_id(st) != ino:
        return (f"it was written for another file than {os.path.basename(path)} "
                f"(inode {ino}, now {st.st_ino})")
    return None


def recover_journal(jpath: str) -> JournalState:
    """Roll back what the journal describes (newest record first), truncate every file to
    its length at the start, fsync, delete the journal, fsync the folder."""
    state = read_journal(jpath)
    if state.status == "foreign":
        return state
    if state.status == "valid":
        fds = [platform.open_fd(p, os.O_RDWR) for p, _, _ in state.files]
        try:
            with open(jpath, "rb") as j:
                for idx, off, n, jpos in reversed(state.records):
                    j.seek(jpos)
                    _write_all(fds[idx], j.read(n), off)
            for fd, (_, _, length) in zip(fds, state.files, strict=True):
                if os.fstat(fd).st_size != length:
                    platform.ftruncate(fd, length)
                platform.fsync(fd)
        finally:
            for fd in fds:
                os.close(fd)
    os.unlink(jpath)
    fsync_dir(jpath)
    return state


def recover(path: str) -> bool:
    """Roll back an interrupted in-place edit of `path`. True when a journal was found (and
    rolled back or dropped); RefusedError when the journal belongs to other files."""
    jp = journal_path(path)
    if not os.path.lexists(jp):
        return False
    state = recover_journal(jp)
    if state.status == "foreign":
        raise RefusedError(f"{os.path.basename(jp)} is not applied: {state.reason}", path=path,
                           hint="check the image, then move the journal away")
    return True


def pending_finding(path: str, command: str | None = None) -> Finding | None:
    """The finding a read-only command reports when `path` has a journal beside it."""
    jp = journal_path(path)
    if not os.path.lexists(jp):
        return None
    try:
        state = read_journal(jp)
    except OSError as exc:
        state = JournalState(jp, "foreign", f"it cannot be read ({exc.strerror})")
    name = os.path.basename(jp)
    if state.status == "foreign":
        return Finding("vmdk.foreign-journal", Severity.ERROR,
                       f"{name} is not applied: {state.reason}; check the image, then move the "
                       "journal away", None, False, jp)
    fix = command or f"vdisk check {path} --repair"
    return Finding("vmdk.pending-journal", Severity.ERROR,
                   f"an interrupted edit left its undo journal {name}: the image may hold part of "
                   f"the change; `{fix}` (or any change to the image) rolls it back",
                   None, True, jp)
