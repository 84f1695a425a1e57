"""The V9HF1 trap (ipva/upgrade.py): `bundle check` with an IPVA.BIN older than 9.00
hotfix1 and `boot restore` across it, on a flash holding more segments than 64 MB of RAM
allows from V9HF1 on. Flash contents are written by qemu-io, firmware images by
tests/fwbuilder.py, boot disks by sfdisk + mkfs.fat + mcopy + qemu-img."""
from __future__ import annotations

import hashlib
import json
import os
import sys

import fwbuilder
import pytest
from conftest import need_tool, run, vdisk
from test_bundle_check import _disks, disk_set, make_bundle, problems  # noqa: F401
from test_doctor_platform import bundle_with
from test_vmx import WORKSTATION_VMX

from vdisk_tool.errors import Severity
from vdisk_tool.ipva import doctor
from vdisk_tool.ipva.flash import directory_segments
from vdisk_tool.ipva.fwversion import FirmwareId
from vdisk_tool.ipva.upgrade import judge, memsize_for

IN_USE = 300                                   # > 224, the directory at 64 MB from V9HF1 on


def fill_flash(b: str, segments: int = IN_USE) -> str:
    flash = os.path.join(b, "hd-flash.vmdk")
    run(need_tool("qemu-io"), "-c", f"write -P 0x5a 0 {segments * 64}k", flash)
    return flash


def firmware_file(tmp_path, version: str, build: int) -> str:
    img = fwbuilder.standard()
    img.version, img.build = version, build
    p = tmp_path / f"ipva-{build}.bin"
    p.write_bytes(img.to_bytes())
    return str(p)


def sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_judge_numbers_and_directions():
    old, new = FirmwareId(90100, "9.00"), FirmwareId(90468, "9.00 hotfix4")
    v = judge(old, new, IN_USE, 64)
    assert v.risk and v.directory_segments == 224 and v.segments_in_use == 300
    assert "64 MB allows 224 segments of 64 KiB (14.0 MiB), 300 are in use" in v.reason
    assert f'set memsize = "{memsize_for(300)}"' in v.reason
    assert directory_segments(memsize_for(300)) >= 300 > directory_segments(memsize_for(300) - 4)
    assert not judge(old, new, 224, 64).risk                        # fits: no loss
    assert not judge(new, FirmwareId(90500, "9.00 hotfix5"), IN_USE, 64).risk  # already past
    assert not judge(old, FirmwareId(90050, "8.00 sr9"), IN_USE, 64).risk     # not across
    assert judge(None, new, IN_USE, 64).risk                        # unreadable: the risky case
    assert judge(FirmwareId(90200, ""), None, IN_USE, 64).risk      # cannot tell: risky too
    assert not judge(old, new, IN_USE, 192).risk                    # 900 at 192 MB
    assert judge(old, new, 950, 192).reason.count("no memsize allows more than 900") == 1
    unset = judge(old, new, IN_USE, None)
    assert unset.memsize_assumed and "not set: the shipped value assumed" in unset.reason


def test_bundle_check_old_firmware_warns_instead_of_overflow(tmp_path, runner):
    b = bundle_with(tmp_path, WORKSTATION_VMX, "9.00", 90100, "old")
    fill_flash(b)
    rep = doctor.check_bundle(b)
    assert problems(rep) == {"bundle.upgrade-flash-limit"}
    [i] = [i for i in rep.issues if i.code == "bundle.upgrade-flash-limit"]
    assert i.severity == Severity.WARNING and i.subject == "flash"
    assert i.finding.message.startswith("9.00 (build 90100) is older than 9.00 hotfix1 (V9HF1)")
    assert "memsize 64 MB allows 224 segments" in i.finding.message and "300 are in use" in i.finding.message
    assert i.fix.startswith(f"vdisk flash backup {os.path.join(b, 'hd-flash.vmdk')} -o ")
    data = json.loads(vdisk(runner, "bundle", "check", b, "--json").stdout)
    assert [x["code"] for x in data["findings"] if x["severity"] != "info"] == ["bundle.upgrade-flash-limit"]


@pytest.mark.parametrize("version,build,mem,want", [
    ("9.00 hotfix4", 90468, "64", {"flash.directory-overflow"}),   # the limit applies now
    ("9.00", 90100, "192", set()),                                 # enough RAM for V9HF1
])
def test_bundle_check_no_trap(tmp_path, version, build, mem, want):
    b = bundle_with(tmp_path, WORKSTATION_VMX.replace('memsize = "64"', f'memsize = "{mem}"'),
                    version, build, "n")
    fill_flash(b)
    assert problems(doctor.check_bundle(b)) == want


@pytest.fixture
def old_bundle(tmp_path):
    b = bundle_with(tmp_path, WORKSTATION_VMX, "9.00", 90100, "app")
    fill_flash(b)
    return b


def test_boot_restore_refuses_without_yes(old_bundle, tmp_path, runner, monkeypatch):
    boot = os.path.join(old_bundle, "hd-boot.vmdk")
    new = firmware_file(tmp_path, "9.00 hotfix4", 90468)
    before = sha(boot)
    r = vdisk(runner, "boot", "restore", boot, "--firmware", new)
    assert r.exit_code == 3, r.output
    assert "300 are in use" in r.stderr and "224 segments" in r.stderr
    assert f"vdisk flash backup {os.path.join(old_bundle, 'hd-flash.vmdk')}" in r.stderr
    assert "pass --yes to go on" in r.stderr and "Traceback" not in r.output
    assert sha(boot) == before
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    r = vdisk(runner, "boot", "restore", boot, "--firmware", new)   # a terminal: still --yes
    assert r.exit_code == 3 and sha(boot) == before
    r = vdisk(runner, "boot", "restore", boot, "--firmware", new, "--json")
    assert r.exit_code == 3
    doc = json.loads(r.stdout)
    assert doc["refused"] is True and doc["flash_check"]["status"] == "risk"
    assert doc["flash_check"]["segments_in_use"] == 300 and doc["flash_check"]["directory_segments"] == 224
    assert doc["flash_check"]["old"]["release"] == "9.00" and doc["flash_check"]["new"]["build"] == 90468
    r = vdisk(runner, "boot", "restore", boot, "--firmware", new, "--dry-run")
    assert r.exit_code == 0 and "dry run" in r.output and sha(boot) == before
    r = vdisk(runner, "boot", "restore", boot, "--firmware", new, "--yes", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["flash_check"]["status"] == "risk" and doc["result"]["ok"] is True
    assert doc["flash_check"]["backup_command"].startswith("vdisk flash backup ")
    assert doc["result"]["firmware"]["header"]["version"] == "9.00 hotfix4"


def test_boot_restore_without_risk(old_bundle, tmp_path, runner):
    boot = os.path.join(old_bundle, "hd-boot.vmdk")
    # across V9HF1 but to an older release: the directory stays
    r = vdisk(runner, "boot", "restore", boot, "--firmware", firmware_file(tmp_path, "8.00 sr3", 80300),
              "--json", "--yes")   # --yes: the confirmation every restore asks for
    assert r.exit_code == 0 and json.loads(r.stdout)["flash_check"]["status"] == "ok"
    # now at 8.00 sr3 -> 9.00 hotfix4 with the RAM raised: fits
    vmx = os.path.join(old_bundle, "ipva.vmx")
    with open(vmx, "rb") as f:
        text = f.read().replace(b'memsize = "64"', b'memsize = "192"')
    with open(vmx, "wb") as f:
        f.write(text)
    r = vdisk(runner, "boot", "restore", boot, "--firmware", firmware_file(tmp_path, "9.00 hotfix4", 90468),
              "--yes")
    assert r.exit_code == 0 and "vdisk: warning" not in r.stderr
    # a boot disk with no vmx beside it: the comparison is skipped, and says so
    lone = tmp_path / "lone"
    lone.mkdir()
    os.rename(boot, lone / "hd-boot.vmdk")
    r = vdisk(runner, "boot", "restore", str(lone / "hd-boot.vmdk"), "--firmware",
              firmware_file(tmp_path, "9.00 hotfix5", 90500), "--yes")
    assert r.exit_code == 0 and "note: no .vmx beside the disk attaches it at ide0:0" in r.output
