"""The VMDK writers (specs/vmdk.md §Writer recipes): the extent files of each subformat,
the descriptor, the disk database a converted copy keeps, hosted sparse extents and
streamOptimized streams. create_image (image/create.py) puts them under temporary names and
renames them into place.
"""
from __future__ import annotations

import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from ... import clock
from ...errors import RefusedError, VdiskError
from ...formats import vmdk_descriptor as vd
from ...formats import vmdk_sparse as vs
from .. import hostio, parallel
from ..base import SECTOR_BYTES, BlockDevice, Run
from ..create import (
    ADAPTERS,
    GRAIN_BYTES,
    GRAIN_SECTORS,
    Progress,
    _write_all,
    data_pieces,
)
from .sparse import SparseExtent

SPLIT_SECTORS = 4192256            # 2047 MiB, as VMware splits
EMBEDDED_DESCRIPTOR_SECTORS = 20
MAX_HOSTED_SPARSE_SECTORS = 1 << 32   # grain pointers are u32 sectors (VMware: 2 TB - 512)
# A stream's grain pointers count sectors of its (compressed) file, not of the capacity:
# the capacity is bounded by the grain directory (32 Mi tables of 32 MiB = 1 PiB, qemu's cap)
MAX_STREAM_SECTORS = vs.MAX_GD_ENTRIES * vs.GTES_PER_GT * GRAIN_SECTORS


# ddb keys a converted copy does not inherit: geometry is recomputed for its adapter,
# longContentID renewed, and the links to a parent end where the chain is flattened
_DDB_RECOMPUTED = ("ddb.geometry.cylinders", "ddb.geometry.heads", "ddb.geometry.sectors",
                   "ddb.adaptertype", "ddb.virtualhwversion")
_DDB_OF_A_CHAIN = ("ddb.uuid.parent", "ddb.uuid.parentmodification")
_DDB_OF_THE_ADAPTER = ("ddb.geometry.bioscylinders", "ddb.geometry.biosheads",
                       "ddb.geometry.biossectors")
TOOLS_VERSION_UNKNOWN = "2147483647"   # what qemu-img and open-vmdk write for "no tools"


@dataclass(frozen=True)
class DiskDatabase:
    """What a converted copy keeps of its source's disk database (specs/vmdk.md §Convert)."""

    adapter: str
    hw_version: str
    ddb: dict[str, str]


def carried_ddb(desc: vd.Descriptor | None, subformat: str, adapter: str | None = None
                ) -> DiskDatabase:
    """The source's ddb.* keys that still hold for a copy in `subformat`: sector sizes,
    toolsVersion, virtualHWVersion, uuid, adapterType unless `adapter` overrides it (then
    the BIOS geometry, which belongs to the old adapter, goes too); geometry is recomputed
    and a longContentID renewed by the writer."""
    src_adapter = (desc.get("ddb.adapterType") if desc else None) or "ide"
    target = adapter or (src_adapter if src_adapter in ADAPTERS else "ide")
    keep: dict[str, str] = {}
    for key in (desc.keys if desc else {}):
        if not key.startswith("ddb.") or key in _DDB_RECOMPUTED or key in _DDB_OF_A_CHAIN:
            continue
        if key in _DDB_OF_THE_ADAPTER and target != src_adapter:
            continue
        if key == "ddb.thinprovisioned" and subformat != "vmfs":
            continue
        assert desc is not None
        name = desc.lines[desc.keys[key]].split("=", 1)[0].strip()
        keep[name] = desc.get(key) or ""
    if subformat == "streamOptimized" and not any(k.lower() == "ddb.toolsversion" for k in keep):
        keep["ddb.toolsVersion"] = TOOLS_VERSION_UNKNOWN
    hw = (desc.get("ddb.virtualHWVersion") if desc else None) or "4"
    return DiskDatabase(target, hw, keep)


def long_content_id(cid: int) -> str:
    """A fresh ddb.longContentID: 32 hex digits ending in the CID, as open-vmdk writes it."""
    return f"{clock.randbits(96):024x}{cid:08x}"


def extent_names(path: str, subformat: str, size_bytes: int) -> list[tuple[str, int]]:
    """(file name, sectors) of the data files a subformat uses for a disk of this size."""
    stem = os.path.basename(path)
    stem = stem[:-5] if stem.lower().endswith(".vmdk") else stem
    sectors = size_bytes // SECTOR_BYTES
    if subformat in ("monolithicFlat", "vmfs"):
        return [(f"{stem}-flat.vmdk", sectors)]
    if subformat in ("twoGbMaxExtentSparse", "twoGbMaxExtentFlat"):
        letter = "s" if subformat.endswith("Sparse") else "f"
        out, left, i = [], sectors, 1
        while left > 0 or i == 1:
            n = min(left, SPLIT_SECTORS)
            out.append((f"{stem}-{letter}{i:03d}.vmdk", n))
            left -= n
            i += 1
            if left <= 0:
                break
        return out
    return []


def _descriptor(template: vd.Descriptor | None, cid: int, subformat: str,
                lines: list[vd.ExtentLine], adapter: str, hw_version: str,
                parent_hint: str | None, parent_cid: int | None,
                ddb: dict[str, str] | None = None) -> vd.Descriptor:
    if template is None:
        extra = {k: long_content_id(cid) if k.lower() == "ddb.longcontentid" else v
                 for k, v in (ddb or {}).items()}
        return vd.build_descriptor(cid=cid, create_type=subformat, extents=lines, adapter=adapter,
                                   hw_version=hw_version,
                                   parent_cid=vd.NO_PARENT_CID if parent_cid is None else parent_cid,
                                   parent_hint=parent_hint, extra_ddb=extra)
    desc = vd.parse_descriptor_lines(list(template.lines), template.newline)
    desc.encoding, desc.bom = template.encoding, template.bom
    desc.set("CID", f"{cid:08x}", quoted=False)
    desc.set("createType", subformat)
    desc.replace_extents(lines)
    capacity = sum(e.sectors for e in lines)
    cyl, heads, secs = vd.geometry_for(desc.get("ddb.adapterType") or adapter, capacity)
    if desc.get("ddb.geometry.cylinders") is not None:
        desc.set("ddb.geometry.cylinders", str(cyl))
    return desc


def _deflated(source: BlockDevice, total: int, level: int, workers: int | None
              ) -> Iterator[tuple[int, bytes]]:
    """(grain, marker + deflated grain + padding) of the source's non-zero grains, in order."""
    def deflate(item: tuple[int, bytes]) -> tuple[int, bytes]:
        off, piece = item
        grain = off // GRAIN_BYTES
        data = piece if len(piece) == GRAIN_BYTES else piece.ljust(GRAIN_BYTES, b"\0")
        return grain, parallel.grain_block(grain * GRAIN_SECTORS, data, level)

    n = parallel.default_workers() if workers is None else workers
    return parallel.ordered_map(deflate, data_pieces(source, 0, total), n)


class _Batch:
    """Appends blocks to a file in writes of about 1 MiB."""

    def __init__(self, fd: int, limit: int = 1 << 20) -> None:
        self.fd, self.limit = fd, limit
        self.parts: list[bytes] = []
        self.pending = 0

    def add(self, block: bytes) -> None:
        self.parts.append(block)
        self.pending += len(block)
        if self.pending >= self.limit:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            _write_all(self.fd, b"".join(self.parts))
        self.parts, self.pending = [], 0


def sparse_layout(capacity_sectors: int, embedded_descriptor: bool) -> dict:
    """Header fields of a fresh hosted sparse extent: RGD + RGTs, GD + GTs, grain-aligned overhead."""
    gts = vs.gd_entries_for(capacity_sectors, GRAIN_SECTORS)
    gd_sectors = vs.sectors_for_bytes(gts * 4)
    desc_off, desc_n = (1, EMBEDDED_DESCRIPTOR_SECTORS) if embedded_descriptor else (0, 0)
    rgd = 1 + desc_n
    gd = rgd + gd_sectors + 4 * gts
    end = gd + gd_sectors + 4 * gts
    overhead = -(-end // GRAIN_SECTORS) * GRAIN_SECTORS
    return vs.header_defaults(capacity_sectors, descriptor_offset_sectors=desc_off,
                              descriptor_sectors=desc_n, rgd_offset_sectors=rgd,
                              gd_offset_sectors=gd, overhead_sectors=overhead) | {"_gts": gts,
                                                                                  "_gd_sectors": gd_sectors}


def write_sparse_extent(tmp: str, capacity_sectors: int, descriptor: bytes | None,
                        source: BlockDevice | None, source_start: int,
                        progress: Progress | None, runs: list[Run] | None = None) -> None:
    """A hosted sparse extent (qemu/VMware layout), then the source's non-zero grains."""
    lay = sparse_layout(capacity_sectors, descriptor is not None)
    gts, gd_sectors = lay.pop("_gts"), lay.pop("_gd_sectors")
    if descriptor is not None and len(descriptor) > EMBEDDED_DESCRIPTOR_SECTORS * SECTOR_BYTES:
        raise VdiskError("descriptor does not fit the embedded descriptor area", path=tmp)
    with open(tmp, "r+b") as f:
        fd = f.fileno()
        f.truncate(lay["overhead_sectors"] * SECTOR_BYTES)
        hostio.pwrite(fd, vs.build_header(lay), 0)
        if descriptor is not None:
            hostio.pwrite(fd, descriptor, SECTOR_BYTES)
        for dir_sector in (lay["rgd_offset_sectors"], lay["gd_offset_sectors"]):
            first_gt = dir_sector + gd_sectors
            entries = array("I", (first_gt + 4 * i for i in range(gts)))
            hostio.pwrite(fd, entries.tobytes(), dir_sector * SECTOR_BYTES)
        hostio.fsync(fd)
    if source is None:
        return
    ext = SparseExtent(tmp, writable=True)
    try:
        total = capacity_sectors * SECTOR_BYTES
        for off, piece in data_pieces(source, source_start, total, runs=runs):
            ext.write_at(off, piece)
            if progress:
                progress(off + len(piece), total)
        ext.flush()
    finally:
        ext.close()


def write_stream(tmp: str, capacity_sectors: int, descriptor: bytes, source: BlockDevice | None,
                 progress: Progress | None, *, level: int = parallel.DEFAULT_LEVEL,
                 workers: int | None = None) -> None:
    """streamOptimized as VMware writes it: header with GD_AT_END, embedded descriptor,
    grain markers, a GT marker + GT per used table, GD marker + GD, footer marker + footer, EOS.

    Grains are deflated at zlib `level` on `workers` threads (default: one per core) and
    written in LBA order; the file is the same whatever the number of workers."""
    parallel.check_level(level)
    desc_sectors = max(1, vs.sectors_for_bytes(len(descriptor)))
    overhead = -(-(1 + desc_sectors) // GRAIN_SECTORS) * GRAIN_SECTORS
    hdr = vs.header_defaults(capacity_sectors, version=3,
                             flags=vs.FLAG_VALID_NEWLINE_TEST | vs.FLAG_COMPRESSED | vs.FLAG_MARKERS,
                             descriptor_offset_sectors=1, descriptor_sectors=desc_sectors,
                             gd_offset_sectors=vs.GD_AT_END, overhead_sectors=overhead,
                             compress_algorithm=vs.COMPRESSION_DEFLATE)
    n_gts = vs.gd_entries_for(capacity_sectors, GRAIN_SECTORS)
    gtes_total = n_gts * vs.GTES_PER_GT
    tables: dict[int, array] = {}
    total = capacity_sectors * SECTOR_BYTES
    with open(tmp, "r+b") as f:
        fd = f.fileno()
        f.truncate(0)
        _write_all(fd, vs.build_header(hdr))
        _write_all(fd, descriptor.ljust(desc_sectors * SECTOR_BYTES, b"\0"))
        os.lseek(fd, overhead * SECTOR_BYTES, os.SEEK_SET)
        sector = overhead
        if source is not None:
            out = _Batch(fd)
            for grain, block in _deflated(source, total, level, workers):
                out.add(block)
                gdi, gti = divmod(grain, vs.GTES_PER_GT)
                if sector >= 1 << 32:
                    raise RefusedError("the compressed stream passes 2 TiB, where grain table "
                                       "entries (32-bit sectors) end", path=tmp)
                tables.setdefault(gdi, array("I", bytes(4 * vs.GTES_PER_GT)))[gti] = sector
                sector += len(block) // SECTOR_BYTES
                if progress:
                    progress((grain + 1) * GRAIN_BYTES, total)
            out.flush()
        assert gtes_total >= 0
        gd = array("I", bytes(4 * n_gts))
        for gdi in sorted(tables):
            _write_all(fd, vs.build_metadata_marker(vs.MARKER_GT, 4))
            sector += 1
            gd[gdi] = sector
            _write_all(fd, tables[gdi].tobytes())
            sector += 4
        gd_sectors = vs.sectors_for_bytes(4 * n_gts)
        _write_all(fd, vs.build_metadata_marker(vs.MARKER_GD, gd_sectors))
        sector += 1
        gd_at = sector
        _write_all(fd, gd.tobytes().ljust(gd_sectors * SECTOR_BYTES, b"\0"))
        _write_all(fd, vs.build_metadata_marker(vs.MARKER_FOOTER, 1))
        footer = dict(hdr, gd_offset_sectors=gd_at)
        _write_all(fd, vs.build_header(footer))
        _write_all(fd, bytes(SECTOR_BYTES))  # EOS marker
        hostio.fsync(f.fileno())
