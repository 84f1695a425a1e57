"""Format detection as one decision (image/detect.py): every other container, made by
qemu-img or by the standard library, is refused by name with exit 3; raw stays the
fallback for bytes that look like nothing else; `-f raw|vmdk` overrides the guess; a raw
source of any length is rounded up to a sector, as qemu-img does."""
from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import need_tool, vdisk

from vdisk_tool.errors import WrongFormatError
from vdisk_tool.image.detect import READS
from vdisk_tool.image.disk import open_image

MIB = 1 << 20


def qemu_create(tmp_path: Path, fmt: str, name: str, *opts: str) -> Path:
    need_tool("qemu-img")
    out = tmp_path / name
    args = ["qemu-img", "create", "-q", "-f", fmt] + (["-o", ",".join(opts)] if opts else [])
    subprocess.run([*args, str(out), "4M"], check=True, capture_output=True)
    # the oracle reads it as that format (it probes a fixed VHD as raw: hence -f)
    info = subprocess.run(["qemu-img", "info", "--output=json", "-f", fmt, str(out)], check=True,
                          capture_output=True, text=True)
    assert json.loads(info.stdout)["virtual-size"] >= 4 * MIB
    return out


FOREIGN = [
           ("vpc", "dyn.vhd", ("subformat=dynamic",), "a dynamic VHD (vpc) image"),
           ("vpc", "fixed.vhd", ("subformat=fixed",), "a fixed VHD (vpc) image"),
           ("vdi", "d.vdi", (), "a VirtualBox VDI image"),
           ("qed", "d.qed", (), "a QED image")]


@pytest.mark.parametrize("fmt,name,opts,phrase", FOREIGN, ids=[f[1] for f in FOREIGN])
def test_other_containers_are_refused_by_name(runner, tmp_path, fmt, name, opts, phrase):
    image = qemu_create(tmp_path, fmt, name, *opts)
    before = image.read_bytes()
    for cmd in (["info"], ["check"], ["verify"], ["fs", "ls"], ["map"]):
        res = vdisk(runner, *cmd, str(image))
        assert res.exit_code == 3, (cmd, res.output)
        first = res.stderr.splitlines()[0]
        assert first == f"vdisk: error: {image} is {phrase}; {READS}", first
    # -f raw reads the container's bytes as a disk, as qemu-img -f raw does
    res = vdisk(runner, "info", "-f", "raw", "--json", str(image))
    assert res.exit_code == 0 and json.loads(res.stdout)["format"] == "raw"
    assert image.read_bytes() == before


def test_same_container_named_vmdk_is_still_named(runner, tmp_path):
    image = qemu_create(tmp_path, "vpc", "hd-boot.vmdk", "subformat=dynamic")
    res = vdisk(runner, "check", str(image))
    assert res.exit_code == 3 and "is a dynamic VHD (vpc) image" in res.stderr


def ova(path: Path) -> Path:
    """An OVF package as the DMTF spec lays it out: the .ovf first, in a ustar archive."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("ipva.ovf", b"<Envelope/>"), ("hd-boot.vmdk", bytes(4096))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_ova_is_named_a_package(runner, tmp_path):
    image = ova(tmp_path / "ipva.ova")
    for cmd in (["check"], ["fs", "ls"]):
        res = vdisk(runner, *cmd, str(image))
        assert res.exit_code == 3
        assert "is an OVF package (OVA, a tar archive)" in res.stderr
        assert "vdisk bundle check" in res.stderr
    res = vdisk(runner, "info", str(image))      # info reads the package itself: its OVF is bad
    assert res.exit_code == 3 and "not an OVF 1.x/2.x Envelope" in res.stderr


@pytest.mark.parametrize("content", [b"hello, these are my notes\n", os.urandom(3000) + bytes(72),
                                     b""], ids=["text", "random", "empty"])
def test_vmdk_name_without_vmdk_structure_is_an_error(runner, tmp_path, content):
    image = tmp_path / "notes.vmdk"
    image.write_bytes(content)
    res = vdisk(runner, "check", str(image))
    assert res.exit_code == 3, res.output
    assert "No errors were found" not in res.output
    if content:
        assert "has no VMDK structure" in res.stderr and "-f raw" in res.stderr
        res = vdisk(runner, "check", "-f", "raw", str(image))
        assert res.exit_code == 0
    else:
        assert "is empty" in res.stderr
        assert vdisk(runner, "check", "-f", "raw", str(image)).exit_code == 3


def test_empty_raw_file_is_an_error(runner, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(b"")
    res = vdisk(runner, "info", str(image))
    assert res.exit_code == 3 and "is empty (0 bytes)" in res.stderr


def test_raw_images_still_open_as_raw(tmp_path):
    """FAT volumes, MBR disks and arbitrary bytes without a .vmdk name: raw, as qemu-img."""
    need_tool("mkfs.fat")
    fat = tmp_path / "vol.img"
    fat.write_bytes(b"")
    os.truncate(fat, 8 * MIB)
    subprocess.run(["mkfs.fat", "-F", "12", str(fat)], check=True, capture_output=True)
    mbr = tmp_path / "disk.img"
    mbr.write_bytes(b"")
    os.truncate(mbr, 8 * MIB)
    subprocess.run([need_tool("sfdisk"), "-q", str(mbr)], input="2048,,6\n", text=True,
                   check=True, capture_output=True)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(64 * 1024))
    from vdisk_tool.image.detect import detect
    for p, key in ((fat, "fat"), (mbr, "mbr"), (junk, "raw")):
        assert detect(str(p)).key == key
        with open_image(p) as disk:
            assert disk.format == "raw" and disk.size_bytes == p.stat().st_size


def test_format_vmdk_refuses_raw_bytes(runner, tmp_path):
    raw = tmp_path / "disk.img"
    raw.write_bytes(bytes(MIB))
    res = vdisk(runner, "info", "-f", "vmdk", str(raw))
    assert res.exit_code == 3 and "not a VMDK" in res.stderr
    with pytest.raises(WrongFormatError):
        open_image(raw, format="vmdk")


def test_format_raw_reads_a_vmdk_as_its_bytes(runner, tmp_path):
    need_tool("qemu-img")
    image = tmp_path / "d.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(image), "64M"], check=True)
    res = vdisk(runner, "info", "--json", "-f", "raw", str(image))
    assert res.exit_code == 0
    assert json.loads(res.stdout)["virtual_size_bytes"] == image.stat().st_size
    res = vdisk(runner, "info", "--json", str(image))
    assert json.loads(res.stdout)["virtual_size_bytes"] == 64 * MIB


def test_odd_sized_raw_source_is_rounded_up_like_qemu(runner, tmp_path):
    qemu = need_tool("qemu-img")
    src = tmp_path / "odd.raw"
    src.write_bytes(os.urandom(1000 * 1000 + 7))
    q = json.loads(subprocess.run([qemu, "info", "--output=json", "-f", "raw", str(src)],
                                  check=True, capture_output=True, text=True).stdout)
    res = vdisk(runner, "info", "--json", str(src))
    assert json.loads(res.stdout)["virtual_size_bytes"] == q["virtual-size"]
    dst = tmp_path / "odd.vmdk"
    res = vdisk(runner, "convert", str(src), str(dst))
    assert res.exit_code == 0, res.output
    assert "not a whole number of sectors" in res.stderr and "padded with zeros" in res.stderr
    ref = tmp_path / "ref.vmdk"
    subprocess.run([qemu, "convert", "-f", "raw", "-O", "vmdk", str(src), str(ref)], check=True)
    cmp = subprocess.run([qemu, "compare", str(dst), str(ref)], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout


IMAGE_COMMANDS = [["info"], ["map"], ["compare"], ["check"], ["convert"], ["grow"],
                  *[["fs", c] for c in ("ls", "tree", "get", "put", "rm", "mkdir", "mv", "label",
                                        "format", "check")],
                  *[["dump", c] for c in ("list", "extract", "init", "clear", "write")],
                  *[["flash", c] for c in ("info", "backup", "restore", "reset")],
                  ["cf", "grow"], ["cf", "format"], ["verify"], ["boot", "restore"]]


@pytest.mark.parametrize("cmd", IMAGE_COMMANDS, ids=[" ".join(c) for c in IMAGE_COMMANDS])
def test_every_image_command_takes_format(runner, cmd):
    res = vdisk(runner, *cmd, "--help")
    assert res.exit_code == 0
    assert "--format" in res.stdout and "-f" in res.stdout


def test_format_raw_reaches_the_fat_commands(runner, tmp_path):
    """A FAT volume saved under a .vmdk name: refused as it is, read with -f raw."""
    need_tool("mkfs.fat")
    vol = tmp_path / "vol.vmdk"
    vol.write_bytes(b"")
    os.truncate(vol, 8 * MIB)
    subprocess.run(["mkfs.fat", "-F", "12", "-n", "RAWVOL", str(vol)], check=True,
                   capture_output=True)
    assert vdisk(runner, "fs", "ls", str(vol)).exit_code == 3
    res = vdisk(runner, "fs", "mkdir", "-f", "raw", str(vol), "/NEWDIR")
    assert res.exit_code == 0, res.output
    res = vdisk(runner, "fs", "ls", "--format", "raw", str(vol))
    assert res.exit_code == 0 and "NEWDIR" in res.stdout
    mdir = subprocess.run([need_tool("mdir"), "-i", str(vol), "::/"], capture_output=True,
                          text=True, env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    assert "NEWDIR" in mdir.stdout
