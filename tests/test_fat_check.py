"""Every check finding: a test that causes it and a test that repairs it (fsck.fat -n is
clean afterwards and the check finds nothing more)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import need_tool, run
from fatutil import MIB, fsck, fsck_clean, mkfs, mtools_fill, mtype

from vdisk_tool.formats import fat as ff
from vdisk_tool.fs.check import check_volume
from vdisk_tool.fs.repair import repair_volume
from vdisk_tool.fs.volume import FatVolume, open_volume
from vdisk_tool.image.base import FileDevice

FILES = {
    "KEEP.BIN": bytes(range(256)) * 40,               # 10240 bytes, several clusters
    "A long name file.txt": b"long name\n" * 300,
    "OTHER.BIN": b"\x5a" * 9000,
    "Folder/inner.txt": b"inner\n" * 100,
}


def _volume(tmp_path: Path, fat: int, partition: bool = False) -> tuple[Path, int]:
    img = tmp_path / "c.img"
    size = 40 * MIB if fat == 32 else 4 * MIB if fat == 12 else 20 * MIB
    off = mkfs(img, size, fat, partition, ("-s", "1") if fat == 32 else ())
    mtools_fill(img, off, FILES, tmp_path)
    return img, off


def _raw_fat_set(vol: FatVolume, copy: int, cluster: int, value: int) -> None:
    """Set an entry in one FAT copy only."""
    t = type(vol.fat)(vol.dev, vol.layout, copy)
    t.set(cluster, value)
    t.flush(copies=[copy])


def _entry_patch(vol: FatVolume, path: str, at: int, data: bytes) -> None:
    info = vol.stat(path)
    vol.dev.write_at(info.entry_offset + at, data)


def c_fats_differ(vol: FatVolume) -> None:      # FAT #1 loses KEEP.BIN's chain
    for c in vol.file_chain(vol.stat("/KEEP.BIN")):
        _raw_fat_set(vol, 0, c, 0)


def c_cross(vol: FatVolume) -> None:
    second = vol.file_chain(vol.stat("/KEEP.BIN"))[1]
    _entry_patch(vol, "/OTHER.BIN", 26, second.to_bytes(2, "little"))


def c_lost(vol: FatVolume) -> None:
    c = vol.fat.find_free(100)
    vol.fat.set(c, c + 1)
    vol.fat.set(c + 1, vol.fat.eoc)
    vol.fat.flush()


def c_short(vol: FatVolume) -> None:
    _entry_patch(vol, "/KEEP.BIN", 28, (10240 + 3 * vol.layout.cluster_bytes).to_bytes(4, "little"))


def c_long(vol: FatVolume) -> None:
    _entry_patch(vol, "/KEEP.BIN", 28, (100).to_bytes(4, "little"))


def c_range(vol: FatVolume) -> None:
    chain = vol.file_chain(vol.stat("/KEEP.BIN"))
    vol.fat.set(chain[0], vol.layout.max_cluster + 7)
    vol.fat.flush()


def c_bad_name(vol: FatVolume) -> None:
    _entry_patch(vol, "/OTHER.BIN", 0, b"OT?ER")


def c_bad_entry(vol: FatVolume) -> None:
    _entry_patch(vol, "/Folder", 28, (1234).to_bytes(4, "little"))


def c_lfn_checksum(vol: FatVolume) -> None:
    info = vol.stat("/A long name file.txt")
    d = vol.directory(info.parent_cluster)
    for s in info.lfn_slots:
        raw = bytearray(d.raw(s))
        raw[13] ^= 0x55
        d.write_slot(s, bytes(raw))


def c_lfn_orphan(vol: FatVolume) -> None:
    d = vol.directory(vol.root_first_cluster)
    end = next(i for i in range(d.slots) if d.data[i * 32] == 0)
    d.write_slot(end, ff.build_lfn_entries("stray", b"STRAY      ")[0])


def c_dots(vol: FatVolume) -> None:
    info = vol.stat("/Folder")
    vol.dev.write_at(vol.layout.cluster_offset(info.first_cluster) + 32 + 26, b"\x07\x00")


def c_media(vol: FatVolume) -> None:
    for k in range(2):
        vol.dev.write_at(vol.layout.fat_copy_offset(k), b"\xf0")


def c_fsinfo_free(vol: FatVolume) -> None:
    vol.dev.write_at(512 + 488, (1234).to_bytes(4, "little"))


def c_fsinfo_next(vol: FatVolume) -> None:
    vol.dev.write_at(512 + 492, (0x0FFFFFF0).to_bytes(4, "little"))


def c_fsinfo_sig(vol: FatVolume) -> None:
    vol.dev.write_at(512, b"XXXX")


def c_backup(vol: FatVolume) -> None:
    vol.dev.write_at(6 * 512 + 3, b"CHANGED!")


def c_boot(vol: FatVolume) -> None:
    vol.dev.write_at(0, bytes(512))


CASES: list[tuple[str, int, Callable[[FatVolume], None]]] = [
    ("fat.fats-differ", 16, c_fats_differ),
    ("fat.cross-linked", 16, c_cross),
    ("fat.lost-clusters", 12, c_lost),
    ("fat.chain-too-short", 16, c_short),
    ("fat.chain-too-long", 32, c_long),
    ("fat.cluster-out-of-range", 16, c_range),
    ("fat.bad-name", 16, c_bad_name),
    ("fat.bad-entry", 16, c_bad_entry),
    ("fat.lfn-checksum", 16, c_lfn_checksum),
    ("fat.lfn-orphan", 32, c_lfn_orphan),
    ("fat.dot-entries", 16, c_dots),
    ("fat.media-mismatch", 16, c_media),
    ("fat.fsinfo-free-count", 32, c_fsinfo_free),
    ("fat.fsinfo-next-free", 32, c_fsinfo_next),
    ("fat.fsinfo-signature", 32, c_fsinfo_sig),
    ("fat.backup-boot-mismatch", 32, c_backup),
    ("fat.boot-sector-invalid", 32, c_boot),
]


def _corrupt(tmp_path: Path, fat: int, fn: Callable[[FatVolume], None],
             partition: bool = False) -> tuple[Path, int]:
    img, off = _volume(tmp_path, fat, partition)
    with FileDevice(img, writable=True) as dev:
        fn(open_volume(dev))
    return img, off


def test_healthy_volumes_have_no_findings(tmp_path: Path) -> None:
    for fat in (12, 16, 32):
        (tmp_path / str(fat)).mkdir()
        img, _ = _volume(tmp_path / str(fat), fat)
        with FileDevice(img) as dev:
            assert check_volume(dev).findings == []


@pytest.mark.parametrize("code,fat,fn", CASES, ids=[c[0] for c in CASES])
def test_check_finds(tmp_path: Path, code: str, fat: int, fn) -> None:
    img, off = _corrupt(tmp_path, fat, fn)
    with FileDevice(img) as dev:
        found = check_volume(dev).findings
    assert code in {f.code for f in found}, found
    assert all(f.fixable for f in found if f.code == code)


@pytest.mark.parametrize("code,fat,fn", CASES, ids=[c[0] for c in CASES])
def test_repair_fixes(tmp_path: Path, code: str, fat: int, fn) -> None:
    img, off = _corrupt(tmp_path, fat, fn)
    before = img.read_bytes()
    with FileDevice(img) as dev:
        dry = repair_volume(dev, dry_run=True)
    assert img.read_bytes() == before, "a dry run wrote to the image"
    assert code in {f.code for f in dry.found} and dry.actions and dry.remaining == []
    with FileDevice(img, writable=True) as dev:
        res = repair_volume(dev)
    assert code in {f.code for f in res.found}
    assert res.remaining == [], res.remaining
    assert res.actions == dry.actions
    fsck_clean(img, off)
    with FileDevice(img) as dev:
        assert check_volume(dev).findings == []
    if code in ("fat.fats-differ", "fat.boot-sector-invalid", "fat.fsinfo-signature"):
        assert mtype(img, off, "KEEP.BIN") == FILES["KEEP.BIN"]


def test_fats_differ_fsck_would_lose_the_file(tmp_path: Path) -> None:
    """The reason to prefer the consistent FAT: fsck.fat -a trusts FAT #1 and empties the file;
    vdisk keeps the content FAT #2 still describes."""
    img, _ = _corrupt(tmp_path, 16, c_fats_differ)
    copy = tmp_path / "copy.img"
    copy.write_bytes(img.read_bytes())
    run("fsck.fat", "-a", str(copy), check=False)
    assert mtype(copy, 0, "KEEP.BIN") != FILES["KEEP.BIN"]
    with FileDevice(img, writable=True) as dev:
        res = repair_volume(dev)
    assert res.fat_copy == 1
    assert mtype(img, 0, "KEEP.BIN") == FILES["KEEP.BIN"]


def test_repair_inside_partition(tmp_path: Path) -> None:
    need_tool("sfdisk")
    img, off = _corrupt(tmp_path, 16, c_short, partition=True)
    code, _ = fsck(img, off)
    assert code != 0
    with FileDevice(img, writable=True) as dev:
        res = repair_volume(dev)
    assert res.found[0].offset > off   # offsets are on the disk, past the partition start
    fsck_clean(img, off)
