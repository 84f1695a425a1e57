"""Every edit path renews the CID, as VMware does on the first write after opening a disk,
and a snapshot child keeps naming its parent's CID.

The CID is read by vmdkinfo (libvmdk) and from the descriptor bytes directly; each row of
EDITS is one way vdisk writes to a disk (copy and rename, the flat undo journal, the
streamOptimized re-encode, a split extent set, a snapshot child): a new edit path is a
new row.
"""
from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import assert_cid_renewed, descriptor_lines, need_tool, run, vdisk

from vdisk_tool.image.create import create_image

MIB = 1 << 20


def _vmdkinfo_cids(path: Path) -> tuple[int, int]:
    """(CID, parentCID) as libvmdk reads them."""
    out = run(need_tool("vmdkinfo"), str(path)).stdout
    cid = re.search(r"^\s*Content identifier:\s*0x([0-9a-f]+)", out, re.M)
    parent = re.search(r"^\s*Parent content identifier:\s*0x([0-9a-f]+)", out, re.M)
    assert cid and parent, out
    return int(cid.group(1), 16), int(parent.group(1), 16)


def _fat_vmdk(folder: Path, subformat: str, name: str = "d.vmdk") -> Path:
    """A FAT16 volume (mkfs.fat) converted by qemu-img into `subformat`."""
    need_tool("mkfs.fat")
    raw = folder / "v.raw"
    with open(raw, "wb") as f:
        f.truncate(8 * MIB)
    run("mkfs.fat", "-F", "16", "-s", "1", "-n", "CIDVOL", str(raw))
    disk = folder / name
    run(need_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "vmdk", "-o",
        f"subformat={subformat}", str(raw), str(disk))
    raw.unlink()
    return disk


def _child(folder: Path) -> Path:
    """A FAT disk and a snapshot child of it (qemu-img create -b)."""
    _fat_vmdk(folder, "monolithicSparse", "base.vmdk")
    child = folder / "child.vmdk"
    run(need_tool("qemu-img"), "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk",
        str(child))
    return child


EDITS: list[tuple[str, Callable[[Path], Path], dict[str, str]]] = [
    ("copy, monolithicSparse", lambda f: _fat_vmdk(f, "monolithicSparse"), {}),
    ("copy, monolithicFlat", lambda f: _fat_vmdk(f, "monolithicFlat"), {}),
    ("journal, monolithicFlat", lambda f: _fat_vmdk(f, "monolithicFlat"),
     {"VDISK_JOURNAL_MIN_BYTES": "0"}),
    ("copy, twoGbMaxExtentSparse", lambda f: _fat_vmdk(f, "twoGbMaxExtentSparse"), {}),
    ("re-encode, streamOptimized", lambda f: _fat_vmdk(f, "streamOptimized"), {}),
    ("copy, snapshot child", _child, {}),
]


@pytest.mark.parametrize("make,env", [e[1:] for e in EDITS], ids=[e[0] for e in EDITS])
def test_every_edit_renews_the_cid(tmp_path: Path, runner, monkeypatch, make, env) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    disk = make(tmp_path)
    before = descriptor_lines(disk)
    cid_before, parent_before = _vmdkinfo_cids(disk)
    r = vdisk(runner, "fs", "mkdir", str(disk), "/NEWDIR")
    assert r.exit_code == 0, r.stderr
    after = descriptor_lines(disk)
    assert_cid_renewed(before, after)
    cid_after, parent_after = _vmdkinfo_cids(disk)
    assert cid_after != cid_before
    assert parent_after == parent_before
    base = tmp_path / "base.vmdk"
    if base.exists():   # the child still names its (untouched) parent's CID
        assert _vmdkinfo_cids(base)[0] == parent_after
        assert subprocess.run([need_tool("qemu-img"), "check", str(disk)],
                              capture_output=True).returncode == 0
    assert vdisk(runner, "check", str(disk)).exit_code == 0


def test_repair_keeps_the_cid(tmp_path: Path, runner) -> None:
    """A repair restores metadata, not content: the CID stays (a child would break)."""
    from conftest import break_grain_table_and_flag
    disk = _fat_vmdk(tmp_path, "monolithicSparse")
    before = descriptor_lines(disk)
    break_grain_table_and_flag(disk)
    assert vdisk(runner, "check", str(disk), "--repair").exit_code == 0
    assert descriptor_lines(disk) == before


def test_created_images_get_distinct_cids(tmp_path: Path) -> None:
    a, b = tmp_path / "a.vmdk", tmp_path / "b.vmdk"
    create_image(str(a), 8 * MIB, "monolithicSparse", "ide")
    create_image(str(b), 8 * MIB, "monolithicSparse", "ide")
    assert _vmdkinfo_cids(a)[0] != _vmdkinfo_cids(b)[0]
    assert os.path.getsize(a) == os.path.getsize(b)
