"""`vdisk bundle check` (the doctor) and its --fix, on bundles whose disks qemu-img made."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk
from test_vmx import VSPHERE_VMX, WORKSTATION_VMX

from vdisk_tool.errors import Severity
from vdisk_tool.ipva import doctor
from vdisk_tool.ipva.flash import directory_segments
from vdisk_tool.ipva.vmx import Vmx

DISKS = {"hd-boot.vmdk": "32M", "hd-cf.vmdk": "16M", "hd-flash.vmdk": "100M", "hd-dump.vmdk": "64M"}
VSPHERE_NAMES = ["ipva.vmdk", "ipva_1.vmdk", "ipva_2.vmdk", "ipva_3.vmdk"]


def make_bundle(folder, vmx_text: str = WORKSTATION_VMX, names=None, sizes=None) -> str:
    """A bundle folder: the vmx and four small sparse VMDKs made by qemu-img."""
    qemu = need_tool("qemu-img")
    os.makedirs(folder, exist_ok=True)
    names = names or list(DISKS)
    sizes = sizes or list(DISKS.values())
    for name, size in zip(names, sizes):
        run(qemu, "create", "-q", "-f", "vmdk", "-o", "adapter_type=ide",
            os.path.join(folder, name), size)
    with open(os.path.join(folder, "ipva.vmx"), "wb") as f:
        f.write(vmx_text.encode())
    return str(folder)


def codes(rep: doctor.Report) -> set[str]:
    return {i.code for i in rep.issues}


def problems(rep: doctor.Report) -> set[str]:
    return {i.code for i in rep.issues if i.severity != Severity.INFO}


def test_healthy_workstation_bundle(tmp_path, runner):
    b = make_bundle(tmp_path / "ipva")
    rep = doctor.check_bundle(b)
    assert problems(rep) == set(), [i.to_dict() for i in rep.issues]
    assert rep.healthy
    assert {d.role: d.capacity_bytes for d in rep.disks} == {
        "boot": 32 << 20, "cf": 16 << 20, "flash": 100 << 20, "dump": 64 << 20}
    flash_note = [i for i in rep.issues if i.code == "vmx.flash-limited"]
    assert flash_note and "224 segments" in flash_note[0].finding.message
    assert "900" in flash_note[0].finding.message
    r = vdisk(runner, "bundle", "check", b)
    assert r.exit_code == 0, r.output
    assert "healthy" in r.output and "ide1:0 flash hd-flash.vmdk  100.0 MiB" in r.output
    r = vdisk(runner, "bundle", "check", os.path.join(b, "ipva.vmx"), "--json")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["healthy"] is True and len(data["disks"]) == 4


def test_vsphere_renamed_bundle_problems_and_messages(tmp_path, runner):
    b = make_bundle(tmp_path / "vs", VSPHERE_VMX, VSPHERE_NAMES)
    rep = doctor.check_bundle(b)
    assert problems(rep) == {"vmx.perfctr-missing", "vmx.nic-model", "vmx.mac-generated",
                             "vmx.memsize-multiple", "vmx.numvcpus", "vmx.slot-missing"}
    by = {i.code: i for i in rep.issues}
    assert by["vmx.perfctr-missing"].boot_message == "perfcounter-not enabled!!!"
    assert by["vmx.nic-model"].boot_message == "NIC unavailable!"
    assert "e1000" in by["vmx.nic-model"].finding.message
    assert "00:50:56:a1:22:33" in by["vmx.mac-generated"].finding.message
    assert by["vmx.mac-generated"].fix.startswith("vdisk bundle set-mac")
    assert "ide1:1 (dump disk) is not present" in by["vmx.slot-missing"].finding.message
    # memsize 190: interpolated between 224 (64 MB) and 900 (192 MB)
    assert f"{directory_segments(190)} segments" in by["vmx.flash-limited"].finding.message
    assert by["vmx.flash-limited"].severity == Severity.INFO
    assert [d.path for d in rep.disks] == [os.path.join(b, n) for n in VSPHERE_NAMES[:3]]
    r = vdisk(runner, "bundle", "check", b)
    assert r.exit_code == 1
    assert "boot message: perfcounter-not enabled!!!" in r.output
    assert f"fix: vdisk bundle check {b} --fix" in r.output
    data = json.loads(vdisk(runner, "bundle", "check", b, "--json").stdout)
    assert data["healthy"] is False
    perf = next(i for i in data["issues"] if i["code"] == "vmx.perfctr-missing")
    assert perf["fixable"] and perf["boot_message"] == "perfcounter-not enabled!!!"


def test_fix_dry_run_then_fix(tmp_path, runner):
    b = make_bundle(tmp_path / "vs", VSPHERE_VMX, VSPHERE_NAMES)
    vmx = os.path.join(b, "ipva.vmx")
    r = vdisk(runner, "bundle", "check", b, "--fix", "--dry-run")
    assert r.exit_code == 0
    assert '-memsize = "190"' in r.output and '+memsize = "192"' in r.output
    assert '-ethernet0.virtualDev = "e1000"' in r.output
    assert '+monitor_control.pseudo_perfctr = "TRUE"' in r.output
    assert Path(vmx).read_bytes() == VSPHERE_VMX.encode()

    r = vdisk(runner, "bundle", "check", b, "--fix", "--backup", str(tmp_path / "old.vmx"))
    assert r.exit_code == 1          # generated MAC, 2 vCPUs and the absent dump slot remain
    assert "fixed: vmx.perfctr-missing" in r.output
    assert Path(tmp_path / "old.vmx").read_bytes() == VSPHERE_VMX.encode()
    want = (VSPHERE_VMX.replace('memsize = "190"', 'memsize = "192"')
            .replace('"e1000"', '"vlance"') + '\nmonitor_control.pseudo_perfctr = "TRUE"\n')
    assert Path(vmx).read_bytes() == want.encode()
    rep = doctor.check_bundle(b)
    assert problems(rep) == {"vmx.mac-generated", "vmx.numvcpus", "vmx.slot-missing"}
    assert "vmx.flash-limited" not in codes(rep)          # 192 MB: the full directory


def test_fix_memsize_low_and_unset_nic():
    v = Vmx(b'memsize = "13"\nethernet0.present = "TRUE"\nmonitor_control.pseudo_perfctr="true"\n')
    plan = doctor.plan_vmx_fixes(v)
    assert [(f.code, f.key, f.new) for f in plan] == [
        ("vmx.nic-model-unset", "ethernet0.virtualDev", "vlance"),
        ("vmx.memsize-multiple", "memsize", "20")]
    assert doctor.plan_vmx_fixes(Vmx(b'memsize = "16"\n'))[-1].new == "20"
    assert doctor.plan_vmx_fixes(Vmx(b'memsize = "8000"\n'))[-1].key != "memsize"


@pytest.mark.parametrize("mem,want", [
    ("62", {"vmx.memsize-multiple", "vmx.flash-limited"}),
    ("16", {"vmx.memsize-low", "vmx.flash-limited"}),
    ("4096", {"vmx.memsize-high"}),
    ("lots", {"vmx.memsize-invalid"}),
])
def test_memsize_rules(tmp_path, mem, want):
    b = make_bundle(tmp_path / "m", WORKSTATION_VMX.replace('memsize = "64"', f'memsize = "{mem}"'))
    rep = doctor.check_bundle(b)
    assert problems(rep) == want, [i.to_dict() for i in rep.issues]


def test_disk_missing_not_ide_and_locked(tmp_path, runner):
    text = WORKSTATION_VMX + 'scsi0:0.present = "TRUE"\r\nscsi0:0.fileName = "extra.vmdk"\r\n'
    b = make_bundle(tmp_path / "x", text)
    os.unlink(os.path.join(b, "hd-dump.vmdk"))
    os.mkdir(os.path.join(b, "ipva.vmx.lck"))
    os.mkdir(os.path.join(b, "hd-cf.vmdk.lck"))
    rep = doctor.check_bundle(b)
    assert problems(rep) == {"vmx.disk-not-ide", "bundle.disk-missing", "bundle.locked"}
    locked = [i.finding.path for i in rep.issues if i.code == "bundle.locked"]
    assert sorted(os.path.basename(p) for p in locked) == ["hd-cf.vmdk.lck", "ipva.vmx.lck"]
    r = vdisk(runner, "bundle", "check", b, "--fix")  # nothing to fix in the vmx: no write
    assert r.exit_code == 1
    broken = WORKSTATION_VMX.replace('memsize = "64"', 'memsize = "66"')
    with open(os.path.join(b, "ipva.vmx"), "w", newline="") as f:
        f.write(broken)
    r = vdisk(runner, "bundle", "check", b, "--fix")
    assert r.exit_code == 3 and "in use by VMware" in r.stderr
    assert Path(b, "ipva.vmx").read_bytes() == broken.encode()


NIC_OK = 'ethernet0.present = "TRUE"\r\nethernet0.virtualDev = "vmxnet3"\r\n'


@pytest.mark.parametrize("lines,code", [
    (NIC_OK + 'ethernet0.addressType = "static"\r\nethernet0.address = "00:0C:29:01:02:03"\r\n',
     "vmx.mac-range"),
    (NIC_OK + 'ethernet0.addressType = "static"\r\nethernet0.address = "00:50:56:zz:02:03"\r\n',
     "vmx.mac-invalid"),
    (NIC_OK + 'ethernet0.addressType = "static"\r\n', "vmx.mac-missing"),
    (NIC_OK + 'ethernet0.addressType = "generated"\r\n', "vmx.mac-generated"),
    ('ethernet0.present = "TRUE"\r\nethernet0.virtualDev = "e1000e"\r\n', "vmx.nic-model"),
    ('ethernet0.present = "TRUE"\r\n', "vmx.nic-model-unset"),
    ('ethernet0.present = "FALSE"\r\n', "vmx.nic-missing"),
])
def test_nic_and_mac_rules(tmp_path, lines, code):
    base = "".join(line for line in WORKSTATION_VMX.splitlines(keepends=True)
                   if not line.startswith("ethernet0."))
    b = make_bundle(tmp_path / "n", base + lines)
    assert code in problems(doctor.check_bundle(b))


def test_snapshot_child_and_cid_chain(tmp_path):
    qemu = need_tool("qemu-img")
    b = make_bundle(tmp_path / "s")
    cf = os.path.join(b, "hd-cf.vmdk")
    child = os.path.join(b, "hd-cf-000001.vmdk")
    run(qemu, "create", "-q", "-f", "vmdk", "-b", "hd-cf.vmdk", "-F", "vmdk", child)
    rep = doctor.check_bundle(b)            # the vmx still names the parent
    assert problems(rep) == {"bundle.snapshot-unused"}
    with open(os.path.join(b, "ipva.vmx"), "r+b") as f:
        v = Vmx(f.read(), os.path.join(b, "ipva.vmx"))
    v.set("ide0:1.fileName", "hd-cf-000001.vmdk")
    v.save()
    rep = doctor.check_bundle(b)
    assert problems(rep) == set()
    assert "bundle.snapshot" in codes(rep)
    cf_rep = next(d for d in rep.disks if d.role == "cf")
    assert cf_rep.chain == (child, cf)
    # writing the parent changes its CID: the child's chain breaks
    shutil.copy(cf, cf + ".orig")
    run(need_tool("qemu-io"), "-c", "write -P 0x11 0 64k", cf)
    rep = doctor.check_bundle(b)
    assert problems(rep) == {"bundle.cid-mismatch"}
    msg = next(i for i in rep.issues if i.code == "bundle.cid-mismatch").finding.message
    assert msg.startswith("hd-cf-000001.vmdk expects parent CID")


def test_flash_capacity(tmp_path):
    b = make_bundle(tmp_path / "f", sizes=["32M", "16M", "80M", "64M"])
    rep = doctor.check_bundle(b)
    assert "bundle.flash-capacity" in problems(rep)


def test_bad_target(tmp_path, runner):
    r = vdisk(runner, "bundle", "check", str(tmp_path))
    assert r.exit_code == 3 and "no .vmx" in r.stderr
    (tmp_path / "ipva.vmx").write_bytes(b"\0" * 10)
    r = vdisk(runner, "bundle", "check", str(tmp_path))
    assert r.exit_code == 3 and "NUL" in r.stderr and "Traceback" not in r.output
