"""Finding the bytes and the record headers of a dump store without trusting its header
(specs/dump-store.md §Corruption scenarios).

Only the device's stored runs are read, so a scan costs O(data), not O(capacity).
"""
from __future__ import annotations

import math
from collections.abc import Iterator

from ..formats import dump_store as ds
from ..image.base import BlockDevice, RunKind

SCAN_CHUNK_BYTES = 1 << 20
# A scan does not believe in slots smaller than this (a stray magic would make them tiny).
MIN_SCAN_SLOT_SECTORS = 8
_STORED = (RunKind.DATA, RunKind.PARENT)


def stored_spans(dev: BlockDevice, start: int = 0) -> Iterator[tuple[int, int]]:
    """Merged (offset, end) of the device's runs that hold bytes, from `start` on."""
    lo = hi = -1
    for run in dev.runs():
        if run.kind not in _STORED or run.end <= start:
            continue
        a = max(run.offset, start)
        if a <= hi:
            hi = max(hi, run.end)
            continue
        if lo >= 0:
            yield lo, hi
        lo, hi = a, run.end
    if lo >= 0:
        yield lo, hi


def scan_records(dev: BlockDevice) -> tuple[int, list[int]]:
    """Find record headers without the store header: (slot_sectors, header offsets).

    Every sector-aligned record magic whose header CRC holds is a record; the slot size is
    the default when it fits their positions, else the largest common step between them
    (when that step is at least MIN_SCAN_SLOT_SECTORS).
    Headers with a bad CRC count only where they sit on a slot boundary of that size.
    """
    first = ds.slot_offset(0, 0)
    sound: list[int] = []
    suspect: list[int] = []
    for off in _magic_hits(dev, first):
        raw = dev.read_at(off, ds.HEADER_BYTES)
        (sound if ds.parse_record_header(raw).crc_ok else suspect).append(off)
    step = 0
    for off in sound:
        step = math.gcd(step, (off - first) // ds.SECTOR_BYTES)
    slot_sectors = ds.DEFAULT_SLOT_SECTORS
    if step and step % ds.DEFAULT_SLOT_SECTORS and step >= MIN_SCAN_SLOT_SECTORS:
        slot_sectors = min(step, ds.MAX_SLOT_SECTORS)
    on_grid = [o for o in suspect if ((o - first) // ds.SECTOR_BYTES) % slot_sectors == 0]
    return slot_sectors, sorted(set(sound) | set(on_grid))


def _magic_hits(dev: BlockDevice, start: int) -> Iterator[int]:
    """Sector-aligned offsets >= start where the record magic begins (stored runs only)."""
    magic = ds.RECORD_MAGIC
    for lo, hi in stored_spans(dev, start):
        pos = lo - lo % ds.SECTOR_BYTES
        while pos < hi:
            n = min(SCAN_CHUNK_BYTES, hi - pos, dev.size_bytes - pos)
            n -= n % ds.SECTOR_BYTES
            if n <= 0:
                break
            data = dev.read_at(pos, n)
            k = data.find(magic)
            while k >= 0:
                if k % ds.SECTOR_BYTES == 0 and pos + k + ds.HEADER_BYTES <= dev.size_bytes:
                    yield pos + k
                k = data.find(magic, k + 1)
            pos += n
