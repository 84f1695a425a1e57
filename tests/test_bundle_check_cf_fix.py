"""The doctor's fix for CF FAT findings (`vdisk fs check <cf> --repair --yes`) repairs what it names,
with fsck.fat as the judge before and after."""
from __future__ import annotations

import os
import shlex

from conftest import need_tool, run, vdisk
from test_bundle_check import build_disks, make_bundle

from vdisk_tool.errors import Severity
from vdisk_tool.ipva import doctor

PART_OFFSET = 2048 * 512


def _cf_raw(b: str, raw: str) -> None:
    run(need_tool("qemu-img"), "convert", "-O", "raw", os.path.join(b, "hd-cf.vmdk"), raw)


def _fsck_partition(raw: str, part: str) -> int:
    with open(raw, "rb") as fi, open(part, "wb") as fo:
        fi.seek(PART_OFFSET)
        fo.write(fi.read())
    return run(need_tool("fsck.fat"), "-n", part, check=False).returncode


def _cf_fat_issues(b: str) -> list[doctor.Issue]:
    return [i for i in doctor.check_bundle(b).issues if i.subject == "cf"
            and i.code.startswith("fat.") and i.severity != Severity.INFO]


def test_cf_fat_findings_carry_a_repair_that_works(tmp_path, runner):
    b = make_bundle(tmp_path / "b", disks=build_disks(str(tmp_path / "set")))
    raw = str(tmp_path / "cf.raw")
    _cf_raw(b, raw)
    with open(raw, "r+b") as f:
        f.seek(PART_OFFSET + 14)
        reserved = int.from_bytes(f.read(2), "little")
        f.seek(PART_OFFSET + reserved * 512 + 2 * 7)     # FAT #1: cluster 7 in use, owned by none
        f.write(b"\xff\xff")
    os.unlink(os.path.join(b, "hd-cf.vmdk"))
    run(need_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "vmdk", "-o",
        "adapter_type=ide", raw, os.path.join(b, "hd-cf.vmdk"))
    assert _fsck_partition(raw, str(tmp_path / "before.part")) != 0

    cf = os.path.join(b, "hd-cf.vmdk")
    found = _cf_fat_issues(b)
    assert found
    want = f"vdisk fs check {shlex.quote(cf)} --repair --yes"
    assert {i.fix for i in found} == {want}, [i.to_dict() for i in found]

    res = vdisk(runner, *shlex.split(want)[1:], "--yes")   # the answer a user gives at the prompt
    assert res.exit_code == 0, res.output
    assert _cf_fat_issues(b) == []
    _cf_raw(b, raw)
    assert _fsck_partition(raw, str(tmp_path / "after.part")) == 0
