"""convert keeps the source's disk database: every ddb.* key that still holds for the
target (4Kn sector sizes, toolsVersion, virtualHWVersion, adapterType unless --adapter,
uuid), geometry recomputed for the adapter, longContentID renewed; new streams carry
ddb.toolsVersion = "2147483647" as qemu-img writes it. Sources come from qemu-img
(`-o toolsversion=…,hwversion=…,adapter_type=…`) with the keys qemu does not write added
to its text descriptor by hand."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import need_tool, vdisk

from vdisk_tool.image.disk import open_image

MIB = 1 << 20
SIZE = 100 * MIB
UUID = "60 00 C2 9b 01 02 03 04-05 06 07 08 09 0a 0b 0c"
LONG = "0123456789abcdef0123456789abcdef"
EXTRA = (f'ddb.logicalSectorSize = "4096"\nddb.physicalSectorSize = "4096"\n'
         f'ddb.uuid = "{UUID}"\nddb.longContentID = "{LONG}"\n'
         'ddb.geometry.biosHeads = "255"\nddb.uuid.parent = "00000000-0000-0000-0000-000000000000"\n')


def ddb_of(path: Path) -> dict[str, str]:
    with open_image(path) as disk:
        desc = disk.descriptor
        assert desc is not None
        return {k: desc.get(k) or "" for k in desc.keys if k.startswith("ddb.")}


@pytest.fixture
def source(tmp_path) -> Path:
    """qemu-img's monolithicFlat with toolsVersion 12345, hardware version 14, lsilogic,
    then made a 4Kn disk with a uuid and longContentID (keys qemu-img does not write)."""
    qemu = need_tool("qemu-img")
    p = tmp_path / "src.vmdk"
    subprocess.run([qemu, "create", "-q", "-f", "vmdk", "-o",
                    "subformat=monolithicFlat,toolsversion=12345,hwversion=14,adapter_type=lsilogic",
                    str(p), str(SIZE)], check=True)
    text = p.read_text()
    assert 'ddb.toolsVersion = "12345"' in text and 'ddb.virtualHWVersion = "14"' in text
    p.write_text(text + EXTRA)
    subprocess.run([need_tool("qemu-io"), "-f", "vmdk", "-c", "write -P 0x5a 1M 64k", str(p)],
                   check=True, capture_output=True)
    return p


SUBS = ["monolithicSparse", "streamOptimized", "twoGbMaxExtentSparse", "monolithicFlat", "vmfs"]


@pytest.mark.parametrize("sub", SUBS)
def test_convert_keeps_the_disk_database(runner, source, tmp_path, sub):
    out = tmp_path / "out.vmdk"
    res = vdisk(runner, "convert", str(source), str(out), "-F", sub)
    assert res.exit_code == 0, res.output
    got = ddb_of(out)
    assert got["ddb.toolsversion"] == "12345"
    assert got["ddb.virtualhwversion"] == "14"
    assert got["ddb.adaptertype"] == "lsilogic"
    assert got["ddb.logicalsectorsize"] == "4096" and got["ddb.physicalsectorsize"] == "4096"
    assert got["ddb.uuid"] == UUID
    assert got["ddb.geometry.biosheads"] == "255"       # same adapter: the BIOS geometry holds
    assert "ddb.uuid.parent" not in got                  # a flattened copy has no parent
    assert re.fullmatch(r"[0-9a-f]{32}", got["ddb.longcontentid"])
    assert got["ddb.longcontentid"] != LONG
    with open_image(out) as disk:
        assert got["ddb.longcontentid"].endswith(f"{disk.descriptor.cid:08x}")
    sectors = SIZE // 512
    assert (got["ddb.geometry.heads"], got["ddb.geometry.sectors"]) == ("255", "63")
    assert got["ddb.geometry.cylinders"] == str(sectors // (255 * 63))
    # the independent readers agree with the copy
    cmp = subprocess.run([need_tool("qemu-img"), "compare", str(source), str(out)],
                         capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    assert subprocess.run([need_tool("vmdkinfo"), str(out)], capture_output=True).returncode == 0
    info = json.loads(vdisk(runner, "info", "--json", str(out)).stdout)
    assert info["logical_sector_bytes"] == 4096 and info["physical_sector_bytes"] == 4096
    assert "sector size: logical 4096, physical 4096 bytes" in vdisk(runner, "info", str(out)).stdout


def test_adapter_option_changes_adapter_and_geometry(runner, source, tmp_path):
    out = tmp_path / "ide.vmdk"
    assert vdisk(runner, "convert", str(source), str(out), "--adapter", "ide").exit_code == 0
    got = ddb_of(out)
    assert got["ddb.adaptertype"] == "ide"
    assert (got["ddb.geometry.heads"], got["ddb.geometry.sectors"]) == ("16", "63")
    assert got["ddb.geometry.cylinders"] == str(min(SIZE // 512 // 1008, 16383))
    assert "ddb.geometry.biosheads" not in got          # it described the old adapter
    assert got["ddb.toolsversion"] == "12345" and got["ddb.virtualhwversion"] == "14"


def test_new_stream_carries_tools_version_like_qemu(runner, tmp_path):
    qemu = need_tool("qemu-img")
    raw = tmp_path / "src.raw"
    raw.write_bytes(b"\x11" * MIB)
    ours, theirs = tmp_path / "ours.vmdk", tmp_path / "theirs.vmdk"
    assert vdisk(runner, "convert", str(raw), str(ours), "-F", "streamOptimized").exit_code == 0
    subprocess.run([qemu, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
                    str(raw), str(theirs)], check=True)
    assert ddb_of(theirs)["ddb.toolsversion"] == "2147483647"   # the oracle writes it
    assert ddb_of(ours)["ddb.toolsversion"] == "2147483647"
    res = vdisk(runner, "create", str(tmp_path / "new.vmdk"), "-s", "10M", "-F", "streamOptimized")
    assert res.exit_code == 0
    assert ddb_of(tmp_path / "new.vmdk")["ddb.toolsversion"] == "2147483647"


def test_qemu_monolithic_sparse_source_keeps_tools_and_hw_version(runner, tmp_path):
    qemu = need_tool("qemu-img")
    src = tmp_path / "q.vmdk"
    subprocess.run([qemu, "create", "-q", "-f", "vmdk", "-o", "toolsversion=10338,hwversion=11",
                    str(src), "64M"], check=True)
    out = tmp_path / "s.vmdk"
    assert vdisk(runner, "convert", str(src), str(out), "-F", "streamOptimized").exit_code == 0
    got = ddb_of(out)
    assert (got["ddb.toolsversion"], got["ddb.virtualhwversion"]) == ("10338", "11")
    assert got["ddb.adaptertype"] == "ide"
