"""The VHDX log: find the active sequence and replay it (MS-VHDX §2.3).

A file whose header has a non-zero LogGuid must have its log replayed before anything but
the headers and the log is read. find_active_sequence() follows the search the spec gives
(§2.3.3): from every 4 KiB position, extend a sequence while the next entry verifies
(signature, CRC-32C, LogGuid, sequence numbers one apart, descriptors and data sectors
carrying the entry's sequence number); a sequence is valid when its head's Tail lies in
it; the valid sequence with the largest head sequence number is active.
Replay yields the 4 KiB writes and zero ranges in order; the caller applies them to the
file (writable) or to an in-memory overlay (read-only).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...formats import vhdx as vx

Reader = Callable[[int, int], bytes]
SECTOR = vx.LOG_SECTOR_BYTES
# a zero descriptor of more than this is not a metadata update: refused (bounds the overlay)
MAX_ZERO_BYTES = 1 << 30


class LogError(Exception):
    """The log cannot be replayed: (finding code, message)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Write:
    file_offset: int
    data: bytes | None        # None: zeros
    length_bytes: int


@dataclass(frozen=True)
class Entry:
    position: int             # offset in the log
    length_bytes: int
    tail: int
    sequence_number: int
    flushed_file_offset: int
    last_file_offset: int
    writes: tuple[Write, ...]


@dataclass(frozen=True)
class Sequence:
    entries: tuple[Entry, ...]

    @property
    def head(self) -> Entry:
        return self.entries[-1]


def _ring(read: Reader, log_offset: int, log_bytes: int, pos: int, length: int) -> bytes:
    """`length` bytes of the log from position `pos`, wrapping at its end."""
    out = bytearray()
    while len(out) < length:
        p = (pos + len(out)) % log_bytes
        n = min(length - len(out), log_bytes - p)
        piece = read(n, log_offset + p)
        if len(piece) < n:
            raise LogError("vhdx.log-past-eof", "the log reaches past the end of the file")
        out += piece
    return bytes(out)


def read_entry(read: Reader, log_offset: int, log_bytes: int, pos: int,
               log_guid: bytes) -> Entry | None:
    """The entry at log position `pos` if it verifies in every field, else None."""
    first = _ring(read, log_offset, log_bytes, pos, SECTOR)
    h = vx.LogEntryHeader.parse(first[:vx.LOG_HEADER_BYTES])
    n = h.entry_length_bytes
    if (h.signature != vx.LOG_SIGNATURE or not n or n % SECTOR or n > log_bytes
            or h.tail % SECTOR or h.tail >= log_bytes or not h.sequence_number
            or h.log_guid != log_guid or h.reserved):
        return None
    desc_sectors = -(-(vx.LOG_HEADER_BYTES + vx.LOG_DESCRIPTOR_BYTES * h.descriptor_count) // SECTOR)
    if desc_sectors * SECTOR > n:
        return None
    raw = _ring(read, log_offset, log_bytes, pos, n)
    if not vx.checksum_ok(raw):
        return None
    writes = []
    data_at = desc_sectors * SECTOR
    for i in range(h.descriptor_count):
        o = vx.LOG_HEADER_BYTES + vx.LOG_DESCRIPTOR_BYTES * i
        d = vx.LogDescriptor.parse(raw[o:o + vx.LOG_DESCRIPTOR_BYTES])
        if d.sequence_number != h.sequence_number or d.file_offset % SECTOR:
            return None
        if d.signature == vx.ZERO_SIGNATURE:
            zero_bytes = int.from_bytes(d.leading_bytes, "little")
            if d.trailing_bytes != bytes(4) or zero_bytes % SECTOR:
                return None
            if zero_bytes > MAX_ZERO_BYTES:
                raise LogError("vhdx.log-bad", f"a log entry zeroes {zero_bytes} bytes at "
                               f"0x{d.file_offset:x}: more than a metadata update can be")
            writes.append(Write(d.file_offset, None, zero_bytes))
        elif d.signature == vx.DESC_SIGNATURE:
            if data_at + SECTOR > n:
                return None
            sec = raw[data_at:data_at + SECTOR]
            data_at += SECTOR
            seq = h.sequence_number
            if (sec[:4] != vx.DATA_SIGNATURE or int.from_bytes(sec[4:8], "little") != seq >> 32
                    or int.from_bytes(sec[-4:], "little") != seq & 0xFFFFFFFF):
                return None
            writes.append(Write(d.file_offset, d.leading_bytes + sec[8:-4] + d.trailing_bytes,
                                SECTOR))
        else:
            return None
    return Entry(pos, n, h.tail, h.sequence_number, h.flushed_file_offset, h.last_file_offset,
                 tuple(writes))


def find_active_sequence(read: Reader, log_offset: int, log_bytes: int,
                         log_guid: bytes) -> Sequence | None:
    """The active sequence (§2.3.3), or None when the log holds no valid sequence."""
    cache: dict[int, Entry | None] = {}

    def entry_at(pos: int) -> Entry | None:
        if pos not in cache:
            cache[pos] = read_entry(read, log_offset, log_bytes, pos, log_guid)
        return cache[pos]

    best: Sequence | None = None
    tail = old_tail = 0
    while True:
        entries: list[Entry] = []
        pos = tail
        while True:
            e = entry_at(pos)
            if e is None or (entries and e.sequence_number != entries[-1].sequence_number + 1):
                break
            if len(entries) * SECTOR > log_bytes:
                break
            entries.append(e)
            pos = (pos + e.length_bytes) % log_bytes
        valid = bool(entries) and any(x.position == entries[-1].tail for x in entries)
        if valid and (best is None or entries[-1].sequence_number > best.head.sequence_number):
            # keep only the entries from the head's tail on: those are the sequence
            start = next(i for i, x in enumerate(entries) if x.position == entries[-1].tail)
            best = Sequence(tuple(entries[start:]))
        tail = pos % log_bytes if valid else (tail + SECTOR) % log_bytes
        if tail < old_tail or (not valid and tail == 0):
            return best
        if valid and tail <= old_tail:
            return best
        old_tail = tail
