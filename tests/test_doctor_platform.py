"""The doctor's platform, VMware Tools and network rules (specs/vmx.md §Platform, §Network),
and the firmware version order they rest on (specs/ipva-firmware.md §Version order).

Bundles are the qemu-img-made ones of test_bundle_check; boot disks of other firmware
versions are packed by tests/fwbuilder.py (struct + crcmod) and put on a FAT16 volume by
sfdisk, mkfs.fat and mcopy."""
from __future__ import annotations

import json
import os

import fwbuilder
import pytest
from conftest import vdisk
from test_bundle_check import _disks, _to_vmdk, disk_set, make_bundle, problems  # noqa: F401
from test_vmx import VSPHERE_VMX, WORKSTATION_VMX

from vdisk_tool.errors import Severity
from vdisk_tool.ipva import doctor
from vdisk_tool.ipva.fwversion import V9HF1, V9HF4, FirmwareId, Release, older_than, parse_release
from vdisk_tool.ipva.vmx_rules import check_eth0, check_eth1, check_hardware, check_tools


def boot_disk(folder, version: str, build: int) -> str:
    """A boot disk whose IPVA.BIN says `version` and `build`, made without vdisk."""
    img = fwbuilder.standard()
    img.version, img.build = version, build
    raw = fwbuilder.make_raw_boot(os.path.join(folder, f"boot-{build}.raw"), img.to_bytes())
    out = os.path.join(folder, f"boot-{build}.vmdk")
    _to_vmdk(raw, out)
    return out


def bundle_with(tmp_path, vmx_text: str, version: str = "9.00 hotfix4", build: int = 90468,
                name: str = "b") -> str:
    from test_bundle_check import _DISKS
    disks = dict(_DISKS["set"])
    if (version, build) != ("9.00 hotfix4", 90468):
        os.makedirs(tmp_path / "fw", exist_ok=True)
        disks["boot"] = boot_disk(str(tmp_path / "fw"), version, build)
    return make_bundle(tmp_path / name, vmx_text, disks=disks)


def by_code(rep: doctor.Report) -> dict[str, list]:
    out: dict[str, list] = {}
    for i in rep.issues:
        out.setdefault(i.code, []).append(i)
    return out


# -- version order ---------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("9.00 hotfix4", Release(9, 0, 4)), ("9.00", Release(9, 0, 0)),
    ("V9 hotfix2", Release(9, 0, 2)), ("9.00HF1", Release(9, 0, 1)),
    ("10.00 sr3", Release(10, 0, 3)), ("12r1 sr10", Release(12, 1, 10)),
    ("13r2", Release(13, 2, 0)), ("9.00 hotfix4 IPVA", Release(9, 0, 4)),
    ("9.00 hotfix1 beta", None), ("9.00 hotfix4 (90468)", None), ("lab build", None),
    ("", None), (None, None),
])
def test_parse_release_known_values(text, want):
    assert parse_release(text) == want


@pytest.mark.parametrize("version,build,ms,want", [
    ("9.00", 90100, V9HF1, True),               # the text decides
    ("9.00 hotfix1", 1, V9HF1, False),          # ... even against a silly build
    ("9.00 hotfix3", 99999, V9HF4, True),
    ("8.00 sr7", 80500, V9HF1, True),
    ("10.00", 100123, V9HF4, False),
    ("9.00 hotfix1 beta", 90400, V9HF4, True),  # pre-release: the build decides (90400 < 90468)
    ("9.00 hotfix4 beta", 90468, V9HF4, False),
    ("", 90500, V9HF1, False),                  # past the pinned V9HF4 build: past V9HF1 too
    ("", 90200, V9HF1, None),                   # a V9 build below 90468: cannot tell
    ("", 80999, V9HF1, True),                   # a V8 build (its leading digits)
    ("", 121000, V9HF1, False),
    ("", 7, V9HF1, None),
])
def test_older_than(version, build, ms, want):
    assert older_than(FirmwareId(build, version), ms) is want


# -- platform ---------------------------------------------------------------------------------
@pytest.mark.parametrize("hw,bad", [("3", True), ("4", True), ("6", True), ("7", False),
                                    ("14", False), ("", False), ("x", False)])
def test_hardware_rule_on_a_plain_mapping(hw, bad):
    found = [i.code for i in check_hardware({"virtualhw.version": hw})]
    assert found == (["vmx.hw-version-old"] if bad else [])


def test_esx3_vmx_is_an_error_with_the_wiki_words(tmp_path, runner):
    b = bundle_with(tmp_path, WORKSTATION_VMX.replace('virtualHW.version = "7"',
                                                      'virtualHW.version = "4"'))
    rep = doctor.check_bundle(b)
    assert problems(rep) == {"vmx.hw-version-old"}
    i = by_code(rep)["vmx.hw-version-old"][0]
    assert i.severity == Severity.ERROR and "ESX 3.x and below" in i.finding.message
    assert "no virtual IDE disks" in i.finding.message
    assert i.finding.path == os.path.join(b, "ipva.vmx")
    assert vdisk(runner, "bundle", "check", b).exit_code == 1


HW8 = WORKSTATION_VMX.replace('virtualHW.version = "7"', 'virtualHW.version = "8"')


@pytest.mark.parametrize("version,build,severity", [
    ("9.00 hotfix4", 90468, None),
    ("9.00 hotfix2", 90310, Severity.ERROR),
    ("9.00", 90001, Severity.ERROR),
    ("lab", 90200, Severity.ERROR),            # no release in the text; build 90200 < 90468
    ("lab", 120500, None),                     # a 12.x build
    ("9.00 hotfix4 rc2", 90460, Severity.ERROR),
])
def test_vsphere5_needs_v9hf4(tmp_path, version, build, severity):
    rep = doctor.check_bundle(bundle_with(tmp_path, HW8, version, build))
    got = by_code(rep).get("vmx.vsphere5-firmware", [])
    assert [i.severity for i in got] == ([] if severity is None else [severity])
    if got:
        assert "V9HF4 (9.00 hotfix4) is needed for vSphere 5" in got[0].finding.message
        assert got[0].fix.startswith("install firmware 9.00 hotfix4 or later: `vdisk boot restore")
        assert os.path.join("b", "hd-boot.vmdk") in got[0].fix


def test_vsphere5_rule_without_text_and_on_older_hardware(tmp_path):
    rep = doctor.check_bundle(bundle_with(tmp_path, HW8, "", 5, "u"))
    [i] = by_code(rep)["vmx.vsphere5-firmware"]           # no text: build 5 < 90468
    assert i.severity == Severity.ERROR and "the firmware is build 5:" in i.finding.message
    # hardware 7 (vSphere 4): the same old firmware is fine
    rep = doctor.check_bundle(bundle_with(tmp_path, WORKSTATION_VMX, "9.00", 90001, "v"))
    assert "vmx.vsphere5-firmware" not in by_code(rep)


def test_tools_keys(tmp_path, runner):
    settings = {"tools.syncTime".lower(): "TRUE", "tools.upgrade.policy": "upgradeAtPowerCycle",
                "tools.remindinstall": "TRUE", "tools.upgrade.policy2": "manual",
                "tools.synctime.period": "0", "isolation.tools.copy.disable": "TRUE",
                "tools.guest.desktop.autolock": "TRUE"}
    found = list(check_tools(settings))
    assert [i.code for i in found] == ["vmx.tools-unsupported"] * 3
    assert all(i.finding.message.startswith("VMware Tools are not supported: ") for i in found)
    assert found[1].fix == 'set tools.upgrade.policy = "manual" (or remove the line)'
    text = WORKSTATION_VMX + 'tools.syncTime = "TRUE"\r\ntools.upgrade.policy = "manual"\r\n'
    b = bundle_with(tmp_path, text)
    rep = doctor.check_bundle(b)
    assert problems(rep) == {"vmx.tools-unsupported"}
    data = json.loads(vdisk(runner, "bundle", "check", b, "--json").stdout)
    [t] = [i for i in data["findings"] if i["code"] == "vmx.tools-unsupported"]
    assert t["severity"] == "warning" and 'tools.synctime = "TRUE"' in t["message"]


# -- network ----------------------------------------------------------------------------------
def test_eth0_missing_or_not_present(tmp_path):
    base = "".join(line for line in WORKSTATION_VMX.splitlines(keepends=True)
                   if not line.startswith("ethernet0."))
    rep = doctor.check_bundle(bundle_with(tmp_path, base, name="n1"))
    [i] = by_code(rep)["vmx.nic-missing"]
    assert i.severity == Severity.ERROR and "not in the settings" in i.finding.message
    assert i.boot_message == doctor.MSG_NIC
    [i] = list(check_eth0({"ethernet0.present": "FALSE"}))
    assert 'present = "FALSE"' in i.finding.message


@pytest.mark.parametrize("lines,want", [
    ('ethernet0.connectionType = "bridged"\r\n', None),
    ("", None),                                                     # VMware's default: bridged
    ('ethernet0.connectionType = "nat"\r\n', '"nat"'),
    ('ethernet0.connectionType = "hostonly"\r\n', '"hostonly"'),
    ('ethernet0.connectionType = "custom"\r\nethernet0.vnet = "VMnet3"\r\n', '"custom" on VMnet3'),
])
def test_eth0_connection(tmp_path, lines, want):
    rep = doctor.check_bundle(bundle_with(tmp_path, WORKSTATION_VMX + lines))
    got = by_code(rep).get("vmx.eth0-not-bridged", [])
    assert problems(rep) == set()                                    # info only
    if want is None:
        assert got == []
    else:
        assert got[0].severity == Severity.INFO and want in got[0].finding.message
        assert "expects a DHCP server" in got[0].finding.message
        assert "config change DHCP0 /mode off" in got[0].fix


@pytest.mark.parametrize("settings,want,fix", [
    ({}, "ethernet1 is not present", False),
    ({"ethernet1.present": "TRUE", "ethernet1.connectiontype": "hostonly",
      "ethernet1.startconnected": "FALSE"},
     "hostonly, not connected at power-on: as shipped from build 90468", False),
    ({"ethernet1.present": "TRUE", "ethernet1.connectiontype": "bridged"},
     "bridged, connected at power-on; as shipped from build 90468, ETH1 is host-only", True),
    ({"ethernet1.present": "TRUE"}, "bridged, connected at power-on", True),
])
def test_eth1_state(settings, want, fix):
    [i] = list(check_eth1(settings))
    assert i.code == "vmx.eth1-state" and i.severity == Severity.INFO
    assert want in i.finding.message
    assert (i.fix is not None) is fix


def test_vsphere_vmx_hw8_with_v9hf4_adds_no_problem(tmp_path):
    from test_bundle_check import VSPHERE_NAMES
    b = make_bundle(tmp_path / "vs", VSPHERE_VMX, VSPHERE_NAMES)
    got = by_code(doctor.check_bundle(b))
    assert "vmx.vsphere5-firmware" not in got and "vmx.hw-version-old" not in got
    assert "vmx.eth1-state" in got


def test_hostile_values_are_quoted_bounded_and_printable():
    [t] = list(check_tools({"tools.synctime": "\x1b[2J" + "T" * 5000}))
    assert "\x1b" not in t.finding.message and len(t.finding.message) < 300
    assert '"?[2JTTT' in t.finding.message and "…" in t.finding.message
    [n] = list(check_eth0({"ethernet0.present": "TRUE", "ethernet0.connectiontype": "nat\u202e\x07"}))
    assert '"nat??"' in n.finding.message
