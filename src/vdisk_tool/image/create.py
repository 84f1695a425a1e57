"""Writers for every VMDK subformat vdisk creates (specs/vmdk.md §Writer recipes).

Every writer puts complete files under temporary names beside the target and renames them
into place at the end (extents first, descriptor last), so an interrupted create or convert
never leaves a half-written image under the real name.
"""
from __future__ import annotations

import bisect
import itertools
import os
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .. import clock
from ..errors import RefusedError, VdiskError
from ..formats import vmdk_descriptor as vd
from ..formats import vmdk_sparse as vs
from . import hostio, parallel, platform
from .base import SECTOR_BYTES, BlockDevice, Run, RunKind, copy_data, merge_runs
from .safe import Replacement, check_unlocked, clean_leftovers_for, create_temp
from .vmdk.sparse import SparseExtent

SUBFORMATS = ("monolithicSparse", "monolithicFlat", "vmfs", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat", "streamOptimized")
ADAPTERS = ("ide", "lsilogic", "buslogic", "legacyESX")
# other containers create_image writes, by the name of their format (one file, no descriptor)
FORMAT_SUBFORMATS = ("qcow2",)
SPLIT_SECTORS = 4192256            # 2047 MiB, as VMware splits
EMBEDDED_DESCRIPTOR_SECTORS = 20
GRAIN_SECTORS = vs.DEFAULT_GRAIN_SECTORS
GRAIN_BYTES = GRAIN_SECTORS * SECTOR_BYTES
MAX_HOSTED_SPARSE_SECTORS = 1 << 32   # grain pointers are u32 sectors (VMware: 2 TB - 512)
# A stream's grain pointers count sectors of its (compressed) file, not of the capacity:
# the capacity is bounded by the grain directory (32 Mi tables of 32 MiB = 1 PiB, qemu's cap)
MAX_STREAM_SECTORS = vs.MAX_GD_ENTRIES * vs.GTES_PER_GT * GRAIN_SECTORS
Progress = Callable[[int, int], None]


def new_cid() -> int:
    while True:
        cid = clock.randbits(32)
        if cid not in (0xFFFFFFFF, 0xFFFFFFFE):
            return cid


def like(disk) -> dict:
    """What create_image needs to make a blank disk identical in shape to `disk`
    (for a qcow2: its cluster size, compat, refcount width and lazy refcounts as `options`)."""
    desc = disk.descriptor
    sub = disk.subformat if disk.subformat in SUBFORMATS + FORMAT_SUBFORMATS else (
        "raw" if disk.format == "raw" else "monolithicSparse")
    options = None
    if disk.format == "qcow2":
        from .qcow2.create import Qcow2Options
        m = disk.extents[0].device.meta
        options = Qcow2Options(m.cluster_bytes, m.compat, m.refcount_bits, m.lazy_refcounts)
    if disk.format == "vhdx":
        from .vhdx import shape_of
        return shape_of(disk)
    return {"size_bytes": disk.size_bytes, "subformat": sub,
            "adapter": (desc.get("ddb.adapterType") if desc else None) or "ide",
            "template": desc, "options": options}


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


def create_image(path: str, size_bytes: int, subformat: str = "monolithicSparse",
                 adapter: str = "ide", *, source: BlockDevice | None = None,
                 progress: Progress | None = None, overwrite: bool = False,
                 template: vd.Descriptor | None = None, hw_version: str = "4",
                 force: bool = False, backup: str | None = None,
                 parent_hint: str | None = None, parent_cid: int | None = None,
                 ddb: dict[str, str] | None = None, options: object = None,
                 compression_level: int = parallel.DEFAULT_LEVEL,
                 workers: int | None = None) -> list[str]:
    """Create a disk (raw when subformat == 'raw', qcow2 when 'qcow2', VHDX when 'vhdx-dynamic'
    or 'vhdx-fixed'); fill it from `source` if given. `options` are the container's creation
    options: a Qcow2Options for qcow2, qemu-img -o pairs (block_size=...) for VHDX.

    `template` keeps another descriptor's lines (uuid, tools version, ...) with a new CID
    and new extents; without one, `ddb` adds disk-database keys to a fresh descriptor
    (see carried_ddb). A streamOptimized disk is deflated at `compression_level` (1..9)
    on `workers` threads (default one per core). Returns the files written (descriptor last).
    """
    vhdx = subformat.startswith("vhdx")
    if subformat != "raw" and subformat not in SUBFORMATS + FORMAT_SUBFORMATS and not vhdx:
        raise RefusedError(f"unknown subformat {subformat!r}; choose one of {', '.join(SUBFORMATS)}")
    if adapter not in ADAPTERS:
        raise RefusedError(f"unknown adapter {adapter!r}; choose one of {', '.join(ADAPTERS)}")
    if not 1 <= compression_level <= 9:
        raise RefusedError(f"compression level must be 1..9, got {compression_level}")
    if size_bytes <= 0 or size_bytes % SECTOR_BYTES:
        raise RefusedError(f"size must be a positive multiple of 512 bytes, got {size_bytes}")
    sectors = size_bytes // SECTOR_BYTES
    folder = os.path.dirname(os.path.abspath(path))
    names = extent_names(path, subformat, size_bytes)
    if subformat == "monolithicSparse" and sectors > MAX_HOSTED_SPARSE_SECTORS:
        raise RefusedError("monolithicSparse holds at most 2 TiB; use twoGbMaxExtentSparse, "
                           "streamOptimized or a flat subformat")
    if subformat == "streamOptimized" and sectors > MAX_STREAM_SECTORS:
        raise RefusedError(f"streamOptimized holds at most {MAX_STREAM_SECTORS * SECTOR_BYTES >> 50} "
                           f"PiB ({vs.MAX_GD_ENTRIES} grain tables)")
    if len(names) > vd.MAX_EXTENTS:
        raise RefusedError(f"{subformat} of {size_bytes} bytes needs {len(names)} extent files, "
                           f"more than {vd.MAX_EXTENTS}")
    targets = [os.path.join(folder, n) for n, _ in names] + [os.path.abspath(path)]
    for t in targets:
        if os.path.lexists(t) and not overwrite:
            raise RefusedError("exists; refusing to overwrite it", path=t,
                               hint="choose another name, or pass --overwrite to replace it")
    check_unlocked(targets, force=force)
    for t in targets:
        clean_leftovers_for(t)
    if vhdx:
        from .vhdx.create import create_vhdx, parse_options
        return create_vhdx(path, size_bytes, subformat, source=source, progress=progress,
                           backup=backup,
                           **parse_options(options if isinstance(options, dict) else None))
    cid = new_cid()
    rep = Replacement()
    try:
        if subformat == "raw":
            tmp = create_temp(path)
            rep.add(tmp, os.path.abspath(path))
            _write_raw(tmp, size_bytes, source, progress)
        elif subformat == "qcow2":
            from .qcow2.create import Qcow2Options, write_qcow2
            tmp = create_temp(path)
            rep.add(tmp, os.path.abspath(path))
            write_qcow2(tmp, size_bytes, options if isinstance(options, Qcow2Options)
                        else Qcow2Options(), source, progress)
        elif subformat == "monolithicSparse":
            tmp = create_temp(path)
            rep.add(tmp, os.path.abspath(path))
            line = vd.ExtentLine("RW", sectors, "SPARSE", os.path.basename(path), None, 0)
            desc = _descriptor(template, cid, subformat, [line], adapter, hw_version, parent_hint,
                               parent_cid, ddb)
            write_sparse_extent(tmp, sectors, desc.to_bytes(), source, 0, progress)
        elif subformat == "streamOptimized":
            tmp = create_temp(path)
            rep.add(tmp, os.path.abspath(path))
            line = vd.ExtentLine("RW", sectors, "SPARSE", os.path.basename(path), None, 0)
            desc = _descriptor(template, cid, subformat, [line], adapter, hw_version, None, None,
                               ddb if ddb is not None else carried_ddb(None, subformat).ddb)
            write_stream(tmp, sectors, desc.to_bytes(), source, progress,
                         level=compression_level, workers=workers)
        else:
            lines = []
            start = 0
            flat = subformat in ("monolithicFlat", "vmfs", "twoGbMaxExtentFlat")
            runs = list(source.runs()) if source is not None and len(names) > 1 else None
            for name, n in names:
                target = os.path.join(folder, name)
                tmp = create_temp(target)
                rep.add(tmp, target)
                if flat:
                    _write_raw(tmp, n * SECTOR_BYTES, source, progress, start, runs)
                else:
                    write_sparse_extent(tmp, n, None, source, start, progress, runs)
                etype = "VMFS" if subformat == "vmfs" else ("FLAT" if flat else "SPARSE")
                lines.append(vd.ExtentLine("RW", n, etype, name, None if etype != "FLAT" else 0, 0))
                start += n * SECTOR_BYTES
            desc = _descriptor(template, cid, subformat, lines, adapter, hw_version, parent_hint,
                               parent_cid, ddb)
            tmp = create_temp(path)
            rep.add(tmp, os.path.abspath(path))
            with open(tmp, "wb") as f:
                _write_all(f.fileno(), desc.to_bytes())
        rep.commit(backup=backup)
    except BaseException:
        rep.abort()
        raise
    return [t for _, t in rep.pairs]


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


_ZEROS = bytes(1 << 20)


def _zero_grain(data: bytes) -> bool:
    n = len(data)
    if n <= len(_ZEROS):
        return data == _ZEROS[:n]
    return data.count(0) == n


def _runs_from(runs: list[Run], start: int) -> Iterator[Run]:
    """The runs of a listed source from the one that ends after `start` on."""
    first = max(0, bisect.bisect_right([r.end for r in runs], start))
    return itertools.islice(runs, first, None)


def data_pieces(source: BlockDevice, start: int, length: int, piece_bytes: int = GRAIN_BYTES,
                runs: list[Run] | None = None) -> Iterator[tuple[int, bytes]]:
    """(offset relative to start, bytes) of every non-zero, piece-aligned piece of the
    source window [start, start+length). Zero and unallocated runs cost nothing.
    `runs`: the source's runs, listed once by a caller that walks many windows (a split
    target of a thousand extents would otherwise walk the whole source for each)."""
    end = min(start + length, source.size_bytes)   # a larger target (grow) reads no further
    pending_lo = pending_hi = -1
    todo = _runs_from(runs, start) if runs is not None else source.runs()
    for run in todo:
        if run.offset >= end:
            break
        if run.end <= start:
            continue
        if run.kind in (RunKind.ZERO, RunKind.UNALLOCATED):
            continue
        lo = max(run.offset, start)
        hi = min(run.end, end)
        # align to pieces relative to start
        a = start + ((lo - start) // piece_bytes) * piece_bytes
        b = min(end, start + -(-(hi - start) // piece_bytes) * piece_bytes)
        if pending_hi >= a:
            pending_hi = max(pending_hi, b)
            continue
        if pending_lo >= 0:
            yield from _read_pieces(source, start, pending_lo, pending_hi, piece_bytes)
        pending_lo, pending_hi = a, b
    if pending_lo >= 0:
        yield from _read_pieces(source, start, pending_lo, pending_hi, piece_bytes)


def _read_pieces(source: BlockDevice, start: int, lo: int, hi: int, piece_bytes: int
                 ) -> Iterator[tuple[int, bytes]]:
    chunk = max(piece_bytes, (1 << 20) // piece_bytes * piece_bytes)
    zero = _ZEROS[:piece_bytes] if piece_bytes <= len(_ZEROS) else bytes(piece_bytes)
    pos = lo
    while pos < hi:
        n = min(chunk, hi - pos)
        data = source.read_at(pos, n)
        for k in range(0, n, piece_bytes):
            piece = data[k:k + piece_bytes]   # bytes: compared with memcmp (a memoryview is slow)
            if piece != zero[:len(piece)]:
                yield pos + k - start, piece
        pos += n


def _coalesce(pieces: Iterator[tuple[int, bytes]], limit: int = 1 << 20
              ) -> Iterator[tuple[int, bytes]]:
    """Join adjacent pieces into writes of up to `limit` bytes."""
    buf: list = []
    start = end = -1
    for off, piece in pieces:
        if buf and off == end and end - start + len(piece) <= limit:
            buf.append(piece)
            end += len(piece)
            continue
        if buf:
            yield start, b"".join(buf)
        buf, start, end = [piece], off, off + len(piece)
    if buf:
        yield start, b"".join(buf)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_raw(tmp: str, size_bytes: int, source: BlockDevice | None, progress: Progress | None,
               source_start: int = 0, runs: list[Run] | None = None) -> None:
    """A raw image or flat extent of `size_bytes` from the source window at `source_start`.
    What is stored uncompressed in a host file (flat and raw extents, uncompressed grains)
    is copied file to file (copy_range: in the kernel where possible) without being read;
    what has to be decoded is read and written without its zero pieces; holes stay holes."""
    with open(tmp, "r+b") as f:
        platform.set_sparse(f.fileno())
        f.truncate(size_bytes)
        fd = f.fileno()
        if source is not None:
            with _SourceFiles() as files:
                for off, length, src in _raw_plan(source, source_start, size_bytes, runs):
                    if src is None:
                        _write_decoded(source, source_start + off, length, fd, off)
                    else:
                        assert src.file is not None and src.file_offset is not None
                        copy_data(files.fd(src.file), src.file_offset, fd, off, length,
                                  src.file)
                    if progress:
                        progress(off + length, size_bytes)
        hostio.fsync(fd)


def _raw_plan(source: BlockDevice, start: int, length: int, runs: list[Run] | None
              ) -> Iterator[tuple[int, int, Run | None]]:
    """(offset relative to start, length, the stored run or None) of what a raw copy of
    [start, start+length) must write: stretches stored in a host file come with their run
    (offsets relative to start), stretches to be read come with None. Zero and unallocated
    stretches are left out."""
    end = start + length
    todo: Iterator[Run] = _runs_from(runs, start) if runs is not None else source.runs()
    pending: tuple[int, int] | None = None   # a stretch to be read
    for run in merge_runs(todo):
        if run.offset >= end:
            break
        lo, hi = max(run.offset, start), min(run.end, end)
        if lo >= hi or run.kind in (RunKind.ZERO, RunKind.UNALLOCATED):
            continue
        if run.file is not None and run.file_offset is not None:
            if pending is not None:
                yield pending[0] - start, pending[1] - pending[0], None
                pending = None
            yield lo - start, hi - lo, Run(lo - start, hi - lo, run.kind, run.file,
                                           run.file_offset + (lo - run.offset))
        elif pending is not None and pending[1] == lo:
            pending = (pending[0], hi)
        else:
            if pending is not None:
                yield pending[0] - start, pending[1] - pending[0], None
            pending = (lo, hi)
    if pending is not None:
        yield pending[0] - start, pending[1] - pending[0], None


def _write_decoded(source: BlockDevice, start: int, length: int, fd: int, at: int) -> None:
    """Read [start, start+length) of the source grain by grain (a compressed grain is then
    its inflate as it is, no copy) and write the grains that are not all zero."""
    zero = _ZEROS[:GRAIN_BYTES]
    pos = 0
    while pos < length:
        n = min(GRAIN_BYTES - (start + pos) % GRAIN_BYTES, length - pos)
        data = source.read_at(start + pos, n)
        if data != zero[:n]:
            hostio.pwrite(fd, data, at + pos)
        pos += n


class _SourceFiles:
    """Read-only descriptors of the source's host files, opened once each (the bound
    journal's own descriptor for a file an edit has open, so its pending writes count)."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}
        self.owned: list[int] = []

    def fd(self, path: str) -> int:
        fd = self.fds.get(path)
        if fd is None:
            fd = hostio.fd_for(path)
            if fd is None:
                fd = platform.open_fd(path, os.O_RDONLY)
                self.owned.append(fd)
            self.fds[path] = fd
        return fd

    def __enter__(self) -> _SourceFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.owned:
            os.close(fd)


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
