"""An independent builder of hd-dump stores, written from specs/dump-store.md (ipva-model.md §5).

It shares no code with vdisk: its own struct layouts and its own bitwise CRC-32C, so tests
that read its stores with vdisk check vdisk against the spec, not against itself.
"""
from __future__ import annotations

import os
import struct

SECTOR = 512
FIRST_SLOT_LBA = 2048


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli): reflected polynomial 0x82F63B78, init and xor-out 0xFFFFFFFF."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _seal(body: bytes) -> bytes:
    assert len(body) == 0x1FC
    return body + struct.pack("<I", crc32c(body))


def store_header(slot_sectors: int, slot_count: int, next_slot: int) -> bytes:
    body = b"IPVADUMP" + struct.pack("<HHIII", 1, 512, slot_sectors, slot_count, next_slot)
    return _seal(body.ljust(0x1FC, b"\0"))


def record_header(sequence: int, payload: bytes, build: int, time: int, version: str,
                  payload_crc: int | None = None) -> bytes:
    crc = crc32c(payload) if payload_crc is None else payload_crc
    body = b"IPVACRSH" + struct.pack("<IIQII", sequence, build, time, len(payload), crc)
    body += version.encode("ascii").ljust(32, b"\0")
    return _seal(body.ljust(0x1FC, b"\0"))


def slot_offset(slot: int, slot_sectors: int) -> int:
    return (FIRST_SLOT_LBA + slot * slot_sectors) * SECTOR


def dump_text(sequence: int, lines: int = 20) -> bytes:
    """A plausible crash_dump.txt body, different per sequence."""
    out = [f"IPVA crash dump #{sequence}", "exception: data abort"]
    out += [f"r{i:02d}=0x{(sequence * 0x9E3779B1 + i * 0x1234567) & 0xFFFFFFFF:08x}"
            for i in range(lines)]
    return ("\n".join(out) + "\n").encode("ascii")


class StoreBuilder:
    """Lay out a store in a sparse raw file: header, then records in chosen slots."""

    def __init__(self, disk_bytes: int, slot_sectors: int = 2048) -> None:
        self.disk_bytes = disk_bytes
        self.slot_sectors = slot_sectors
        self.slot_count = (disk_bytes // SECTOR - FIRST_SLOT_LBA) // slot_sectors
        self.writes: list[tuple[int, bytes]] = []
        self.next_slot = 0

    def header(self, next_slot: int | None = None) -> StoreBuilder:
        ns = self.next_slot if next_slot is None else next_slot
        self.writes.append((0, store_header(self.slot_sectors, self.slot_count, ns)))
        return self

    def record(self, slot: int, sequence: int, payload: bytes | None = None, *,
               build: int = 90468, time: int = 1700000000, version: str = "13r2 sr11",
               tear_at: int | None = None) -> bytes:
        """Put a record in `slot`; tear_at=N keeps only the first N payload bytes (the rest
        zero), as a write cut short leaves it. Returns the full payload."""
        payload = dump_text(sequence) if payload is None else payload
        off = slot_offset(slot, self.slot_sectors)
        stored = payload if tear_at is None else payload[:tear_at]
        self.writes.append((off, record_header(sequence, payload, build, time + sequence,
                                               version)))
        self.writes.append((off + SECTOR, stored))
        self.next_slot = (slot + 1) % self.slot_count
        return payload

    def raw(self, offset: int, data: bytes) -> StoreBuilder:
        self.writes.append((offset, data))
        return self

    def write(self, path: str | os.PathLike[str]) -> str:
        with open(path, "wb") as f:
            f.truncate(self.disk_bytes)
            for off, data in self.writes:
                f.seek(off)
                f.write(data)
        return os.fspath(path)
