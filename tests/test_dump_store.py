"""The dump store (specs/dump-store.md): schemas by known values, and the reader/writer held
against stores laid out by tests/dumpbuilder.py (an independent builder)."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest
from dumpbuilder import StoreBuilder, crc32c, dump_text, record_header, store_header
from hypothesis import given, settings
from hypothesis import strategies as st

from vdisk_tool.errors import FormatError, RefusedError
from vdisk_tool.formats import dump_store as ds
from vdisk_tool.image.base import FileDevice
from vdisk_tool.ipva import dump

MiB = 1 << 20


def test_crc32c_is_castagnoli():
    # the standard check value of CRC-32C, from both implementations
    assert ds.crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283


def test_store_header_known_bytes():
    raw = ds.build_store_header(slot_sectors=2048, slot_count=7, next_slot=3)
    assert raw[:8] == b"IPVADUMP"
    assert struct.unpack_from("<HHIII", raw, 8) == (1, 512, 2048, 7, 3)
    assert raw[0x18:0x1FC] == bytes(0x1FC - 0x18)
    assert struct.unpack_from("<I", raw, 0x1FC)[0] == crc32c(raw[:0x1FC])
    assert raw == store_header(2048, 7, 3)
    f = ds.parse_store_header(raw)
    assert (f.slot_sectors, f.slot_count, f.next_slot, f.crc_ok) == (2048, 7, 3, True)


def test_record_header_known_bytes():
    payload = b"crash\n"
    raw = ds.build_record_header(sequence=5, build=90468, time=1700000005, payload=payload,
                                 version="13r2 sr11")
    assert raw == record_header(5, payload, 90468, 1700000005, "13r2 sr11")
    assert raw[:8] == b"IPVACRSH"
    assert struct.unpack_from("<IIQII", raw, 8) == (5, 90468, 1700000005, 6, crc32c(payload))
    assert raw[0x20:0x40] == b"13r2 sr11".ljust(32, b"\0")
    r = ds.parse_record_header(raw)
    assert r.crc_ok and r.version == "13r2 sr11" and r.version_ok


def test_record_version_must_be_ascii():
    with pytest.raises(FormatError):
        ds.build_record_header(sequence=1, build=1, time=0, payload=b"", version="x" * 33)
    with pytest.raises(FormatError):
        ds.build_record_header(sequence=1, build=1, time=0, payload=b"", version="tab\there")


def _open(path):
    return FileDevice(path)


def test_several_records_newest_good(tmp_path):
    b = StoreBuilder(8 * MiB)
    texts = {seq: b.record(seq - 1, seq) for seq in (1, 2, 3)}
    path = b.header().write(tmp_path / "d.img")
    with _open(path) as dev:
        store = dump.read_store(dev)
        assert store.header_ok and not store.scanned
        assert (store.slot_sectors, store.slot_count, store.next_slot) == (2048, 7, 3)
        assert [(r.slot, r.sequence, r.status.value) for r in store.used] == [
            (0, 1, "good"), (1, 2, "good"), (2, 3, "good")]
        assert store.findings == ()
        newest = store.newest_good
        assert newest.sequence == 3 and newest.build == 90468 and newest.time == 1700000003
        assert dump.read_payload(dev, newest) == texts[3]


def test_ring_wrap_around(tmp_path):
    # 7 slots, sequences 1..9: slots 0 and 1 were overwritten by 8 and 9
    b = StoreBuilder(8 * MiB)
    for seq in range(1, 10):
        b.record((seq - 1) % 7, seq)
    path = b.header().write(tmp_path / "d.img")
    with _open(path) as dev:
        store = dump.read_store(dev)
    assert store.next_slot == 2
    assert sorted(r.sequence for r in store.good) == [3, 4, 5, 6, 7, 8, 9]
    assert store.newest_good.sequence == 9 and store.newest_good.slot == 1
    assert not store.findings


def test_torn_newest_record(tmp_path):
    b = StoreBuilder(8 * MiB)
    b.record(0, 1)
    good = b.record(1, 2)
    torn = b.record(2, 3, dump_text(3, lines=200), tear_at=700)
    path = b.header().write(tmp_path / "d.img")
    with _open(path) as dev:
        store = dump.read_store(dev)
        assert [r.status.value for r in store.used] == ["good", "good", "torn"]
        t = store.torn[0]
        assert t.sequence == 3 and "CRC-32C" in t.problem
        assert store.newest_good.sequence == 2
        assert store.newest.sequence == 3
        assert [f.code for f in store.findings] == ["dump.record-torn"]
        with pytest.raises(RefusedError):
            dump.read_payload(dev, t)
        salvaged = dump.read_payload(dev, t, salvage=True)
        assert salvaged[:700] == torn[:700] and len(salvaged) == len(torn)
        assert dump.read_payload(dev, store.newest_good) == good


def test_record_with_broken_header_is_torn(tmp_path):
    b = StoreBuilder(8 * MiB)
    b.record(0, 1)
    b.record(1, 2)
    b.raw(ds.slot_offset(1, 2048) + 0x20, b"X")  # flips a version byte: header CRC fails
    path = b.header().write(tmp_path / "d.img")
    with _open(path) as dev:
        store = dump.read_store(dev)
    assert [r.status.value for r in store.used] == ["good", "torn"]
    assert "header CRC" in store.torn[0].problem


def test_payload_size_beyond_slot_is_torn(tmp_path):
    b = StoreBuilder(8 * MiB)
    big = bytes(range(256)) * 8
    hdr = bytearray(record_header(1, big, 1, 1, "v"))
    struct.pack_into("<I", hdr, 0x18, 5 * MiB)
    struct.pack_into("<I", hdr, 0x1FC, crc32c(bytes(hdr[:0x1FC])))
    b.raw(ds.slot_offset(0, 2048), bytes(hdr))
    path = b.header(next_slot=1).write(tmp_path / "d.img")
    with _open(path) as dev:
        store = dump.read_store(dev)
    (t,) = store.torn
    assert "exceeds" in t.problem and t.salvage_bytes == MiB - 512


@pytest.mark.parametrize("damage", ["crc", "magic", "zero", "geometry"])
def test_damaged_header_does_not_hide_records(tmp_path, damage):
    b = StoreBuilder(8 * MiB)
    for seq in range(1, 5):
        b.record(seq - 1, seq)
    b.header()
    hdr = bytearray(store_header(2048, 7, 4))
    if damage == "crc":
        hdr[0x1FC] ^= 0xFF
    elif damage == "magic":
        hdr[:8] = b"IPVADUMQ"
    elif damage == "zero":
        hdr[:] = bytes(512)
    else:
        struct.pack_into("<I", hdr, 0x10, 9999)
        struct.pack_into("<I", hdr, 0x1FC, crc32c(bytes(hdr[:0x1FC])))
    path = b.raw(0, bytes(hdr)).write(tmp_path / "d.img")
    with _open(path) as dev:
        store = dump.read_store(dev)
    assert not store.header_ok and store.scanned
    assert [r.sequence for r in store.good] == [1, 2, 3, 4]
    codes = {f.code for f in store.findings}
    expected = {"crc": "dump.header-crc", "magic": "dump.header-magic",
                "zero": "dump.header-missing", "geometry": "dump.header-geometry"}[damage]
    assert expected in codes


def test_scan_detects_a_non_default_slot_size(tmp_path):
    b = StoreBuilder(8 * MiB, slot_sectors=512)
    texts = [b.record(i, i + 1) for i in range(5)]
    path = b.raw(0, b"garbage" * 10).write(tmp_path / "d.img")
    with _open(path) as dev:
        store = dump.read_store(dev)
        assert store.scanned and store.slot_sectors == 512
        assert [(r.slot, r.sequence) for r in store.good] == [(i, i + 1) for i in range(5)]
        assert dump.read_payload(dev, store.newest_good) == texts[-1]


def test_scan_keeps_a_torn_record_on_the_grid(tmp_path):
    b = StoreBuilder(8 * MiB)
    b.record(0, 1)
    b.record(3, 2)
    b.raw(ds.slot_offset(3, 2048) + 0x30, b"\x01")   # record 2's header CRC now fails
    path = b.write(tmp_path / "d.img")                 # and no store header at all
    with _open(path) as dev:
        store = dump.read_store(dev)
    assert [(r.slot, r.status.value) for r in store.used] == [(0, "good"), (3, "torn")]


def test_empty_store(tmp_path):
    path = StoreBuilder(8 * MiB).header().write(tmp_path / "d.img")
    with _open(path) as dev:
        store = dump.read_store(dev)
    assert store.header_ok and store.used == [] and store.newest_good is None
    assert store.findings == ()


def test_blank_disk_reads_as_uninitialised(tmp_path):
    path = StoreBuilder(8 * MiB).write(tmp_path / "d.img")
    with _open(path) as dev:
        store = dump.read_store(dev)
    assert not store.header_present and store.used == []
    assert [f.code for f in store.findings] == ["dump.header-missing"]


def test_too_small_disk_is_an_error(tmp_path):
    p = tmp_path / "tiny.img"
    p.write_bytes(bytes(4096))
    with _open(p) as dev, pytest.raises(FormatError):
        dump.read_store(dev)


def test_write_appends_like_the_appliance(tmp_path):
    b = StoreBuilder(8 * MiB)
    for seq in range(1, 8):
        b.record(seq - 1, seq, dump_text(seq, lines=300))
    path = b.header(next_slot=0).write(tmp_path / "d.img")
    with FileDevice(path, writable=True) as dev:
        rec = dump.write_record(dev, b"short\n", build=7, version="14r1", time=42)
        assert (rec.slot, rec.sequence, rec.status.value) == (0, 8, "good")
        store = dump.read_store(dev)
        assert store.next_slot == 1
        assert store.newest_good.sequence == 8
        # the longer old record's tail was zeroed, the rest of the ring is intact
        tail = dev.read_at(ds.slot_offset(0, 2048) + 512 + 6, 4096)
        assert tail == bytes(4096)
    # an independent look at the bytes: header as the builder would write it
    raw = Path(path).read_bytes()
    off = ds.slot_offset(0, 2048)
    assert raw[off:off + 512] == record_header(8, b"short\n", 7, 42, "14r1")
    assert raw[:512] == store_header(2048, 7, 1)


def test_write_refuses_oversized_text_and_a_damaged_header(tmp_path):
    path = StoreBuilder(8 * MiB).header().write(tmp_path / "d.img")
    with FileDevice(path, writable=True) as dev:
        with pytest.raises(RefusedError):
            dump.write_record(dev, bytes(MiB), build=1, version="v", time=0)
        dev.write_at(0, b"junk")
        with pytest.raises(RefusedError):
            dump.write_record(dev, b"x", build=1, version="v", time=0)


def test_clear_empties_the_store(tmp_path):
    b = StoreBuilder(8 * MiB)
    for seq in range(1, 4):
        b.record(seq - 1, seq)
    path = b.raw(0, b"broken").write(tmp_path / "d.img")
    with FileDevice(path, writable=True) as dev:
        plan = dump.plan_clear(dev)
        assert plan.records_lost == 3 and plan.zeroed_slots == (0, 1, 2)
        dump.apply_clear(dev, plan)
        store = dump.read_store(dev)
        assert store.header_ok and store.used == [] and store.slot_count == 7
    raw = Path(path).read_bytes()
    assert raw[:512] == store_header(2048, 7, 0)
    assert raw[512:].count(0) == len(raw) - 512


class _Mem:
    """A device in memory (for property tests), with every byte stored."""

    writable = False

    def __init__(self, data: bytes) -> None:
        self.data, self.size_bytes = data, len(data)

    def read_at(self, offset: int, length: int) -> bytes:
        assert offset >= 0 and offset + length <= self.size_bytes
        return self.data[offset:offset + length]

    def runs(self):
        from vdisk_tool.image.base import Run, RunKind
        yield Run(0, self.size_bytes, RunKind.DATA)


@settings(max_examples=60, deadline=None)
@given(header=st.binary(min_size=512, max_size=512),
       slots=st.lists(st.tuples(st.integers(0, 15), st.integers(0, 511), st.binary(max_size=64)),
                      max_size=6),
       magic_at=st.lists(st.integers(0, 63), max_size=4))
def test_hostile_bytes_never_crash(header, slots, magic_at):
    """Any bytes give a store or a VdiskError; torn records never pass as good."""
    data = bytearray(2048 * 512 + 32 * 1024)
    data[:512] = header
    for slot, at, blob in slots:
        off = ds.slot_offset(0, 64) + slot * 64 * 512 + at
        data[off:off + len(blob)] = blob
    for k in magic_at:
        off = ds.slot_offset(0, 0) + k * 512
        data[off:off + 8] = ds.RECORD_MAGIC
    dev = _Mem(bytes(data))
    store = dump.read_store(dev)
    for r in store.good:
        payload = dump.read_payload(dev, r)
        assert ds.crc32c(payload) == ds.parse_record_header(dev.read_at(r.offset, 512)).payload_crc32c
    assert store.slot_count <= (len(data) // 512 - 2048)
