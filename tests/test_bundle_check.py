"""`vdisk bundle check` (the doctor) and its --fix, on bundles whose disks qemu-img made."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import fwbuilder
import pytest
from conftest import need_tool, run, vdisk
from dumpbuilder import StoreBuilder
from test_vmx import VSPHERE_VMX, WORKSTATION_VMX

from vdisk_tool.errors import Severity
from vdisk_tool.ipva import doctor
from vdisk_tool.ipva.bundle import plan_vmx_fixes
from vdisk_tool.ipva.flash import directory_segments
from vdisk_tool.ipva.vmx import Vmx

DISKS = {"hd-boot.vmdk": "32M", "hd-cf.vmdk": "16M", "hd-flash.vmdk": "100M", "hd-dump.vmdk": "64M"}
VSPHERE_NAMES = ["ipva.vmdk", "ipva_1.vmdk", "ipva_2.vmdk", "ipva_3.vmdk"]
MIB = 1 << 20


def _to_vmdk(raw: str, out: str) -> None:
    run(need_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "vmdk", "-o",
        "adapter_type=ide", raw, out)
    os.unlink(raw)


def build_disks(folder: str) -> dict[str, str]:
    """The four disks of a working appliance, made without vdisk: a boot disk holding a
    valid IPVA.BIN (sfdisk + mkfs.fat + mcopy), a FAT16 CF, a blank flash and a dump store
    with one record, each converted to a monolithicSparse VMDK by qemu-img."""
    os.makedirs(folder, exist_ok=True)
    out = {role: os.path.join(folder, name) for role, name in zip(ROLES, DISKS, strict=False)}
    fw = fwbuilder.standard().to_bytes()
    _to_vmdk(fwbuilder.make_raw_boot(os.path.join(folder, "boot.raw"), fw), out["boot"])
    cf = os.path.join(folder, "cf.raw")
    with open(cf, "wb") as f:
        f.truncate(16 * MIB)
    run(need_tool("sfdisk"), "-q", cf, input="start=2048, type=e\n")
    run(need_tool("mkfs.fat"), "-F", "16", "-s", "1", "-n", "IPVACF", "--offset", "2048", cf)
    _to_vmdk(cf, out["cf"])
    run(need_tool("qemu-img"), "create", "-q", "-f", "vmdk", "-o", "adapter_type=ide",
        out["flash"], "100M")
    store = StoreBuilder(64 * MIB)
    store.record(0, 1)
    _to_vmdk(store.header().write(os.path.join(folder, "dump.raw")), out["dump"])
    return out


ROLES = ("boot", "cf", "flash", "dump")


@pytest.fixture(scope="session")
def disk_set(tmp_path_factory) -> dict[str, str]:
    return build_disks(str(tmp_path_factory.mktemp("disk-set")))


def make_bundle(folder, vmx_text: str = WORKSTATION_VMX, names=None, disks=None) -> str:
    """A bundle folder: the vmx and copies of the four disks (under `names`)."""
    os.makedirs(folder, exist_ok=True)
    disks = disks or _DISKS["set"]
    for role, name in zip(ROLES, names or list(DISKS), strict=False):
        shutil.copy(disks[role], os.path.join(folder, name))
    with open(os.path.join(folder, "ipva.vmx"), "wb") as f:
        f.write(vmx_text.encode())
    return str(folder)


_DISKS: dict[str, dict[str, str]] = {}


@pytest.fixture(autouse=True)
def _disks(disk_set):
    _DISKS["set"] = disk_set


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
    perf = next(i for i in data["findings"] if i["code"] == "vmx.perfctr-missing")
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
    plan = plan_vmx_fixes(v)
    assert [(f.code, f.key, f.new) for f in plan] == [
        ("vmx.nic-model-unset", "ethernet0.virtualDev", "vlance"),
        ("vmx.memsize-multiple", "memsize", "20")]
    assert plan_vmx_fixes(Vmx(b'memsize = "16"\n'))[-1].new == "20"
    assert plan_vmx_fixes(Vmx(b'memsize = "8000"\n'))[-1].key != "memsize"


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
    small = str(tmp_path / "flash80.vmdk")
    run(need_tool("qemu-img"), "create", "-q", "-f", "vmdk", small, "80M")
    b = make_bundle(tmp_path / "f", disks={**_DISKS["set"], "flash": small})
    rep = doctor.check_bundle(b)
    assert "bundle.flash-capacity" in problems(rep)


def test_bad_target(tmp_path, runner):
    r = vdisk(runner, "bundle", "check", str(tmp_path))
    assert r.exit_code == 3 and "no .vmx" in r.stderr
    (tmp_path / "ipva.vmx").write_bytes(b"\0" * 10)
    r = vdisk(runner, "bundle", "check", str(tmp_path))
    assert r.exit_code == 3 and "NUL" in r.stderr and "Traceback" not in r.output


def _replace_disk(b: str, name: str, raw: str) -> None:
    target = os.path.join(b, name)
    os.unlink(target)
    _to_vmdk(raw, target)


def test_every_disk_module_reports(tmp_path):
    b = make_bundle(tmp_path / "h")
    rep = doctor.check_bundle(b)
    got = codes(rep)
    assert {"bundle.flash-usage", "bundle.dump-present"} <= got
    assert "bundle.check-failed" not in got
    dump = next(i for i in rep.issues if i.code == "bundle.dump-present")
    assert dump.fix == f"vdisk dump extract {os.path.join(b, 'hd-dump.vmdk')}"
    usage = next(i for i in rep.issues if i.code == "bundle.flash-usage")
    assert usage.finding.message == "0 of 1024 flash segments in use; memsize 64 MB allows a " \
                                    "directory of 224"


def test_broken_firmware_names_the_loader_message(tmp_path, runner):
    b = make_bundle(tmp_path / "fw")
    fw = bytearray(fwbuilder.standard().to_bytes())
    fw[2000] ^= 0xFF                                   # inside a section: its CRC fails
    _replace_disk(b, "hd-boot.vmdk", fwbuilder.make_raw_boot(str(tmp_path / "boot.raw"), bytes(fw)))
    rep = doctor.check_bundle(b)
    bad = [i for i in rep.issues if i.subject == "boot" and i.severity == Severity.ERROR]
    assert bad and any(i.code == "fw.section-crc" for i in bad)
    assert all(i.boot_message == doctor.MSG_FIRMWARE for i in bad if i.code.startswith("fw."))
    assert all(i.fix.startswith("vdisk boot restore") for i in bad)


def test_torn_dump_unclean_vmdk_and_flash_overflow(tmp_path):
    b = make_bundle(tmp_path / "t")
    store = StoreBuilder(64 * MIB)
    store.record(0, 1)
    store.record(1, 2, tear_at=100)
    _replace_disk(b, "hd-dump.vmdk", store.header().write(str(tmp_path / "dump.raw")))
    flash = os.path.join(b, "hd-flash.vmdk")
    run(need_tool("qemu-io"), "-c", "write -P 0x5a 0 15M", flash)      # 240 segments > 224
    with open(flash, "r+b") as f:                                      # uncleanShutdown = 1
        f.seek(72)
        f.write(b"\1")
    rep = doctor.check_bundle(b)
    by = {i.code: i for i in rep.issues}
    assert problems(rep) == {"flash.directory-overflow", "vmdk.unclean-shutdown"}
    # a torn dump is a lost crash dump, not a fault of the appliance: info, with the salvage
    assert by["bundle.dump-torn"].finding.severity == Severity.INFO
    assert by["bundle.dump-torn"].fix.endswith("hd-dump.vmdk --salvage")
    assert by["bundle.dump-torn"].subject == "dump"
    assert "record 2 is torn" in by["bundle.dump-torn"].finding.message
    assert by["flash.directory-overflow"].fix == 'set memsize = "192"'
    assert by["vmdk.unclean-shutdown"].fix == f"vdisk check {flash} --repair"
    assert "sequence 1" in by["bundle.dump-present"].finding.message
    assert "240 of 1024" in by["bundle.flash-usage"].finding.message


def test_cf_blank_and_not_fat(tmp_path):
    b = make_bundle(tmp_path / "c")
    cf = os.path.join(b, "hd-cf.vmdk")
    os.unlink(cf)
    run(need_tool("qemu-img"), "create", "-q", "-f", "vmdk", cf, "16M")
    assert "bundle.cf-blank" in problems(doctor.check_bundle(b))
    run(need_tool("qemu-io"), "-c", "write -P 0x33 0 4k", cf)
    assert "bundle.cf-no-fat" in problems(doctor.check_bundle(b))


def test_cf_fat_damage_is_reported(tmp_path):
    b = make_bundle(tmp_path / "fat")
    raw = str(tmp_path / "cf.raw")
    run(need_tool("qemu-img"), "convert", "-O", "raw", os.path.join(b, "hd-cf.vmdk"), raw)
    base = 2048 * 512
    with open(raw, "r+b") as f:
        f.seek(base + 14)
        reserved = int.from_bytes(f.read(2), "little")
        f.seek(base + reserved * 512 + 2 * 7)          # FAT #1: cluster 7 "in use", owned by none
        f.write(b"\xff\xff")
    part = str(tmp_path / "cf.part")
    with open(raw, "rb") as fi, open(part, "wb") as fo:
        fi.seek(base)
        fo.write(fi.read())
    assert run(need_tool("fsck.fat"), "-n", part, check=False).returncode != 0  # the oracle agrees
    _replace_disk(b, "hd-cf.vmdk", raw)
    rep = doctor.check_bundle(b)
    fat = {i.code for i in rep.issues if i.subject == "cf" and i.code.startswith("fat.")
           and i.severity != Severity.INFO}
    assert fat, [i.to_dict() for i in rep.issues]
