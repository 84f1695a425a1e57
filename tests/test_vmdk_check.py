"""vdisk check and check --repair on damaged images made by qemu-img (independent writer)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk

from vdisk_tool.image.vmdk.sparse import SparseExtent

WRITES = [(0, 0x11, 65536), (1 << 20, 0xAB, 65536), (5 << 20, 0x5C, 131072), (40 << 20, 0x77, 4096)]


def _sparse(tmp: Path, name: str = "d.vmdk", subformat: str = "monolithicSparse") -> Path:
    qemu_img, qemu_io = need_tool("qemu-img"), need_tool("qemu-io")
    p = tmp / name
    run(qemu_img, "create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", str(p), "64M")
    cmds = sum((["-c", f"write -P {b} {o} {n}"] for o, b, n in WRITES), [])
    run(qemu_io, "-f", "vmdk", *cmds, str(p))
    return p


def _tables(p: Path) -> tuple[int, int, int]:
    """(primary GT 0 sector, redundant GT 0 sector, grain sector of the grain at 1 MiB)."""
    e = SparseExtent(str(p))
    try:
        return e.gd[0], e.read_rgd()[0], e.gte(16)
    finally:
        e.close()


def _poke(p: Path, offset: int, data: bytes) -> None:
    with open(p, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _codes(runner, p: Path) -> tuple[int, set[str], dict]:
    res = vdisk(runner, "check", "--json", str(p))
    doc = json.loads(res.stdout)
    return res.exit_code, {f["code"] for f in doc["findings"]}, doc


@pytest.mark.parametrize("sub", ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
                                 "twoGbMaxExtentFlat", "streamOptimized"])
def test_clean_qemu_images_check_clean(tmp_path, runner, sub):
    qemu_img = need_tool("qemu-img")
    if sub == "streamOptimized":
        src = _sparse(tmp_path, "src.vmdk")
        p = tmp_path / "d.vmdk"
        run(qemu_img, "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", str(src), str(p))
    else:
        p = _sparse(tmp_path, subformat=sub)
    code, codes, doc = _codes(runner, p)
    assert code == 0 and codes == set(), doc
    assert doc["grains_checked"] >= (4 if sub != "monolithicFlat" and "Flat" not in sub else 0)


@pytest.mark.parametrize("side", ["primary", "redundant"])
def test_damaged_grain_table_is_repaired_from_its_copy(tmp_path, runner, side):
    qemu_img = need_tool("qemu-img")
    p = _sparse(tmp_path)
    ref = tmp_path / "ref.vmdk"
    ref.write_bytes(p.read_bytes())
    gt, rgt, _ = _tables(p)
    target = gt if side == "primary" else rgt
    _poke(p, target * 512 + 16 * 4, struct.pack("<I", 0x7FFFFFF0))
    code, codes, doc = _codes(runner, p)
    assert code == 1 and "vmdk.gt-rgt-mismatch" in codes
    assert all(f["fixable"] for f in doc["findings"] if f["code"] == "vmdk.gt-rgt-mismatch")
    before = p.read_bytes()
    res = vdisk(runner, "check", str(p), "--repair", "--dry-run")
    assert res.exit_code == 1 and "repair plan:" in res.stdout
    assert p.read_bytes() == before
    res = vdisk(runner, "check", str(p), "--repair", "--backup", str(tmp_path / "bak.vmdk"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "bak.vmdk").read_bytes() == before
    assert _codes(runner, p)[0] == 0
    assert run(qemu_img, "check", str(p), check=False).returncode == 0
    assert run(qemu_img, "compare", str(ref), str(p), check=False).returncode == 0


def test_both_tables_plausible_is_not_guessed(tmp_path, runner):
    p = _sparse(tmp_path)
    gt, rgt, grain = _tables(p)
    _poke(p, gt * 512 + 16 * 4, struct.pack("<I", 0))   # primary: grain 16 unallocated
    code, codes, doc = _codes(runner, p)
    assert code == 1 and "vmdk.gt-rgt-mismatch" in codes
    assert not any(f["fixable"] for f in doc["findings"] if f["code"] == "vmdk.gt-rgt-mismatch")
    before = p.read_bytes()
    res = vdisk(runner, "check", str(p), "--repair")
    assert res.exit_code == 1
    assert "without guessing" in res.stdout
    assert p.read_bytes() == before


@pytest.mark.parametrize("side", ["primary", "redundant"])
def test_a_table_emptied_on_one_side_only_is_a_mismatch(tmp_path, runner, side):
    """Grain table 1 holds one grain (the write at 40 MiB); all its entries zeroed on one
    side: the copies disagree, however empty one of them is."""
    p = _sparse(tmp_path)
    e = SparseExtent(str(p))
    try:
        gt, rgt, gt_bytes = e.gd[1], e.read_rgd()[1], e.geo.gt_bytes
    finally:
        e.close()
    _poke(p, (gt if side == "primary" else rgt) * 512, bytes(gt_bytes))
    code, codes, doc = _codes(runner, p)
    assert code == 1 and "vmdk.gt-rgt-mismatch" in codes, doc


def test_unclean_shutdown_is_cleared(tmp_path, runner):
    p = _sparse(tmp_path)
    _poke(p, 72, b"\x01")
    code, codes, _ = _codes(runner, p)
    assert code == 1 and codes == {"vmdk.unclean-shutdown"}
    assert vdisk(runner, "check", "--repair", str(p)).exit_code == 0
    assert p.read_bytes()[72] == 0


def test_all_findings_reported_not_only_the_first(tmp_path, runner):
    p = _sparse(tmp_path)
    gt, rgt, grain = _tables(p)
    for table in (gt, rgt):   # grain 80 (5 MiB) past EOF in both copies; grain 81 shares grain 16
        _poke(p, table * 512 + 80 * 4, struct.pack("<I", 0x7FFFFFF0))
        _poke(p, table * 512 + 81 * 4, struct.pack("<I", grain))
    _poke(p, 72, b"\x01")
    code, codes, doc = _codes(runner, p)
    assert code == 1
    assert {"vmdk.grain-pointer", "vmdk.grain-shared", "vmdk.unclean-shutdown"} <= codes, doc
    assert "vmdk.leaked-grains" in codes   # the grain 81 used to own is now unreferenced
    # not fixable without guessing: repair leaves the errors and does not clear the flag
    res = vdisk(runner, "check", "--repair", str(p))
    assert res.exit_code == 1
    assert p.read_bytes()[72] == 1


def test_flat_extent_size_mismatch_is_fixed_in_descriptor(tmp_path, runner):
    qemu_img = need_tool("qemu-img")
    p = _sparse(tmp_path, subformat="monolithicFlat")
    flat = tmp_path / "d-flat.vmdk"
    with open(flat, "r+b") as f:
        f.truncate(96 << 20)
    code, codes, _ = _codes(runner, p)
    assert code == 1 and codes == {"vmdk.flat-size-mismatch"}
    assert vdisk(runner, "check", "--repair", str(p)).exit_code == 0
    assert "RW 196608 FLAT" in p.read_text()
    info = json.loads(run(qemu_img, "info", "--output=json", str(p)).stdout)
    assert info["virtual-size"] == 96 << 20


def test_snapshot_cid_mismatch_is_a_finding(tmp_path, runner):
    qemu_img, qemu_io = need_tool("qemu-img"), need_tool("qemu-io")
    base = _sparse(tmp_path, "base.vmdk")
    child = tmp_path / "child.vmdk"
    run(qemu_img, "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", str(child))
    assert _codes(runner, child)[0] == 0
    run(qemu_io, "-f", "vmdk", "-c", "write -P 1 0 512", str(base))   # changes base's CID
    code, codes, _ = _codes(runner, child)
    assert code == 1 and "vmdk.cid-mismatch" in codes
    res = vdisk(runner, "info", str(child))
    assert res.exit_code == 3 and "parentCID" in res.stderr


def test_header_newline_damage(tmp_path, runner):
    p = _sparse(tmp_path)
    _poke(p, 75, b"\n")   # the \r of \r\n lost, as a text-mode transfer does
    code, codes, _ = _codes(runner, p)
    assert code == 1 and "vmdk.header-newline" in codes


def test_unreadable_is_exit_3(tmp_path, runner):
    p = tmp_path / "x.vmdk"
    p.write_bytes(b"KDMV" + b"\xff" * 508)
    res = vdisk(runner, "check", str(p))
    assert res.exit_code == 3
    assert res.stderr.count("vdisk: error:") == 1


def test_damaged_directory_entries_are_repaired(tmp_path, runner):
    """A GD entry pointing into the header and an RGD entry zeroed: each table still sits
    where the layout puts it and equals its copy, so the entry is restored."""
    qemu_img = need_tool("qemu-img")
    p = _sparse(tmp_path)
    ref = tmp_path / "ref.vmdk"
    ref.write_bytes(p.read_bytes())
    e = SparseExtent(str(p))
    gd_off, rgd_off = e.geo.gd_offset_sectors, e.geo.rgd_offset_sectors
    e.close()
    _poke(p, gd_off * 512, struct.pack("<I", 5))
    _poke(p, rgd_off * 512 + 4, struct.pack("<I", 0))
    code, codes, doc = _codes(runner, p)
    assert code == 1 and codes == {"vmdk.gd-entry"}, doc
    assert len([f for f in doc["findings"] if f["fixable"]]) == 2
    assert vdisk(runner, "check", "--repair", str(p)).exit_code == 0
    assert _codes(runner, p)[0] == 0
    assert run(qemu_img, "compare", str(ref), str(p), check=False).returncode == 0
