"""Hosted sparse extents (KDMV): monolithicSparse, the -sNNN files of twoGbMaxExtentSparse,
delta links, and streamOptimized in its three layouts (specs/vmdk.md §Sparse, §Stream).

Headers are parsed and bounded eagerly; grain tables are read lazily and cached.
Nothing is ever read as zeros by accident: a pointer past the end of the file, a short
read or a failed decompression raises ImageError.
"""
from __future__ import annotations

import functools
import struct
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ...errors import FormatError, ImageError, UnsupportedError, VdiskError
from ...formats import vmdk_sparse as vs
from .. import hostio, parallel
from ..base import ReopenableFile, Run, RunKind, check_range

SECTOR = vs.SECTOR_BYTES
GT_CACHE = 512
READ_AHEAD_GRAINS = 32        # compressed grains inflated ahead of a sequential reader
READ_AHEAD_WORKERS: int | None = None   # None: one per core (parallel.default_workers)
SPAN_BYTES = 1 << 20          # one read of a stream's file serves the grains in it


@dataclass(frozen=True)
class SparseGeometry:
    """Derived, validated numbers of one sparse extent."""

    capacity_sectors: int
    grain_sectors: int
    gtes_per_gt: int
    gd_entries: int
    gd_offset_sectors: int
    rgd_offset_sectors: int  # 0 when there is no redundant directory
    overhead_sectors: int
    compressed: bool
    markers: bool
    zero_grain_flag: bool

    @property
    def grain_bytes(self) -> int:
        return self.grain_sectors * SECTOR

    @property
    def gt_coverage_sectors(self) -> int:
        return self.grain_sectors * self.gtes_per_gt

    @property
    def gt_bytes(self) -> int:
        return self.gtes_per_gt * 4

    @property
    def gd_bytes(self) -> int:
        return self.gd_entries * 4


def _is_marker(sector: bytes, marker_type: int) -> bool:
    """A metadata marker of this type (numSectors is not looked at for a footer marker)."""
    if len(sector) < 16:
        return False
    val, size, mtype = struct.unpack_from("<QII", sector, 0)
    return size == 0 and mtype == marker_type and (marker_type != vs.MARKER_EOS or val == 0)


def read_header(fd: int, path: str, base: int = 0, file_bytes: int | None = None
                ) -> tuple[Any, Any, int | None]:
    """Return (header, footer-or-None, eos_offset). The footer of a stream file takes
    precedence. `eos_offset` is None when the footer is followed by an end-of-stream
    marker (or there is no footer); otherwise the byte offset where the missing EOS
    belongs: the file's end when it stops right after the footer, the last sector when
    that sector is something else (specs/vmdk.md §streamOptimized layouts).
    `base`/`file_bytes` describe an extent that lies inside a larger file (an OVA member)."""
    raw = hostio.pread(fd, SECTOR, base) if file_bytes is None or file_bytes >= SECTOR else b""
    if len(raw) < SECTOR:
        raise FormatError("file shorter than one sparse header (512 bytes)", path=path, offset=0)
    hdr = vs.parse_header(raw)
    if hdr.magic_number != vs.MAGIC:
        raise FormatError(f"SparseExtentHeader.magicNumber: expected 'KDMV', got {hdr.magic_number!r}",
                          path=path, offset=0)
    footer, eos_offset = None, None
    if file_bytes is None:
        file_bytes = hostio.file_bytes(fd)
    if file_bytes >= 3 * SECTOR and (hdr.flags & vs.FLAG_MARKERS):
        tail = hostio.pread(fd, 3 * SECTOR, base + file_bytes - 3 * SECTOR)
        # footer marker, footer, EOS, or (the EOS cut off) footer marker and footer at the end
        for first, eos_at in ((0, file_bytes - SECTOR), (SECTOR, file_bytes)):
            footer_sector = tail[first + SECTOR:first + 2 * SECTOR]
            if _is_marker(tail[first:first + SECTOR], vs.MARKER_FOOTER) and \
                    footer_sector[:4] == vs.MAGIC:
                footer = vs.parse_header(footer_sector)
                if eos_at == file_bytes or not _is_marker(tail[2 * SECTOR:], vs.MARKER_EOS):
                    eos_offset = eos_at
                break
    if hdr.gd_offset_sectors == vs.GD_AT_END and footer is None:
        raise FormatError("streamOptimized header says GD_AT_END but the file has no valid footer",
                          path=path, offset=file_bytes - 3 * SECTOR if file_bytes >= 1536 else 0)
    return hdr, footer, eos_offset


def eos_problem(eos_offset: int, file_bytes: int) -> str:
    if eos_offset >= file_bytes:
        return "the stream ends right after its footer: the end-of-stream marker is missing"
    return "the last sector of the stream is not an end-of-stream marker"


def validate_geometry(hdr: Any, path: str, file_bytes: int) -> SparseGeometry:
    """Apply the hardening rules of specs/vmdk.md (from qemu, VirtualBox, libvmdk, VMware)
    before anything is allocated from the header's numbers."""
    def bad(field: str, off: int, msg: str) -> FormatError:
        return FormatError(f"SparseExtentHeader.{field} at 0x{off:x}: {msg}", path=path)

    if hdr.version not in (1, 2, 3):
        raise bad("version", 4, f"expected 1, 2 or 3, got {hdr.version}")
    unknown = hdr.flags & vs.INCOMPAT_MASK & ~vs.KNOWN_INCOMPAT_FLAGS
    if unknown:
        raise bad("flags", 8, f"unknown incompatible flag bits 0x{unknown:x}")
    g = hdr.grain_sectors
    if g < 1 or g & (g - 1) or g > vs.MAX_GRAIN_SECTORS:
        raise bad("grainSize", 0x14, f"expected a power of two up to 0x{vs.MAX_GRAIN_SECTORS:x}, got 0x{g:x}")
    if not 1 <= hdr.gtes_per_gt <= 4096 or hdr.gtes_per_gt & (hdr.gtes_per_gt - 1):
        raise bad("numGTEsPerGT", 0x2c, f"expected a power of two up to 4096, got {hdr.gtes_per_gt}")
    if hdr.compress_algorithm not in (0, 1):
        raise bad("compressAlgorithm", 0x4d, f"expected 0 or 1, got {hdr.compress_algorithm}")
    compressed = hdr.compress_algorithm == vs.COMPRESSION_DEFLATE
    if compressed and not hdr.flags & vs.FLAG_MARKERS:
        raise UnsupportedError("compressed grains without markers are not supported", path=path)
    gd_entries = vs.gd_entries_for(hdr.capacity_sectors, g, hdr.gtes_per_gt)
    if gd_entries > vs.MAX_GD_ENTRIES:
        raise bad("capacity", 0xc, f"{hdr.capacity_sectors} sectors need {gd_entries} grain "
                                   f"directory entries, more than {vs.MAX_GD_ENTRIES}")
    gd_sectors = vs.sectors_for_bytes(gd_entries * 4)
    file_sectors = file_bytes // SECTOR
    gd_off = hdr.gd_offset_sectors
    if gd_entries and (gd_off == 0 or gd_off + gd_sectors > file_sectors):
        raise bad("gdOffset", 0x38, f"grain directory at sector {gd_off} ({gd_sectors} sectors) "
                                    f"lies outside the file ({file_sectors} sectors)")
    # a redundant directory outside the file does not stop reading (the primary serves);
    # `vdisk check` reports it when it tries to read it (vmdk.rgd-unreadable)
    rgd_off = hdr.rgd_offset_sectors if hdr.flags & vs.FLAG_REDUNDANT_GRAIN_TABLE else 0
    if hdr.descriptor_offset_sectors and (
            hdr.descriptor_sectors > vs.MAX_EMBEDDED_DESCRIPTOR_SECTORS):
        raise bad("descriptorSize", 0x24, f"{hdr.descriptor_sectors} sectors, more than "
                                          f"{vs.MAX_EMBEDDED_DESCRIPTOR_SECTORS}")
    return SparseGeometry(
        capacity_sectors=hdr.capacity_sectors, grain_sectors=g, gtes_per_gt=hdr.gtes_per_gt,
        gd_entries=gd_entries, gd_offset_sectors=gd_off, rgd_offset_sectors=rgd_off,
        overhead_sectors=hdr.overhead_sectors, compressed=compressed,
        markers=bool(hdr.flags & vs.FLAG_MARKERS),
        zero_grain_flag=bool(hdr.flags & vs.FLAG_ZEROED_GRAIN_GTE))


_ZERO_ENTRIES = bytes(4 * 4096)
_ZERO_GRAIN = bytes(vs.DEFAULT_GRAIN_SECTORS * SECTOR)


def zero_entries(table: array, start: int) -> int:
    """How many entries from `start` on are 0, counted in blocks of 4096 (0 if the block
    at `start` is not all zero)."""
    n = 0
    while start + n < len(table):
        block = table[start + n:start + n + 4096]
        if block.tobytes() != _ZERO_ENTRIES[:4 * len(block)]:
            break
        n += len(block)
    return n


def _raise(exc: BaseException) -> bytes:
    raise exc


def _cut(job: Callable[[], bytes], lo: int, hi: int) -> bytes:
    return job()[lo:hi]


class SparseExtent(ReopenableFile):
    """One KDMV file as a device of capacity_sectors × 512 bytes.

    `parent` (optional) is the device that unallocated grains read through to, at
    `parent_base` bytes (the extent's position in the whole disk). `window` (start, length
    in bytes) opens an extent stored inside a larger file, read-only: a member of an OVA.
    """

    def __init__(self, path: str, writable: bool = False, require_eos: bool = True,
                 window: tuple[int, int] | None = None) -> None:
        self.path = path
        self.writable = writable
        self.base = window[0] if window else 0
        if window and writable:
            raise UnsupportedError("an extent inside another file is read-only", path=path)
        self._fd = self._open_file()
        try:
            host_bytes = hostio.file_bytes(self._fd)
            self.file_bytes = window[1] if window else host_bytes
            if window and (self.base < 0 or self.base + self.file_bytes > host_bytes):
                raise ImageError(f"window {self.base}+{self.file_bytes} lies outside the file "
                                 f"({host_bytes} bytes)", path=path)
            self.header, self.footer, self.eos_offset = read_header(
                self._fd, path, self.base, self.file_bytes)
            if self.eos_offset is not None and require_eos \
                    and self.header.gd_offset_sectors == vs.GD_AT_END:
                raise FormatError(f"streamOptimized: {eos_problem(self.eos_offset, self.file_bytes)}"
                                  " (a reader requires it after a footer; qemu-img refuses the "
                                  "file too)", path=path, offset=self.eos_offset,
                                  hint="`vdisk check --repair` restores it")
            active = self.footer if self.footer is not None else self.header
            self.geo = validate_geometry(active, path, self.file_bytes)
        except Exception:
            self._close_file()
            raise
        if writable and self.geo.compressed:
            self._close_file()
            raise UnsupportedError("streamOptimized extents are rewritten, not written in place",
                                   path=path)
        self.size_bytes = self.geo.capacity_sectors * SECTOR
        self.parent: Any = None   # a BlockDevice: the disk unallocated grains read through
        self.parent_base = 0
        self._gd = self._read_dir(self.geo.gd_offset_sectors)
        self._gts: OrderedDict[int, array] = OrderedDict()
        self._ahead: parallel.ReadAhead | None = None
        self._span, self._span_at = memoryview(b""), 0
        self._grains = -(-self.size_bytes // self.geo.grain_bytes)

    # -- metadata -------------------------------------------------------------------------
    def _pread_exact(self, length: int, offset: int, what: str) -> bytes:
        if offset < 0 or offset + length > self.file_bytes:
            raise ImageError(f"{what} at 0x{offset:x} ({length} bytes) lies past the end of the file",
                             path=self.path, offset=offset)
        data = self.pread(length, offset)
        if len(data) != length:
            raise ImageError(f"short read of {what}", path=self.path, offset=offset)
        return data

    def pread(self, length: int, offset: int) -> bytes:
        """Bytes of the extent file (of its window) at `offset`; short at its end."""
        return hostio.pread(self._fd, max(0, min(length, self.file_bytes - offset)), self.base + offset)

    def _read_dir(self, sector: int) -> array:
        gd = array("I")
        if self.geo.gd_entries:
            gd.frombytes(self._pread_exact(self.geo.gd_bytes, sector * SECTOR, "grain directory"))
        return gd

    def read_rgd(self) -> array | None:
        return self._read_dir(self.geo.rgd_offset_sectors) if self.geo.rgd_offset_sectors else None

    def read_gt_at(self, sector: int) -> array:
        gt = array("I")
        gt.frombytes(self._pread_exact(self.geo.gt_bytes, sector * SECTOR, "grain table"))
        return gt

    @property
    def gd(self) -> array:
        return self._gd

    def gt(self, gd_index: int) -> array | None:
        """Grain table gd_index, or None where the directory entry is 0."""
        gt = self._gts.get(gd_index)
        if gt is not None:
            self._gts.move_to_end(gd_index)
            return gt
        sector = self._gd[gd_index]
        if sector == 0:
            return None
        gt = self.read_gt_at(sector)
        self._gts[gd_index] = gt
        if len(self._gts) > GT_CACHE:
            self._gts.popitem(last=False)
        return gt

    def gte(self, grain: int) -> int:
        gd_index, gt_index = divmod(grain, self.geo.gtes_per_gt)
        gt = self.gt(gd_index)
        return 0 if gt is None else gt[gt_index]

    # -- reading --------------------------------------------------------------------------
    def read_grain(self, grain: int, entry: int) -> bytes:
        """The full content of one allocated grain whose GTE is `entry` (> 1)."""
        gb = self.geo.grain_bytes
        off = entry * SECTOR
        if self.geo.compressed:
            return self._read_compressed(grain, off)
        want = min(gb, self.size_bytes - grain * gb)
        data = self._pread_exact(want, off, f"grain {grain}")
        return data if want == gb else data + bytes(gb - want)

    def _read_compressed(self, grain: int, off: int) -> bytes:
        entry = off // SECTOR
        if self._ahead is None:
            workers = parallel.default_workers() if READ_AHEAD_WORKERS is None \
                else READ_AHEAD_WORKERS
            if workers <= 1:
                return self._compressed_job(grain, entry)()
            self._ahead = parallel.ReadAhead(self._fetch_ahead, self._grains, workers,
                                             READ_AHEAD_GRAINS)
        return self._ahead.get(grain, entry, lambda: self._compressed_job(grain, entry)())

    def _compressed_job(self, grain: int, entry: int) -> Callable[[], bytes]:
        """Read the marker and data of one compressed grain (in this thread, which owns
        the file); return the inflate, a pure function another thread may run."""
        gb = self.geo.grain_bytes
        off = entry * SECTOR
        head = self._span_read(12, off, f"grain marker of grain {grain}")
        lba, size = struct.unpack("<QI", head)
        if size == 0 or size > 2 * gb:
            raise ImageError(f"grain {grain}: compressed size {size} out of range", path=self.path,
                             offset=off)
        if lba != grain * self.geo.grain_sectors:
            raise ImageError(f"grain {grain}: marker names sector {lba}, expected "
                             f"{grain * self.geo.grain_sectors}", path=self.path, offset=off)
        blob = self._span_read(size, off + 12, f"compressed grain {grain}")
        last = min(gb, self.size_bytes - grain * gb)
        return functools.partial(parallel.inflate_grain, blob, grain, gb, last, self.path, off)

    def decode_jobs(self, offset: int, length: int
                    ) -> Iterator[tuple[int, Callable[[], bytes]]] | None:
        """For a streamOptimized extent without a parent: (offset relative to `offset`,
        inflate) of each stored grain in [offset, offset+length), the inflate a pure
        function any thread may run (what the raw writer decodes on every core). Zeroed and
        unallocated grains are left out: they read as zeros. None for other extents, whose
        bytes read_at serves."""
        if not self.geo.compressed or self.parent is not None:
            return None
        check_range(self, offset, length)
        return self._decode_jobs(offset, length)

    def _decode_jobs(self, offset: int, length: int) -> Iterator[tuple[int, Callable[[], bytes]]]:
        gb, end = self.geo.grain_bytes, offset + length
        for grain in range(offset // gb, -(-end // gb)):
            lo, hi = max(grain * gb, offset), min((grain + 1) * gb, end)
            try:
                entry = self.gte(grain)
                if entry <= vs.ZERO_GRAIN_GTE:
                    continue
                job = self._compressed_job(grain, entry)
            except VdiskError as exc:
                # raised where this grain's inflate would be: errors surface in grain order
                yield lo - offset, functools.partial(_raise, exc)
                return
            if hi - lo != gb:   # the request cuts this grain
                job = functools.partial(_cut, job, lo - grain * gb, hi - grain * gb)
            yield lo - offset, job

    def _fetch_ahead(self, grain: int) -> tuple[int, Callable[[], bytes]] | None:
        try:
            entry = self.gte(grain)
            if entry <= vs.ZERO_GRAIN_GTE:
                return None
            return entry, self._compressed_job(grain, entry)
        except VdiskError:
            return None   # the reader meets the error itself if it gets there

    def _span_read(self, length: int, offset: int, what: str) -> bytes | memoryview:
        """Like _pread_exact, served from one cached stretch of SPAN_BYTES: a stream's
        grains lie one after another, so one read serves many markers and grains. What is
        served from the stretch is a view of it, not a copy (the stretch lives as long as
        a view of it does)."""
        lo = self._span_at
        if not (lo <= offset and offset + length <= lo + len(self._span)):
            if length >= SPAN_BYTES:
                return self._pread_exact(length, offset, what)
            self._span = memoryview(
                self._pread_exact(min(SPAN_BYTES, self.file_bytes - offset), offset, what)
                if offset + length <= self.file_bytes else self._pread_exact(length, offset, what))
            self._span_at = lo = offset
        return self._span[offset - lo:offset - lo + length]

    def _unallocated(self, offset: int, length: int) -> bytes:
        if self.parent is not None:
            return self.parent.read_at(self.parent_base + offset, length)
        return bytes(length)

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        gb = self.geo.grain_bytes
        fast = self._contiguous(offset, length)
        if fast is not None:
            # the whole request is one stretch of the file: one read, no copy
            return self._pread_exact(length, fast, f"grain {offset // gb}")
        if self.geo.compressed and length == gb and offset % gb == 0:
            entry = self.gte(offset // gb)
            if entry > vs.ZERO_GRAIN_GTE:   # one whole compressed grain: its inflate, no copy
                return self.read_grain(offset // gb, entry)
        out = bytearray(length)
        view = memoryview(out)
        pos, end = offset, offset + length
        while pos < end:
            grain, within = divmod(pos, gb)
            n = min(gb - within, end - pos)
            entry = self.gte(grain)
            if entry == 0:
                # coalesce a run of unallocated grains into one parent read
                stop = pos + n
                while stop < end and self.gte(stop // gb) == 0:
                    stop = min(stop + gb, end)
                if self.parent is not None:
                    view[pos - offset:stop - offset] = self._unallocated(pos, stop - pos)
                pos = stop
                continue
            if entry == vs.ZERO_GRAIN_GTE:
                pass  # already zero
            elif not self.geo.compressed:
                # coalesce physically contiguous uncompressed grains into one read
                stop, nxt = pos + n, entry + self.geo.grain_sectors
                while stop < end and self.gte(stop // gb) == nxt:
                    stop = min(stop + gb, end)
                    nxt += self.geo.grain_sectors
                avail = min(stop, self.size_bytes) - pos
                self._readinto(view[pos - offset:pos - offset + avail],
                               entry * SECTOR + within, f"grain {grain}")
                pos = stop
                continue
            else:
                view[pos - offset:pos - offset + n] = self.read_grain(grain, entry)[within:within + n]
            pos += n
        return bytes(out)

    def _contiguous(self, offset: int, length: int) -> int | None:
        """The file offset when [offset, offset+length) is stored contiguously, uncompressed."""
        if self.geo.compressed or length == 0 or offset + length > self.size_bytes:
            return None
        gb, gs = self.geo.grain_bytes, self.geo.grain_sectors
        grain, within = divmod(offset, gb)
        entry = self.gte(grain)
        if entry <= vs.ZERO_GRAIN_GTE:
            return None
        last = (offset + length - 1) // gb
        for k in range(1, last - grain + 1):
            if self.gte(grain + k) != entry + k * gs:
                return None
        return entry * SECTOR + within

    def _readinto(self, buf: memoryview, offset: int, what: str) -> None:
        n = len(buf)
        if offset < 0 or offset + n > self.file_bytes:
            raise ImageError(f"{what} at 0x{offset:x} ({n} bytes) lies past the end of the file",
                             path=self.path, offset=offset)
        got = hostio.preadinto(self._fd, buf, self.base + offset)
        if got != n:
            raise ImageError(f"short read of {what}", path=self.path, offset=offset)

    def runs(self) -> Iterator[Run]:
        gb = self.geo.grain_bytes
        cov = self.geo.gt_coverage_sectors * SECTOR
        unalloc = RunKind.PARENT if self.parent is not None else RunKind.UNALLOCATED
        gdi = 0
        while gdi < self.geo.gd_entries:
            base = gdi * cov
            stretch = zero_entries(self._gd, gdi)
            if stretch:
                # a stretch of absent grain tables: one run, without a Python step per entry
                end = min((gdi + stretch) * cov, self.size_bytes)
                yield Run(base, end - base, unalloc)
                gdi += stretch
                continue
            gt = self.gt(gdi)
            gdi += 1
            if gt is None or not any(gt):
                yield Run(base, min(cov, self.size_bytes - base), unalloc)
                continue
            for i, entry in enumerate(gt):
                start = base + i * gb
                if start >= self.size_bytes:
                    break
                n = min(gb, self.size_bytes - start)
                if entry == 0:
                    yield Run(start, n, unalloc)
                elif entry == vs.ZERO_GRAIN_GTE:
                    yield Run(start, n, RunKind.ZERO)
                else:
                    yield Run(start, n, RunKind.DATA, self.path,
                              None if self.geo.compressed else self.base + entry * SECTOR)

    # -- writing (uncompressed sparse only) -----------------------------------------------
    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        if not self.writable:
            raise UnsupportedError("extent is open read-only", path=self.path)
        check_range(self, offset, len(data))
        gb = self.geo.grain_bytes
        view = memoryview(data)
        pos = offset
        while view:
            grain, within = divmod(pos, gb)
            n = min(gb - within, len(view))
            piece = view[:n]
            entry = self.gte(grain)
            if entry > vs.ZERO_GRAIN_GTE:
                hostio.pwrite(self._fd, piece, entry * SECTOR + within)
            else:
                reads_zero = entry == vs.ZERO_GRAIN_GTE or self.parent is None
                zero = _ZERO_GRAIN[:n] if n <= len(_ZERO_GRAIN) else bytes(n)
                if not reads_zero or piece.tobytes() != zero:
                    self._allocate(grain, entry, within, piece)
            view = view[n:]
            pos += n

    def _allocate(self, grain: int, entry: int, within: int, piece: memoryview) -> None:
        """Append a new grain at the end of the file, grain-aligned as VMware places them,
        and point the GTE (primary and redundant table) at it."""
        gb = self.geo.grain_bytes
        gd_index, gt_index = divmod(grain, self.geo.gtes_per_gt)
        if self._gd[gd_index] == 0:
            self._new_table(gd_index)
        if len(piece) == gb:
            content = piece.tobytes()
        else:
            old = bytearray(bytes(gb) if entry == vs.ZERO_GRAIN_GTE
                            else self._unallocated(grain * gb, min(gb, self.size_bytes - grain * gb)))
            old.extend(bytes(gb - len(old)))
            old[within:within + len(piece)] = piece
            content = bytes(old)
        gs = self.geo.grain_sectors
        sector = -(-self.file_bytes // (gs * SECTOR)) * gs
        hostio.pwrite(self._fd, content, sector * SECTOR)
        self.file_bytes = sector * SECTOR + gb
        self._set_gte(gd_index, gt_index, sector)

    def _append_table(self) -> int:
        """A zeroed grain table at the end of the file; returns its sector."""
        sector = -(-self.file_bytes // SECTOR)
        n = vs.sectors_for_bytes(self.geo.gt_bytes) * SECTOR
        hostio.pwrite(self._fd, bytes(n), sector * SECTOR)
        self.file_bytes = sector * SECTOR + n
        return sector

    def _new_table(self, gd_index: int) -> None:
        """Allocate the never-allocated grain table `gd_index` (and its redundant copy) at
        the end of the file and enter both in their directories."""
        sector = self._append_table()
        if self.geo.rgd_offset_sectors:
            rsector = self._append_table()
            hostio.pwrite(self._fd, struct.pack("<I", rsector),
                          self.geo.rgd_offset_sectors * SECTOR + gd_index * 4)
        hostio.pwrite(self._fd, struct.pack("<I", sector),
                      self.geo.gd_offset_sectors * SECTOR + gd_index * 4)
        self._gd[gd_index] = sector
        self._gts[gd_index] = array("I", bytes(self.geo.gt_bytes))

    def _set_gte(self, gd_index: int, gt_index: int, value: int) -> None:
        gt = self.gt(gd_index)
        assert gt is not None
        gt[gt_index] = value
        raw = struct.pack("<I", value)
        hostio.pwrite(self._fd, raw, self._gd[gd_index] * SECTOR + gt_index * 4)
        if self.geo.rgd_offset_sectors:
            rgd_entry = self._rgd_entry(gd_index)
            if rgd_entry:
                hostio.pwrite(self._fd, raw, rgd_entry * SECTOR + gt_index * 4)

    def _rgd_entry(self, gd_index: int) -> int:
        raw = hostio.pread(self._fd, 4, self.geo.rgd_offset_sectors * SECTOR + gd_index * 4)
        return struct.unpack("<I", raw)[0] if len(raw) == 4 else 0

    def set_unclean(self, unclean: bool) -> None:
        """Set or clear the header's uncleanShutdown byte for good (a repair clears it)."""
        self.header.unclean_shutdown = int(unclean)
        hostio.pwrite(self._fd, bytes([int(unclean)]), vs.UNCLEAN_SHUTDOWN_OFFSET)

    def mark_in_use(self, in_use: bool) -> None:
        """Set uncleanShutdown while the extent is open for an edit, as VMware does; at the
        end put back the header's own value."""
        flag = 1 if in_use else self.header.unclean_shutdown
        hostio.pwrite(self._fd, bytes([flag]), vs.UNCLEAN_SHUTDOWN_OFFSET)

    def flush(self) -> None:
        if self.writable:
            hostio.fsync(self._fd)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None
        self._close_file()

    @property
    def fd(self) -> int:
        return self._fd

    def read_embedded_descriptor(self) -> bytes | None:
        h = self.header
        if not h.descriptor_offset_sectors or not h.descriptor_sectors:
            return None
        off = h.descriptor_offset_sectors * SECTOR
        n = min(h.descriptor_sectors * SECTOR, 1 << 20)
        if off + n > self.file_bytes:
            raise FormatError(f"embedded descriptor ({n} bytes at 0x{off:x}) runs past the end of the file",
                              path=self.path, offset=off)
        return self.pread(n, off)
