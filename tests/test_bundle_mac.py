"""`vdisk bundle set-mac`: static MAC, generatedAddress gone, uuid.bios follows, range checked."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from conftest import vdisk
from test_vmx import VSPHERE_VMX, WORKSTATION_VMX

from vdisk_tool.errors import FormatError, RefusedError
from vdisk_tool.ipva import doctor
from vdisk_tool.ipva.bundle import (
    format_mac,
    format_uuid_bios,
    in_static_range,
    parse_mac,
    parse_uuid_bios,
    random_static_mac,
    uuid_with_mac,
    validate_static_mac,
)
from vdisk_tool.ipva.vmx import Vmx


def write_vmx(folder, text: str) -> str:
    path = os.path.join(folder, "ipva.vmx")
    with open(path, "wb") as f:
        f.write(text.encode())
    return path


def test_mac_parsing_and_range():
    assert parse_mac("00:50:56:3f:ff:ff") == 0x0050563FFFFF
    assert parse_mac("00-50-56-01-02-03") == parse_mac("005056010203") == 0x005056010203
    assert format_mac(0x0050560A0B0C) == "00:50:56:0A:0B:0C"
    for bad in ("00:50:56:01:02", "00:50:56:01-02:03", "zz:50:56:01:02:03", ""):
        with pytest.raises(FormatError):
            parse_mac(bad)
    assert in_static_range(0x005056000000) and in_static_range(0x0050563FFFFF)
    assert not in_static_range(0x005056400000) and not in_static_range(0x000C29010203)
    with pytest.raises(RefusedError, match="outside"):
        validate_static_mac("00:50:56:40:00:00")
    for _ in range(50):
        assert in_static_range(random_static_mac())


def test_uuid_bios_round_trip_and_mac_bytes():
    text = "56 4d 2a 1b 3c 4d 5e 6f-70 81 92 a3 b4 01 02 03"
    raw = parse_uuid_bios(text)
    assert len(raw) == 16 and format_uuid_bios(raw) == text
    assert format_uuid_bios(uuid_with_mac(raw, 0x005056AABBCC)) == \
        "56 4d 2a 1b 3c 4d 5e 6f-70 81 92 a3 b4 aa bb cc"
    with pytest.raises(FormatError):
        parse_uuid_bios("56 4d")


def test_set_mac_on_vsphere_vmx(tmp_path, runner):
    vmx = write_vmx(tmp_path, VSPHERE_VMX)
    r = vdisk(runner, "bundle", "set-mac", str(tmp_path), "--mac", "00:50:56:12:34:56")
    assert r.exit_code == 0, r.output
    assert "MAC 00:50:56:12:34:56 (static), was 00:50:56:a1:22:33" in r.output
    want = (VSPHERE_VMX
            .replace('ethernet0.addressType = "vpx"', 'ethernet0.addressType = "static"')
            .replace('ethernet0.generatedAddress = "00:50:56:a1:22:33"\n', "")
            .replace("4a 07 cc 41", "4a 12 34 56")
            + '\nethernet0.address = "00:50:56:12:34:56"\n')
    assert Path(vmx).read_bytes() == want.encode()
    v = Vmx.read(vmx)
    found = {i.code for i in doctor.check_bundle(str(tmp_path)).issues}
    assert not found & {"vmx.mac-generated", "vmx.mac-range", "vmx.mac-missing"}
    assert "vmx.nic-model" in found          # set-mac leaves the rest alone
    assert v.get("uuid.bios").endswith("12 34 56")


def test_set_mac_keeps_existing_static_lines_in_place(tmp_path, runner):
    vmx = write_vmx(tmp_path, WORKSTATION_VMX)
    r = vdisk(runner, "bundle", "set-mac", vmx, "--mac", "00-50-56-3f-00-01", "--json")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["mac"] == "00:50:56:3F:00:01" and data["old_mac"] == "00:50:56:01:02:03"
    want = (WORKSTATION_VMX.replace('"00:50:56:01:02:03"', '"00:50:56:3F:00:01"')
            .replace("b4 01 02 03", "b4 3f 00 01"))
    assert Path(vmx).read_bytes() == want.encode()


def test_set_mac_dry_run_random_and_refusals(tmp_path, runner):
    vmx = write_vmx(tmp_path, VSPHERE_VMX)
    r = vdisk(runner, "bundle", "set-mac", str(tmp_path), "--random", "--dry-run")
    assert r.exit_code == 0 and '+ethernet0.address = "00:50:56:' in r.output
    assert '-ethernet0.generatedAddress' in r.output
    assert Path(vmx).read_bytes() == VSPHERE_VMX.encode()

    r = vdisk(runner, "bundle", "set-mac", str(tmp_path), "--mac", "00:0c:29:01:02:03")
    assert r.exit_code == 2 and "outside VMware's static range" in r.stderr
    r = vdisk(runner, "bundle", "set-mac", str(tmp_path), "--mac", "nonsense")
    assert r.exit_code == 2 and "not a MAC address" in r.stderr
    r = vdisk(runner, "bundle", "set-mac", str(tmp_path))
    assert r.exit_code == 2
    r = vdisk(runner, "bundle", "set-mac", str(tmp_path), "--random", "--mac", "00:50:56:00:00:01")
    assert r.exit_code == 2
    assert Path(vmx).read_bytes() == VSPHERE_VMX.encode()

    os.mkdir(tmp_path / "ipva.vmx.lck")
    r = vdisk(runner, "bundle", "set-mac", str(tmp_path), "--random")
    assert r.exit_code == 3 and "in use by VMware" in r.stderr
    assert Path(vmx).read_bytes() == VSPHERE_VMX.encode()
    r = vdisk(runner, "bundle", "set-mac", str(tmp_path), "--random", "--force")
    assert r.exit_code == 0 and "--force" in r.stderr
    v = Vmx.read(vmx)
    assert v.get("ethernet0.addressType") == "static"
    assert in_static_range(parse_mac(v.get("ethernet0.address")))
    mac_tail = v.get("ethernet0.address").replace(":", "")[-6:].lower()
    assert v.get("uuid.bios").replace(" ", "")[-6:] == mac_tail


def test_a_generated_mac_is_frozen_not_replaced(tmp_path, runner):
    """bundle check's fix for a generated MAC keeps it (the licence is bound to it); the
    frozen MAC outside the static range is accepted by VMware with checkMACAddress FALSE."""
    vmx = tmp_path / "ipva.vmx"
    vmx.write_text(VSPHERE_VMX)
    r = vdisk(runner, "bundle", "check", str(tmp_path), "--json")
    fix = next(f["fix"] for f in json.loads(r.stdout)["findings"] if f["code"] == "vmx.mac-generated")
    assert "--random" not in fix and "--mac" in fix
    current = fix.split("--mac ")[1].strip()
    r = vdisk(runner, *shlex.split(fix)[1:])
    assert r.exit_code == 0, r.output
    text = vmx.read_text()
    assert f'ethernet0.address = "{current.upper()}"' in text
    assert 'ethernet0.addressType = "static"' in text and 'checkMACAddress = "FALSE"' in text
    r = vdisk(runner, "bundle", "check", str(tmp_path), "--json")
    codes = {f["code"] for f in json.loads(r.stdout)["findings"]}
    assert not codes & {"vmx.mac-generated", "vmx.mac-range"}
    # any other MAC outside the range is still refused
    r = vdisk(runner, "bundle", "set-mac", str(tmp_path), "--mac", "00:0c:29:99:99:99")
    assert r.exit_code == 2 and "static range" in r.stderr


def test_dry_run_names_the_mac_that_a_real_run_writes(tmp_path, runner):
    """A random MAC is drawn anew by every run; the dry run says so and gives the --mac that
    makes the real run write the MAC it showed (licences are bound to it)."""
    fw = str(Path(__file__).resolve().parent.parent / "sample_images" / "ipva" / "ipva.bin")
    args = ["bundle", "create", str(tmp_path / "new"), "--firmware", fw, "--cf-size", "64M"]
    dry = vdisk(runner, *args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    shown = dry.stdout.split("MAC: ", 1)[1].split()[0]
    assert f"pass --mac {shown} to write this MAC" in dry.stdout
    real = vdisk(runner, *args, "--mac", shown)
    assert f"MAC: {shown} (static)" in real.stdout
    assert f'ethernet0.address = "{shown}"'.lower() in (tmp_path / "new" / "ipva.vmx").read_text().lower()
    again = vdisk(runner, *args[:2], str(tmp_path / "other"), *args[3:], "--mac", shown, "--dry-run")
    assert "pass --mac" not in again.stdout      # a MAC the user chose is not random
