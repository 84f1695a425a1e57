"""`vdisk bundle convert` and the platform attachments: every disk of every target is held
against its source with qemu-img (check, compare), the output folder checks healthy, the
MAC and uuid.bios survive round trips, and the Proxmox configuration and Hyper-V script are
read back key by key with parsers of the tests' own (PowerShell itself is not installable
here: the script is checked line by line and token by token)."""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid as uuidlib
from pathlib import Path

import fwbuilder
import pytest
from conftest import need_tool, run, vdisk
from test_json_schema import _valid

from vdisk_tool.errors import RefusedError, Severity, VdiskError
from vdisk_tool.ipva import convert, doctor, golden
from vdisk_tool.ipva.attachments import (
    Machine,
    PlatformOptions,
    build_hyperv_script,
    build_qm_conf,
    nic_for,
    read_hyperv_machine,
    read_qm_machine,
)
from vdisk_tool.ipva.bundle import parse_mac, parse_uuid_bios
from vdisk_tool.ipva.targets import TARGETS
from vdisk_tool.ipva.vmx import Vmx

NAMES = ["hd-boot.vmdk", "hd-cf.vmdk", "hd-flash.vmdk", "hd-dump.vmdk"]
MAC = "00:50:56:01:02:03"
UUID = bytes.fromhex("564d1234567890ab" "cdef001122010203")
SIZES = {"boot": 32 << 20, "cf": 1 << 30, "flash": 100 << 20, "dump": 64 << 20}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """A workstation bundle whose CF and flash hold data of their own (written by qemu-io)."""
    base = tmp_path_factory.mktemp("src")
    fw = base / "ipva.bin"
    fw.write_bytes(fwbuilder.standard().to_bytes())
    folder = str(base / "ipva")
    golden.apply_create(golden.plan_create(folder, str(fw), cf_bytes=16 << 20, mac=MAC))
    qemu_io = need_tool("qemu-io")
    run(qemu_io, "-c", "write -P 0x5a 1M 192k", os.path.join(folder, "hd-flash.vmdk"))
    run(qemu_io, "-c", "write -P 0xc3 15M 64k", os.path.join(folder, "hd-cf.vmdk"))
    return folder


def problems(folder: str) -> list[dict]:
    return [i.to_dict() for i in doctor.check_bundle(folder).issues
            if i.severity != Severity.INFO]


def same_disks(a: str, b: str, names_a: list[str], names_b: list[str]) -> None:
    qemu_img = need_tool("qemu-img")
    for na, nb in zip(names_a, names_b, strict=True):
        run(qemu_img, "check", os.path.join(b, nb))
        r = run(qemu_img, "compare", os.path.join(a, na), os.path.join(b, nb), check=False)
        assert r.returncode == 0, (na, nb, r.stdout, r.stderr)


def identity(folder: str) -> tuple[str, str]:
    v = Vmx.read(next(str(p) for p in Path(folder).glob("*.vmx")))
    return v.get("ethernet0.address") or "", v.get("uuid.bios") or ""


def test_round_trip_workstation_ova_vsphere_workstation(source, tmp_path, runner):
    """Each hop keeps every disk's bytes, the MAC and uuid.bios; each output checks healthy."""
    before = {n: Path(source, n).read_bytes() for n in os.listdir(source)}
    mac, uuid = identity(source)
    ova = str(tmp_path / "ova")
    r = vdisk(runner, "bundle", "convert", source, ova, "--target", "ova")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(ova)) == sorted(NAMES + ["ipva.vmx", "ipva.ovf", "ipva.mf", "ipva.ova"])
    for n in NAMES:
        info = json.loads(run(need_tool("qemu-img"), "info", "--output=json",
                              os.path.join(ova, n)).stdout)
        assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    same_disks(source, ova, NAMES, NAMES)
    assert identity(ova) == (mac, uuid) and problems(ova) == []

    vs = str(tmp_path / "vs")            # from the package itself, not the folder beside it
    r = vdisk(runner, "bundle", "convert", os.path.join(ova, "ipva.ova"), vs, "--target", "vsphere")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(vs)) == sorted(NAMES + [n[:-5] + "-flat.vmdk" for n in NAMES]
                                            + ["ipva.vmx"])
    same_disks(source, vs, NAMES, NAMES)
    assert identity(vs) == (mac, uuid) and problems(vs) == []

    back = str(tmp_path / "back")
    r = vdisk(runner, "bundle", "convert", vs, back, "--target", "workstation", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    _valid(doc)
    assert doc["command"] == "bundle convert" and doc["ok"] and not doc["mac_renewed"]
    assert [d["role"] for d in doc["disks"]] == ["boot", "cf", "flash", "dump"]
    same_disks(source, back, NAMES, NAMES)
    assert identity(back) == (mac, uuid) and problems(back) == []
    for n in NAMES:                       # converted sparse: no more blocks than the source
        assert os.stat(os.path.join(back, n)).st_blocks <= \
            os.stat(os.path.join(source, n)).st_blocks + 64
    assert {n: Path(source, n).read_bytes() for n in os.listdir(source)} == before


def test_new_mac_makes_a_clone(source, tmp_path, runner):
    out = str(tmp_path / "clone")
    r = vdisk(runner, "bundle", "convert", source, out, "--target", "workstation", "--new-mac",
              "--name", "site/2")
    assert r.exit_code == 0, r.output
    assert os.listdir(out).count("site-2.vmx") == 1
    assert Vmx.read(os.path.join(out, "site-2.vmx")).get("displayName") == "site-2"
    mac, uuid = identity(out)
    assert mac != MAC
    assert 0x005056000000 <= parse_mac(mac) <= 0x0050563FFFFF
    assert uuid != identity(source)[1] and parse_uuid_bios(uuid)[13:] == \
        parse_mac(mac).to_bytes(6, "big")[3:]
    same_disks(source, out, NAMES, NAMES)


def test_generated_mac_is_frozen(source, tmp_path):
    """A generated MAC (what the licence is bound to) becomes the static MAC of the copy."""
    src = tmp_path / "gen"
    shutil.copytree(source, src)
    vmx = Vmx.read(str(src / "ipva.vmx"))
    vmx.set("ethernet0.addressType", "generated")
    vmx.remove("ethernet0.address")
    vmx.set("ethernet0.generatedAddress", "00:0c:29:aa:bb:cc")
    vmx.save()
    plan = convert.plan_convert(str(src), str(tmp_path / "out"), target="workstation")
    assert plan.machine.mac == 0x000C29AABBCC and not plan.mac_renewed
    convert.apply_convert(plan)
    v = Vmx.read(str(tmp_path / "out" / "ipva.vmx"))
    assert (v.get("ethernet0.addressType"), v.get("ethernet0.address")) == \
        ("static", "00:0C:29:AA:BB:CC")
    assert v.get("ethernet0.checkMACAddress") == "FALSE"


def test_refusals_and_dry_run(source, tmp_path, runner):
    out = tmp_path / "o"
    r = vdisk(runner, "bundle", "convert", source, str(out), "--target", "ova", "--dry-run")
    assert r.exit_code == 0 and not out.exists()
    for n in NAMES:
        assert f"-> {n}" in r.stdout
    assert "MAC: 00:50:56:01:02:03" in r.stdout and "ipva.vmx" in r.stdout
    r = vdisk(runner, "bundle", "convert", source, str(out), "--target", "proxmox", "--dry-run",
              "--json", "--vmid", "120")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    _valid(doc)
    assert [d["file"] for d in doc["disks"]] == [f"vm-120-hd-{x}.qcow2" for x in SIZES]
    assert doc["attachment"] == "120.conf"
    assert not out.exists()
    out.mkdir()
    (out / "x").write_text("x")
    r = vdisk(runner, "bundle", "convert", source, str(out), "--target", "workstation")
    assert r.exit_code == 3 and "not an empty folder" in r.stderr
    assert os.listdir(out) == ["x"]
    lck = Path(source, "ipva.vmx.lck")
    lck.mkdir()
    try:
        r = vdisk(runner, "bundle", "convert", source, str(tmp_path / "p"), "--target", "ova")
        assert r.exit_code == 3 and "running" in r.stderr
        assert not (tmp_path / "p").exists()
    finally:
        lck.rmdir()
    r = vdisk(runner, "bundle", "convert", source, str(tmp_path / "p"), "--target", "ova",
              "--nic-model", "virtio")
    assert r.exit_code == 3 and "virtio" in r.stderr
    assert [p.name for p in tmp_path.iterdir() if "vdisk-tmp" in p.name] == []


def test_convert_help_has_an_example(runner):
    r = vdisk(runner, "bundle", "convert", "--help")
    assert r.exit_code == 0 and "Example: vdisk bundle convert" in r.stdout
    for t in TARGETS:
        assert t in r.stdout


# -- Proxmox: the qm configuration ------------------------------------------------------------
PROXMOX_VOLUME = re.compile(r"^(?P<storage>[a-z][a-z0-9\-_.]*[a-z0-9]):(?P<vmid>\d+)/"
                            r"(?P<name>(base-)?[^/\s]+\.(raw|qcow2|vmdk))$", re.I)


def _qm_keys(text: str) -> dict[str, str]:
    """The test's own reading of /etc/pve/qemu-server/<vmid>.conf: `key: value` lines,
    leading '#' lines are the notes."""
    keys: dict[str, str] = {}
    for line in text.split("\n"):
        if not line or line.startswith("#"):
            continue
        k, v = line.split(": ", 1)
        assert k not in keys, k
        keys[k] = v
    return keys


def test_qm_conf_key_by_key():
    m = Machine("ipva site_2", 128, 1, parse_mac(MAC), UUID, "vlance")
    files = {r: (f"vm-120-hd-{r}.qcow2", SIZES[r]) for r in SIZES}
    text = build_qm_conf(m, PlatformOptions(vmid=120, storage="local", bridge="vmbr1"), files)
    assert "\r" not in text and "%" not in text        # notes are URI-decoded by Proxmox
    keys = _qm_keys(text)
    assert keys == {
        "balloon": "0", "boot": "order=ide0", "cores": "1", "memory": "128",
        "name": "ipva-site-2", "ostype": "other", "sockets": "1",
        "net0": "pcnet=00:50:56:01:02:03,bridge=vmbr1",
        "ide0": "local:120/vm-120-hd-boot.qcow2,size=32M",
        "ide1": "local:120/vm-120-hd-cf.qcow2,size=1G",
        "ide2": "local:120/vm-120-hd-flash.qcow2,size=100M",
        "ide3": "local:120/vm-120-hd-dump.qcow2,size=64M",
        "smbios1": "uuid=564d1234-5678-90ab-cdef-001122010203",
    }
    for i in range(4):                 # Proxmox's directory storage takes each volume name
        vol = PROXMOX_VOLUME.match(keys[f"ide{i}"].split(",")[0])
        assert vol and vol["vmid"] == "120" and vol["name"].startswith("vm-120-")
    notes = [line for line in text.split("\n") if line.startswith("#")]
    assert any("qm disk import" in n for n in notes)
    assert any("/var/lib/vz/images/120" in n for n in notes)
    assert any("publishes no NIC model" in n for n in notes)
    back, names = read_qm_machine(text)
    assert (back.mac, back.uuid_bios, back.memsize_mb, back.cpus, back.nic) == \
        (m.mac, m.uuid_bios, 128, 1, "pcnet")
    assert names == {r: f"vm-120-hd-{r}.qcow2" for r in SIZES}
    vmx_nic = nic_for("workstation", back.nic, None)
    assert vmx_nic == "vlance"                       # back to VMware: the same device


def test_qm_nic_models():
    files = {r: (f"vm-100-hd-{r}.qcow2", SIZES[r]) for r in SIZES}
    m = Machine("ipva", 64, 1, parse_mac(MAC), None, "vmxnet3")
    assert _qm_keys(build_qm_conf(m, PlatformOptions(), files))["net0"].startswith("vmxnet3=")
    keys = _qm_keys(build_qm_conf(m, PlatformOptions(nic_model="e1000"), files))
    assert keys["net0"] == "e1000=00:50:56:01:02:03,bridge=vmbr0" and "smbios1" not in keys
    with pytest.raises(RefusedError):
        build_qm_conf(m, PlatformOptions(nic_model="vlance"), files)


# -- Hyper-V: the PowerShell script -----------------------------------------------------------
def _ps_tokens_balanced(script: str) -> bool:
    """Quotes close on their line (a doubled '' inside a single-quoted string), and
    parentheses and braces pair up outside strings and comments, over the whole script."""
    depth: list[str] = []
    i, quote = 0, None
    while i < len(script):
        c = script[i]
        if quote:
            if c == "\n":
                return False
            if c == quote:
                if quote == "'" and script[i + 1:i + 2] == "'":
                    i += 1
                else:
                    quote = None
        elif c in "'\"":
            quote = c
        elif c == "#":
            while i < len(script) and script[i] != "\n":
                i += 1
        elif c in "({":
            depth.append(")" if c == "(" else "}")
        elif c in ")}":
            if not depth or depth.pop() != c:
                return False
        i += 1
    return quote is None and not depth


def test_hyperv_script_cmdlets_controllers_mac():
    m = Machine("ipva o'brien", 128, 1, parse_mac(MAC), UUID, "vlance")
    disks = {r: f"hd-{r}.vhdx" for r in SIZES}
    text = build_hyperv_script(m, PlatformOptions(), disks, "ipva.ps1")
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    lines = text.split("\r\n")[:-1]
    code = [x for x in lines if x and not x.startswith("#")]
    assert _ps_tokens_balanced(text.replace("\r\n", "\n"))
    assert not _ps_tokens_balanced("Set-X -Path (Join-Path $Here 'a''b)\n")
    assert "    [string]$Name = 'ipva o''brien'," in code
    assert "New-VM -Name $Name -Generation 1 -MemoryStartupBytes 128MB -NoVHD -Path $Here | Out-Null" in code
    assert "Set-VMMemory -VMName $Name -DynamicMemoryEnabled $false -StartupBytes 128MB" in code
    assert "Set-VMProcessor -VMName $Name -Count 1" in code
    assert "Get-VMDvdDrive -VMName $Name | Remove-VMDvdDrive" in code
    assert not any(re.match(r"(Add|Set)-VMDvdDrive", x) for x in code)
    assert "Add-VMNetworkAdapter -VMName $Name -Name 'ETH0' -IsLegacy $true" in code
    assert "Set-VMNetworkAdapter -VMName $Name -Name 'ETH0' -StaticMacAddress '005056010203'" in code
    placed = [re.match(r"^Add-VMHardDiskDrive -VMName \$Name -ControllerType IDE -ControllerNumber "
                       r"(\d) -ControllerLocation (\d) -Path \(Join-Path \$Here '([^']+)'\)$", x)
              for x in code if x.startswith("Add-VMHardDiskDrive")]
    assert [(p[1], p[2], p[3]) for p in placed if p] == [
        ("0", "0", "hd-boot.vhdx"), ("0", "1", "hd-cf.vhdx"), ("1", "0", "hd-flash.vhdx"),
        ("1", "1", "hd-dump.vhdx")]
    order = [x.split()[0] for x in code]
    assert order.index("New-VM") < order.index("Get-VMDvdDrive") < order.index("Add-VMHardDiskDrive")
    assert "Set-VMBios -VMName $Name -StartupOrder @('IDE', 'LegacyNetworkAdapter', 'CD', 'Floppy')" in code
    assert "# uuid.bios: 56 4d 12 34 56 78 90 ab-cd ef 00 11 22 01 02 03" in lines
    back, names = read_hyperv_machine(text)
    assert (back.name, back.mac, back.uuid_bios, back.memsize_mb, back.nic) == \
        ("ipva o'brien", m.mac, UUID, 128, "legacy")
    assert names == disks
    syn = build_hyperv_script(m, PlatformOptions(nic_model="synthetic"), disks, "x.ps1")
    assert "Add-VMNetworkAdapter -VMName $Name -Name 'ETH0' -IsLegacy $false" in syn


@pytest.mark.parametrize("target", ["proxmox", "hyperv"])
def test_platform_targets_round_trip(source, tmp_path, runner, target):
    """Proxmox (qcow2) and Hyper-V (VHDX): the disks compare equal to the source, the
    attachment names them, and converting back gives the same appliance."""
    spec = TARGETS[target]
    out = str(tmp_path / target)
    r = vdisk(runner, "bundle", "convert", source, out, "--target", target, "--vmid", "120")
    assert r.exit_code == 0, r.output
    names = list(spec.disk_names(120).values())
    same_disks(source, out, NAMES, names)
    fmt = {"proxmox": "qcow2", "hyperv": "vhdx"}[target]
    for n in names:
        info = json.loads(run(need_tool("qemu-img"), "info", "--output=json",
                              os.path.join(out, n)).stdout)
        assert info["format"] == fmt
    sizes = [json.loads(run(need_tool("qemu-img"), "info", "--output=json",
                            os.path.join(source, n)).stdout)["virtual-size"] for n in NAMES]
    if target == "proxmox":
        assert sorted(os.listdir(out)) == sorted(names + ["120.conf"])
        keys = _qm_keys(Path(out, "120.conf").read_text())
        assert [keys[f"ide{i}"] for i in range(4)] == [
            f"local:120/{n},size={sz >> 20}M" for n, sz in zip(names, sizes, strict=True)]
        assert keys["net0"] == f"pcnet={MAC},bridge=vmbr0"
        assert keys["smbios1"] == "uuid=" + str(uuidlib.UUID(bytes=parse_uuid_bios(
            identity(source)[1])))
    else:
        assert sorted(os.listdir(out)) == sorted(names + ["ipva.ps1"])
        text = Path(out, "ipva.ps1").read_text()
        assert "-StaticMacAddress '005056010203'" in text and "-Generation 1" in text
        assert [re.search(r"-ControllerNumber (\d) -ControllerLocation (\d) .*'(.+)'\)", x).groups()
                for x in text.splitlines() if x.startswith("Add-VMHardDiskDrive")] == [
            ("0", "0", names[0]), ("0", "1", names[1]), ("1", "0", names[2]), ("1", "1", names[3])]
    assert problems(out) == []
    back = str(tmp_path / "back")
    r = vdisk(runner, "bundle", "convert", out, back, "--target", "workstation")
    assert r.exit_code == 0, r.output
    same_disks(source, back, NAMES, NAMES)
    assert identity(back) == identity(source)


def _platform_folder(source: str, folder: Path, target: str) -> list[str]:
    """A Proxmox or Hyper-V folder as the platform would hold it, made without vdisk's
    writers: the disks by qemu-img (qcow2/VHDX) where this build reads those containers,
    else the source's VMDKs under the platform's names; the attachment vdisk writes."""
    from vdisk_tool.image.disk import open_image
    spec = TARGETS[target]
    names = spec.disk_names(120)
    folder.mkdir()
    fmt = {"qcow2": "qcow2", "vhdx": "vhdx"}[spec.container]
    for role, src_name in zip(names, NAMES, strict=True):
        out = folder / names[role]
        run(need_tool("qemu-img"), "convert", "-O", fmt, os.path.join(source, src_name), str(out))
        try:
            with open_image(str(out)) as d:
                readable = d.format == fmt
        except VdiskError:
            readable = False
        if not readable:
            shutil.copyfile(os.path.join(source, src_name), out)
    m = Machine("ipva", 64, 1, parse_mac(MAC), parse_uuid_bios(identity(source)[1]), None)
    opts = PlatformOptions(vmid=120)
    if target == "proxmox":
        (folder / "120.conf").write_text(build_qm_conf(m, opts, {r: (names[r], SIZES[r]) for r in names}))
    else:
        (folder / "ipva.ps1").write_bytes(build_hyperv_script(m, opts, names, "ipva.ps1").encode())
    return list(names.values())


@pytest.mark.parametrize("target", ["proxmox", "hyperv"])
def test_platform_folder_checks_and_converts_back(source, tmp_path, runner, target):
    """`bundle check` reads a Proxmox or Hyper-V folder through its attachment; converting
    it back to VMware gives the same disks, MAC and uuid.bios."""
    names = _platform_folder(source, tmp_path / target, target)
    folder = str(tmp_path / target)
    r = vdisk(runner, "bundle", "check", folder, "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0, doc.get("findings") or doc
    assert [os.path.basename(d["path"]) for d in doc["disks"]] == names
    before = sorted(os.listdir(folder))
    r = vdisk(runner, "bundle", "check", folder, "--fix")
    assert r.exit_code == 2 and "no vmx to fix" in r.stderr and sorted(os.listdir(folder)) == before
    back = str(tmp_path / "back")
    r = vdisk(runner, "bundle", "convert", folder, back, "--target", "workstation")
    assert r.exit_code == 0, r.output
    same_disks(source, back, NAMES, NAMES)
    assert identity(back) == identity(source) and problems(back) == []
    if target == "proxmox":
        conf = Path(folder, "120.conf")
        conf.write_text(conf.read_text() + "lock: backup\n")
        r = vdisk(runner, "bundle", "convert", folder, str(tmp_path / "b2"), "--target", "ova")
        assert r.exit_code == 3 and "lock: backup" in r.stderr
    os.mkdir(os.path.join(folder, names[0] + ".lck"))
    r = vdisk(runner, "bundle", "convert", folder, str(tmp_path / "b2"), "--target", "ova")
    assert r.exit_code == 3 and "running" in r.stderr


@pytest.mark.parametrize("target", ["proxmox", "hyperv"])
def test_create_for_platform(tmp_path, runner, target):
    """A new appliance for Proxmox or Hyper-V: the containers qemu-img sees, a healthy check."""
    fw = tmp_path / "ipva.bin"
    fw.write_bytes(fwbuilder.standard().to_bytes())
    out = str(tmp_path / "new")
    r = vdisk(runner, "bundle", "create", out, "--firmware", str(fw), "--target", target,
              "--name", "../evil")
    assert r.exit_code == 3 and not os.path.exists(out) and not (tmp_path / "evil.ps1").exists()
    r = vdisk(runner, "bundle", "create", out, "--firmware", str(fw), "--cf-size", "16M",
              "--target", target, "--mac", MAC, "--memory", "192", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    _valid(doc)
    spec = TARGETS[target]
    names = spec.disk_names(100)
    for role, n in names.items():
        info = json.loads(run(need_tool("qemu-img"), "info", "--output=json",
                              os.path.join(out, n)).stdout)
        assert info["format"] == spec.container and info["virtual-size"] == \
            (16 << 20 if role == "cf" else SIZES[role])
        run(need_tool("qemu-img"), "check", os.path.join(out, n))
    assert doc["attachment"] in os.listdir(out) and problems(out) == []
    m = convert.find_source(out).machine
    assert (m.mac, m.memsize_mb) == (parse_mac(MAC), 192)
