"""Interop both ways: mkfs.fat + mtools volumes read by vdisk (also as VMDK), and volumes vdisk
formats and fills checked by fsck.fat and read back by mtools."""
from __future__ import annotations

import datetime as dt
import struct
from pathlib import Path

import pytest
from conftest import need_tool, run
from fatutil import MIB, fsck_clean, make_fragmented, mkfs, mtools_fill, mtype, sample_files

from vdisk_tool.fs.format import format_volume, plan_volume
from vdisk_tool.fs.volume import open_volume
from vdisk_tool.image.base import FileDevice
from vdisk_tool.image.disk import open_image

CASES = [(12, False, 2 * MIB), (12, True, 3 * MIB), (16, False, 20 * MIB), (16, True, 21 * MIB),
         (32, False, 40 * MIB), (32, True, 41 * MIB)]


def _cluster_bytes(img: Path, offset: int) -> int:
    with open(img, "rb") as f:
        f.seek(offset)
        b = f.read(512)
    bps, spc = struct.unpack_from("<HB", b, 11)
    return bps * spc


def _read_all(vol) -> dict[str, bytes]:
    out = {}
    for _d, kids in vol.walk("/"):
        for k in kids:
            if not k.is_dir:
                out[k.path.lstrip("/")] = vol.read_file(k.path)
    return out


@pytest.mark.parametrize("fat,partition,size", CASES)
def test_vdisk_reads_mkfs_mtools_volume(tmp_path: Path, fat: int, partition: bool,
                                        size: int, qemu_img: str) -> None:
    img = tmp_path / "m.img"
    off = mkfs(img, size, fat, partition, ("-s", "1") if fat == 32 else ())
    cb = _cluster_bytes(img, off)
    files = sample_files(cb)
    mtools_fill(img, off, files, tmp_path)
    files["frag.bin"] = make_fragmented(img, off, tmp_path, cb)
    files["gap0.bin"] = (tmp_path / "p0").read_bytes()
    files["gap2.bin"] = (tmp_path / "p2").read_bytes()
    with FileDevice(img) as dev:
        vol = open_volume(dev)
        assert vol.fat_type == fat
        assert (vol.partition is not None) == partition
        frag = vol.stat("/frag.bin")
        chain = vol.file_chain(frag)
        assert any(b != a + 1 for a, b in zip(chain, chain[1:], strict=False)), "frag.bin is not fragmented"
        assert _read_all(vol) == files
        names = {e.name for e in vol.listdir("/Sub Directory")}
        assert names == {"inner file.bin", "Deeper"}
        assert vol.stat("/sub directory/DEEPER/DEEP.TXT").size_bytes == 5
        assert vol.stat("/lower.txt").short_name == "LOWER.TXT"
    if fat == 16:
        vmdk = tmp_path / "m.vmdk"
        run(qemu_img, "convert", "-O", "vmdk", str(img), str(vmdk))
        with open_image(vmdk) as disk:
            assert _read_all(open_volume(disk)) == files


@pytest.mark.parametrize("fat,partition,size", CASES)
def test_vdisk_formats_and_fills_volume(tmp_path: Path, fat: int, partition: bool,
                                        size: int) -> None:
    need_tool("mtype")
    img = tmp_path / "v.img"
    with open(img, "wb") as f:
        f.truncate(size)
    with FileDevice(img, writable=True) as dev:
        res = format_volume(dev, fat, label="vdisk test", partition=partition)
        assert res.layout.fat_type == fat
        vol = open_volume(dev)
        cb = vol.layout.cluster_bytes
        files = sample_files(cb, seed=7)
        when = dt.datetime(2021, 5, 6, 7, 8, 10)
        for name, data in files.items():
            if "/" in name:
                vol.mkdir("/" + name.rsplit("/", 1)[0], parents=True)
            vol.write_file("/" + name, data, mtime=when)
        vol.write_file("/replaced.bin", b"x" * (cb * 5))
        vol.write_file("/replaced.bin", b"short")
        vol.write_file("/gone.txt", b"bye")
        vol.remove("/gone.txt")
        vol.rename("/lower.txt", "/Sub Directory/renamed lower.txt")
        vol.flush()
        files["replaced.bin"] = b"short"
        files["Sub Directory/renamed lower.txt"] = files.pop("lower.txt")
        assert vol.stat("/README.TXT").modified == when
    off = 2048 * 512 if partition else 0
    fsck_clean(img, off)
    for name, data in files.items():
        assert mtype(img, off, name) == data, name
    out = run("mdir", "-i", f"{img}@@{off}" if off else str(img), "::").stdout
    assert "VDISK TEST" in out


@pytest.mark.parametrize("fat,kib", [(12, 2048), (12, 8192), (12, 16384), (16, 16384),
                                     (16, 20480), (16, 131072), (16, 300000), (32, 40960),
                                     (32, 600000)])
def test_layout_matches_mkfs(tmp_path: Path, fat: int, kib: int) -> None:
    img = tmp_path / "m.img"
    mkfs(img, kib * 1024, fat)
    bps, spc, res, nf, root, tot16, _m, fat16, spt, heads, _h, tot32 = struct.unpack_from(
        "<HBHBHHBHHHII", img.read_bytes()[:512], 11)
    fat32 = struct.unpack_from("<I", img.read_bytes()[:512], 36)[0]
    plan = plan_volume(kib * 2, fat)
    assert plan.sectors_per_cluster == spc
    assert plan.reserved_sectors == res
    assert plan.fat_sectors == (fat16 or fat32)
    assert plan.root_entries == root
    assert plan.total_sectors == (tot16 or tot32)
    assert (plan.heads, plan.sectors_per_track) == (heads, spt)


def test_default_fat_type_follows_model(tmp_path: Path) -> None:
    img = tmp_path / "big.img"
    with open(img, "wb") as f:
        f.truncate(513 * MIB + 2048 * 512)
    with FileDevice(img, writable=True) as dev:
        res = format_volume(dev, label="IPVACF")
        assert res.layout.fat_type == 32 and res.partition.partition_type == 0x0C
    small = tmp_path / "small.img"
    with open(small, "wb") as f:
        f.truncate(32 * MIB)
    with FileDevice(small, writable=True) as dev:
        res = format_volume(dev, label="IPVABOOT", active=True)
        assert res.layout.fat_type == 16 and res.partition.partition_type == 0x0E
        assert res.partition.active and res.partition.first_lba == 2048
        assert open_volume(dev).label == "IPVABOOT"
    fsck_clean(small, 2048 * 512)
