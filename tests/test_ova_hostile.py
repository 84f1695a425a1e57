"""Hostile OVF packages are normal input: each one gives one clear error (exit 3) or one
finding, nothing is written outside the destination, and memory stays bounded. Packages
come from tests/ovabuilder.py (tarfile, hashlib, text XML; VMDKstream disks)."""
from __future__ import annotations

import json
import os
import tarfile
import zipfile
from pathlib import Path

import fwbuilder
import ovabuilder as ob
import pytest
from conftest import vdisk

# Info-level findings every package of the standard spec carries (64 MB RAM, ETH1 as shipped).
INFO_ONLY = {"vmx.flash-limited", "bundle.flash-usage", "vmx.eth1-state"}


@pytest.fixture(scope="module")
def streams(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("hostile")
    return ob.stream_disks(ob.raw_disks(work), work, "vmdkstream")


def check(runner, target: Path) -> tuple[int, dict[str, list[dict]]]:
    res = vdisk(runner, "bundle", "check", str(target), "--json")
    if res.exit_code == 3:
        return 3, {"error": [{"message": res.stderr}]}
    found: dict[str, list[dict]] = {}
    for i in json.loads(res.stdout)["findings"]:
        found.setdefault(i["code"], []).append(i)
    return res.exit_code, found


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def refused_deploy(runner, tmp_path: Path, pkg: Path) -> str:
    """deploy exits 3 and writes nothing at all (not in DIR, not beside it, not outside)."""
    before = snapshot(tmp_path.parent)
    res = vdisk(runner, "bundle", "deploy", str(pkg), str(tmp_path / "vm"))
    assert res.exit_code == 3, res.output
    assert snapshot(tmp_path.parent) == before
    return res.stderr


def standard(streams) -> ob.Package:
    return ob.build(ob.standard_spec(), streams)


@pytest.mark.parametrize("extra, code", [
    (lambda: [ob.special("../evil.vmdk", tarfile.REGTYPE)], "ova.member-name"),
    (lambda: [ob.special("/tmp/evil.vmdk", tarfile.REGTYPE)], "ova.member-name"),
    (lambda: [ob.special("sub/inner.vmdk", tarfile.REGTYPE)], "ova.member-name"),
    (lambda: [ob.special("link.vmdk", tarfile.SYMTYPE, "/etc/passwd")], "ova.member-type"),
    (lambda: [ob.special("hard.vmdk", tarfile.LNKTYPE, "ipva.ovf")], "ova.member-type"),
    (lambda: [ob.special("null", tarfile.CHRTYPE)], "ova.member-type"),
    (lambda: [ob.special("fifo", tarfile.FIFOTYPE)], "ova.member-type"),
    (lambda: [ob.special("folder", tarfile.DIRTYPE)], "ova.member-type"),
])
def test_unusable_members_are_findings_and_block_deploy(tmp_path, runner, streams, extra, code):
    pkg = standard(streams).write_tar(tmp_path / "ipva.ova", extra())
    rc, found = check(runner, pkg)
    assert rc == 1 and set(found) - INFO_ONLY == {code}, found
    assert "not used" in found[code][0]["message"] or "flat" in found[code][0]["message"]
    refused_deploy(runner, tmp_path, pkg)
    assert not (tmp_path.parent / "evil.vmdk").exists() and not Path("/tmp/evil.vmdk").exists()


def test_a_second_member_of_the_same_name_is_not_used(tmp_path, runner, streams):
    pkg = standard(streams)
    pkg.members.append(("ipva-disk1.vmdk", streams["dump"]))   # a different disk, same name
    path = pkg.write_tar(tmp_path / "ipva.ova")
    rc, found = check(runner, path)
    assert rc == 1 and "ova.member-duplicate" in found
    assert "ova.digest-mismatch" not in found                  # the first one was used
    refused_deploy(runner, tmp_path, path)


def test_member_larger_than_the_tar(tmp_path, runner, streams):
    path = standard(streams).write_tar(tmp_path / "ipva.ova")
    size = path.stat().st_size
    os.truncate(path, size - 20 * 512 - 2048)            # into the last disk's data
    rc, found = check(runner, path)
    assert rc == 1 and {"ova.member-truncated", "ova.file-missing"} <= set(found)
    refused_deploy(runner, tmp_path, path)


@pytest.mark.parametrize("prolog, what", [
    ('<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>',
     "DOCTYPE"),
    ('<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', "DOCTYPE"),
    ('<!doctype x>', "DOCTYPE"),
])
def test_no_dtd_and_no_entity_reaches_the_parser(tmp_path, runner, streams, prolog, what):
    pkg = ob.edit_ovf(standard(streams), '<Envelope ', prolog + '\n<Envelope ')
    path = pkg.write_tar(tmp_path / "ipva.ova")
    for args in (("bundle", "check"), ("info",), ("verify",)):
        res = vdisk(runner, *args, str(path))
        assert res.exit_code == 3 and what in res.stderr and "Traceback" not in res.output
    refused_deploy(runner, tmp_path, path)


@pytest.mark.parametrize("old, new, message", [
    ('ovf:capacity="32"', 'ovf:capacity="1073741824"', "does not fit"),     # 1 PiB
    ('ovf:capacity="32"', 'ovf:capacity="-32"', "not a whole number"),
    ('ovf:capacity="32"', 'ovf:capacity="${size}"', "not a whole number"),
    ('capacityAllocationUnits="byte * 2^20"', 'capacityAllocationUnits="furlong"', "unknown"),
    ('ovf:size="', 'ovf:size="x', "not a number"),
    ('<Envelope ', '<Envelope>' + "<x/>" * 1200000 + "</Envelope><Envelope ", "more than 4194304"),
    ('</Envelope>', '', "not well-formed"),
])
def test_descriptors_that_cannot_be_read(tmp_path, runner, streams, old, new, message):
    path = ob.edit_ovf(standard(streams), old, new).write_tar(tmp_path / "ipva.ova")
    res = vdisk(runner, "bundle", "check", str(path))
    assert res.exit_code == 3 and message in res.stderr, res.stderr
    refused_deploy(runner, tmp_path, path)


def test_capacity_against_the_disk_header(tmp_path, runner, streams):
    path = ob.edit_ovf(standard(streams), 'ovf:capacity="64"', 'ovf:capacity="128"'
                       ).write_tar(tmp_path / "ipva.ova")
    rc, found = check(runner, path)
    assert rc == 1 and "ova.capacity-mismatch" in found
    assert "134217728" in found["ova.capacity-mismatch"][0]["message"]
    refused_deploy(runner, tmp_path, path)


@pytest.mark.parametrize("edit, code", [
    (lambda mf: mf + b"SHA256(ghost.vmdk)= " + b"0" * 64 + b"\n", "ova.manifest-absent"),
    (lambda mf: mf + b"this is not a digest line\n", "ova.manifest-malformed"),
    (lambda mf: mf + b"MD5(ipva.ovf)= " + b"0" * 32 + b"\n", "ova.manifest-malformed"),
])
def test_manifest_lines(tmp_path, runner, streams, edit, code):
    pkg = standard(streams)
    name, mf = pkg.members[1]
    pkg.members[1] = (name, edit(mf))
    rc, found = check(runner, pkg.write_tar(tmp_path / "ipva.ova"))
    assert rc == 1 and code in found


def test_digest_mismatch_names_the_member(tmp_path, runner, streams):
    pkg = standard(streams)
    name, mf = pkg.members[1]
    pkg.members[1] = (name, mf.replace(ob.manifest({"ipva-disk2.vmdk": streams["cf"]}, "SHA256"),
                                       ob.manifest({"ipva-disk2.vmdk": b"other"}, "SHA256")))
    path = pkg.write_tar(tmp_path / "ipva.ova")
    rc, found = check(runner, path)
    assert rc == 1 and list(found["ova.digest-mismatch"]) and \
        found["ova.digest-mismatch"][0]["message"].startswith("ipva-disk2.vmdk: SHA256")
    assert "digest" in refused_deploy(runner, tmp_path, path)


def test_descriptor_changed_after_the_manifest(tmp_path, runner, streams):
    pkg = standard(streams)
    name, desc = pkg.members[0]
    pkg.members[0] = (name, desc.replace(b"Virtual disk information", b"Virtual disk informatioN"))
    rc, found = check(runner, pkg.write_tar(tmp_path / "ipva.ova"))
    assert rc == 1 and found["ova.digest-mismatch"][0]["message"].startswith("ipva.ovf:")


def test_no_manifest_and_unlisted_members_are_warnings(tmp_path, runner, streams):
    path = ob.build(ob.standard_spec(manifest=None), streams).write_tar(tmp_path / "a.ova")
    rc, found = check(runner, path)
    assert rc == 1 and set(found) - INFO_ONLY == \
        {"ova.manifest-missing"}
    assert vdisk(runner, "bundle", "deploy", str(path), str(tmp_path / "vm")).exit_code == 0
    pkg = standard(streams)
    pkg.members.append(("README.txt", b"hello\n"))
    rc, found = check(runner, pkg.write_tar(tmp_path / "b.ova"))
    assert rc == 1 and "ova.manifest-unlisted" in found


@pytest.mark.parametrize("old, new, code", [
    ('<File ovf:href="ipva-disk4.vmdk"', '<File ovf:href="gone.vmdk"', "ova.file-missing"),
    ('ovf:id="file-dump" ovf:size="', 'ovf:id="file-dump" ovf:size="1', "ova.file-size"),
    ('ovf:id="file-dump"', 'ovf:id="file-dump" ovf:compression="gzip"', "ova.file-compressed"),
    ('ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>',
     'ovf:format="http://example.org/qcow2"/>', "ova.disk-format"),
    ('<rasd:Parent>11</rasd:Parent>', '', "ova.disk-unplaced"),
    ('vmw:key="monitor_control.pseudo_perfctr" vmw:value="TRUE"/>',
     'vmw:key="monitor_control.pseudo_perfctr" vmw:value="TRUE"/><vmw:ExtraConfig '
     'vmw:key="ide0:0.fileName" vmw:value="/etc/passwd"/>', "ova.extraconfig-refused"),
])
def test_descriptor_findings(tmp_path, runner, streams, old, new, code):
    path = ob.edit_ovf(standard(streams), old, new).write_tar(tmp_path / "ipva.ova")
    rc, found = check(runner, path)
    assert rc == 1 and code in found, found.keys()
    if code == "ova.extraconfig-refused":
        dst = tmp_path / "vm"
        assert vdisk(runner, "bundle", "deploy", str(path), str(dst)).exit_code == 0
        assert "/etc/passwd" not in (dst / "ipva.vmx").read_text()


def test_descriptor_not_first(tmp_path, runner, streams):
    pkg = standard(streams)
    pkg.members.insert(0, pkg.members.pop(1))
    rc, found = check(runner, pkg.write_tar(tmp_path / "ipva.ova"))
    assert rc == 1 and "ova.member-order" in found


def test_a_disk_that_is_not_a_vmdk(tmp_path, runner, streams):
    pkg = ob.build(ob.standard_spec(), {**streams, "dump": ob.FLASH_RAW_MARKER_FILE(tmp_path)})
    rc, found = check(runner, pkg.write_tar(tmp_path / "ipva.ova"))
    assert rc == 1 and "bundle.disk-unreadable" in found


def test_damaged_firmware_in_the_package(tmp_path, runner, streams):
    raw = tmp_path / "boot.raw"
    fwbuilder.make_raw_boot(str(raw), fwbuilder.standard().to_bytes()[:3000])
    bad = ob.stream_disks({"boot": raw}, tmp_path, "vmdkstream")["boot"]
    path = ob.build(ob.standard_spec(), {**streams, "boot": bad}).write_tar(tmp_path / "ipva.ova")
    rc, found = check(runner, path)
    assert rc == 1 and found["fw.truncated"][0]["boot_message"].startswith("checksum wrong!")
    res = vdisk(runner, "verify", str(path))
    assert res.exit_code == 1 and "DAMAGED" in res.stdout


def test_archives_that_are_not_packages(tmp_path, runner, streams):
    path = standard(streams).write_tar(tmp_path / "ipva.ova")
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF                                   # the first header's checksum fails
    bad = tmp_path / "bad.ova"
    bad.write_bytes(bytes(data))
    assert "checksum" in vdisk(runner, "bundle", "check", str(bad)).stderr
    z = tmp_path / "two.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(path, "a.ova")
        zf.write(path, "b.ova")
    res = vdisk(runner, "bundle", "check", str(z))
    assert res.exit_code == 3 and "expected one .ova" in res.stderr
    z = tmp_path / "climb.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(path, "../ipva.ova")
    res = vdisk(runner, "bundle", "check", str(z))
    assert res.exit_code == 3 and "'..'" in res.stderr
    res = vdisk(runner, "bundle", "check", str(path), "--fix")
    assert res.exit_code == 2
