"""MBR schema: known values (not only round trips), CHS packing, and sfdisk interop."""
from __future__ import annotations

import pytest
from conftest import need_tool, run

from vdisk_tool.errors import FormatError
from vdisk_tool.formats import mbr as fm
from vdisk_tool.fs.partition import (
    build_single_partition_mbr,
    check_partition_table,
    looks_like_mbr,
    parse_partition_table,
)


def _entry(status: int, ptype: int, lba: int, sectors: int) -> bytes:
    return (bytes([status, 0x20, 0x21, 0x00, ptype, 0xFE, 0xFF, 0xFF])
            + lba.to_bytes(4, "little") + sectors.to_bytes(4, "little"))


def _sector(*entries: bytes) -> bytes:
    table = b"".join(entries).ljust(64, b"\0")
    return bytes(440) + b"\x78\x56\x34\x12" + b"\0\0" + table + b"\x55\xaa"


def test_known_values_lba_2048_reads_as_2048() -> None:
    raw = _sector(_entry(0x80, 0x0E, 2048, 63488))
    mbr = fm.MasterBootRecord.parse(raw)
    p = mbr.partitions[0]
    assert p.first_lba == 2048 and p.sectors == 63488
    assert p.status == 0x80 and p.partition_type == 0x0E
    assert mbr.disk_signature == 0x12345678
    assert p.chs_first.head == 0x20 and p.chs_first.sector_cyl_high == 0x21
    table = parse_partition_table(raw)
    assert [q.index for q in table.partitions] == [1]
    assert table.partitions[0].active and table.partitions[0].start_bytes == 2048 * 512
    # LBA 63, the classic start, must not read as 1,056,964,608
    assert fm.MasterBootRecord.parse(_sector(_entry(0, 6, 63, 100))).partitions[0].first_lba == 63


def test_chs_known_values() -> None:
    # sfdisk writes 0x20 0x21 0x00 for LBA 2048 with 255/63 geometry: head 32, sector 33, cyl 0
    assert fm.lba_to_chs(2048) == fm.Chs(0, 32, 33)
    assert fm.encode_chs(fm.lba_to_chs(2048)) == b"\x20\x21\x00"
    assert fm.decode_chs(b"\xfe\xff\xff") == fm.Chs(1023, 254, 63)
    assert fm.lba_to_chs(10**9) == fm.Chs(1023, 254, 63)


def test_bad_signature_refused() -> None:
    raw = bytearray(_sector(_entry(0, 6, 63, 100)))
    raw[510] = 0
    with pytest.raises(FormatError, match="MasterBootRecord"):
        parse_partition_table(bytes(raw))
    assert not looks_like_mbr(bytes(raw), 1 << 30)


def test_build_single_partition() -> None:
    raw, part = build_single_partition_mbr(65536, 2048, fm.TYPE_FAT16_LBA, True, 0xCAFE)
    assert len(raw) == 512 and raw[510:] == b"\x55\xaa"
    assert raw[446] == 0x80 and raw[450] == 0x0E
    assert int.from_bytes(raw[454:458], "little") == 2048
    assert int.from_bytes(raw[458:462], "little") == 65536 - 2048
    assert part.first_lba == 2048 and part.sectors == 63488


def test_check_findings() -> None:
    raw = _sector(_entry(0x80, 0x0C, 2048, 10000), _entry(0x80, 0x0C, 4000, 10000),
                  _entry(0x12, 0x0C, 0, 10))
    codes = {f.code for f in check_partition_table(parse_partition_table(raw), 12000)}
    assert codes == {"mbr.partition-outside-disk", "mbr.partition-overlap",
                     "mbr.several-active", "mbr.bad-status", "mbr.partition-at-zero"}


def test_sfdisk_reads_what_we_write(tmp_path) -> None:
    need_tool("sfdisk")
    raw, _ = build_single_partition_mbr(65536, 2048, fm.TYPE_FAT32_LBA, True, 0x1234)
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.write(raw)
        f.truncate(65536 * 512)
    out = run("sfdisk", "-d", str(img)).stdout
    assert "start=        2048, size=       63488, type=c, bootable" in out


def test_we_read_what_sfdisk_writes(tmp_path) -> None:
    need_tool("sfdisk")
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    run("sfdisk", "-q", str(img), input="label: dos\n2048,40000,e,*\n42048,,83\n")
    table = parse_partition_table(img.read_bytes()[:512])
    a, b = table.partitions
    assert (a.first_lba, a.sectors, a.partition_type, a.active) == (2048, 40000, 0x0E, True)
    assert (b.first_lba, b.partition_type, b.active) == (42048, 0x83, False)
    assert b.sectors == 131072 - 42048
    assert a.chs_first == fm.lba_to_chs(2048)
