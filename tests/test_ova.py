"""OVF packages read in place and deployed: packages built by tests/ovabuilder.py (OVF 2.0 /
1.x text, tarfile, hashlib, disks by VMDKstream and qemu-img, contents by mkfs.fat, sfdisk,
mtools and the tests' firmware and dump builders), held against qemu-img check/compare."""
from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import fwbuilder
import ovabuilder as ob
import pytest
from conftest import need_tool, run, vdisk


@pytest.fixture(scope="module")
def raws(tmp_path_factory) -> dict[str, Path]:
    return ob.raw_disks(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def streams(raws, tmp_path_factory) -> dict[str, Path]:
    return ob.stream_disks(raws, tmp_path_factory.mktemp("vmw"), "vmdkstream")


@pytest.fixture(scope="module")
def qstreams(raws, tmp_path_factory) -> dict[str, Path]:
    return ob.stream_disks(raws, tmp_path_factory.mktemp("qemu"), "qemu")


def issues(runner, target: str) -> tuple[int, dict[str, list[dict]]]:
    res = vdisk(runner, "bundle", "check", target, "--json")
    assert res.exit_code in (0, 1), res.output
    found: dict[str, list[dict]] = {}
    for i in json.loads(res.stdout)["findings"]:
        found.setdefault(i["code"], []).append(i)
    return res.exit_code, found


def problems(found: dict[str, list[dict]]) -> set[str]:
    return {c for c, lst in found.items() if any(i["severity"] != "info" for i in lst)}


def ova(tmp_path: Path, streams, name: str = "ipva.ova", **spec) -> Path:
    return ob.build(ob.standard_spec(**spec), streams).write_tar(tmp_path / name)


def qemu_check_compare(bundle: Path, vmx: str, sources: dict[str, Path]) -> None:
    """Every deployed disk passes qemu-img check and has the package disk's content."""
    qemu = need_tool("qemu-img")
    text = (bundle / vmx).read_text()
    for role, slot in ob.SLOTS.items():
        line = next(x for x in text.splitlines() if x.startswith(f"{slot}.fileName"))
        disk = bundle / line.split('"')[1]
        run(qemu, "check", str(disk))
        run(qemu, "compare", str(disk), str(sources[role]))


# -- reading ----------------------------------------------------------------------------------
def test_vmware_layout_package_is_healthy(tmp_path, runner, streams):
    pkg = ova(tmp_path, streams)
    code, found = issues(runner, str(pkg))
    assert code == 0, found
    assert "bundle.flash-usage" in found          # the flash disk was read in place
    res = vdisk(runner, "verify", str(pkg))
    assert res.exit_code == 0 and "OK: IPVA firmware" in res.stdout
    info = json.loads(vdisk(runner, "info", str(pkg), "--json").stdout)
    assert [m["name"] for m in info["members"]][:2] == ["ipva.ovf", "ipva.mf"]
    assert {d["slot"]: d["capacity_bytes"] for d in info["disks"]} == \
        {ob.SLOTS[r]: ob.CAPACITY[r] for r in ob.SLOTS}
    assert info["digests"][0]["algorithm"] == "SHA256"


def test_slots_come_from_the_ovf_not_from_names(tmp_path, runner, streams, raws):
    """Shuffled file names, DiskSection and disk items in another order than the slots (and
    all hardware items reversed), OVF 1.x, a SHA1 manifest and a second NIC listed first:
    every disk is still found at its slot, ethernet0 is still the first NIC."""
    names = {"boot": "xxx_3.vmdk", "cf": "xxx.vmdk", "flash": "xxx_1.vmdk", "dump": "xxx_2.vmdk"}
    by_role = {d.role: d for d in ob.default_disks(names)}
    disks = tuple(by_role[r] for r in ("cf", "dump", "boot", "flash"))
    pkg = ova(tmp_path, streams, disks=disks, reorder=True, version=1, manifest="SHA1",
              nics=(ob.NicSpec("PCNet32", "00:50:56:01:02:03"),
                    ob.NicSpec("E1000", "00:50:56:01:02:04", "Second")))
    code, found = issues(runner, str(pkg))
    assert code == 0, problems(found)
    res = vdisk(runner, "fs", "ls", f"{pkg}#ide0:0", "/")
    assert res.exit_code == 0 and "IPVA.BIN" in res.stdout
    res = vdisk(runner, "fs", "ls", f"{pkg}#cf", "/")
    assert res.exit_code == 0 and "CONFIG.TXT" in res.stdout
    assert vdisk(runner, "dump", "list", f"{pkg}#ide1:1").exit_code == 0
    assert "CONFIG.TXT" in vdisk(runner, "fs", "ls", f"{pkg}#xxx.vmdk", "/").stdout
    out = tmp_path / "flash.img"
    assert vdisk(runner, "flash", "backup", f"{pkg}#flash", "-o", str(out)).exit_code == 0
    raw = raws["flash"].read_bytes()[:64 << 20]
    assert out.read_bytes().ljust(64 << 20, b"\0") == raw
    dst = tmp_path / "vm"
    res = vdisk(runner, "bundle", "deploy", str(pkg), str(dst))
    assert res.exit_code == 0, res.output
    vmx = (dst / "ipva.vmx").read_text()
    assert 'ide0:0.fileName = "xxx_3.vmdk"' in vmx
    assert 'ethernet0.virtualDev = "vlance"' in vmx and 'ethernet1.virtualDev = "e1000"' in vmx
    assert 'ethernet0.address = "00:50:56:01:02:03"' in vmx
    assert 'ethernet1.address = "00:50:56:01:02:04"' in vmx


@pytest.mark.parametrize("target", ["workstation", "vsphere"])
def test_deploy_qemu_and_vmware_streams(tmp_path, runner, streams, qstreams, target):
    for label, disks in (("vmw", streams), ("qemu", qstreams)):
        pkg = ova(tmp_path, disks, name=f"{label}.ova")
        dst = tmp_path / f"{label}-{target}"
        res = vdisk(runner, "bundle", "deploy", str(pkg), str(dst), "--target", target,
                    "--name", "site", "--new-mac")
        assert res.exit_code == 0, res.output
        assert "healthy" in res.stdout
        vmx = (dst / "site.vmx").read_text()
        assert "00:50:56:01:02:03" not in vmx                     # --new-mac
        assert 'monitor_control.pseudo_perfctr = "TRUE"' in vmx  # ExtraConfig carried over
        code, found = issues(runner, str(dst))
        assert code == 0, problems(found)
        qemu_check_compare(dst, "site.vmx", disks)
        flat = sorted(p.name for p in dst.iterdir() if p.name.endswith("-flat.vmdk"))
        assert len(flat) == (4 if target == "vsphere" else 0)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_deploy_dry_run_and_json_write_nothing(tmp_path, runner, streams):
    pkg = ova(tmp_path, streams)
    dst = tmp_path / "vm"
    res = vdisk(runner, "bundle", "deploy", str(pkg), str(dst), "--dry-run", "--json")
    assert res.exit_code == 0
    plan = json.loads(res.stdout)
    assert plan["dry_run"] and [d["slot"] for d in plan["disks"]] == list(ob.SLOTS.values())
    assert not dst.exists()
    res = vdisk(runner, "bundle", "deploy", str(pkg), str(dst), "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["check"]["healthy"]
    assert vdisk(runner, "bundle", "deploy", str(pkg), str(dst)).exit_code == 3  # not empty


def test_zip_stored_and_deflated_and_unpacked_ovf(tmp_path, runner, streams):
    pkg = ova(tmp_path, streams)
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        z = tmp_path / f"ipva-ovf-{method}.zip"
        with zipfile.ZipFile(z, "w", compression=method) as zf:
            zf.write(pkg, "ipva.ova")
        code, found = issues(runner, str(z))
        assert code == 0, problems(found)
        assert vdisk(runner, "fs", "ls", f"{z}#boot", "/").exit_code == 0
    folder = ob.build(ob.standard_spec(), streams).write_folder(tmp_path / "unpacked")
    code, found = issues(runner, str(folder))
    assert code == 0, problems(found)
    dst = tmp_path / "from-ovf"
    assert vdisk(runner, "bundle", "deploy", str(folder), str(dst)).exit_code == 0
    qemu_check_compare(dst, "ipva.vmx", streams)


def test_round_trip_of_bundle_create_ova(tmp_path, runner):
    fw = tmp_path / "ipva.bin"
    fw.write_bytes(fwbuilder.standard().to_bytes())
    src = tmp_path / "golden"
    assert vdisk(runner, "bundle", "create", str(src), "--firmware", str(fw), "--target", "ova",
                 "--cf-size", "32M").exit_code == 0
    code, found = issues(runner, str(src / "ipva.ova"))
    assert code == 0, problems(found)
    dst = tmp_path / "deployed"
    assert vdisk(runner, "bundle", "deploy", str(src / "ipva.ova"), str(dst)).exit_code == 0
    code, found = issues(runner, str(dst))
    assert code == 0, problems(found)
    qemu_check_compare(dst, "ipva.vmx", {r: src / f"hd-{r}.vmdk" for r in ob.SLOTS})


def test_a_real_file_with_a_hash_in_its_name_is_itself(tmp_path, runner, raws):
    pkg = tmp_path / "x.ova"
    pkg.write_bytes(b"")
    odd = tmp_path / "x.ova#ide0:0"
    shutil.copyfile(raws["boot"], odd)
    res = vdisk(runner, "fs", "ls", str(odd), "/")
    assert res.exit_code == 0 and "IPVA.BIN" in res.stdout
    res = vdisk(runner, "fs", "ls", f"{tmp_path / 'nope.ova'}#ide0:0", "/")
    assert res.exit_code == 3


# -- what the appliance needs, judged like a vmx ----------------------------------------------
@pytest.mark.parametrize("spec, code, boot", [
    ({"nics": (ob.NicSpec("E1000"),)}, "vmx.nic-model", "NIC unavailable!"),
    ({"nics": ()}, "vmx.nic-missing", "NIC unavailable!"),
    ({"extra_config": ()}, "vmx.perfctr-missing", "perfcounter-not enabled!!!"),
    ({"memory_mb": 66}, "vmx.memsize-multiple", None),
    ({"memory_mb": 16}, "vmx.memsize-low", None),
    ({"cpus": 2}, "vmx.numvcpus", None),
    ({"nics": (ob.NicSpec("PCNet32", None),)}, "vmx.mac-generated", None),
])
def test_settings_judged_by_the_vmx_rules(tmp_path, runner, streams, spec, code, boot):
    pkg = ova(tmp_path, streams, **spec)
    rc, found = issues(runner, str(pkg))
    assert rc == 1 and code in found, found.keys()
    assert found[code][0]["boot_message"] == boot
    assert found[code][0]["fix"] is None or "bundle check ipva.ova --fix" not in found[code][0]["fix"]


def test_memory_units(tmp_path, runner, streams):
    pkg = ova(tmp_path, streams, memory_mb=1, memory_units="byte * 2^30")
    info = json.loads(vdisk(runner, "info", str(pkg), "--json").stdout)
    assert info["memsize_mb"] == "1024"
    pkg = ova(tmp_path, streams, name="b.ova", memory_mb=256, memory_units="MegaBytes")
    assert json.loads(vdisk(runner, "info", str(pkg), "--json").stdout)["memsize_mb"] == "256"


def test_disk_without_its_controller_is_unplaced(tmp_path, runner, streams):
    disks = tuple(replace(d, slot="ide7:0") if d.role == "dump" else d
                  for d in ob.default_disks())
    pkg = ova(tmp_path, streams, disks=disks)
    rc, found = issues(runner, str(pkg))
    assert rc == 1 and {"vmx.slot-missing", "ova.disk-unplaced"} <= set(found)
    assert vdisk(runner, "bundle", "deploy", str(pkg), str(tmp_path / "vm")).exit_code == 3
    assert not (tmp_path / "vm").exists()


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized"])
def test_a_disk_inside_another_file_reads_as_qemu_reads_it(tmp_path, raws, subformat):
    """image.vmdk.open.open_window: a VMDK written by qemu-img, stored at an odd offset of a larger
    file, reads byte for byte as the raw image it was made from."""
    from vdisk_tool.image.check import CheckReport, check_disk
    from vdisk_tool.image.vmdk.open import open_window

    vmdk = tmp_path / "cf.vmdk"
    run(need_tool("qemu-img"), "convert", "-f", "raw", "-O", "vmdk", "-o",
        f"subformat={subformat}", str(raws["cf"]), str(vmdk))
    blob = tmp_path / "host.bin"
    data = vmdk.read_bytes()
    blob.write_bytes(b"\x5a" * 7680 + data + b"\xa5" * 4096)
    raw = raws["cf"].read_bytes()
    with open_window(str(blob), 7680, len(data), "host.bin#cf.vmdk") as disk:
        assert disk.size_bytes == len(raw)
        for off in range(0, len(raw), 4 << 20):       # allocated and free grains mixed
            assert disk.read_at(off, 4 << 20) == raw[off:off + (4 << 20)]
        assert disk.read_at(1048576 + 4096, 65536) == raw[1048576 + 4096:1048576 + 69632]
    report = check_disk(open_window(str(blob), 7680, len(data), "w"), CheckReport("w"))
    assert report.clean, report.findings
