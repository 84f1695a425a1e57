"""FAT schemas with known values, long names, DOS stamps; the boot-disk and CF-copy helpers."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from fatutil import MIB, fsck_clean, mkfs, mtools_fill

from vdisk_tool.formats import fat as ff
from vdisk_tool.fs.check import check_volume
from vdisk_tool.fs.format import format_volume
from vdisk_tool.fs.transfer import copy_tree
from vdisk_tool.fs.volume import open_volume
from vdisk_tool.image.base import FileDevice


def test_bpb_known_values(tmp_path: Path) -> None:
    img = tmp_path / "m.img"
    mkfs(img, 40 * MIB, 32, extra=("-s", "1", "-n", "KNOWN"))
    boot = img.read_bytes()[:512]
    bs = ff.BootSector32.parse(boot)
    assert bs.bpb.bytes_per_sector == 512 and bs.bpb.sectors_per_cluster == 1
    assert bs.bpb.reserved_sectors == 32 and bs.bpb.total_sectors_32 == 81920
    assert bs.ext.fat_sectors_32 == 630 and bs.ext.root_cluster == 2
    assert bs.ext.fsinfo_sector == 1 and bs.ext.backup_boot_sector == 6
    assert bs.ext.volume_label == b"KNOWN      " and bs.signature == b"\x55\xaa"
    fs = ff.FsInfo.parse(img.read_bytes()[512:1024])
    assert fs.lead_signature == 0x41615252 and fs.free_count == 80627


def test_directory_entry_and_stamps() -> None:
    raw = (b"README  TXT" + bytes([0x20, 0x18, 0x64]) + (0x5A6B).to_bytes(2, "little")
           + (0x52A6).to_bytes(2, "little") + (0x52A6).to_bytes(2, "little")
           + (0x0001).to_bytes(2, "little") + (0x5A6B).to_bytes(2, "little")
           + (0x52A6).to_bytes(2, "little") + (0x0203).to_bytes(2, "little")
           + (12345).to_bytes(4, "little"))
    e = ff.DirectoryEntry.parse(raw)
    assert e.first_cluster_high == 1 and e.first_cluster_low == 0x0203 and e.file_size == 12345
    assert ff.format_short_name(e.name, e.nt_reserved) == "readme.txt"
    # 0x52A6 = 2021-05-06; 0x5A6B = 11:19:22; tenth 100 adds a second
    assert ff.decode_dos_datetime(0x52A6, 0x5A6B, 100) == dt.datetime(2021, 5, 6, 11, 19, 23)
    s = ff.encode_dos_datetime(dt.datetime(2021, 5, 6, 11, 19, 23, 500000))
    assert (s.date, s.time, s.tenth) == (0x52A6, 0x5A6B, 150)


def test_lfn_checksum_and_entries(tmp_path: Path) -> None:
    # the checksum mtools wrote beside the 8.3 alias it chose
    img = tmp_path / "m.img"
    mkfs(img, 2 * MIB, 12)
    mtools_fill(img, 0, {"A long file name.txt": b"x"}, tmp_path)
    root = img.read_bytes()[(1 + 2 * 3) * 512:][:512]
    slots = [root[i:i + 32] for i in range(0, 512, 32)]
    lfn = [s for s in slots if s[11] == 0x0F]
    short = next(s for s in slots if s[11] != 0x0F and s[0] not in (0, 0xE5))
    assert lfn and all(s[13] == ff.lfn_checksum(short[:11]) for s in lfn)
    assert ff.decode_lfn([ff.lfn_chars(s) for s in reversed(lfn)]) == "A long file name.txt"
    parts = ff.build_lfn_entries("A long file name.txt", b"ALONGF~1TXT")
    assert len(parts) == 2 and parts[0][0] == 0x42 and parts[1][0] == 0x01
    assert all(p[11] == 0x0F and p[13] == ff.lfn_checksum(b"ALONGF~1TXT") for p in parts)
    assert ff.decode_lfn([ff.lfn_chars(p) for p in reversed(parts)]) == "A long file name.txt"


def test_find_root_entry_reports_short_chain(tmp_path: Path) -> None:
    img = tmp_path / "b.img"
    mkfs(img, 20 * MIB, 16)
    mtools_fill(img, 0, {"IPVA.BIN": b"\x11" * 10000}, tmp_path)
    with FileDevice(img, writable=True) as dev:
        vol = open_volume(dev)
        found = vol.find_root_entry(b"IPVA    BIN")
        assert found is not None and found.entry.size_bytes == 10000
        assert len(found.chain) == found.needed_clusters == 5 and not found.chain_short
        assert found.ends_properly
        vol.fat.set(found.chain[1], vol.fat.eoc)
        vol.fat.flush()
        again = open_volume(dev).find_root_entry(b"IPVA    BIN")
        assert again.chain_short and len(again.chain) == 2
        assert open_volume(dev).find_root_entry(b"NOPE    BIN") is None


def test_copy_tree_keeps_names_attributes_and_stamps(tmp_path: Path) -> None:
    src_img, dst_img = tmp_path / "s.img", tmp_path / "d.img"
    for p in (src_img, dst_img):
        with open(p, "wb") as f:
            f.truncate(24 * MIB)
    when = dt.datetime(2019, 2, 3, 4, 5, 6)
    with FileDevice(src_img, writable=True) as sdev, FileDevice(dst_img, writable=True) as ddev:
        format_volume(sdev, 16, "IPVACF")
        src = open_volume(sdev)
        src.mkdir("/Config Files/nested", parents=True, mtime=when)
        src.write_file("/Config Files/nested/a long name.cfg", b"cfg" * 999, mtime=when,
                       attributes=ff.ATTR_ARCHIVE | ff.ATTR_READ_ONLY | ff.ATTR_HIDDEN)
        src.write_file("/EMPTY", b"", mtime=when)
        src.flush()
        format_volume(ddev, 16, "IPVACF")
        dst = open_volume(ddev)
        copy_tree(src, dst)
        a = {k.path: k for _d, ks in src.walk() for k in ks}
        b = {k.path: k for _d, ks in dst.walk() for k in ks}
        assert a.keys() == b.keys()
        for p in a:
            assert a[p].raw_entry[11:26] == b[p].raw_entry[11:26], p   # attrs + all stamps
            assert a[p].name == b[p].name and a[p].size_bytes == b[p].size_bytes
            if not a[p].is_dir:
                assert src.read_file(p) == dst.read_file(p)
        assert check_volume(dst).findings == []
    fsck_clean(dst_img, 2048 * 512)
