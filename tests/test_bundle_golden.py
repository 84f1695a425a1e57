"""Golden images: `vdisk bundle create` (workstation, vsphere, ova) and `vdisk bundle clone`,
held against qemu-img, vmdkinfo, mtools, fsck.fat and tar; every result is check-clean."""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import fwbuilder
import pytest
from conftest import need_tool, run, vdisk

from vdisk_tool.errors import RefusedError, Severity
from vdisk_tool.ipva import doctor, golden
from vdisk_tool.ipva.bundle import in_static_range, parse_mac
from vdisk_tool.ipva.vmx import Vmx

OVF = "{http://schemas.dmtf.org/ovf/envelope/1}"
RASD = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData}"
VMW = "{http://www.vmware.com/schema/ovf}"
NAMES = ["hd-boot.vmdk", "hd-cf.vmdk", "hd-flash.vmdk", "hd-dump.vmdk"]


@pytest.fixture(scope="module")
def firmware(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("fw") / "ipva.bin"
    path.write_bytes(fwbuilder.standard().to_bytes())
    return str(path)


def problems(folder: str) -> list[dict]:
    return [i.to_dict() for i in doctor.check_bundle(folder).issues
            if i.severity != Severity.INFO]


def qemu_info(path: str) -> dict:
    return json.loads(run(need_tool("qemu-img"), "info", "--output=json", path).stdout)


def no_data(image: str) -> bool:
    """qemu-img's map: no run of the image holds data (a blank disk)."""
    runs = json.loads(run(need_tool("qemu-img"), "map", "--output=json", image).stdout)
    return not any(r["data"] and not r.get("zero") for r in runs)


def to_raw(image: str, out: str) -> str:
    run(need_tool("qemu-img"), "convert", "-O", "raw", image, out)
    return out


def test_create_workstation(tmp_path, runner, firmware):
    dst = str(tmp_path / "ipva")
    r = vdisk(runner, "bundle", "create", dst, "--firmware", firmware, "--cf-size", "64M",
              "--mac", "00:50:56:01:02:03", "--memsize", "128")
    assert r.exit_code == 0, r.output
    assert "healthy" in r.output
    assert sorted(os.listdir(dst)) == sorted(NAMES + ["ipva.vmx"])
    assert problems(dst) == []
    v = Vmx.read(os.path.join(dst, "ipva.vmx"))
    assert v.get("monitor_control.pseudo_perfctr") == "TRUE"
    assert v.get("ethernet0.virtualDev") == "vlance" and v.get("memsize") == "128"
    assert v.get("ethernet0.addressType") == "static"
    assert v.get("ethernet0.address") == "00:50:56:01:02:03"
    assert v.get("uuid.bios").endswith("01 02 03")
    sizes = {"hd-boot.vmdk": 32 << 20, "hd-cf.vmdk": 64 << 20, "hd-flash.vmdk": 100 << 20,
             "hd-dump.vmdk": 64 << 20}
    for name, size in sizes.items():
        info = qemu_info(os.path.join(dst, name))
        assert info["virtual-size"] == size
        assert info["format-specific"]["data"]["create-type"] == "monolithicSparse"
        run(need_tool("vmdkinfo"), os.path.join(dst, name))
        desc = Path(dst, name).read_bytes()[:0x10000]
        assert b'ddb.adapterType = "ide"' in desc
    # the boot volume holds the firmware byte for byte (read by mtools)
    boot = to_raw(os.path.join(dst, "hd-boot.vmdk"), str(tmp_path / "boot.raw"))
    assert _mcopy_out(boot, tmp_path) == Path(firmware).read_bytes()
    # the CF is a clean FAT16 volume labelled IPVACF in a partition at LBA 2048
    cf = to_raw(os.path.join(dst, "hd-cf.vmdk"), str(tmp_path / "cf.raw"))
    part = str(tmp_path / "cf.part")
    with open(cf, "rb") as fi, open(part, "wb") as fo:
        fi.seek(2048 * 512)
        fo.write(fi.read())
    run(need_tool("fsck.fat"), "-n", part)
    assert "IPVACF" in run(need_tool("mdir"), "-i", part, "::").stdout
    dump = Path(to_raw(os.path.join(dst, "hd-dump.vmdk"), str(tmp_path / "dump.raw")))
    assert dump.read_bytes()[:8] == b"IPVADUMP"
    assert no_data(os.path.join(dst, "hd-flash.vmdk"))


def _mcopy_out(raw: str, tmp_path) -> bytes:
    out = tmp_path / "IPVA.BIN"
    run(need_tool("mcopy"), "-n", "-i", f"{raw}@@{2048 * 512}", "::IPVA.BIN", str(out))
    return out.read_bytes()


def test_create_vsphere(tmp_path, firmware):
    dst = str(tmp_path / "vs")
    plan = golden.plan_create(dst, firmware, cf_bytes=32 << 20, target="vsphere")
    files = golden.apply_create(plan)
    assert sorted(files) == sorted(NAMES + [n.replace(".vmdk", "-flat.vmdk") for n in NAMES]
                                   + ["ipva.vmx"])
    for name in NAMES:
        assert b'createType="vmfs"' in Path(dst, name).read_bytes()
        assert qemu_info(os.path.join(dst, name))["format"] == "vmdk"
    v = Vmx.read(os.path.join(dst, "ipva.vmx"))
    assert v.get("ethernet0.networkName") == "VM Network"
    assert in_static_range(parse_mac(v.get("ethernet0.address")))
    assert problems(dst) == []


def test_create_ova(tmp_path, firmware):
    dst = str(tmp_path / "o")
    plan = golden.plan_create(dst, firmware, target="ova", mac="00:50:56:3f:00:07")  # 1 GiB CF
    golden.apply_create(plan)
    assert problems(dst) == []
    for name in NAMES:
        info = qemu_info(os.path.join(dst, name))
        assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    with tarfile.open(os.path.join(dst, "ipva.ova")) as tar:
        members = tar.getnames()
        assert members == ["ipva.ovf", "ipva.mf"] + NAMES
        for name in NAMES:
            assert tar.extractfile(name).read() == Path(dst, name).read_bytes()
        ovf_bytes = tar.extractfile("ipva.ovf").read()
        mf = tar.extractfile("ipva.mf").read().decode()
    for m in ["ipva.ovf"] + NAMES:
        digest = hashlib.sha256(Path(dst, m).read_bytes()).hexdigest()
        assert f"SHA256({m})= {digest}" in mf
    env = ET.fromstring(ovf_bytes)
    disks = env.findall(f"{OVF}DiskSection/{OVF}Disk")
    assert [d.get(f"{OVF}capacity") for d in disks] == [
        str(32 << 20), str(1 << 30), str(100 << 20), str(64 << 20)]
    assert all(d.get(f"{OVF}format").endswith("#streamOptimized") for d in disks)
    items = env.findall(f"{OVF}VirtualSystem/{OVF}VirtualHardwareSection/{OVF}Item")

    def field(item, tag):
        el = item.find(f"{RASD}{tag}")
        return None if el is None else el.text

    ide = {field(i, "InstanceID"): field(i, "Address") for i in items
           if field(i, "ResourceType") == "5"}
    placed = sorted((ide[field(i, "Parent")], field(i, "AddressOnParent"),
                     field(i, "HostResource")) for i in items if field(i, "ResourceType") == "17")
    assert placed == [("0", "0", "ovf:/disk/vmdisk1"), ("0", "1", "ovf:/disk/vmdisk2"),
                      ("1", "0", "ovf:/disk/vmdisk3"), ("1", "1", "ovf:/disk/vmdisk4")]
    nic = next(i for i in items if field(i, "ResourceType") == "10")
    assert field(nic, "ResourceSubType") == "PCNet32" and field(nic, "Address") == "00:50:56:3F:00:07"
    extra = env.findall(f"{OVF}VirtualSystem/{OVF}VirtualHardwareSection/{VMW}ExtraConfig")
    uuid = Vmx.read(os.path.join(dst, "ipva.vmx")).get("uuid.bios")
    assert [(e.get(f"{VMW}key"), e.get(f"{VMW}value")) for e in extra] == [
        ("monitor_control.pseudo_perfctr", "TRUE"), ("uuid.bios", uuid)]


def test_create_refusals_leave_nothing(tmp_path, runner, firmware):
    bad = tmp_path / "bad.bin"
    data = bytearray(Path(firmware).read_bytes())
    data[600] ^= 1
    bad.write_bytes(bytes(data))
    dst = tmp_path / "x"
    r = vdisk(runner, "bundle", "create", str(dst), "--firmware", str(bad), "--cf-size", "32M")
    assert r.exit_code == 3 and "Traceback" not in r.output
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir() if "vdisk-tmp" in p.name] == []
    for args, code in ((["--mac", "00:0c:29:00:00:01"], 2), (["--memsize", "62"], 3),
                       (["--target", "kvm"], 2)):
        r = vdisk(runner, "bundle", "create", str(dst), "--firmware", firmware, *args)
        assert r.exit_code == code, args
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(RefusedError, match="not an empty folder"):
        golden.plan_create(str(tmp_path / "full"), firmware)
    r = vdisk(runner, "bundle", "create", str(dst), "--firmware", firmware, "--dry-run", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["dry_run"] and not dst.exists()


def test_clone_keeps_data_new_identity(tmp_path, runner, firmware):
    src = str(tmp_path / "golden")
    golden.apply_create(golden.plan_create(src, firmware, cf_bytes=32 << 20))
    qemu_io = need_tool("qemu-io")
    run(qemu_io, "-c", "write -P 0x5a 1M 256k", os.path.join(src, "hd-flash.vmdk"))
    before = {n: Path(src, n).read_bytes() for n in os.listdir(src)}
    dst = str(tmp_path / "site2")
    r = vdisk(runner, "bundle", "clone", src, dst, "--mac", "00:50:56:00:aa:bb")
    assert r.exit_code == 0, r.output
    assert {n: Path(src, n).read_bytes() for n in os.listdir(src)} == before
    sv, dv = Vmx.read(os.path.join(src, "ipva.vmx")), Vmx.read(os.path.join(dst, "ipva.vmx"))
    assert dv.get("ethernet0.address") == "00:50:56:00:AA:BB"
    assert dv.get("uuid.bios") != sv.get("uuid.bios") and dv.get("uuid.bios").endswith("00 aa bb")
    assert dv.get("displayName") == "site2"
    for name in NAMES:
        run(need_tool("qemu-img"), "compare", "-q", os.path.join(src, name), os.path.join(dst, name))
        assert os.stat(os.path.join(dst, name)).st_blocks * 512 <= \
            os.stat(os.path.join(src, name)).st_blocks * 512 + 4096        # copied sparse
    assert problems(dst) == []

    dst2 = str(tmp_path / "site3")
    files = golden.apply_clone(golden.plan_clone(src, dst2, reset_flash=True))
    assert sorted(files) == sorted(NAMES + ["ipva.vmx"])
    assert no_data(os.path.join(dst2, "hd-flash.vmdk"))
    assert not no_data(os.path.join(dst, "hd-flash.vmdk"))
    assert in_static_range(parse_mac(Vmx.read(os.path.join(dst2, "ipva.vmx")).get("ethernet0.address")))
    assert problems(dst2) == []


def test_clone_refusals(tmp_path, runner, firmware):
    src = str(tmp_path / "g")
    golden.apply_create(golden.plan_create(src, firmware, cf_bytes=32 << 20))
    os.mkdir(os.path.join(src, "ipva.vmx.lck"))
    r = vdisk(runner, "bundle", "clone", src, str(tmp_path / "c"))
    assert r.exit_code == 3 and "running" in r.stderr
    assert not (tmp_path / "c").exists()
    os.rmdir(os.path.join(src, "ipva.vmx.lck"))
    os.unlink(os.path.join(src, "hd-dump.vmdk"))
    r = vdisk(runner, "bundle", "clone", src, str(tmp_path / "c"))
    assert r.exit_code == 3 and not (tmp_path / "c").exists()


def test_create_and_clone_show_the_mac_and_uuid_they_write(tmp_path, runner, firmware,
                                                           monkeypatch):
    """A dry run and the real run (same seed) show the same identity, and it is what the
    vmx holds; the text output names both."""
    import json

    from vdisk_tool import clock
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    dst = tmp_path / "new"
    args = ["bundle", "create", str(dst), "--firmware", firmware, "--cf-size", "16M", "--json"]
    clock._SEEDED.clear()                        # each run starts the seeded generator afresh
    dry = json.loads(vdisk(runner, *args, "--dry-run").stdout)
    clock._SEEDED.clear()
    real = json.loads(vdisk(runner, *args).stdout)
    vmx = (dst / "ipva.vmx").read_text()
    assert (dry["mac"], dry["uuid_bios"]) == (real["mac"], real["uuid_bios"])
    assert f'ethernet0.address = "{real["mac"]}"' in vmx
    assert f'uuid.bios = "{real["uuid_bios"]}"' in vmx
    clock._SEEDED.clear()
    r = vdisk(runner, "bundle", "clone", str(dst), str(tmp_path / "c"), "--dry-run")
    mac = r.stdout.split("MAC: ")[1].split()[0]
    uuid = r.stdout.split("uuid.bios: ")[1].splitlines()[0]
    clock._SEEDED.clear()
    r = vdisk(runner, "bundle", "clone", str(dst), str(tmp_path / "c"))
    assert f"MAC: {mac} (static)" in r.stdout and f"uuid.bios: {uuid}" in r.stdout
    vmx = (tmp_path / "c" / "ipva.vmx").read_text()
    assert f'ethernet0.address = "{mac}"' in vmx and f'uuid.bios = "{uuid}"' in vmx
