"""Opening a VMDK (specs/vmdk.md): a text descriptor and its extents, a sparse file with
its embedded descriptor, a sparse disk stored inside a package (open_window), and the
snapshot chain through parentFileNameHint/parentCID; image/disk.py dispatches here."""
from __future__ import annotations

import os
from collections.abc import Iterator

from ...errors import FormatError, ImageError, UnsupportedError
from ...formats import vmdk_descriptor as vd
from ...formats import vmdk_sparse as vs
from .. import vmpath
from ..base import (
    SECTOR_BYTES,
    BlockDevice,
    FileDevice,
    HandlePool,
    ReopenableFile,
    Run,
    RunKind,
    check_range,
)
from ..disk import Disk, Extent, _Padded, _resolve, open_image, sniff
from .sparse import SparseExtent

# the extent files of descriptors kept open at once (all disks of the process together);
# more are closed least-recently-used first and reopened on demand
EXTENT_FILES = HandlePool(64)


class ZeroDevice:
    """A ZERO extent: reads as zeros, stores nothing."""

    writable = False

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        return bytes(length)

    def write_at(self, offset: int, data: bytes) -> None:
        raise UnsupportedError("a ZERO extent cannot be written")

    def runs(self) -> Iterator[Run]:
        yield Run(0, self.size_bytes, RunKind.ZERO)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def read_descriptor(path: str) -> vd.Descriptor | None:
    """The descriptor a .vmdk file carries (a text file, or embedded in a sparse extent);
    None when it has none. Raises VdiskError/OSError when it cannot be read."""
    kind = sniff(path)
    if kind == "descriptor":
        with open(path, "rb") as f:
            return vd.parse_descriptor(f.read(vd.MAX_DESCRIPTOR_BYTES + 1), path)
    if kind == "sparse":
        ext = SparseExtent(path)
        try:
            raw = ext.read_embedded_descriptor()
        finally:
            ext.close()
        return vd.parse_descriptor(raw, path) if raw and raw.strip(b"\0") else None
    return None


def _missing(what: str, name: str, full: str, owner: str) -> ImageError:
    hint = vmpath.missing_hint(vmpath.parse_name(name), full)
    return ImageError(f"{what} {name!r} is missing{hint}", path=owner)


def open_vmdk(path: str, sparse: bool, writable: bool, allow_outside: bool,
              parent_dir: str | None, follow_parent: bool, require_eos: bool, depth: int,
              seen: frozenset[str]) -> Disk:
    """open_image's VMDK branch: a sparse file (`sparse`) or a text descriptor, then its
    parent when `follow_parent`; `seen` already holds this file."""
    if sparse:
        disk = _open_sparse(path, writable, require_eos)
    else:
        disk = _open_descriptor(path, writable, allow_outside, depth, seen)
    if follow_parent:
        _attach_parent(disk, allow_outside, depth, seen, parent_dir)
    return disk


def open_window(path: str, start_bytes: int, length_bytes: int, name: str) -> Disk:
    """A sparse VMDK (streamOptimized, as OVF packages hold them) stored at [start_bytes,
    start_bytes + length_bytes) of `path`, read in place and read-only. `name` is how
    messages call it (e.g. `ipva.ova#hd-boot.vmdk`)."""
    with open(path, "rb") as f:
        f.seek(start_bytes)
        magic = f.read(4)
    if magic != vs.MAGIC:
        raise UnsupportedError(f"{name} is not a sparse VMDK (magic {magic!r}); only "
                               "streamOptimized and other KDMV disks are read inside packages",
                               path=path, offset=start_bytes)
    disk = _open_sparse(path, False, True, (start_bytes, length_bytes))
    disk.path = name
    return disk


def _open_sparse(path: str, writable: bool, require_eos: bool,
                 window: tuple[int, int] | None = None) -> Disk:
    ext = SparseExtent(path, writable=writable, require_eos=require_eos, window=window)
    try:
        raw_desc = ext.read_embedded_descriptor()
        desc = vd.parse_descriptor(raw_desc, path) if raw_desc and raw_desc.strip(b"\0") else None
    except Exception:
        ext.close()
        raise
    if desc is not None and len(desc.extents) > 1:
        ext.close()
        raise UnsupportedError("embedded descriptor names several extents", path=path)
    subformat = (desc.create_type if desc else None) or (
        "streamOptimized" if ext.geo.compressed else "monolithicSparse")
    line = desc.extents[0] if desc and desc.extents else None
    disk = Disk(path, "vmdk", subformat, desc, path,
                [Extent(line, 0, ext.size_bytes, ext, path)], writable=writable)
    if line is not None and line.sectors != ext.geo.capacity_sectors:
        disk.warnings.append(f"descriptor says {line.sectors} sectors, header capacity is "
                             f"{ext.geo.capacity_sectors}")
    return disk


def _open_descriptor(path: str, writable: bool, allow_outside: bool, depth: int,
                     seen: frozenset[str]) -> Disk:
    with open(path, "rb") as f:
        raw = f.read(vd.MAX_DESCRIPTOR_BYTES + 1)
    desc = vd.parse_descriptor(raw, path)
    ctype = desc.create_type or ""
    if ctype in ("vmfsSparse", "seSparse", "vmfsSeSparse"):
        raise UnsupportedError(f"createType {ctype!r} (ESXi snapshot delta) is not supported; "
                               "consolidate the snapshot on the ESXi host first", path=path)
    if not desc.extents:
        raise FormatError("descriptor names no extent", path=path)
    base = os.path.dirname(os.path.abspath(path))
    extents: list[Extent] = []
    pos = 0
    try:
        for line in desc.extents:
            size = line.sectors * SECTOR_BYTES
            dev: BlockDevice
            epath = None
            if line.extent_type == "ZERO":
                dev = ZeroDevice(size)
            elif line.filename is None:
                raise FormatError(f"{line.extent_type} extent without a file name", path=path)
            elif line.extent_type in ("FLAT", "VMFS"):
                epath = _resolve(base, line.filename, allow_outside, "extent", path)
                if not os.path.isfile(epath):
                    raise _missing("extent file", line.filename, epath, path)
                dev = FileDevice(epath, writable=writable and line.access == "RW",
                                 base_offset=(line.offset_sectors or 0) * SECTOR_BYTES, size_bytes=size)
            elif line.extent_type == "SPARSE":
                epath = _resolve(base, line.filename, allow_outside, "extent", path)
                if not os.path.isfile(epath):
                    raise _missing("extent file", line.filename, epath, path)
                if sniff(epath) != "sparse":
                    raise FormatError(f"extent {line.filename!r} is not a sparse extent", path=path)
                sp = SparseExtent(epath, writable=writable and line.access == "RW")
                if sp.size_bytes != size:
                    sp.close()
                    raise FormatError(f"extent {line.filename!r} holds {sp.geo.capacity_sectors} "
                                      f"sectors, the descriptor says {line.sectors}", path=path)
                dev = sp
            else:
                raise UnsupportedError(f"extent type {line.extent_type} is not supported", path=path)
            if isinstance(dev, ReopenableFile):
                dev.pool = EXTENT_FILES
                EXTENT_FILES.touch(dev)
            extents.append(Extent(line, pos, size, dev, epath))
            pos += size
    except Exception:
        for e in extents:
            e.device.close()
        raise
    return Disk(path, "vmdk", ctype or "custom", desc, path, extents, writable=writable)


def _attach_parent(disk: Disk, allow_outside: bool, depth: int, seen: frozenset[str],
                   parent_dir: str | None = None) -> None:
    desc = disk.descriptor
    if desc is None:
        return
    hint = desc.get("parentFileNameHint")
    pcid = desc.parent_cid
    if pcid in (None, vd.NO_PARENT_CID):
        return
    if not hint:
        disk.close()
        raise ImageError(f"parentCID {pcid:08x} names a parent but there is no "
                         "parentFileNameHint: the parent cannot be found", path=disk.path)
    base = parent_dir or os.path.dirname(os.path.abspath(disk.descriptor_path or disk.path))
    try:
        ppath = _resolve(base, hint, allow_outside, "parent", disk.path)
        if not os.path.exists(ppath):
            raise _missing("parent", hint, ppath, disk.path)
        parent = open_image(ppath, writable=False, allow_outside=allow_outside, _depth=depth + 1,
                            _seen=seen)
    except Exception:
        disk.close()
        raise
    if parent.descriptor is not None and parent.descriptor.cid != pcid:
        pc = parent.descriptor.cid
        parent.close()
        disk.close()
        raise ImageError(f"parentCID {pcid:08x} does not match the parent's CID "
                         f"{pc if pc is None else format(pc, '08x')}: the parent was modified "
                         "after the snapshot was taken", path=disk.path)
    if parent.size_bytes < disk.size_bytes:
        disk.warnings.append("parent is smaller than the child")
    disk.parent = parent
    for ext in disk.extents:
        if isinstance(ext.device, SparseExtent):
            ext.device.parent = _Padded(parent, disk.size_bytes)
            ext.device.parent_base = ext.start_bytes
