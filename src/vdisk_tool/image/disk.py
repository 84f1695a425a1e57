"""open_image(): any raw, VMDK (image/vmdk/: every hosted subformat, snapshot chains),
qcow2 (image/qcow2/, with its backing chain) or VHDX (image/vhdx/) image as one
BlockDevice, the Disk and Extent the backends build, plus what `info` needs to know about
it (specs/vmdk.md, specs/qcow2.md, specs/vhdx.md)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import ImageError, UnsupportedError
from ..formats import containers as ct
from ..formats import vmdk_descriptor as vd
from . import vmpath
from .base import (
    SECTOR_BYTES,
    BlockDevice,
    FileDevice,
    Run,
    RunKind,
    check_range,
)
from .detect import choose_format, detect
from .vmdk.sparse import SparseExtent

MAX_CHAIN_DEPTH = 64


@dataclass
class Extent:
    """One extent line resolved: where it sits in the disk and what serves it."""

    line: vd.ExtentLine | None
    start_bytes: int
    size_bytes: int
    device: BlockDevice
    path: str | None

    @property
    def access(self) -> str:
        return self.line.access if self.line else "RW"

    @property
    def kind(self) -> str:
        if self.line:
            return self.line.extent_type
        return "SPARSE" if isinstance(self.device, SparseExtent) else "FLAT"


@dataclass
class Disk:
    """An opened image. It is itself a BlockDevice (size_bytes, read_at, write_at, runs)."""

    path: str
    format: str                       # "raw", "vmdk" or "qcow2"
    subformat: str                    # createType, or "raw", "qcow2"
    descriptor: vd.Descriptor | None
    descriptor_path: str | None       # file holding the descriptor (text file or sparse file)
    extents: list[Extent]
    writable: bool = False
    parent: Disk | None = None
    size_bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.size_bytes = sum(e.size_bytes for e in self.extents)

    # -- the BlockDevice protocol ----------------------------------------------------------
    def _locate(self, offset: int) -> int:
        lo, hi = 0, len(self.extents) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.extents[mid].start_bytes <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        if len(self.extents) == 1 and self.extents[0].access != "NOACCESS":
            return self.extents[0].device.read_at(offset, length)
        out = bytearray()
        pos, end = offset, offset + length
        i = self._locate(pos) if self.extents else 0
        while pos < end:
            ext = self.extents[i]
            n = min(end, ext.start_bytes + ext.size_bytes) - pos
            if ext.access == "NOACCESS":
                raise ImageError(f"bytes at {pos} lie in a NOACCESS extent", path=self.path, offset=pos)
            out += ext.device.read_at(pos - ext.start_bytes, n)
            pos += n
            i += 1
        return bytes(out)

    def write_at(self, offset: int, data: bytes) -> None:
        if not self.writable:
            raise UnsupportedError("image is open read-only", path=self.path)
        check_range(self, offset, len(data))
        if len(self.extents) == 1 and self.extents[0].access == "RW":
            self.extents[0].device.write_at(offset, data)
            return
        view = memoryview(data)
        pos = offset
        i = self._locate(pos)
        while view:
            ext = self.extents[i]
            n = min(len(view), ext.start_bytes + ext.size_bytes - pos)
            if ext.access != "RW":
                raise ImageError(f"bytes at {pos} lie in a {ext.access} extent", path=self.path, offset=pos)
            ext.device.write_at(pos - ext.start_bytes, view[:n].tobytes())
            view = view[n:]
            pos += n
            i += 1

    def decode_jobs(self, offset: int, length: int):  # noqa: ANN201 - see SparseExtent
        """The single extent's decode jobs (SparseExtent.decode_jobs) where this disk has
        one extent and no parent; None otherwise (read_at serves)."""
        if self.parent is not None or len(self.extents) != 1 or \
                self.extents[0].access == "NOACCESS":
            return None
        jobs = getattr(self.extents[0].device, "decode_jobs", None)
        return None if jobs is None else jobs(offset, length)

    def runs(self) -> Iterator[Run]:
        """Runs of this link; stretches that read through to the parent are resolved there:
        PARENT where the parent (or its parents) stores data, else zero/unallocated."""
        own = self._own_runs()
        if self.parent is None:
            yield from own
            return
        yield from _resolve_parent(own, self.parent.runs(), self.parent.size_bytes)

    def _own_runs(self) -> Iterator[Run]:
        if len(self.extents) == 1 and self.extents[0].access != "NOACCESS":
            yield from self.extents[0].device.runs()   # the disk is its extent
            return
        for ext in self.extents:
            # bytes of a NOACCESS extent name no file: nothing copies them from there
            # without read_at's refusal
            hidden = ext.access == "NOACCESS"
            for run in ext.device.runs():
                yield Run(run.offset + ext.start_bytes, run.length_bytes, run.kind,
                          None if hidden else run.file, None if hidden else run.file_offset)

    def flush(self) -> None:
        for ext in self.extents:
            ext.device.flush()

    def close(self) -> None:
        for ext in self.extents:
            ext.device.close()
        if self.parent is not None:
            self.parent.close()

    def __enter__(self) -> Disk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- facts for info/check ----------------------------------------------------------------
    @property
    def files(self) -> list[str]:
        """Every host file of this link: descriptor first, then extents."""
        seen: list[str] = []
        for p in [self.descriptor_path] + [e.path for e in self.extents]:
            if p and p not in seen:
                seen.append(p)
        return seen

    def chain(self) -> list[Disk]:
        out: list[Disk] = []
        link: Disk | None = self
        while link is not None:
            out.append(link)
            link = link.parent
        return out

    @property
    def sparse_extents(self) -> list[SparseExtent]:
        return [e.device for e in self.extents if isinstance(e.device, SparseExtent)]


def _resolve_parent(own: Iterator[Run], parent_runs: Iterator[Run], parent_bytes: int
                    ) -> Iterator[Run]:
    """Replace the child's PARENT runs by what the parent holds there (one merged walk)."""
    pending: Run | None = next(parent_runs, None)
    for run in own:
        if run.kind != RunKind.PARENT:
            yield run
            continue
        pos, end = run.offset, run.end
        while pos < end:
            while pending is not None and pending.end <= pos:
                pending = next(parent_runs, None)
            if pending is None or pos >= parent_bytes:
                yield Run(pos, end - pos, RunKind.UNALLOCATED)
                break
            if pending.offset > pos:
                stop = min(end, pending.offset)
                yield Run(pos, stop - pos, RunKind.UNALLOCATED)
                pos = stop
                continue
            stop = min(end, pending.end)
            kind = RunKind.PARENT if pending.kind in (RunKind.DATA, RunKind.PARENT) else pending.kind
            fo = None if pending.file_offset is None else pending.file_offset + (pos - pending.offset)
            yield Run(pos, stop - pos, kind, pending.file, fo)
            pos = stop


_SNIFF_KEYS = {ct.SPARSE: "sparse", ct.SPARSE_UNFINISHED: "sparse-unfinished", ct.COWD: "cowd",
               ct.SESPARSE: "sesparse", ct.DESCRIPTOR: "descriptor",
               ct.SPARSE_DAMAGED: "sparse-damaged"}


def sniff(path: str) -> str:
    """'sparse', 'cowd', 'sesparse', 'descriptor', 'raw' (raw bytes of any kind), or the
    key of another container (formats/containers.py) from the file's magic."""
    found = detect(path)
    return _SNIFF_KEYS.get(found) or ("raw" if found.family is ct.Family.RAW else found.key)


def _resolve(base_dir: str, name: str, allow_outside: bool, what: str, owner: str) -> str:
    """An extent or parent file name as VMware writes it on any host (image/vmpath.py),
    kept inside the image's folder unless allowed: a drive letter, a UNC name, a rooted
    name or `..` lies outside."""
    vname = vmpath.parse_name(name)
    if not allow_outside and vname.outside:
        raise ImageError(f"{what} {name!r} lies outside the image's folder "
                         f"(refused; pass --allow-outside to trust it)", path=owner)
    full = vmpath.to_host(base_dir, vname)
    if not allow_outside:
        real_base = os.path.normcase(os.path.realpath(base_dir))
        if not os.path.normcase(os.path.realpath(full)).startswith(real_base + os.sep):
            raise ImageError(f"{what} {name!r} resolves outside the image's folder "
                             f"(refused; pass --allow-outside to trust it)", path=owner)
    return full


def open_image(path: str | os.PathLike[str], writable: bool = False, allow_outside: bool = False,
               parent_dir: str | None = None, follow_parent: bool = True,
               format: str | None = None, require_eos: bool = True,
               _depth: int = 0, _seen: frozenset[str] = frozenset()) -> Disk:
    """Open any raw, VMDK or qcow2 image (and its parents, read-only) as a Disk.

    `format` ('raw', 'vmdk' or 'qcow2') overrides what the file's bytes suggest, as qemu-img's -f;
    without it image/detect.py decides, refusing other containers by name.
    `require_eos=False` opens a stream whose end-of-stream marker is missing (for check).
    `parent_dir` is where a relative parentFileNameHint is looked up (default: the image's
    own folder); edits of a delta made on a copy elsewhere use it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError("no such file", path=path)
    real = os.path.realpath(path)
    if real in _seen:
        raise ImageError("snapshot chain loops back to itself", path=path)
    if _depth > MAX_CHAIN_DEPTH:
        raise ImageError(f"snapshot chain deeper than {MAX_CHAIN_DEPTH} links", path=path)
    fmt, found = choose_format(path, format)
    if fmt == "raw":
        return _open_raw(path, writable)
    if fmt == "qcow2":
        from .qcow2 import open_qcow2
        return open_qcow2(path, writable, allow_outside, follow_parent, _depth, _seen | {real})
    if fmt == "vhdx":
        from .vhdx import open_vhdx
        return open_vhdx(path, writable, allow_outside, parent_dir, follow_parent, _depth,
                         _seen | {real})
    from .vmdk.open import open_vmdk
    return open_vmdk(path, found is ct.SPARSE, writable, allow_outside, parent_dir,
                     follow_parent, require_eos, _depth, _seen | {real})


def _open_raw(path: str, writable: bool) -> Disk:
    dev = FileDevice(path, writable=writable)
    warnings = []
    if dev.size_bytes % SECTOR_BYTES:
        dev.close()
        dev = RoundedFileDevice(path, writable=writable)
        warnings.append(f"raw image is {dev.file_size_bytes} bytes, not a whole number of "
                        f"sectors: read as {dev.size_bytes} bytes, the last sector padded with "
                        "zeros (as qemu-img does)")
    disk = Disk(path, "raw", "raw", None, None, [Extent(None, 0, dev.size_bytes, dev, path)],
                writable=writable)
    disk.warnings += warnings
    return disk


class RoundedFileDevice(FileDevice):
    """A raw image whose length is not a multiple of 512, seen rounded up to a whole
    sector; the missing bytes read as zeros (qemu's raw driver counts whole sectors)."""

    def __init__(self, path: str, writable: bool = False) -> None:
        super().__init__(path, writable=writable)
        self.file_size_bytes = self.size_bytes
        self.size_bytes = -(-self.size_bytes // SECTOR_BYTES) * SECTOR_BYTES

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        have = max(0, min(offset + length, self.file_bytes) - offset)
        data = super().read_at(offset, have) if have else b""
        return data + bytes(length - len(data))

    def runs(self) -> Iterator[Run]:
        for run in super().runs():
            if run.offset >= self.file_bytes:
                yield Run(run.offset, run.length_bytes, RunKind.ZERO)
            else:
                yield run


class _Padded:
    """A parent seen through a child of another size: zeros past the parent's end."""

    writable = False

    def __init__(self, dev: BlockDevice, size_bytes: int) -> None:
        self.dev, self.size_bytes = dev, size_bytes

    def read_at(self, offset: int, length: int) -> bytes:
        have = max(0, min(offset + length, self.dev.size_bytes) - offset)
        data = self.dev.read_at(offset, have) if have else b""
        return data + bytes(length - have)
