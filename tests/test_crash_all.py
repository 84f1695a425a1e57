"""Crash consistency of every mutating command not covered elsewhere (issue #8).

Each test builds a small input without vdisk (mkfs.fat, sfdisk, mtools, qemu-img, the
dump and firmware builders), runs the command under tests/crashharness.py, which SIGKILLs
it at >= 20 points spread over its file-system mutations, and checks each killed run left
the folder byte-identical or a complete new result, judged by the independent tools
(qemu-img check, fsck.fat -n, mtools) where they apply.

With VDISK_CRASH_REPORT=FILE every test appends one line
`command<TAB>total points<TAB>tried<TAB>old kept<TAB>new complete<TAB>corrupt` to FILE.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import fwbuilder
import pytest
from conftest import assert_cid_renewed, descriptor_lines, need_tool, run
from crashharness import CrashResult, crash_test, leftovers, run_vdisk
from dumpbuilder import StoreBuilder, dump_text, record_header, store_header
from fatutil import fsck, mtools_fill
from test_vmx import VSPHERE_VMX
from typer.testing import CliRunner

from vdisk_tool.cli.app import app

MIB = 1 << 20
POINTS = 20
FW = fwbuilder.standard(20).to_bytes()
FILES = {
    "README.TXT": b"plain 8.3 name\r\n",
    "A Long File Name with spaces.txt": b"long name content\n" * 50,
    "Sub Directory/inner file.bin": random.Random(3).randbytes(9000),
    "Sub Directory/Deeper/deep.txt": b"deep\n",
    "FILE.BIN": b"y" * 5000,
}


# -- reporting ------------------------------------------------------------------------------

def _finish(name: str, res: CrashResult) -> None:
    """Record the figures (VDISK_CRASH_REPORT) and hold the result to the bar."""
    report = os.environ.get("VDISK_CRASH_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(f"{name}\t{res.total_points}\t{res.tried}\t{res.old_kept}\t"
                    f"{res.new_complete}\t{len(res.corrupt)}\n")
    assert res.corrupt == [], res.corrupt
    assert res.tried >= min(POINTS, res.total_points)
    assert res.new_complete > 0


def _safe(check: Callable[[Path], bool]) -> Callable[[Path], bool]:
    """A completeness check that treats any failure to read the result as 'not complete'."""
    def inner(folder: Path) -> bool:
        try:
            return check(folder)
        except Exception:
            return False
    return inner


# -- independent readers ----------------------------------------------------------------------

def _to_raw(folder: Path, name: str) -> Path | None:
    """qemu-img check (VMDK, qcow2), then a raw copy beside the run folder; None if either
    fails."""
    img = folder / name
    if not img.exists():
        return None
    kind = name.rsplit(".", 1)[-1] if name.endswith((".vmdk", ".vhdx", ".qcow2")) else "raw"
    if kind != "raw":
        if run("qemu-img", "check", "-f", kind, str(img), check=False).returncode != 0:
            return None
    out = folder.parent / f"{folder.name}-{name}.raw"
    if out.exists():
        out.unlink()
    fmt = ["-f", kind]
    if run("qemu-img", "convert", *fmt, "-O", "raw", str(img), str(out), check=False).returncode:
        return None
    return out


def _part_offset(raw: Path) -> int:
    with open(raw, "rb") as f:
        mbr = f.read(512)
    return int.from_bytes(mbr[0x1C6:0x1CA], "little") * 512


def _fat_clean(raw: Path, offset: int) -> bool:
    code, out = fsck(raw, offset, work=raw.parent)
    part = raw.parent / (raw.name + ".part")
    if part.exists():
        part.unlink()
    return code == 0 and len([ln for ln in out.splitlines() if ln.strip()]) == 2


def _mt(raw: Path, offset: int) -> str:
    return f"{raw}@@{offset}"


def _tree(raw: Path, offset: int) -> set[str]:
    out = run("mdir", "-/", "-b", "-i", _mt(raw, offset), "::", check=False).stdout
    return {ln.strip()[3:].rstrip("/") for ln in out.splitlines() if ln.strip().startswith("::/")}


def _cat(raw: Path, offset: int, name: str) -> bytes:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    return subprocess.run(["mtype", "-i", _mt(raw, offset), f"::{name}"], check=True,
                          capture_output=True, env=env).stdout


def _label(raw: Path, offset: int) -> str:
    out = run("mlabel", "-s", "-i", _mt(raw, offset), "::").stdout
    return out.replace("Volume label is", "").strip()


def _fat_result(name: str, want: Callable[[Path, int], bool]) -> Callable[[Path], bool]:
    """Complete = the VMDK checks clean, the volume is fsck.fat-clean and `want` holds."""
    def check(folder: Path) -> bool:
        raw = _to_raw(folder, name)
        if raw is None:
            return False
        try:
            off = _part_offset(raw)
            return _fat_clean(raw, off) and want(raw, off)
        finally:
            raw.unlink()
    return _safe(check)


# -- inputs -------------------------------------------------------------------------------------

def _fat_disk(folder: Path, name: str = "d.vmdk", mib: int = 8, label: str = "TESTVOL",
              files: dict[str, bytes] = FILES, edit: Callable[[Path], None] | None = None,
              subformat: str = "monolithicSparse") -> None:
    """A VMDK (monolithicSparse unless told): MBR, FAT16 at LBA 2048 (sfdisk + mkfs.fat),
    `files` copied by mtools, converted by qemu-img."""
    for tool in ("sfdisk", "mkfs.fat", "mcopy", "qemu-img"):
        need_tool(tool)
    build = folder.parent / f"build-{name}"
    build.mkdir()
    raw = build / "v.raw"
    with open(raw, "wb") as f:
        f.truncate(mib * MIB)
    run("sfdisk", "-q", str(raw), input="start=2048, type=e\n")
    run("mkfs.fat", "-F", "16", "-s", "1", "-n", label, "--offset", "2048", str(raw))
    mtools_fill(raw, 2048 * 512, files, build)
    if edit:
        edit(raw)
    run("qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}",
        str(raw), str(folder / name))
    shutil.rmtree(build)


def _root_entry(raw: Path, short: bytes) -> int:
    """Byte offset of the root directory entry named `short` (11 bytes) on the FAT16 volume."""
    off = 2048 * 512
    with open(raw, "rb") as f:
        f.seek(off)
        bpb = f.read(512)
        reserved = int.from_bytes(bpb[14:16], "little")
        fats = bpb[16]
        entries = int.from_bytes(bpb[17:19], "little")
        per_fat = int.from_bytes(bpb[22:24], "little")
        root = off + (reserved + fats * per_fat) * 512
        f.seek(root)
        table = f.read(entries * 32)
    for i in range(entries):
        if table[i * 32:i * 32 + 11] == short:
            return root + i * 32
    raise AssertionError(f"{short!r} not in the root directory")


# -- fs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("subformat", [
    "monolithicSparse",
    "monolithicFlat",
    "streamOptimized"])
def test_fs_put(tmp_path: Path, subformat: str) -> None:
    """Also on a descriptor + flat pair (two files replaced) and a re-encoded stream image."""
    data = random.Random(5).randbytes(40_000)

    def make(folder: Path) -> None:
        _fat_disk(folder, subformat=subformat)
        (folder / "new.bin").write_bytes(data)

    def want(raw: Path, off: int) -> bool:
        return (_cat(raw, off, "/Sub Directory/A new File.bin") == data
                and _cat(raw, off, "/FILE.BIN") == FILES["FILE.BIN"])

    res = crash_test(make, ["fs", "put", "d.vmdk", "new.bin", "/Sub Directory/A new File.bin"],
                     _fat_result("d.vmdk", want), tmp_path, points=POINTS)
    _finish("fs put" + ("" if subformat == "monolithicSparse" else f" ({subformat})"), res)


def test_fs_rm(tmp_path: Path) -> None:
    def want(raw: Path, off: int) -> bool:
        return _tree(raw, off) == {"README.TXT", "A Long File Name with spaces.txt", "FILE.BIN"}

    res = crash_test(_fat_disk, ["fs", "rm", "d.vmdk", "/Sub Directory", "-r", "--yes"],
                     _fat_result("d.vmdk", want), tmp_path, points=POINTS)
    _finish("fs rm", res)


def test_fs_mv(tmp_path: Path) -> None:
    def want(raw: Path, off: int) -> bool:
        tree = _tree(raw, off)
        return ("A Long File Name with spaces.txt" not in tree
                and _cat(raw, off, "/Sub Directory/Deeper/moved here.txt")
                == FILES["A Long File Name with spaces.txt"])

    res = crash_test(_fat_disk, ["fs", "mv", "d.vmdk", "/A Long File Name with spaces.txt",
                                 "/Sub Directory/Deeper/moved here.txt"],
                     _fat_result("d.vmdk", want), tmp_path, points=POINTS)
    _finish("fs mv", res)


def test_fs_mkdir(tmp_path: Path) -> None:
    def want(raw: Path, off: int) -> bool:
        return {"new one", "new one/Deeper dir", "new one/Deeper dir/x"} <= _tree(raw, off)

    res = crash_test(_fat_disk, ["fs", "mkdir", "d.vmdk", "/new one/Deeper dir/x", "-p"],
                     _fat_result("d.vmdk", want), tmp_path, points=POINTS)
    _finish("fs mkdir", res)


def test_fs_label(tmp_path: Path) -> None:
    def want(raw: Path, off: int) -> bool:
        return _label(raw, off) == "NEWLABEL"

    res = crash_test(_fat_disk, ["fs", "label", "d.vmdk", "NEWLABEL"],
                     _fat_result("d.vmdk", want), tmp_path, points=POINTS)
    _finish("fs label", res)


def test_fs_format(tmp_path: Path) -> None:
    def want(raw: Path, off: int) -> bool:
        return off == 2048 * 512 and _tree(raw, off) == set() and _label(raw, off) == "FRESH"

    def make(folder: Path) -> None:
        _fat_disk(folder, mib=16)     # FAT16 with vdisk's 2 KiB clusters needs 4085+ of them

    res = crash_test(make, ["fs", "format", "d.vmdk", "--fat", "16", "--label", "FRESH", "--yes"],
                     _fat_result("d.vmdk", want), tmp_path, points=POINTS)
    _finish("fs format", res)


def test_fs_check_repair(tmp_path: Path) -> None:
    """The directory entry of FILE.BIN claims more bytes than its chain holds."""
    def damage(raw: Path) -> None:
        at = _root_entry(raw, b"FILE    BIN")
        with open(raw, "r+b") as f:
            f.seek(at + 28)
            f.write((90000).to_bytes(4, "little"))

    def make(folder: Path) -> None:
        _fat_disk(folder, edit=damage)

    def want(raw: Path, off: int) -> bool:
        return _cat(raw, off, "/README.TXT") == FILES["README.TXT"]

    res = crash_test(make, ["fs", "check", "d.vmdk", "--repair", "--yes"],
                     _fat_result("d.vmdk", want), tmp_path, points=POINTS)
    _finish("fs check --repair", res)


# -- boot, cf -------------------------------------------------------------------------------

def test_boot_restore_crashed_update(tmp_path: Path) -> None:
    """IPVA.BIN cut short inside a cluster, as an update interrupted by a power cut leaves it."""
    def make(folder: Path) -> None:
        build = folder.parent / "build"
        build.mkdir()
        raw = fwbuilder.make_raw_boot(str(build / "b.img"), FW[:len(FW) // 2 + 333],
                                      extra={"README.TXT": b"keep me\n"})
        fwbuilder.to_vmdk(raw, str(folder / "hd-boot.vmdk"))
        shutil.rmtree(build)
        (folder / "ipva.bin").write_bytes(FW)

    def want(raw: Path, off: int) -> bool:
        return (off == 2048 * 512 and _cat(raw, off, "/IPVA.BIN") == FW
                and _cat(raw, off, "/README.TXT") == b"keep me\n")

    res = crash_test(make, ["boot", "restore", "hd-boot.vmdk", "--firmware", "ipva.bin", "--yes"],
                     _fat_result("hd-boot.vmdk", want), tmp_path, points=POINTS)
    _finish("boot restore", res)


def test_cf_format(tmp_path: Path) -> None:
    def make(folder: Path) -> None:
        _fat_disk(folder, "hd-cf.vmdk", mib=16, label="IPVACF")

    def want(raw: Path, off: int) -> bool:
        return off == 2048 * 512 and _tree(raw, off) == set() and _label(raw, off) == "IPVACF"

    res = crash_test(make, ["cf", "format", "hd-cf.vmdk", "--yes"],
                     _fat_result("hd-cf.vmdk", want), tmp_path, points=POINTS)
    _finish("cf format", res)


# -- flash ----------------------------------------------------------------------------------

def _flash_disk(folder: Path) -> None:
    qemu_img, qemu_io = need_tool("qemu-img"), need_tool("qemu-io")
    disk = str(folder / "hd-flash.vmdk")
    run(qemu_img, "create", "-q", "-f", "vmdk", "-o", "adapter_type=ide", disk, "100M")
    run(qemu_io, "-f", "vmdk", "-c", "write -P 0xab 1M 3M", "-c", "write -P 0x11 70M 64k", disk)


def test_flash_reset(tmp_path: Path) -> None:
    old_desc: list[list[str]] = []

    def make(folder: Path) -> None:
        _flash_disk(folder)
        old_desc.append(descriptor_lines(folder / "hd-flash.vmdk"))

    def complete(folder: Path) -> bool:
        disk = folder / "hd-flash.vmdk"
        if run("qemu-img", "check", str(disk), check=False).returncode != 0:
            return False
        info = json.loads(run("qemu-img", "info", "--output=json", str(disk)).stdout)
        runs = json.loads(run("qemu-img", "map", "--output=json", str(disk)).stdout)
        assert_cid_renewed(old_desc[0], descriptor_lines(disk))
        return info["virtual-size"] == 100 * MIB and not any(r["data"] for r in runs)

    res = crash_test(make, ["flash", "reset", "hd-flash.vmdk", "--yes"], _safe(complete),
                     tmp_path, points=POINTS)
    _finish("flash reset", res)


def test_flash_restore(tmp_path: Path) -> None:
    def region() -> bytes:
        out = bytearray(64 * MIB)
        out[2 * MIB:2 * MIB + 512 * 1024] = b"\x33" * (512 * 1024)
        out[63 * MIB:63 * MIB + 4096] = b"\x44" * 4096
        return bytes(out)

    want = region()

    def make(folder: Path) -> None:
        _flash_disk(folder)
        with open(folder / "flash.img", "wb") as f:   # sparse, as `vdisk flash backup` writes it
            f.truncate(64 * MIB)
            f.seek(2 * MIB)
            f.write(want[2 * MIB:2 * MIB + 512 * 1024])
            f.seek(63 * MIB)
            f.write(want[63 * MIB:63 * MIB + 4096])

    def complete(folder: Path) -> bool:
        raw = _to_raw(folder, "hd-flash.vmdk")
        if raw is None:
            return False
        try:
            data = raw.read_bytes()
        finally:
            raw.unlink()
        return (len(data) == 100 * MIB and data[:64 * MIB] == want
                and data[70 * MIB:70 * MIB + 65536] == b"\x11" * 65536)

    res = crash_test(make, ["flash", "restore", "hd-flash.vmdk", "flash.img", "--yes"],
                     _safe(complete), tmp_path, points=POINTS)
    _finish("flash restore", res)


# -- dump -----------------------------------------------------------------------------------

def _dump_disk(folder: Path) -> None:
    """An 8 MiB store (7 slots of 2048 sectors) holding records 1..3 in slots 0..2."""
    b = StoreBuilder(8 * MIB)
    for seq in (1, 2, 3):
        b.record(seq - 1, seq, dump_text(seq, lines=60))
    build = folder.parent / "build"
    build.mkdir()
    raw = b.header().write(build / "d.raw")
    run(need_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "vmdk", raw,
        str(folder / "hd-dump.vmdk"))
    shutil.rmtree(build)


def _dump_bytes(folder: Path) -> bytes | None:
    raw = _to_raw(folder, "hd-dump.vmdk")
    if raw is None:
        return None
    try:
        return raw.read_bytes()
    finally:
        raw.unlink()


def _records(folder: Path) -> list[dict] | None:
    r = CliRunner().invoke(app, ["dump", "list", str(folder / "hd-dump.vmdk"), "--json"])
    if r.exit_code != 0:
        return None
    doc = json.loads(r.stdout)
    return doc["records"] if doc["header_ok"] else None


def test_dump_write(tmp_path: Path) -> None:
    text = dump_text(4, lines=200)

    def make(folder: Path) -> None:
        _dump_disk(folder)
        (folder / "crash_dump.txt").write_bytes(text)

    def complete(folder: Path) -> bool:
        data = _dump_bytes(folder)
        if data is None:
            return False
        slot3 = (2048 + 3 * 2048) * 512
        return (data[:512] == store_header(2048, 7, 4)
                and data[slot3:slot3 + 512] == record_header(4, text, 90468, 1700000000, "13r2")
                and data[slot3 + 512:slot3 + 512 + len(text)] == text)

    res = crash_test(make, ["dump", "write", "hd-dump.vmdk", "--text", "crash_dump.txt",
                            "--build", "90468", "--version", "13r2", "--time", "1700000000"],
                     _safe(complete), tmp_path, points=POINTS)
    _finish("dump write", res)


def test_dump_clear(tmp_path: Path) -> None:
    def complete(folder: Path) -> bool:
        data = _dump_bytes(folder)
        return (data is not None and data[:512] == store_header(2048, 7, 0)
                and _records(folder) == [])

    res = crash_test(_dump_disk, ["dump", "clear", "hd-dump.vmdk", "--yes"], _safe(complete),
                     tmp_path, points=POINTS)
    _finish("dump clear", res)


def test_dump_init(tmp_path: Path) -> None:
    def complete(folder: Path) -> bool:
        data = _dump_bytes(folder)
        return (data is not None and data[:512] == store_header(1024, 14, 0)
                and _records(folder) == [])

    res = crash_test(_dump_disk, ["dump", "init", "hd-dump.vmdk", "--slot-sectors", "1024",
                                  "--yes"], _safe(complete), tmp_path, points=POINTS)
    _finish("dump init", res)


# -- bundle ---------------------------------------------------------------------------------

def _vmx_only(folder: Path) -> None:
    (folder / "ipva.vmx").write_bytes(VSPHERE_VMX.encode())


def test_bundle_check_fix(tmp_path: Path) -> None:
    fixed = (VSPHERE_VMX.replace('memsize = "190"', 'memsize = "192"')
             .replace('"e1000"', '"vlance"') + '\nmonitor_control.pseudo_perfctr = "TRUE"\n')

    def complete(folder: Path) -> bool:
        return (folder / "ipva.vmx").read_bytes() == fixed.encode()

    res = crash_test(_vmx_only, ["bundle", "check", ".", "--fix"], _safe(complete), tmp_path,
                     points=POINTS)
    _finish("bundle check --fix", res)


def test_bundle_set_mac(tmp_path: Path) -> None:
    from vdisk_tool.ipva.vmx import Vmx

    def complete(folder: Path) -> bool:
        v = Vmx.read(str(folder / "ipva.vmx"))
        return (v.get("ethernet0.addressType") == "static"
                and v.get("ethernet0.address").lower() == "00:50:56:12:34:56"
                and v.get("ethernet0.generatedAddress") is None
                and v.get("uuid.bios").endswith("12 34 56")
                and v.get("memsize") == "190")

    res = crash_test(_vmx_only, ["bundle", "set-mac", ".", "--mac", "00:50:56:12:34:56"],
                     _safe(complete), tmp_path, points=POINTS)
    _finish("bundle set-mac", res)


NAMES = ["hd-boot.vmdk", "hd-cf.vmdk", "hd-flash.vmdk", "hd-dump.vmdk"]


def _healthy_bundle(folder: Path, mac: str) -> bool:
    """All five files, each disk qemu-img-clean, and the doctor finds no problem."""
    from vdisk_tool.errors import Severity
    from vdisk_tool.ipva import doctor
    from vdisk_tool.ipva.vmx import Vmx
    if not folder.is_dir() or sorted(os.listdir(folder)) != sorted(NAMES + ["ipva.vmx"]):
        return False
    for n in NAMES:
        if run("qemu-img", "check", str(folder / n), check=False).returncode != 0:
            return False
    rep = doctor.check_bundle(str(folder))
    if any(i.severity != Severity.INFO for i in rep.issues):
        return False
    return Vmx.read(str(folder / "ipva.vmx")).get("ethernet0.address").lower() == mac


def test_bundle_create(tmp_path: Path) -> None:
    def make(folder: Path) -> None:
        (folder / "ipva.bin").write_bytes(fwbuilder.standard().to_bytes())

    def complete(folder: Path) -> bool:
        return _healthy_bundle(folder / "ipva", "00:50:56:01:02:03")

    res = crash_test(make, ["bundle", "create", "ipva", "--firmware", "ipva.bin", "--cf-size",
                            "16M", "--mac", "00:50:56:01:02:03"], _safe(complete), tmp_path,
                     points=POINTS)
    _finish("bundle create", res)


def test_bundle_clone(tmp_path: Path) -> None:
    from vdisk_tool.ipva import golden

    def make(folder: Path) -> None:
        fw = folder.parent / "fw.bin"
        fw.write_bytes(fwbuilder.standard().to_bytes())
        golden.apply_create(golden.plan_create(str(folder / "golden"), str(fw), cf_bytes=16 * MIB,
                                               mac="00:50:56:00:00:01"))
        run(need_tool("qemu-io"), "-c", "write -P 0x5a 1M 256k", str(folder / "golden" / NAMES[2]))

    def complete(folder: Path) -> bool:
        if not _healthy_bundle(folder / "site2", "00:50:56:00:aa:bb"):
            return False
        return all(run("qemu-img", "compare", "-q", str(folder / "golden" / n),
                       str(folder / "site2" / n), check=False).returncode == 0 for n in NAMES)

    res = crash_test(make, ["bundle", "clone", "golden", "site2", "--mac", "00:50:56:00:aa:bb"],
                     _safe(complete), tmp_path, points=POINTS)
    _finish("bundle clone", res)


# -- leftovers --------------------------------------------------------------------------------

def test_leftovers_are_cleaned_or_reported_by_the_next_run(tmp_path: Path) -> None:
    """A run killed half-way leaves its temporary copy; the next run on the same disk must
    remove it or say it is there."""
    folder = tmp_path / "f"
    folder.mkdir()
    _fat_disk(folder)
    count = tmp_path / "count"
    src = folder / "x.bin"
    src.write_bytes(b"x" * 3000)
    args = ["fs", "put", "d.vmdk", "x.bin", "/X.BIN"]
    probe = tmp_path / "probe"
    shutil.copytree(folder, probe)
    assert run_vdisk(args, probe, {"VDISK_CRASH_COUNT": str(count)}).returncode == 0
    total = int(count.read_text())
    r = run_vdisk(args, folder, {"VDISK_CRASH_AT": str(total // 2)})
    assert r.returncode < 0
    left = leftovers(folder)
    assert left, "the killed run left nothing to clean (choose another kill point)"
    r = run_vdisk(["fs", "mkdir", "d.vmdk", "/after"], folder, {})
    assert r.returncode == 0, r.stderr
    still = leftovers(folder)
    reported = all(p.name in r.stdout + r.stderr for p in still)
    assert not still or reported, f"{[p.name for p in still]} neither removed nor reported"
