"""ZERO, RDONLY and NOACCESS extent lines are honoured (qemu drops them and shrinks the disk)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import vdisk

from vdisk_tool.errors import ImageError, VdiskError
from vdisk_tool.image.disk import open_image

MiB = 1 << 20


def _custom(tmp: Path, lines: list[str]) -> Path:
    for name, fill in (("a-flat.vmdk", b"\xaa"), ("b-flat.vmdk", b"\xbb")):
        (tmp / name).write_bytes(fill * MiB)
    desc = ["# Disk DescriptorFile", "version=1", "CID=12345678", "parentCID=ffffffff",
            'createType="custom"', "", "# Extent description", *lines, "",
            "# The Disk Data Base", "#DDB", 'ddb.adapterType = "ide"']
    p = tmp / "d.vmdk"
    p.write_text("\n".join(desc) + "\n")
    return p


def test_zero_extent_counts_and_reads_zero(tmp_path, runner):
    p = _custom(tmp_path, ['RW 2048 FLAT "a-flat.vmdk" 0', "RW 4096 ZERO",
                           'RDONLY 2048 FLAT "b-flat.vmdk" 0'])
    with open_image(str(p)) as d:
        assert d.size_bytes == 4 * MiB
        assert d.read_at(MiB - 2, 4) == b"\xaa\xaa\0\0"
        assert d.read_at(3 * MiB - 1, 2) == b"\0\xbb"
    res = vdisk(runner, "info", "--json", str(p))
    info = json.loads(res.stdout)
    assert info["virtual_size_bytes"] == 4 * MiB
    assert [e["access"] + " " + e["type"] for e in info["extents"]] == [
        "RW FLAT", "RW ZERO", "RDONLY FLAT"]
    runs = json.loads(vdisk(runner, "map", "--json", str(p)).stdout)["runs"]
    assert any(r["kind"] == "zero" and r["offset"] == MiB and r["length"] == 2 * MiB for r in runs)


def test_rdonly_extent_refuses_writes(tmp_path):
    p = _custom(tmp_path, ['RW 2048 FLAT "a-flat.vmdk" 0', 'RDONLY 2048 FLAT "b-flat.vmdk" 0'])
    with open_image(str(p), writable=True) as d:
        d.write_at(0, b"ok")
        with pytest.raises(VdiskError):
            d.write_at(MiB + 10, b"no")
    assert (tmp_path / "b-flat.vmdk").read_bytes() == b"\xbb" * MiB


def test_noaccess_extent_is_an_error_not_zeros(tmp_path, runner):
    p = _custom(tmp_path, ['RW 2048 FLAT "a-flat.vmdk" 0', 'NOACCESS 2048 FLAT "b-flat.vmdk" 0'])
    with open_image(str(p)) as d:
        assert d.size_bytes == 2 * MiB
        assert d.read_at(0, 4) == b"\xaa" * 4
        with pytest.raises(ImageError):
            d.read_at(MiB, 4)
    res = vdisk(runner, "convert", str(p), str(tmp_path / "out.raw"))
    assert res.exit_code == 3 and "NOACCESS" in res.stderr
    assert not (tmp_path / "out.raw").exists()
