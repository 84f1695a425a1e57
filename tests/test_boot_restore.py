"""`vdisk boot restore` and `vdisk boot create`: the crashed-update cases recovered, the
rebuild of a lost volume, checked with qemu-img check, fsck.fat -n, mtools and sfdisk."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
from conftest import need_tool, run, vdisk
from fwbuilder import PART_OFFSET, Fat16, make_raw_boot, standard, to_vmdk

from vdisk_tool.ipva.boot import verify_target


@pytest.fixture(scope="module")
def fw_file(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("fw") / "ipva.bin"
    p.write_bytes(standard(20).to_bytes())
    return str(p)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def sha(path: str) -> str:
    return hashlib.sha256(read(path)).hexdigest()


def check_with_tools(disk: str, firmware: str, tmp_path, *, other: dict[str, bytes] | None = None,
                     offset: int = PART_OFFSET) -> str:
    """qemu-img check (VMDKs), fsck.fat -n on the partition, mtype the file back, and the
    MBR as sfdisk reads it; returns sfdisk's dump."""
    need_tool("fsck.fat")
    if disk.endswith(".vmdk"):
        assert "No errors" in run("qemu-img", "check", disk).stdout
    raw = str(tmp_path / "check.raw")
    run("qemu-img", "convert", "-O", "raw", disk, raw)
    part = str(tmp_path / "check.part")
    with open(raw, "rb") as fi, open(part, "wb") as fo:
        fi.seek(offset)
        fo.write(fi.read())
    r = run("fsck.fat", "-n", part, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    out = str(tmp_path / "back.bin")
    run("mcopy", "-n", "-i", f"{raw}@@{offset}", "::IPVA.BIN", out)
    assert read(out) == read(firmware)
    for name, data in (other or {}).items():
        run("mcopy", "-n", "-i", f"{raw}@@{offset}", "::" + name, out)
        assert read(out) == data
    return run("sfdisk", "--dump", raw).stdout


def crashed(tmp_path, fw_file: str, case: str) -> str:
    data = read(fw_file)
    extra = {"README.TXT": b"keep me\n"}
    if case == "cluster-boundary":
        raw = make_raw_boot(str(tmp_path / "b.img"), data[:len(data) // 2 // 2048 * 2048],
                            extra=extra)
    elif case == "inside-cluster":
        raw = make_raw_boot(str(tmp_path / "b.img"), data[:len(data) // 2 + 333], extra=extra)
    else:  # the entry says more than its chain holds; the cut-off clusters are lost
        raw = make_raw_boot(str(tmp_path / "b.img"), data, extra=extra)
        fat = Fat16(raw)
        _, first, _ = fat.entry()
        chain = fat.chain(first)
        fat.set(chain[9], 0xFFFF)     # cut after 10 clusters; the rest stay allocated (lost)
    return to_vmdk(raw, str(tmp_path / "hd-boot.vmdk"))


@pytest.mark.parametrize("case", ["cluster-boundary", "inside-cluster", "entry-larger-than-chain"])
def test_restore_recovers_crashed_update(tmp_path, runner, fw_file, case):
    disk = crashed(tmp_path, fw_file, case)
    assert not verify_target(disk).ok
    assert vdisk(runner, "verify", disk).exit_code == 1
    r = vdisk(runner, "boot", "restore", disk, "--firmware", fw_file, "--yes")
    assert r.exit_code == 0, r.output
    assert "write" in r.stdout and "OK" in r.stdout
    assert vdisk(runner, "verify", disk).exit_code == 0
    check_with_tools(disk, fw_file, tmp_path, other={"README.TXT": b"keep me\n"})


def test_restore_dry_run_and_backup(tmp_path, runner, fw_file):
    disk = crashed(tmp_path, fw_file, "inside-cluster")
    before = sha(disk)
    r = vdisk(runner, "boot", "restore", disk, "--firmware", fw_file, "--dry-run")
    assert r.exit_code == 0 and "dry run" in r.stdout
    assert sha(disk) == before
    backup = str(tmp_path / "old.vmdk")
    r = vdisk(runner, "boot", "restore", disk, "--firmware", fw_file, "--backup", backup,
              "--json", "--yes")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["plan"]["action"] == "replace" and doc["result"]["ok"]
    assert sha(backup) == before
    assert [f.code for f in verify_target(backup).findings] == ["fw.truncated"]


def test_restore_refuses_bad_firmware(tmp_path, runner, fw_file):
    disk = crashed(tmp_path, fw_file, "cluster-boundary")
    before = sha(disk)
    bad = tmp_path / "bad.bin"
    data = bytearray(read(fw_file))
    data[5000] ^= 1
    bad.write_bytes(bytes(data))
    r = vdisk(runner, "boot", "restore", disk, "--firmware", str(bad), "--yes")
    assert r.exit_code == 3 and "does not verify" in r.stderr and "fw.section-crc" in r.stderr
    assert sha(disk) == before


def test_restore_refuses_locked_disk(tmp_path, runner, fw_file):
    disk = crashed(tmp_path, fw_file, "cluster-boundary")
    os.mkdir(disk + ".lck")
    r = vdisk(runner, "boot", "restore", disk, "--firmware", fw_file, "--yes")
    assert r.exit_code == 3 and "VMware" in r.stderr
    assert vdisk(runner, "verify", disk).exit_code == 1


@pytest.mark.parametrize("damage", ["zeroed-mbr", "no-fat", "fat-copies-differ"])
def test_restore_rebuilds_a_lost_volume(tmp_path, runner, fw_file, damage):
    raw = make_raw_boot(str(tmp_path / "b.img"), read(fw_file)[:9000], 16)
    if damage == "fat-copies-differ":
        fat = Fat16(raw)
        fat.set(200, 0x0123, copies=(1,))
    else:
        with open(raw, "r+b") as f:
            f.seek(0 if damage == "zeroed-mbr" else PART_OFFSET)
            f.write(bytes(512))
    disk = to_vmdk(raw, str(tmp_path / "hd-boot.vmdk"), "streamOptimized")
    r = vdisk(runner, "boot", "restore", disk, "--firmware", fw_file, "--yes")
    assert r.exit_code == 0, r.output
    assert "rebuild" in r.stdout
    info = json.loads(run("qemu-img", "info", "--output=json", disk).stdout)
    assert info["virtual-size"] == 16 << 20
    assert "streamOptimized" in read(disk)[:4096].decode("latin-1")
    dump = check_with_tools(disk, fw_file, tmp_path)
    assert "start=        2048" in dump and "type=e" in dump and "bootable" in dump
    assert vdisk(runner, "verify", disk).exit_code == 0


@pytest.mark.parametrize("subformat", ["monolithicSparse", "raw", "twoGbMaxExtentSparse"])
def test_boot_create(tmp_path, runner, fw_file, subformat):
    path = str(tmp_path / ("hd-boot.img" if subformat == "raw" else "hd-boot.vmdk"))
    r = vdisk(runner, "boot", "create", path, "--firmware", fw_file, "--size", "32M",
              "--subformat", subformat)
    assert r.exit_code == 0, r.output
    dump = check_with_tools(path, fw_file, tmp_path)
    assert "type=e" in dump and "bootable" in dump
    need_tool("mdir")
    raw = str(tmp_path / "check.raw")
    assert "IPVABOOT" in run("mdir", "-i", f"{raw}@@{PART_OFFSET}", "::").stdout
    assert os.path.getsize(raw) == 32 << 20
    res = verify_target(path)
    assert res.ok and res.volume["fat_type"] == 16 and res.volume["label"] == "IPVABOOT"
    r = vdisk(runner, "boot", "create", path, "--firmware", fw_file)
    assert r.exit_code == 3 and "exists" in r.stderr


def test_boot_create_refusals(tmp_path, runner, fw_file):
    r = vdisk(runner, "boot", "create", str(tmp_path / "x.vmdk"), "--firmware", fw_file,
              "--size", "1M")
    assert r.exit_code == 3 and "not supported" in r.stderr
    bad = tmp_path / "t.bin"
    bad.write_bytes(read(fw_file)[:-1])
    r = vdisk(runner, "boot", "create", str(tmp_path / "y.vmdk"), "--firmware", str(bad))
    assert r.exit_code == 3 and "fw.truncated" in r.stderr
    assert not os.path.exists(tmp_path / "x.vmdk") and not os.path.exists(tmp_path / "y.vmdk")
    assert not [p for p in os.listdir(tmp_path) if "vdisk-tmp" in p]


def test_created_disk_is_writable_by_mtools(tmp_path, fw_file):
    path = str(tmp_path / "b.img")
    vdisk_path = path
    from vdisk_tool.ipva.boot import create_boot_disk
    create_boot_disk(vdisk_path, fw_file, 8 << 20, "raw")
    src = tmp_path / "note.txt"
    src.write_bytes(b"n" * 10000)
    run("mcopy", "-i", f"{path}@@{PART_OFFSET}", str(src), "::NOTE.TXT")
    assert verify_target(path).ok
    check_with_tools(path, fw_file, tmp_path, other={"NOTE.TXT": b"n" * 10000})
