"""The vmx parser/editor: keys case-insensitive, untouched bytes kept, disks by IDE slot."""
from __future__ import annotations

import os

import pytest

from vdisk_tool.errors import FormatError, ImageError, LockedError
from vdisk_tool.ipva.vmx import Vmx, decode_value, encode_value, find_vmx

# A Workstation-style vmx: CRLF line ends, comments, odd spacing and case, a CD-ROM.
WORKSTATION_VMX = (
    '.encoding = "UTF-8"\r\n'
    'config.version = "8"\r\n'
    'virtualHW.version = "7"\r\n'
    '# innovaphone IPVA\r\n'
    'displayName = "IPVA  (lab)"\r\n'
    'guestOS = "other"\r\n'
    'memsize = "64"\r\n'
    'MONITOR_CONTROL.pseudo_perfctr = "TRUE"\r\n'
    'ide0:0.present = "TRUE"\r\n'
    'ide0:0.fileName = "hd-boot.vmdk"\r\n'
    'ide0:1.present = "TRUE"\r\n'
    'ide0:1.fileName="hd-cf.vmdk"\r\n'
    '\r\n'
    'IDE1:0.Present   =   "true"\r\n'
    'ide1:0.filename = "hd-flash.vmdk"\r\n'
    'ide1:1.present = "TRUE"\r\n'
    'ide1:1.fileName = "hd-dump.vmdk"\r\n'
    'ide1:1.deviceType = "disk"\r\n'
    'ethernet0.present = "TRUE"\r\n'
    'ethernet0.virtualDev = "vlance"\r\n'
    'ethernet0.addressType = "static"\r\n'
    'ethernet0.address = "00:50:56:01:02:03"\r\n'
    'uuid.bios = "56 4d 2a 1b 3c 4d 5e 6f-70 81 92 a3 b4 01 02 03"\r\n'
    'sata0:1.present = "TRUE"\r\n'
    'sata0:1.deviceType = "cdrom-image"\r\n'
    'sata0:1.fileName = "/iso/tools.iso"\r\n'
)

# What vCenter Converter leaves: renamed disks, an absolute path, LF line ends, no final
# newline, a generated MAC.
VSPHERE_VMX = (
    '.encoding = "UTF-8"\n'
    'config.version = "8"\n'
    'virtualHW.version = "8"\n'
    'memsize = "190"\n'
    'numvcpus = "2"\n'
    'ide0:0.present = "TRUE"\n'
    'ide0:0.fileName = "ipva.vmdk"\n'
    'ide0:1.present = "TRUE"\n'
    'ide0:1.fileName = "ipva_1.vmdk"\n'
    'ide1:0.present = "TRUE"\n'
    'ide1:0.fileName = "ipva_2.vmdk"\n'
    'ide1:1.present = "FALSE"\n'
    'ide1:1.fileName = "/vmfs/volumes/ds1/ipva/ipva_3.vmdk"\n'
    'ethernet0.present = "TRUE"\n'
    'ethernet0.virtualDev = "e1000"\n'
    'ethernet0.addressType = "vpx"\n'
    'ethernet0.generatedAddress = "00:50:56:a1:22:33"\n'
    'uuid.bios = "42 21 6e 0d 2b 96 4e b7-a8 0d 1f 99 4a 07 cc 41"'
)


def vmx_of(text: str, tmp_path=None, name: str = "ipva.vmx") -> Vmx:
    if tmp_path is None:
        return Vmx(text.encode(), "/b/ipva.vmx")
    p = tmp_path / name
    p.write_bytes(text.encode())
    return Vmx.read(str(p))


def test_get_is_case_insensitive_and_unquotes():
    v = vmx_of(WORKSTATION_VMX)
    assert v.get("monitor_control.PSEUDO_PERFCTR") == "TRUE"
    assert v.get("ide1:0.present") == "true"
    assert v.get("IDE0:1.FILENAME") == "hd-cf.vmdk"
    assert v.get("displayname") == "IPVA  (lab)"
    assert v.get("nope") is None and v.get("nope", "x") == "x"
    assert v.render() == WORKSTATION_VMX.encode()


def test_set_existing_keeps_spelling_spacing_and_line_ending():
    v = vmx_of(WORKSTATION_VMX)
    v.set("ide1:0.present", "FALSE")
    v.set("memSize", "192")
    want = (WORKSTATION_VMX.replace('IDE1:0.Present   =   "true"', 'IDE1:0.Present   =   "FALSE"')
            .replace('memsize = "64"', 'memsize = "192"'))
    assert v.render() == want.encode()
    assert v.changed


def test_set_new_key_appends_with_files_newline():
    v = vmx_of(WORKSTATION_VMX)
    v.set("numvcpus", "1")
    assert v.render() == (WORKSTATION_VMX + 'numvcpus = "1"\r\n').encode()


def test_set_new_key_after_missing_final_newline():
    v = vmx_of(VSPHERE_VMX)
    v.set("monitor_control.pseudo_perfctr", "TRUE")
    assert v.render() == (VSPHERE_VMX + '\nmonitor_control.pseudo_perfctr = "TRUE"\n').encode()


def test_remove_drops_only_that_line():
    v = vmx_of(VSPHERE_VMX)
    assert v.remove("ETHERNET0.generatedAddress")
    assert not v.remove("ethernet0.generatedAddress")
    assert v.render() == VSPHERE_VMX.replace('ethernet0.generatedAddress = "00:50:56:a1:22:33"\n',
                                             "").encode()


def test_unchanged_round_trip_is_byte_exact_with_odd_bytes(tmp_path):
    raw = WORKSTATION_VMX.encode() + b'annotation = "caf\xe9 |22quoted|22"\r\n'  # latin-1 byte
    p = tmp_path / "x.vmx"
    p.write_bytes(raw)
    v = Vmx.read(str(p))
    assert v.get("annotation") == 'caf\udce9 "quoted"'
    v.set("memsize", "68")
    v.save()
    assert p.read_bytes() == raw.replace(b'memsize = "64"', b'memsize = "68"')


def test_duplicates_last_wins_and_set_collapses():
    text = 'memsize = "32"\n# c\nMemSize = "48"\n'
    v = vmx_of(text)
    assert v.get("memsize") == "48"
    assert v.duplicates() == ["memsize"]
    v.set("memsize", "64")
    assert v.render() == b'# c\nMemSize = "64"\n'


def test_value_escapes():
    assert encode_value('a"b|c') == '"a|22b|7Cc"'
    assert decode_value('"a|22b|7Cc"') == 'a"b|c'
    assert decode_value("bare") == "bare"


def test_slots_workstation():
    v = vmx_of(WORKSTATION_VMX)
    got = {s.slot: s for s in v.slots()}
    assert set(got) == {"ide0:0", "ide0:1", "ide1:0", "ide1:1", "sata0:1"}
    assert got["ide1:0"].present and got["ide1:0"].role == "flash"
    assert got["ide1:0"].path == "/b/hd-flash.vmdk"
    assert got["ide1:1"].device_type == "disk" and got["ide1:1"].is_disk
    assert not got["sata0:1"].is_disk and got["sata0:1"].role is None
    assert v.disk_for_slot("ide0:0") == "/b/hd-boot.vmdk"
    assert v.disk_for_slot("IDE0:1") == "/b/hd-cf.vmdk"
    assert v.disk_for_slot("sata0:1") is None
    assert v.disk_for_slot("ide2:0") is None


def test_slots_vsphere_renamed_and_absolute():
    v = vmx_of(VSPHERE_VMX)
    assert v.disk_for_slot("ide0:0") == "/b/ipva.vmdk"
    assert v.disk_for_slot("ide0:1") == "/b/ipva_1.vmdk"
    assert v.disk_for_slot("ide1:0") == "/b/ipva_2.vmdk"
    dump = v.slot("ide1:1")
    assert dump is not None and not dump.present
    assert dump.path == "/vmfs/volumes/ds1/ipva/ipva_3.vmdk"
    assert v.disk_for_slot("ide1:1") is None      # present = FALSE


def test_find_vmx(tmp_path):
    with pytest.raises(ImageError, match="no .vmx"):
        find_vmx(str(tmp_path))
    (tmp_path / "ipva.vmxf").write_text("x")
    (tmp_path / "ipva.vmx").write_text(VSPHERE_VMX)
    assert find_vmx(str(tmp_path)) == str(tmp_path / "ipva.vmx")
    assert find_vmx(str(tmp_path / "ipva.vmx")) == str(tmp_path / "ipva.vmx")
    (tmp_path / "other.VMX").write_text(VSPHERE_VMX)
    with pytest.raises(ImageError, match="several"):
        find_vmx(str(tmp_path))
    with pytest.raises(ImageError, match="no such"):
        find_vmx(str(tmp_path / "missing"))


def test_save_refuses_lock_and_keeps_backup(tmp_path):
    v = vmx_of(WORKSTATION_VMX, tmp_path)
    os.chmod(v.path, 0o600)
    (tmp_path / "ipva.vmx.lck").mkdir()
    v.set("memsize", "128")
    with pytest.raises(LockedError):
        v.save()
    assert (tmp_path / "ipva.vmx").read_bytes() == WORKSTATION_VMX.encode()
    warnings = v.save(force=True, backup=str(tmp_path / "old.vmx"))
    assert warnings and "in use" in warnings[0]
    assert (tmp_path / "old.vmx").read_bytes() == WORKSTATION_VMX.encode()
    assert b'memsize = "128"' in (tmp_path / "ipva.vmx").read_bytes()
    assert os.stat(tmp_path / "ipva.vmx").st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if "vdisk-tmp" in p.name] == []


def test_diff_is_unified():
    v = vmx_of(WORKSTATION_VMX)
    assert v.diff() == ""
    v.set("memsize", "128")
    d = v.diff()
    assert '-memsize = "64"' in d and '+memsize = "128"' in d and d.startswith("--- a/ipva.vmx")


def test_rejects_binary_and_huge(tmp_path):
    with pytest.raises(FormatError, match="NUL"):
        Vmx(b'a = "1"\n\0\0')
    p = tmp_path / "big.vmx"
    with open(p, "wb") as f:
        f.truncate(2 << 20)
    with pytest.raises(FormatError, match="larger"):
        Vmx.read(str(p))
