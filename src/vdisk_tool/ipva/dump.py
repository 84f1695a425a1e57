"""The crash-dump store on hd-dump: read, check, extract, append, clear (specs/dump-store.md,
ipva-model.md §5).

Everything works on a BlockDevice. Reading never trusts the store header alone: when it is
damaged the slots are found by scanning the device's stored runs for record headers, so a
scan costs O(data), not O(capacity).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..errors import Finding, FormatError, RefusedError, Severity
from ..formats import dump_store as ds
from ..image.base import BlockDevice
from .dump_scan import MIN_SCAN_SLOT_SECTORS as MIN_SCAN_SLOT_SECTORS
from .dump_scan import SCAN_CHUNK_BYTES, scan_records, stored_spans


class RecordStatus(str, enum.Enum):
    GOOD = "good"
    TORN = "torn"
    EMPTY = "empty"


@dataclass(frozen=True)
class DumpRecord:
    """One slot's record. A torn record's fields may be untrustworthy (see `problem`)."""

    slot: int
    offset: int                 # byte offset of the record header
    status: RecordStatus
    sequence: int
    build: int
    time: int
    version: str
    payload_size: int           # as the header declares it
    salvage_bytes: int          # payload bytes that can be read back, bounded by the slot
    problem: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"slot": self.slot, "offset": self.offset, "status": self.status.value,
                "sequence": self.sequence, "build": self.build, "time": self.time,
                "version": self.version, "payload_bytes": self.payload_size,
                "problem": self.problem}


@dataclass(frozen=True)
class DumpStore:
    """What a read of the store found: the layout in use, the records, the findings."""

    size_bytes: int
    header_ok: bool
    header_present: bool
    slot_sectors: int
    slot_count: int
    next_slot: int | None
    scanned: bool               # True when the layout was inferred by scanning
    records: tuple[DumpRecord, ...]
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def used(self) -> list[DumpRecord]:
        return [r for r in self.records if r.status != RecordStatus.EMPTY]

    @property
    def good(self) -> list[DumpRecord]:
        return sorted((r for r in self.records if r.status == RecordStatus.GOOD),
                      key=lambda r: r.sequence)

    @property
    def torn(self) -> list[DumpRecord]:
        return [r for r in self.records if r.status == RecordStatus.TORN]

    @property
    def newest_good(self) -> DumpRecord | None:
        good = self.good
        return good[-1] if good else None

    @property
    def newest(self) -> DumpRecord | None:
        """The used record with the highest sequence, good or torn."""
        used = self.used
        return max(used, key=lambda r: (r.sequence, r.status == RecordStatus.GOOD)) if used else None

    def by_sequence(self, sequence: int) -> list[DumpRecord]:
        return [r for r in self.used if r.sequence == sequence]

    def to_dict(self) -> dict[str, object]:
        return {"size_bytes": self.size_bytes, "header_ok": self.header_ok,
                "header_present": self.header_present, "slot_sectors": self.slot_sectors,
                "slot_count": self.slot_count, "next_slot": self.next_slot,
                "scanned": self.scanned,
                "records": [r.to_dict() for r in self.records],
                "empty_slots": self.slot_count - len(self.used),
                "findings": [f.to_dict() for f in self.findings]}


def _finding(code: str, sev: Severity, msg: str, offset: int | None = None,
             fixable: bool = False) -> Finding:
    return Finding(code, sev, msg, offset, fixable)


def _check_device(dev: BlockDevice) -> None:
    if dev.size_bytes < (ds.FIRST_SLOT_LBA + 1) * ds.SECTOR_BYTES:
        raise FormatError(f"a dump store needs more than {ds.FIRST_SLOT_LBA} sectors; the disk "
                          f"has {dev.size_bytes // ds.SECTOR_BYTES}", offset=0)


# -- the store header --------------------------------------------------------------------------
def check_store_header(raw: bytes, device_bytes: int) -> tuple[ds.StoreFields, list[Finding]]:
    """Judge sector 0. An error finding means the header cannot be trusted for the layout."""
    f = ds.parse_store_header(raw)
    out: list[Finding] = []
    E = Severity.ERROR
    if raw[:ds.HEADER_BYTES].count(0) == ds.HEADER_BYTES:
        out.append(_finding("dump.header-missing", Severity.INFO,
                            "no store header (sector 0 is zero): the store was never "
                            "initialised or was wiped", 0, True))
        return f, out
    if f.magic != ds.STORE_MAGIC:
        out.append(_finding("dump.header-magic", E, f"StoreHeader.magic: expected "
                            f"{ds.STORE_MAGIC.decode()!r}, got {f.magic!r}", 0, True))
    if not f.crc_ok:
        out.append(_finding("dump.header-crc", E, f"StoreHeader.header_crc32c: stored "
                            f"0x{f.header_crc32c:08x}, computed 0x{f.computed_crc32c:08x}",
                            ds.STORE_FIELD_OFFSETS["header_crc32c"], True))
    if f.version != ds.STORE_VERSION or f.header_size != ds.HEADER_BYTES:
        out.append(_finding("dump.header-version", E, f"StoreHeader: version {f.version} / "
                            f"header_size {f.header_size}, expected 1 / 512",
                            ds.STORE_FIELD_OFFSETS["version"], True))
    fit = ds.slots_that_fit(device_bytes, f.slot_sectors)
    if not 2 <= f.slot_sectors <= ds.MAX_SLOT_SECTORS:
        out.append(_finding("dump.header-geometry", E, f"StoreHeader.slot_sectors: "
                            f"{f.slot_sectors} is outside 2..{ds.MAX_SLOT_SECTORS}",
                            ds.STORE_FIELD_OFFSETS["slot_sectors"], True))
    elif not 1 <= f.slot_count <= fit:
        out.append(_finding("dump.header-geometry", E, f"StoreHeader.slot_count: {f.slot_count} "
                            f"slots declared, 1..{fit} fit on the disk",
                            ds.STORE_FIELD_OFFSETS["slot_count"], True))
    elif f.next_slot >= f.slot_count:
        out.append(_finding("dump.header-next-slot", E, f"StoreHeader.next_slot: {f.next_slot} "
                            f"is not below slot_count {f.slot_count}",
                            ds.STORE_FIELD_OFFSETS["next_slot"], True))
    if not f.reserved_zero and not out:
        out.append(_finding("dump.header-reserved", Severity.WARNING,
                            "StoreHeader.reserved: non-zero bytes", 0x18, True))
    return f, out


# -- records -------------------------------------------------------------------------------------
def read_record(dev: BlockDevice, slot: int, offset: int, slot_bytes: int) -> DumpRecord:
    """Classify the record whose header sits at `offset` in a slot of `slot_bytes`."""
    room = max(0, min(slot_bytes, dev.size_bytes - offset) - ds.HEADER_BYTES)
    raw = dev.read_at(offset, ds.HEADER_BYTES)
    if raw.count(0) == len(raw):
        return DumpRecord(slot, offset, RecordStatus.EMPTY, 0, 0, 0, "", 0, 0)
    r = ds.parse_record_header(raw)
    if r.magic != ds.RECORD_MAGIC:
        return DumpRecord(slot, offset, RecordStatus.EMPTY, 0, 0, 0, "", 0, 0,
                          "slot holds bytes that are not a record header")
    torn = DumpRecord(slot, offset, RecordStatus.TORN, r.sequence, r.build, r.time, r.version,
                      r.payload_size, min(r.payload_size, room))
    if not r.crc_ok:
        return _with(torn, "record header CRC-32C mismatch", salvage=min(r.payload_size, room))
    if r.sequence == 0:
        return DumpRecord(slot, offset, RecordStatus.EMPTY, 0, r.build, r.time, r.version, 0, 0)
    if r.payload_size > room:
        return _with(torn, f"payload_size {r.payload_size} exceeds the {room} bytes the slot holds",
                     salvage=room)
    payload = dev.read_at(offset + ds.HEADER_BYTES, r.payload_size)
    crc = ds.crc32c(payload)
    if crc != r.payload_crc32c:
        return _with(torn, f"payload CRC-32C 0x{crc:08x}, header says 0x{r.payload_crc32c:08x}",
                     salvage=r.payload_size)
    return DumpRecord(slot, offset, RecordStatus.GOOD, r.sequence, r.build, r.time, r.version,
                      r.payload_size, r.payload_size)


def _with(rec: DumpRecord, problem: str, salvage: int) -> DumpRecord:
    return DumpRecord(rec.slot, rec.offset, rec.status, rec.sequence, rec.build, rec.time,
                      rec.version, rec.payload_size, salvage, problem)


def read_payload(dev: BlockDevice, rec: DumpRecord, salvage: bool = False) -> bytes:
    """The record's text. A torn record only with salvage=True (its bytes as they are)."""
    if rec.status == RecordStatus.EMPTY:
        raise RefusedError(f"slot {rec.slot} is empty")
    if rec.status == RecordStatus.TORN and not salvage:
        raise RefusedError(f"record {rec.sequence} in slot {rec.slot} is torn ({rec.problem})",
                           hint="pass --salvage to write its bytes anyway")
    return dev.read_at(rec.offset + ds.HEADER_BYTES, rec.salvage_bytes)


# -- reading the whole store ---------------------------------------------------------------------
def read_store(dev: BlockDevice) -> DumpStore:
    """Read the store: trust a sound header, scan the slots when it is damaged."""
    _check_device(dev)
    fields, findings = check_store_header(dev.read_at(0, ds.HEADER_BYTES), dev.size_bytes)
    present = not any(f.code == "dump.header-missing" for f in findings)
    header_ok = present and not any(f.severity == Severity.ERROR for f in findings)
    if header_ok:
        slot_sectors, count, next_slot = fields.slot_sectors, fields.slot_count, fields.next_slot
        records = _read_slots(dev, slot_sectors, count)
        scanned = False
    else:
        slot_sectors, hits = scan_records(dev)
        count, next_slot, scanned = ds.slots_that_fit(dev.size_bytes, slot_sectors), None, True
        slot_bytes = slot_sectors * ds.SECTOR_BYTES
        records = [read_record(dev, (off // ds.SECTOR_BYTES - ds.FIRST_SLOT_LBA) // slot_sectors,
                               off, slot_bytes) for off in hits]
        if present and records:
            findings.append(_finding("dump.slots-scanned", Severity.INFO,
                                     f"store header unusable: {len(records)} record(s) found by "
                                     f"scanning, slot size {slot_sectors} sectors", 0))
    findings += _record_findings(records, next_slot, count)
    return DumpStore(dev.size_bytes, header_ok, present, slot_sectors, count, next_slot, scanned,
                     tuple(records), tuple(findings))


def _read_slots(dev: BlockDevice, slot_sectors: int, count: int) -> list[DumpRecord]:
    """Every slot whose header sector holds stored bytes (others are empty without a read)."""
    slot_bytes = slot_sectors * ds.SECTOR_BYTES
    first = ds.slot_offset(0, slot_sectors)
    found: list[DumpRecord] = []
    for lo, hi in stored_spans(dev, first):
        i = max(0, (lo - first) // slot_bytes)
        while i < count:
            off = ds.slot_offset(i, slot_sectors)
            if off >= hi:
                break
            if off + ds.HEADER_BYTES > lo:
                rec = read_record(dev, i, off, slot_bytes)
                if rec.status != RecordStatus.EMPTY or rec.problem:
                    found.append(rec)
            i += 1
    return found


def _record_findings(records: list[DumpRecord], next_slot: int | None,
                     count: int) -> list[Finding]:
    out: list[Finding] = []
    for r in records:
        if r.status == RecordStatus.TORN:
            out.append(_finding("dump.record-torn", Severity.WARNING,
                                f"slot {r.slot}: record {r.sequence} is torn: {r.problem}",
                                r.offset))
        elif r.problem:
            out.append(_finding("dump.slot-unrecognised", Severity.INFO,
                                f"slot {r.slot}: {r.problem}", r.offset))
    seqs: dict[int, int] = {}
    for r in records:
        if r.status == RecordStatus.GOOD:
            seqs[r.sequence] = seqs.get(r.sequence, 0) + 1
    for seq, n in sorted(seqs.items()):
        if n > 1:
            out.append(_finding("dump.sequence-duplicate", Severity.WARNING,
                                f"sequence {seq} appears in {n} good records"))
    used = [r for r in records if r.status != RecordStatus.EMPTY]
    if next_slot is not None and used and count:
        newest = max(used, key=lambda r: r.sequence)
        if (newest.slot + 1) % count != next_slot:
            out.append(_finding("dump.next-slot-mismatch", Severity.INFO,
                                f"next_slot is {next_slot}, the newest record (sequence "
                                f"{newest.sequence}) is in slot {newest.slot}",
                                ds.STORE_FIELD_OFFSETS["next_slot"], True))
    return out


# -- writing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClearPlan:
    """What init/clear will do: the layout written and the slots zeroed."""

    slot_sectors: int
    slot_count: int
    zeroed_slots: tuple[int, ...]
    records_lost: int


def plan_clear(dev: BlockDevice, slot_sectors: int | None = None) -> ClearPlan:
    """Plan an empty store: keep the current slot size unless one is given."""
    _check_device(dev)
    store = read_store(dev)
    size = slot_sectors or store.slot_sectors
    if not 2 <= size <= ds.MAX_SLOT_SECTORS:
        raise RefusedError(f"slot size {size} sectors is outside 2..{ds.MAX_SLOT_SECTORS}")
    count = ds.slots_that_fit(dev.size_bytes, size)
    if count < 1:
        raise RefusedError(f"no slot of {size} sectors fits on this disk")
    first = ds.slot_offset(0, 0)
    slot_bytes = store.slot_sectors * ds.SECTOR_BYTES
    dirty: set[int] = set()
    for lo, hi in stored_spans(dev, first):
        dirty.update(range((lo - first) // slot_bytes, (hi - 1 - first) // slot_bytes + 1))
    return ClearPlan(size, count, tuple(sorted(dirty)), len(store.used))


def apply_clear(dev: BlockDevice, plan: ClearPlan) -> None:
    """Write an empty store: zero every stored byte after the header, then the header."""
    first = ds.slot_offset(0, 0)
    zero = bytes(SCAN_CHUNK_BYTES)
    for lo, hi in list(stored_spans(dev, first)):
        pos = lo
        while pos < hi:
            n = min(len(zero), hi - pos)
            dev.write_at(pos, zero[:n])
            pos += n
    dev.write_at(0, ds.build_store_header(slot_sectors=plan.slot_sectors,
                                          slot_count=plan.slot_count))
    dev.flush()


def write_record(dev: BlockDevice, payload: bytes, *, build: int, version: str,
                 time: int) -> DumpRecord:
    """Append a record as the appliance does: slot next_slot, sequence one above the
    highest seen; header, then payload, then the store header's next_slot."""
    store = read_store(dev)
    if not store.header_ok:
        raise RefusedError("the store header is missing or damaged; not appending to it",
                           hint="run `vdisk dump init` first (it keeps no records)")
    limit = ds.max_payload_bytes(store.slot_sectors)
    if len(payload) > limit:
        raise RefusedError(f"the text is {len(payload)} bytes; a slot holds at most {limit}")
    slot = store.next_slot or 0
    sequence = max((r.sequence for r in store.used), default=0) + 1
    if sequence > 0xFFFFFFFF:
        raise RefusedError("the sequence counter is exhausted; clear the store")
    off = ds.slot_offset(slot, store.slot_sectors)
    old = [r for r in store.records if r.slot == slot]
    old_bytes = ds.HEADER_BYTES + (old[0].salvage_bytes if old else 0)
    header = ds.build_record_header(sequence=sequence, build=build, time=time, payload=payload,
                                    version=version)
    dev.write_at(off, header)
    body = payload + bytes(max(0, old_bytes - ds.HEADER_BYTES - len(payload)))
    if body:
        dev.write_at(off + ds.HEADER_BYTES, body)
    dev.write_at(0, ds.build_store_header(slot_sectors=store.slot_sectors,
                                          slot_count=store.slot_count,
                                          next_slot=(slot + 1) % store.slot_count))
    dev.flush()
    return read_record(dev, slot, off, store.slot_sectors * ds.SECTOR_BYTES)
