"""VhdxDevice: a VHDX file (fixed, dynamic or differencing) as a BlockDevice (MS-VHDX §2.4, §2.5).

Reads go block by block through the BAT (read in 4 KiB pages, never whole); partially
present blocks of a differencing file consult the sector bitmap and read the rest from
the parent. Writes allocate new payload blocks 1 MiB aligned at the end of the file and
then update the BAT entry; the first write of a session updates both headers (new
FileWriteGuid and DataWriteGuid, SequenceNumber + 1, non-current header first, §2.2.2.1).
All host I/O goes through image/hostio.py, so an edit's undo journal covers every byte.
"""
from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ...errors import FormatError, ImageError, UnsupportedError
from ...formats import vhdx as vx
from .. import hostio
from ..base import ReopenableFile, Run, RunKind, check_range, host_data_ranges, merge_runs
from . import log as vlog
from .layout import Layout, Problems, check_log_fields, read_headers, read_metadata, read_regions

BAT_PAGE_ENTRIES = 512
BAT_CACHE_PAGES = 256


class VhdxDevice(ReopenableFile):
    """One VHDX file. `parent` (a BlockDevice of the same size) serves what a differencing
    file does not hold."""

    def __init__(self, path: str, writable: bool = False) -> None:
        self.path = path
        self.writable = writable
        self._fd = self._open_file()
        self.parent: Any = None   # a BlockDevice
        self.warnings: list[str] = []
        self._overlay: dict[int, bytes] = {}     # page offset -> 4 KiB (read-only log replay)
        self._bat_pages: OrderedDict[int, list[int]] = OrderedDict()
        self._session_started = False
        self.replayed_entries = 0
        try:
            self.layout = self._load()
        except BaseException:
            self._close_file()
            raise
        lay = self.layout
        self.size_bytes = lay.virtual_bytes
        self.block_bytes = lay.block_bytes
        self.sector_bytes = lay.logical_sector_bytes
        self.ratio = lay.chunk_ratio

    # -- opening --------------------------------------------------------------------------
    @property
    def file_bytes(self) -> int:
        return max(hostio.file_bytes(self._fd), self._overlay_end)

    _overlay_end = 0

    def pread(self, length: int, offset: int) -> bytes:
        """File bytes as replayed: the in-memory overlay of a read-only replay over the file."""
        data = hostio.pread(self._fd, length, offset)
        if self._overlay:
            want = min(offset + length, self.file_bytes) - offset
            buf = bytearray(data.ljust(max(want, len(data)), b"\0"))
            first = offset // vlog.SECTOR * vlog.SECTOR
            for page in range(first, offset + length, vlog.SECTOR):
                sec = self._overlay.get(page)
                if sec is None:
                    continue
                lo, hi = max(page, offset), min(page + vlog.SECTOR, offset + len(buf))
                if lo < hi:
                    buf[lo - offset:hi - offset] = sec[lo - page:hi - page]
            data = bytes(buf)
        return data

    def _load(self) -> Layout:
        probs = Problems(strict=True, path=self.path)
        fb = hostio.file_bytes(self._fd)
        headers, current = read_headers(self.pread, fb, probs)
        lay = Layout(fb, headers, current)
        for p in probs.found:
            self.warnings.append(p.message)
        check_log_fields(lay.header, fb, probs, headers[current].offset)
        if lay.header.log_guid != vx.ZERO_GUID and lay.header.log_length_bytes:
            self._replay(lay)
            lay.file_bytes = self.file_bytes
        read_regions(self.pread, lay, probs)
        read_metadata(self.pread, lay, probs)
        self.warnings += [p.message for p in probs.found if p.message not in self.warnings]
        return lay

    def _replay(self, lay: Layout) -> None:
        h = lay.header
        try:
            seq = vlog.find_active_sequence(self.pread, h.log_offset, h.log_length_bytes, h.log_guid)
        except vlog.LogError as exc:
            raise FormatError(f"log: {exc}", path=self.path, offset=h.log_offset) from None
        if seq is None:
            raise FormatError("the log is not empty (LogGuid is set) but holds no valid entry "
                              "sequence: the file is corrupt", path=self.path, offset=h.log_offset)
        head = seq.head
        if lay.file_bytes < head.flushed_file_offset:
            raise FormatError(f"the file is {lay.file_bytes} bytes, shorter than the "
                              f"{head.flushed_file_offset} its log says were flushed: it was "
                              "truncated", path=self.path, offset=h.log_offset)
        self.replayed_entries = len(seq.entries)
        if self.writable:
            for entry in seq.entries:
                for w in entry.writes:
                    if w.data is None:
                        for off in range(0, w.length_bytes, 1 << 20):
                            n = min(1 << 20, w.length_bytes - off)
                            hostio.pwrite(self._fd, bytes(n), w.file_offset + off)
                    else:
                        hostio.pwrite(self._fd, w.data, w.file_offset)
            if hostio.file_bytes(self._fd) < head.last_file_offset:
                hostio.ftruncate(self._fd, head.last_file_offset)
            hostio.fsync(self._fd)
            self._write_headers(lay, new_data_guid=False, log_guid=vx.ZERO_GUID)
            self.warnings.append(f"the log was replayed ({len(seq.entries)} entries) and cleared")
            return
        zero = bytes(vlog.SECTOR)
        end = lay.file_bytes
        for entry in seq.entries:
            for w in entry.writes:
                if w.data is None:
                    for off in range(0, w.length_bytes, vlog.SECTOR):
                        self._overlay[w.file_offset + off] = zero
                else:
                    self._overlay[w.file_offset] = w.data
                end = max(end, w.file_offset + w.length_bytes)
        self._overlay_end = max(end, head.last_file_offset)
        self.warnings.append(f"the log holds {len(seq.entries)} entries not yet applied: read "
                             "with them applied in memory (the file is unchanged)")

    def _write_headers(self, lay: Layout, new_data_guid: bool, log_guid: bytes | None = None) -> None:
        """Update the headers as §2.2.2.1 says: the non-current first, then the other."""
        cur = lay.headers[lay.current].fields
        file_guid = uuid.uuid4().bytes_le
        data_guid = uuid.uuid4().bytes_le if new_data_guid else cur.data_write_guid
        seq = cur.sequence_number
        slot = lay.current
        for _ in range(2):
            slot = 1 - slot
            seq += 1
            fields = dict(cur)
            fields.pop("_io", None)
            fields.update(sequence_number=seq, file_write_guid=file_guid,
                          data_write_guid=data_guid, checksum=0)
            if log_guid is not None:
                fields["log_guid"] = log_guid
            raw = vx.with_checksum(vx.Header.build(fields))
            off = vx.HEADER_OFFSETS[slot]
            hostio.pwrite(self._fd, raw, off)
            hostio.fsync(self._fd)
            lay.headers[slot].raw, lay.headers[slot].fields = raw, vx.Header.parse(raw)
            lay.headers[slot].problem = None
            lay.current = slot

    @property
    def data_write_guid(self) -> bytes:
        return self.layout.header.data_write_guid

    @property
    def subformat(self) -> str:
        lay = self.layout
        if lay.has_parent:
            return "vhdx-differencing"
        return "vhdx-fixed" if lay.leave_allocated else "vhdx-dynamic"

    # -- the BAT --------------------------------------------------------------------------
    def entry(self, index: int) -> int:
        page = index // BAT_PAGE_ENTRIES
        got = self._bat_pages.get(page)
        if got is None:
            lay = self.layout
            start = page * BAT_PAGE_ENTRIES
            n = min(BAT_PAGE_ENTRIES, lay.bat_bytes // 8 - start)
            raw = self.pread(n * 8, lay.bat_offset + start * 8)
            if len(raw) < n * 8:
                raise ImageError("the BAT reaches past the end of the file", path=self.path,
                                 offset=lay.bat_offset + start * 8)
            got = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, n * 8, 8)]
            self._bat_pages[page] = got
            while len(self._bat_pages) > BAT_CACHE_PAGES:
                self._bat_pages.popitem(last=False)
        else:
            self._bat_pages.move_to_end(page)
        return got[index % BAT_PAGE_ENTRIES]

    def _set_entry(self, index: int, value: int) -> None:
        hostio.pwrite(self._fd, value.to_bytes(8, "little"), self.layout.bat_offset + index * 8)
        page = self._bat_pages.get(index // BAT_PAGE_ENTRIES)
        if page is not None:
            page[index % BAT_PAGE_ENTRIES] = value

    def _block_at(self, block: int, entry: int, length: int) -> int:
        """The file offset of an allocated block, checked against the file."""
        off = vx.bat_offset(entry)
        if off < vx.HEADER_SECTION_BYTES or off + length > self.file_bytes:
            where = ("inside the header section" if off < vx.HEADER_SECTION_BYTES
                     else "past the end of the file")
            raise ImageError(f"BAT entry of block {block} points to 0x{off:x}, {where}",
                             path=self.path, offset=self.layout.bat_offset
                             + vx.payload_index(block, self.ratio) * 8)
        return off

    def _bitmap(self, block: int, first_sector: int, sectors: int) -> list[bool] | None:
        """Presence bits of `sectors` sectors of `block` from `first_sector` (None if the
        chunk has no sector bitmap)."""
        chunk = block // self.ratio
        sb = self.entry(vx.bitmap_index(chunk, self.ratio))
        if vx.bat_state(sb) != vx.SB_BLOCK_PRESENT:
            return None
        base = self._block_at(block, sb, vx.SECTOR_BITMAP_BLOCK_BYTES)
        bit0 = (block % self.ratio) * (self.block_bytes // self.sector_bytes) + first_sector
        raw = self.pread((bit0 + sectors + 7) // 8 - bit0 // 8, base + bit0 // 8)
        return [bool(raw[(bit0 + i) // 8 - bit0 // 8] >> ((bit0 + i) % 8) & 1)
                for i in range(sectors)]

    # -- reading --------------------------------------------------------------------------
    def _from_parent(self, offset: int, length: int) -> bytes:
        return self.parent.read_at(offset, length) if self.parent is not None else bytes(length)

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        out = bytearray()
        pos, end = offset, offset + length
        while pos < end:
            block, within = divmod(pos, self.block_bytes)
            n = min(end - pos, self.block_bytes - within)
            out += self._read_block(block, within, n, pos)
            pos += n
        return bytes(out)

    def _read_block(self, block: int, within: int, n: int, pos: int) -> bytes:
        e = self.entry(vx.payload_index(block, self.ratio))
        st = vx.bat_state(e)
        if st == vx.PAYLOAD_BLOCK_FULLY_PRESENT:
            off = self._block_at(block, e, self.block_bytes_of(block))
            data = self.pread(n, off + within)
            if len(data) < n:
                raise ImageError("short read inside a payload block", path=self.path, offset=off)
            return data
        if st == vx.PAYLOAD_BLOCK_PARTIALLY_PRESENT and self.layout.has_parent:
            return self._read_partial(block, e, within, n, pos)
        if st in (vx.PAYLOAD_BLOCK_NOT_PRESENT, vx.PAYLOAD_BLOCK_UNDEFINED) and self.layout.has_parent:
            return self._from_parent(pos, n)
        if st in (vx.PAYLOAD_BLOCK_NOT_PRESENT, vx.PAYLOAD_BLOCK_UNDEFINED,
                  vx.PAYLOAD_BLOCK_ZERO, vx.PAYLOAD_BLOCK_UNMAPPED):
            return bytes(n)
        raise FormatError(f"BAT entry of block {block} has state {st}, not valid for a "
                          f"{self.subformat} file", path=self.path,
                          offset=self.layout.bat_offset + vx.payload_index(block, self.ratio) * 8)

    def block_bytes_of(self, block: int) -> int:
        """The bytes of `block` the file must hold (the last block may be cut by the size,
        but qemu and Hyper-V allocate it whole; only what the disk uses is required)."""
        return min(self.block_bytes, self.size_bytes - block * self.block_bytes)

    def _read_partial(self, block: int, e: int, within: int, n: int, pos: int) -> bytes:
        ss = self.sector_bytes
        first, last = within // ss, (within + n - 1) // ss
        bits = self._bitmap(block, first, last - first + 1)
        if bits is None:
            raise FormatError(f"block {block} is partially present but its chunk has no "
                              "sector bitmap", path=self.path)
        off = self._block_at(block, e, self.block_bytes_of(block))
        out = bytearray()
        i = 0
        while i < len(bits):
            j = i
            while j < len(bits) and bits[j] == bits[i]:
                j += 1
            lo = max(within, (first + i) * ss)
            hi = min(within + n, (first + j) * ss)
            if bits[i]:
                out += self.pread(hi - lo, off + lo)
            else:
                out += self._from_parent(pos - within + lo, hi - lo)
            i = j
        return bytes(out)

    def runs(self) -> Iterator[Run]:
        return merge_runs(self._runs())

    def _runs(self) -> Iterator[Run]:
        hostio.settle(self._fd)   # SEEK_DATA sees only what reached the file
        diff = self.layout.has_parent
        for block in range(self.layout.data_blocks):
            start = block * self.block_bytes
            n = self.block_bytes_of(block)
            e = self.entry(vx.payload_index(block, self.ratio))
            st = vx.bat_state(e)
            if st == vx.PAYLOAD_BLOCK_FULLY_PRESENT:
                yield from self._stored_runs(start, n, self._block_at(block, e, n))
            elif st == vx.PAYLOAD_BLOCK_PARTIALLY_PRESENT and diff:
                yield from self._partial_runs(block, e, start, n)
            elif st in (vx.PAYLOAD_BLOCK_ZERO, vx.PAYLOAD_BLOCK_UNMAPPED):
                yield Run(start, n, RunKind.ZERO)
            elif st in (vx.PAYLOAD_BLOCK_NOT_PRESENT, vx.PAYLOAD_BLOCK_UNDEFINED):
                yield Run(start, n, RunKind.PARENT if diff else RunKind.UNALLOCATED)
            else:
                self._read_block(block, 0, 1, start)   # raises: the state is not valid here

    def _stored_runs(self, start: int, n: int, off: int) -> Iterator[Run]:
        """A fully present block: DATA, except where the host file has a hole (a fixed
        file's untouched blocks), which reads as zeros without being stored."""
        if self._overlay:
            yield Run(start, n, RunKind.DATA, self.path, off)
            return
        pos = off
        for lo, length in host_data_ranges(self._fd, off, off + n):
            if lo > pos:
                yield Run(start + pos - off, lo - pos, RunKind.UNALLOCATED)
            yield Run(start + lo - off, length, RunKind.DATA, self.path, lo)
            pos = lo + length
        if pos < off + n:
            yield Run(start + pos - off, off + n - pos, RunKind.UNALLOCATED)

    def _partial_runs(self, block: int, e: int, start: int, n: int) -> Iterator[Run]:
        ss = self.sector_bytes
        bits = self._bitmap(block, 0, n // ss)
        if bits is None:
            self._read_block(block, 0, 1, start)   # raises: a partial block needs its bitmap
            return
        off = vx.bat_offset(e)
        for i, present in enumerate(bits):
            if present:
                yield Run(start + i * ss, ss, RunKind.DATA, self.path, off + i * ss)
            else:
                yield Run(start + i * ss, ss, RunKind.PARENT)

    # -- writing --------------------------------------------------------------------------
    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if not self.writable:
            raise UnsupportedError("image is open read-only", path=self.path)
        check_range(self, offset, len(data))
        if not data:
            return
        ss = self.sector_bytes
        lo, hi = offset // ss * ss, -(-(offset + len(data)) // ss) * ss
        if lo != offset or hi != offset + len(data):
            buf = bytearray(self.read_at(lo, hi - lo))
            buf[offset - lo:offset - lo + len(data)] = data
            data, offset = bytes(buf), lo
        self._start_session()
        view = memoryview(bytes(data))
        pos = offset
        while view:
            block, within = divmod(pos, self.block_bytes)
            n = min(len(view), self.block_bytes - within)
            self._write_block(block, within, view[:n])
            view, pos = view[n:], pos + n

    def _start_session(self) -> None:
        if not self._session_started:
            self._write_headers(self.layout, new_data_guid=True)
            self._session_started = True

    def _allocate(self, length: int) -> int:
        """A new 1 MiB aligned stretch at the end of the file, zero filled."""
        end = hostio.file_bytes(self._fd)
        at = -(-end // vx.MIB) * vx.MIB
        hostio.ftruncate(self._fd, at + -(-length // vx.MIB) * vx.MIB)
        return at

    def _write_block(self, block: int, within: int, piece: memoryview) -> None:
        idx = vx.payload_index(block, self.ratio)
        e = self.entry(idx)
        st = vx.bat_state(e)
        diff = self.layout.has_parent
        if st in (vx.PAYLOAD_BLOCK_FULLY_PRESENT, vx.PAYLOAD_BLOCK_PARTIALLY_PRESENT):
            off = self._block_at(block, e, self.block_bytes_of(block))
            hostio.pwrite(self._fd, piece, off + within)
            if st == vx.PAYLOAD_BLOCK_PARTIALLY_PRESENT and diff:
                self._set_bits(block, within, len(piece))
            return
        if st not in (0, 1, 2, 3):
            raise FormatError(f"BAT entry of block {block} has state {st}", path=self.path)
        whole = within == 0 and len(piece) == self.block_bytes_of(block)
        from_parent = diff and st in (vx.PAYLOAD_BLOCK_NOT_PRESENT, vx.PAYLOAD_BLOCK_UNDEFINED)
        off = self._allocate(self.block_bytes)
        hostio.pwrite(self._fd, piece, off + within)
        if from_parent and not whole:
            self._set_entry(idx, vx.bat_entry(vx.PAYLOAD_BLOCK_PARTIALLY_PRESENT, off))
            self._set_bits(block, within, len(piece))
        else:
            self._set_entry(idx, vx.bat_entry(vx.PAYLOAD_BLOCK_FULLY_PRESENT, off))

    def _set_bits(self, block: int, within: int, length: int) -> None:
        chunk = block // self.ratio
        sbi = vx.bitmap_index(chunk, self.ratio)
        sb = self.entry(sbi)
        if vx.bat_state(sb) != vx.SB_BLOCK_PRESENT:
            base = self._allocate(vx.SECTOR_BITMAP_BLOCK_BYTES)
            self._set_entry(sbi, vx.bat_entry(vx.SB_BLOCK_PRESENT, base))
        else:
            base = vx.bat_offset(sb)
        ss = self.sector_bytes
        bit0 = (block % self.ratio) * (self.block_bytes // ss) + within // ss
        nbits = length // ss
        lo, hi = bit0 // 8, (bit0 + nbits + 7) // 8
        buf = bytearray(hostio.pread(self._fd, hi - lo, base + lo).ljust(hi - lo, b"\0"))
        for b in range(bit0, bit0 + nbits):
            buf[b // 8 - lo] |= 1 << (b % 8)
        hostio.pwrite(self._fd, bytes(buf), base + lo)

    def flush(self) -> None:
        if self.writable:
            hostio.fsync(self._fd)

    def close(self) -> None:
        self._close_file()

    @property
    def fd(self) -> int:
        return self._fd

