"""What `vdisk info`, `vdisk map` and `vdisk compare` report about an opened image."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..formats import vmdk_descriptor as vd
from .base import Run, RunKind, merge_runs
from .disk import Disk
from .vmdk.sparse import SparseExtent


def host_bytes(path: str) -> int:
    """Bytes the host file system really stores for a file."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def describe(disk: Disk) -> dict:
    """A JSON-ready description of a disk and its chain."""
    desc = disk.descriptor
    out: dict = {
        "path": disk.path,
        "format": disk.format,
        "subformat": disk.subformat,
        "virtual_size_bytes": disk.size_bytes,
        "disk_size_bytes": sum(host_bytes(f) for f in disk.files),
        "files": disk.files,
    }
    if desc is not None:
        cid, pcid = desc.cid, desc.parent_cid
        out.update({
            "cid": None if cid is None else f"{cid:08x}",
            "parent_cid": None if pcid is None else f"{pcid:08x}",
            "adapter": desc.get("ddb.adapterType"),
            "hardware_version": desc.get("ddb.virtualHWVersion"),
            "geometry": {k: _int_or_none(desc.get(f"ddb.geometry.{k}"))
                         for k in ("cylinders", "heads", "sectors")},
            "parent_hint": desc.get("parentFileNameHint"),
            "tools_version": desc.get("ddb.toolsVersion"),
        })
    # sector sizes a guest sees (4Kn disks say 4096); a disk without the keys has 512
    out["logical_sector_bytes"] = _int_or_none(desc.get("ddb.logicalSectorSize")) if desc else None
    out["physical_sector_bytes"] = _int_or_none(desc.get("ddb.physicalSectorSize")) if desc else None
    out["logical_sector_bytes"] = out["logical_sector_bytes"] or 512
    out["physical_sector_bytes"] = out["physical_sector_bytes"] or out["logical_sector_bytes"]
    extents = []
    for ext in disk.extents:
        e: dict = {"access": ext.access, "type": ext.kind, "sectors": ext.size_bytes // 512,
                   "file": ext.path, "start_bytes": ext.start_bytes}
        if isinstance(ext.device, SparseExtent):
            h = ext.device.footer or ext.device.header
            e.update({"grain_bytes": ext.device.geo.grain_bytes, "version": h.version,
                      "flags": f"0x{h.flags:08x}", "compressed": ext.device.geo.compressed,
                      "unclean_shutdown": bool(ext.device.header.unclean_shutdown)})
        extents.append(e)
    out["extents"] = extents
    if disk.format == "vhdx":
        from .vhdx import describe_vhdx
        out.update(describe_vhdx(disk))
    sparse = disk.sparse_extents
    if sparse:
        out["grain_bytes"] = sparse[0].geo.grain_bytes
        out["unclean_shutdown"] = any(s.header.unclean_shutdown for s in sparse)
    qdev = getattr(disk.extents[0].device, "describe", None) if disk.format == "qcow2" else None
    if qdev is not None:
        out["qcow2"] = qdev()
        out["cluster_bytes"] = out["qcow2"]["cluster_bytes"]
    out["chain"] = [link.path for link in disk.chain()]
    out["warnings"] = list(disk.warnings)
    if desc is not None and (desc.create_type or "") not in vd.CREATE_TYPES:
        out["warnings"].append(f"unknown createType {desc.create_type!r}: extents read as the "
                               "descriptor lists them")
    return out


def _int_or_none(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def allocation_map(disk: Disk) -> Iterator[Run]:
    """Allocation runs of the top link, with parent runs resolved one level as `parent`."""
    return merge_runs(iter(disk.runs()))


@dataclass(frozen=True)
class CompareResult:
    same: bool
    first_difference: int | None
    size_a: int
    size_b: int


def compare_devices(a, b, progress: Callable[[int, int], None] | None = None,
                    chunk_bytes: int = 1 << 20) -> CompareResult:
    """Compare two devices' content; stretches unallocated in both are skipped.

    Like `qemu-img compare`, a size difference is not a difference when the longer tail is zero.
    """
    common = min(a.size_bytes, b.size_bytes)
    boundaries = _data_spans(a, common) | _data_spans(b, common)
    done = 0
    for start, end in _merge_spans(sorted(boundaries)):
        pos = start
        while pos < end:
            n = min(chunk_bytes, end - pos)
            da, db = a.read_at(pos, n), b.read_at(pos, n)
            if da != db:
                i = next(k for k in range(n) if da[k] != db[k])
                return CompareResult(False, pos + i, a.size_bytes, b.size_bytes)
            pos += n
            done += n
            if progress:
                progress(done, common)
    longer = a if a.size_bytes > b.size_bytes else b
    for run in longer.runs():
        if run.end <= common or run.kind in (RunKind.ZERO, RunKind.UNALLOCATED):
            continue
        pos = max(run.offset, common)
        while pos < run.end:
            n = min(chunk_bytes, run.end - pos)
            data = longer.read_at(pos, n)
            if data.count(0) != n:
                i = next(k for k in range(n) if data[k])
                return CompareResult(False, pos + i, a.size_bytes, b.size_bytes)
            pos += n
    return CompareResult(True, None, a.size_bytes, b.size_bytes)


def _data_spans(dev, limit: int) -> set[tuple[int, int]]:
    spans = set()
    for run in dev.runs():
        if run.kind in (RunKind.ZERO, RunKind.UNALLOCATED) or run.offset >= limit:
            continue
        spans.add((run.offset, min(run.end, limit)))
    return spans


def _merge_spans(spans: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    cur: tuple[int, int] | None = None
    for s, e in spans:
        if cur and s <= cur[1]:
            cur = (cur[0], max(cur[1], e))
        else:
            if cur:
                yield cur
            cur = (s, e)
    if cur:
        yield cur
