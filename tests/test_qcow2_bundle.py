"""The shipped appliance (sample_images/ipva) as Proxmox keeps it: its four disks converted
to qcow2 by `qemu-img convert -O qcow2`. Every appliance and image command runs on the
qcow2 copy and on the VMDK original alike; their outputs (paths aside) and the disks'
contents afterwards (`qemu-img compare`) must agree, and after every write `qemu-img check`
is clean (conftest's vdisk() runs it). `bundle check` finds the disks through a vmx that
names the qcow2 files, and in a folder without any vmx by content and name."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk

SAMPLE = Path(__file__).resolve().parent.parent / "sample_images" / "ipva"
ROLES = ("boot", "cf", "flash", "dump")


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both runs stamp the same times and draw the same random numbers (CIDs, serials)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """(the VMDK bundle, the same bundle as qcow2 with its vmx naming the qcow2 files)."""
    vm = tmp_path / "vmdk"
    shutil.copytree(SAMPLE, vm)
    qc = tmp_path / "qcow2"
    qc.mkdir()
    for r in ROLES:
        run(need_tool("qemu-img"), "convert", "-O", "qcow2", str(vm / f"hd-{r}.vmdk"),
            str(qc / f"hd-{r}.qcow2"))
    shutil.copy(vm / "ipva.bin", qc / "ipva.bin")
    (qc / "ipva.vmx").write_text((vm / "ipva.vmx").read_text().replace(".vmdk", ".qcow2"))
    return vm, qc


def _both(runner, pair, *args: str, out: str | None = None) -> tuple[str, str]:
    """Run `args` ({d} = the disk of the role in the first word after the command, {o} an
    output file) on both bundles; both must succeed alike; their outputs with paths
    and extensions normalised must be equal."""
    outs = []
    for folder, ext in ((pair[0], "vmdk"), (pair[1], "qcow2")):
        words = [a.format(b=folder, ext=ext, o=folder / (out or "out")) for a in args]
        res = vdisk(runner, *words)
        outs.append((res.exit_code, res.stdout.replace(str(folder), "B").replace(f".{ext}", ".X")
                     .replace("monolithicSparse", "X").replace(ext, "X")))
    assert outs[0][0] == outs[1][0], outs
    return outs[0][1], outs[1][1]


def _same_disks(pair) -> None:
    for r in ROLES:
        res = run("qemu-img", "compare", str(pair[0] / f"hd-{r}.vmdk"),
                  str(pair[1] / f"hd-{r}.qcow2"), check=False)
        assert res.returncode == 0, (r, res.stdout)


READS = [("verify", "{b}/hd-boot.{ext}"), ("flash", "info", "{b}/hd-flash.{ext}"),
         ("dump", "list", "{b}/hd-dump.{ext}"), ("fs", "ls", "{b}/hd-cf.{ext}", "/", "-l"),
         ("fs", "tree", "{b}/hd-cf.{ext}"), ("fs", "df", "{b}/hd-cf.{ext}"),
         ("fs", "check", "{b}/hd-cf.{ext}"), ("fs", "cat", "{b}/hd-boot.{ext}", "/IPVA.BIN"),
         ("check", "{b}/hd-flash.{ext}")]


def test_read_commands_agree(runner, pair) -> None:
    for args in READS:
        a, b = _both(runner, pair, *args)
        assert a == b, args
    for args in (("flash", "backup", "{b}/hd-flash.{ext}", "-o", "{o}"),
                 ("dump", "extract", "{b}/hd-dump.{ext}", "-o", "{o}"),
                 ("fs", "get", "{b}/hd-boot.{ext}", "/IPVA.BIN", "{o}")):
        _both(runner, pair, *args)
        assert (pair[0] / "out").read_bytes() == (pair[1] / "out").read_bytes(), args
    for r in ROLES:
        res = vdisk(runner, "compare", str(pair[0] / f"hd-{r}.vmdk"), str(pair[1] / f"hd-{r}.qcow2"))
        assert res.exit_code == 0, res.output
    doc = json.loads(vdisk(runner, "info", str(pair[1] / "hd-cf.qcow2"), "--json").stdout)
    assert doc["format"] == "qcow2" and doc["virtual_size_bytes"] == 1 << 30
    kinds = {r["kind"] for r in json.loads(vdisk(runner, "map", str(pair[1] / "hd-cf.qcow2"),
                                                 "--json").stdout)["runs"]}
    assert kinds == {"data", "unallocated"}


def test_write_commands_agree(runner, pair, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("qcow2 on Proxmox\n")
    writes = [("fs", "put", "{b}/hd-cf.{ext}", str(note), "/NOTE.TXT"),
              ("fs", "mkdir", "{b}/hd-cf.{ext}", "/A/B", "-p"),
              ("fs", "mv", "{b}/hd-cf.{ext}", "/NOTE.TXT", "/A/NOTE.TXT"),
              ("fs", "label", "{b}/hd-cf.{ext}", "NEWCF"),
              ("fs", "rm", "{b}/hd-cf.{ext}", "/A", "-r", "--yes"),
              ("boot", "restore", "{b}/hd-boot.{ext}", "--firmware", "{b}/ipva.bin", "--yes"),
              ("flash", "backup", "{b}/hd-flash.{ext}", "-o", "{o}"),
              ("flash", "reset", "{b}/hd-flash.{ext}", "--yes"),
              ("flash", "restore", "{b}/hd-flash.{ext}", "{o}", "--yes"),
              ("dump", "clear", "{b}/hd-dump.{ext}", "--yes")]
    for args in writes:
        a, b = _both(runner, pair, *args, out="flash.img")
        assert a.replace("qcow2", "X") == b.replace("qcow2", "X") or args[0] in ("flash",), args
    _same_disks(pair)
    a, b = _both(runner, pair, "verify", "{b}/hd-boot.{ext}")
    assert a == b and "OK" in a


def test_rebuilds_agree(runner, pair) -> None:
    _both(runner, pair, "cf", "grow", "{b}/hd-cf.{ext}", "--size", "2G", "--yes")
    _both(runner, pair, "grow", "{b}/hd-dump.{ext}", "--size", "128M")
    _same_disks(pair)
    assert json.loads(run("qemu-img", "info", "--output=json",
                          str(pair[1] / "hd-cf.qcow2")).stdout)["format"] == "qcow2"
    _both(runner, pair, "cf", "format", "{b}/hd-cf.{ext}", "--yes")
    a, b = _both(runner, pair, "fs", "ls", "{b}/hd-cf.{ext}", "/")
    assert a == b
    # convert both ways
    res = vdisk(runner, "convert", str(pair[1] / "hd-boot.qcow2"), str(pair[1] / "back.vmdk"))
    assert res.exit_code == 0, res.output
    res = vdisk(runner, "convert", str(pair[0] / "hd-boot.vmdk"), str(pair[1] / "again.qcow2"))
    assert res.exit_code == 0, res.output
    for p in ("back.vmdk", "again.qcow2"):
        assert run("qemu-img", "compare", str(pair[1] / p), str(pair[0] / "hd-boot.vmdk"),
                   check=False).returncode == 0


def test_bundle_check_with_and_without_a_vmx(runner, pair) -> None:
    a, b = _both(runner, pair, "bundle", "check", "{b}")
    assert a == b and "healthy" in b
    (pair[1] / "ipva.vmx").unlink()
    res = vdisk(runner, "bundle", "check", str(pair[1]), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {d["role"]: Path(d["path"]).name for d in doc["disks"]} == {
        r: f"hd-{r}.qcow2" for r in ROLES}
    assert "bundle.no-vmx" in {f["code"] for f in doc["findings"]}
    # renamed disks are still found by what they hold
    for r, new in (("boot", "vm-100-disk-0"), ("cf", "vm-100-disk-1"), ("dump", "vm-100-disk-3")):
        (pair[1] / f"hd-{r}.qcow2").rename(pair[1] / f"{new}.qcow2")
    doc = json.loads(vdisk(runner, "bundle", "check", str(pair[1]), "--json").stdout)
    assert {d["role"]: Path(d["path"]).name for d in doc["disks"]} == {
        "boot": "vm-100-disk-0.qcow2", "cf": "vm-100-disk-1.qcow2",
        "flash": "hd-flash.qcow2", "dump": "vm-100-disk-3.qcow2"}
