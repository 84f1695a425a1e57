"""Differencing VHDX files that vdisk creates (`vdisk create CHILD.vhdx -o backing_file=PARENT`).

qemu-img opens no differencing VHDX, so the child's structures are judged by the
independent parser of tests/vhdxbuilder.py (written from MS-VHDX: headers and region
tables with their CRC-32C, metadata items and flags, the parent locator's UTF-16LE
entries, the BAT); what the child reads is judged against `qemu-img convert -O raw` of
the parent, and what a write changes against the same edit made to that raw copy, with
fsck.fat and mtools reading the FAT volume inside.
"""
from __future__ import annotations

import hashlib
import random
import struct
import uuid
from pathlib import Path

import pytest
import vhdxbuilder as vb
from conftest import need_tool, run, vdisk
from fatutil import fsck_clean, mtools_fill, mtype

from vdisk_tool.image.disk import open_image
from vdisk_tool.image.edit import edit_image

MIB = vb.MIB
FILES = {"KEEP.TXT": b"parent data\r\n" * 50, "DIR/INNER.BIN": bytes(range(256)) * 40}
PAYLOAD = random.Random(18).randbytes(70_000)


def _fat_parent(folder: Path, name: str = "parent.vhdx", opts: str = "block_size=2M") -> Path:
    """A FAT16 volume (mkfs.fat, mtools) converted by qemu-img to a dynamic VHDX."""
    need_tool("mkfs.fat")
    raw = folder / f"{name}.src.raw"
    with open(raw, "wb") as f:
        f.truncate(12 * MIB)
    run("mkfs.fat", "-F", "16", "-s", "4", "-n", "CHILD", str(raw))
    mtools_fill(raw, 0, FILES, folder)
    out = folder / name
    run(need_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "vhdx", "-o",
        f"subformat=dynamic,{opts}", str(raw), str(out))
    raw.unlink()
    return out


def _raw_of(vhdx: Path) -> bytes:
    out = vhdx.with_suffix(".expect.raw")
    run(need_tool("qemu-img"), "convert", "-f", "vhdx", "-O", "raw", str(vhdx), str(out))
    try:
        return out.read_bytes()
    finally:
        out.unlink()


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _create(runner, child: Path, *extra: str, code: int = 0):
    res = vdisk(runner, "create", str(child), "-O", "vhdx", *extra)
    assert res.exit_code == code, res.output
    return res


def _current_data_guid(p: Path) -> str:
    return vb.parse(p.read_bytes()).current["data_write"]


# -- (a) the structures, parsed without vdisk ---------------------------------------------------
def test_child_structures_follow_ms_vhdx(tmp_path, runner):
    parent = _fat_parent(tmp_path)
    before = _sha(parent)
    child = tmp_path / "child.vhdx"
    _create(runner, child, "-o", "backing_file=parent.vhdx,backing_fmt=vhdx")
    assert _sha(parent) == before   # opening the parent read-only changed nothing
    p, c = vb.parse(parent.read_bytes()), vb.parse(child.read_bytes())
    # headers: both verify, empty log, a DataWriteGuid of its own
    assert {h["log_guid"] for h in c.headers} == {str(uuid.UUID(int=0)).upper()}
    assert c.current["data_write"] != p.current["data_write"]
    # required regions, 1 MiB aligned (the parser asserts alignment, CRC, no overlap)
    assert c.regions[vb.BAT][2] == 1 and c.regions[vb.META][2] == 1
    # file parameters: HasParent only (LeaveBlockAllocated clear), the parent's block size
    assert c.flags == 2 and c.block == p.block == 2 * MIB
    # the virtual-disk items are the parent's (IsVirtualDisk: copied when forking)
    assert (c.size, c.sector, c.physical, c.disk_id) == (p.size, p.sector, p.physical, p.disk_id)
    for key in (vb.DISK_SIZE, vb.DISK_ID, vb.LOGICAL, vb.PHYSICAL):
        assert c.items[key][0] == 6                       # IsVirtualDisk | IsRequired
    assert c.items[vb.FILE_PARAMS][0] == 4 and c.items[vb.LOCATOR][0] == 4   # IsRequired only
    # the locator: the VHDX type, the parent's DataWriteGuid lowercase in braces, its path
    assert c.locator_type == vb.VHDX_LOCATOR
    assert c.locator == {"parent_linkage": "{" + p.current["data_write"].lower() + "}",
                         "relative_path": "parent.vhdx"}
    # the BAT holds ceil(blocks / ratio) chunks of (ratio + 1) entries, all not present
    blocks = -(-c.size // c.block)
    ratio = vb.chunk_ratio(c.block, c.sector)
    assert len(c.bat) == -(-blocks // ratio) * (ratio + 1) and set(c.bat) == {0}
    assert vdisk(runner, "check", str(child)).exit_code == 0


def test_child_of_a_4096_byte_sector_parent_with_user_metadata(tmp_path, runner):
    """A parent qemu-img cannot write (tests/vhdxbuilder.py): 4096-byte logical sectors, one
    user item marked IsVirtualDisk (copied into the child) and one not (left out)."""
    keep = (uuid.uuid4().bytes_le, 1 | 2, b"copied with the disk")
    drop = (uuid.uuid4().bytes_le, 1, b"file metadata")
    parent = vb.Vhdx(size=64 * MIB, block=4 * MIB, sector=4096, meta_extra=[keep, drop],
                     blocks={3: (6, b"\x5a" * (4 * MIB))})
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "p.vhdx").write_bytes(parent.build())
    child = tmp_path / "c.vhdx"
    _create(runner, child, "-o", "backing_file=sub/p.vhdx")
    c = vb.parse(child.read_bytes())
    assert (c.sector, c.block, c.size) == (4096, 4 * MIB, 64 * MIB)
    assert c.locator["relative_path"] == "sub\\p.vhdx"
    assert [(g, f, v) for g, f, v in c.user_items] == [(vb._guid_text(keep[0]), 3, keep[2])]
    ratio = vb.chunk_ratio(4 * MIB, 4096)   # 8192 blocks per chunk: one chunk
    assert len(c.bat) == ratio + 1
    with open_image(child) as d:
        assert d.read_at(12 * MIB, 4 * MIB) == b"\x5a" * (4 * MIB)


def test_parent_outside_the_folder_needs_allow_outside(tmp_path, runner):
    (tmp_path / "base").mkdir()
    (tmp_path / "vm").mkdir()
    _fat_parent(tmp_path / "base")
    child = tmp_path / "vm" / "child.vhdx"
    res = _create(runner, child, "-o", "backing_file=../base/parent.vhdx", code=3)
    assert "outside the image's folder" in res.stderr and len(res.stderr.strip().splitlines()) <= 2
    assert not child.exists() and list((tmp_path / "vm").iterdir()) == []
    # a host path is taken relative to the child's folder first: still outside
    _create(runner, child, "-o", f"backing_file={tmp_path / 'base' / 'parent.vhdx'}", code=3)
    _create(runner, child, "--allow-outside", "-o", "backing_file=../base/parent.vhdx")
    assert vb.parse(child.read_bytes()).locator["relative_path"] == "..\\base\\parent.vhdx"
    assert vdisk(runner, "info", str(child)).exit_code == 3
    assert vdisk(runner, "info", "--allow-outside", str(child)).exit_code == 0


@pytest.mark.parametrize("make,opts,message", [
    ("qcow2", "backing_file=p.qcow2", "takes only a VHDX parent; p.qcow2 is a qcow2 image"),
    ("raw", "backing_file=p.img", "takes only a VHDX parent; p.img is a raw image"),
    ("vhdx", "backing_file=p.vhdx,backing_fmt=qcow2", "not backing_fmt=qcow2"),
    ("vhdx", "backing_file=p.vhdx,block_size=1M", "parent's block size"),
    ("vhdx", "backing_file=missing.vhdx", "is not a file"),
    ("vhdx", "backing_file=c.vhdx", "is not a file"),
])
def test_bad_parents_are_refused_in_one_line(tmp_path, runner, make, opts, message):
    qemu_img = need_tool("qemu-img")
    if make == "raw":
        (tmp_path / "p.img").write_bytes(bytes(MIB))
    else:
        run(qemu_img, "create", "-q", "-f", make, str(tmp_path / f"p.{make}"), "8M")
    res = _create(runner, tmp_path / "c.vhdx", "-o", opts, code=3)
    assert message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "c.vhdx").exists()


def test_size_must_be_the_parents(tmp_path, runner):
    _fat_parent(tmp_path)
    res = _create(runner, tmp_path / "c.vhdx", "-s", "20M", "-o", "backing_file=parent.vhdx",
                  code=3)
    assert "has its parent's size (12582912 bytes)" in res.stderr
    _create(runner, tmp_path / "c.vhdx", "-s", "12M", "-o", "backing_file=parent.vhdx")
    res = _create(runner, tmp_path / "d.vhdx", "-o", "backing_file=parent.vhdx,subformat=fixed",
                  code=2)
    assert "differencing" in res.stderr
    assert vdisk(runner, "create", str(tmp_path / "e.vhdx")).exit_code == 2   # no size, no parent
    res = vdisk(runner, "convert", str(tmp_path / "parent.vhdx"), str(tmp_path / "f.vhdx"),
                "-o", "backing_file=parent.vhdx")
    assert res.exit_code == 3 and "convert does not write differencing" in res.stderr
    assert not (tmp_path / "f.vhdx").exists()


# -- (b) reads and writes -----------------------------------------------------------------------
def test_child_reads_as_its_parent_and_takes_the_writes(tmp_path, runner):
    parent = _fat_parent(tmp_path)
    want = bytearray(_raw_of(parent))
    before = _sha(parent)
    child = tmp_path / "child.vhdx"
    _create(runner, child, "-o", "backing_file=parent.vhdx")
    with open_image(child) as d:
        assert d.size_bytes == len(want) and d.read_at(0, d.size_bytes) == bytes(want)
    # a file put through vdisk lands in the child only
    (tmp_path / "new.bin").write_bytes(PAYLOAD)
    res = vdisk(runner, "fs", "put", str(child), str(tmp_path / "new.bin"), "/NEW.BIN")
    assert res.exit_code == 0, res.output
    assert _sha(parent) == before
    flat = tmp_path / "flat.raw"
    assert vdisk(runner, "convert", str(child), str(flat)).exit_code == 0
    fsck_clean(flat)
    assert mtype(flat, 0, "/NEW.BIN") == PAYLOAD
    for name, data in FILES.items():
        assert mtype(flat, 0, "/" + name) == data
    # writes through the Python API, byte for byte against the same writes to the raw copy
    want = bytearray(flat.read_bytes())
    edits = ((7 * MIB + 3, b"\xa1" * 1000), (2 * MIB - 512, b"\xb2" * 4096),
             (9 * MIB, b"\xc3" * (2 * MIB)), (12 * MIB - 512, b"\xd4" * 512))
    with edit_image(str(child)) as d:
        for off, data in edits:
            d.write_at(off, data)
            want[off:off + len(data)] = data
    assert _sha(parent) == before
    with open_image(child) as d:
        assert d.read_at(0, d.size_bytes) == bytes(want)
    assert vdisk(runner, "check", str(child)).exit_code == 0
    # the child's BAT after the writes, parsed without vdisk: payload entries fully or
    # partially present or not present; a chunk with a partial block has its bitmap
    c = vb.parse(child.read_bytes())
    ratio = vb.chunk_ratio(c.block, c.sector)
    states = [e & 7 for e in c.bat]
    payload = [s for i, s in enumerate(states) if i % (ratio + 1) != ratio]
    assert set(payload) <= {0, 6, 7} and 7 in payload
    assert states[ratio] == 6


# -- (c) the parent changes afterwards ----------------------------------------------------------
def test_a_parent_written_after_the_child_was_made_is_a_linkage_mismatch(tmp_path, runner):
    parent = _fat_parent(tmp_path)
    child = tmp_path / "child.vhdx"
    _create(runner, child, "-o", "backing_file=parent.vhdx")
    linked = _current_data_guid(parent)
    with edit_image(str(parent)) as d:   # any write: a new DataWriteGuid (§2.2.2)
        d.write_at(5 * MIB, b"changed")
    assert _current_data_guid(parent) != linked
    res = vdisk(runner, "check", str(child))
    assert res.exit_code == 1 and "vhdx.parent-unusable" in res.stdout, res.output
    assert "parent_linkage" in res.stdout
    res = vdisk(runner, "info", str(child))
    assert res.exit_code == 3 and "the parent was modified" in res.stderr, res.output


# -- grow ---------------------------------------------------------------------------------------
def test_grow_of_a_child_is_refused(tmp_path, runner):
    parent = _fat_parent(tmp_path)
    child = tmp_path / "child.vhdx"
    _create(runner, child, "-o", "backing_file=parent.vhdx")
    sums = _sha(parent), _sha(child)
    res = vdisk(runner, "grow", str(child), "--size", "20M")
    assert res.exit_code == 3 and "differencing VHDX" in res.stderr, res.output
    assert res.stderr.count("\n") <= 2
    assert (_sha(parent), _sha(child)) == sums
    # the way out the message names: a standalone copy, which grows
    alone = tmp_path / "alone.vhdx"
    assert vdisk(runner, "convert", str(child), str(alone)).exit_code == 0
    assert vdisk(runner, "grow", str(alone), "--size", "20M").exit_code == 0
    run(need_tool("qemu-img"), "check", "-f", "vhdx", str(alone))
    got = _raw_of(alone)
    assert got[:12 * MIB] == _raw_of(parent) and got[12 * MIB:] == bytes(8 * MIB)


def test_locator_paths_on_windows(monkeypatch):
    """On Windows the child also names the parent by its extended-length path and by its
    volume's GUID (the volume name comes from the host; faked here)."""
    from vdisk_tool.image import platform
    from vdisk_tool.image.vhdx import create as vc
    monkeypatch.setattr(platform, "FEATURES", platform.Features(windows=True, positional=False,
                                                                seek_data=False, dir_fsync=False))
    monkeypatch.setattr(platform, "volume_path",
                        lambda p: "\\\\?\\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}\\x.vhdx")
    facts = vc.ParentFacts("/vms/x.vhdx", MIB, MIB, 512, 512, bytes(16), bytes(15) + b"\1")
    pairs = vc.locator_pairs(facts, "/vms")
    assert pairs["parent_linkage"] == "{00000000-0000-0000-0000-000000000001}"
    assert pairs["volume_path"].startswith("\\\\?\\Volume{")
    assert pairs["absolute_win32_path"].startswith("\\\\?\\")
    assert vc.win32_extended("C:\\vms\\p.vhdx") == "\\\\?\\C:\\vms\\p.vhdx"
    assert vc.win32_extended("\\\\srv\\share\\p.vhdx") == "\\\\?\\UNC\\srv\\share\\p.vhdx"
    raw = vc.locator_item(pairs)
    loc_type, got = vb._parse_locator(raw)
    assert loc_type == vb.VHDX_LOCATOR and got == pairs
    assert struct.unpack_from("<H", raw, 18)[0] == len(pairs)


def test_a_child_of_a_child(tmp_path, runner):
    """A chain of three: the grandchild takes the child's facts (which are the parent's) and
    names the child; a write lands in the grandchild only."""
    parent = _fat_parent(tmp_path)
    want = bytearray(_raw_of(parent))
    child, grand = tmp_path / "child.vhdx", tmp_path / "grand.vhdx"
    _create(runner, child, "-o", "backing_file=parent.vhdx")
    _create(runner, grand, "-o", "backing_file=child.vhdx")
    c, g = vb.parse(child.read_bytes()), vb.parse(grand.read_bytes())
    assert g.locator == {"parent_linkage": "{" + c.current["data_write"].lower() + "}",
                         "relative_path": "child.vhdx"}
    assert (g.size, g.block, g.disk_id) == (c.size, c.block, c.disk_id)
    sums = _sha(parent), _sha(child)
    with edit_image(str(grand)) as d:
        d.write_at(3 * MIB + 7, b"grandchild")
    want[3 * MIB + 7:3 * MIB + 17] = b"grandchild"
    assert (_sha(parent), _sha(child)) == sums
    with open_image(grand) as d:
        assert d.read_at(0, d.size_bytes) == bytes(want)
    assert vdisk(runner, "check", str(grand)).exit_code == 0
