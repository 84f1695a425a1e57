"""In-place edits under the file-level undo journal (specs/journal.md): the files keep their
identity, read-only commands report a pending journal, a foreign journal is never applied,
recovery across several batches, a never-allocated grain table, a full file system.

Inputs are made by sfdisk, mkfs.fat, mtools and qemu-img; results are judged by qemu-img
check/compare, fsck.fat and mtools.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk
from crashharness import run_vdisk
from fatutil import fsck_clean
from test_crash_all import FILES, _cat, _fat_disk, _part_offset

from vdisk_tool.image import hostio
from vdisk_tool.image.check import check_image
from vdisk_tool.image.disk import open_image
from vdisk_tool.image.journal import UndoJournal, journal_path, recover

MIB = 1 << 20
NOBODY = 65534


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".vmdk")


def _identity(p: Path) -> tuple[int, int, int, int, int]:
    st = p.stat()
    return st.st_ino, st.st_uid, st.st_gid, st.st_mode, st.st_nlink


def _to_raw(img: Path, out: Path) -> Path:
    run("qemu-img", "check", str(img))
    run("qemu-img", "convert", "-O", "raw", str(img), str(out))
    return out


def _vdisk_clean(img: Path) -> None:
    found = [f for f in check_image(str(img)).findings if f.severity.value != "info"]
    assert found == [], found


MUTATIONS = [
    ["fs", "put", "{img}", "{payload}", "/Sub Directory/NEW.BIN"],
    ["fs", "rm", "{img}", "/FILE.BIN"],
    ["fs", "mkdir", "{img}", "/NEWDIR"],
    ["fs", "mv", "{img}", "/README.TXT", "/NEWDIR/README.TXT"],
    ["fs", "label", "{img}", "RELABEL"],
    ["fs", "check", "{img}", "--repair"],
    ["check", "{img}", "--repair"],
    ["fs", "format", "{img}", "--yes", "--label", "FRESH"],
]


@pytest.mark.parametrize("subformat", ["monolithicSparse", "twoGbMaxExtentSparse", "monolithicFlat"])
def test_every_edit_keeps_inode_owner_mode_and_links(tmp_path: Path, runner, subformat) -> None:
    work = tmp_path / "w"
    work.mkdir()
    _fat_disk(work, subformat=subformat)
    img = work / "d.vmdk"
    payload = tmp_path / "payload.bin"
    payload.write_bytes(random.Random(1).randbytes(70_000))
    files = _files(work)
    assert len(files) == (1 if subformat == "monolithicSparse" else 2)
    for f in files:
        os.chown(f, NOBODY, NOBODY)
        os.chmod(f, 0o640)
        os.link(f, tmp_path / f"link-{f.name}")
    before = {f: _identity(f) for f in files}
    assert all(ident[4] == 2 for ident in before.values())
    for cmd in MUTATIONS:
        argv = [a.format(img=img, payload=payload) for a in cmd]
        r = vdisk(runner, *argv)
        assert r.exit_code == 0, (argv, r.output)
        assert {f: _identity(f) for f in files} == before, f"{argv} changed a file's identity"
        assert not Path(journal_path(str(img))).exists()
        assert [p.name for p in work.iterdir() if ".vdisk-" in p.name] == []
        _vdisk_clean(img)
        raw = _to_raw(img, tmp_path / "check.raw")
        fsck_clean(raw, _part_offset(raw))
        if cmd[1] == "put":
            assert _cat(raw, _part_offset(raw), "/Sub Directory/NEW.BIN") == payload.read_bytes()
        raw.unlink()
    # the hard link names the same, edited file
    for f in files:
        assert (tmp_path / f"link-{f.name}").read_bytes() == f.read_bytes()


@pytest.mark.parametrize("args", [
    ["fs", "put", "d.vmdk", "../payload.bin", "/NEW.BIN"],
    ["grow", "d.vmdk", "--size", "16M"],
], ids=["stream-put", "sparse-grow"])
def test_rewrites_keep_mode_and_owner(tmp_path: Path, runner, args) -> None:
    """What is still rewritten (a stream disk, a grow) gets the old file's mode and owner."""
    work = tmp_path / "w"
    work.mkdir()
    _fat_disk(work, subformat="streamOptimized" if args[0] == "fs" else "monolithicSparse")
    (tmp_path / "payload.bin").write_bytes(b"x" * 5000)
    img = work / "d.vmdk"
    os.chown(img, NOBODY, NOBODY)
    os.chmod(img, 0o640)
    r = run_vdisk(args, work, {})
    assert r.returncode == 0, r.stderr
    st = img.stat()
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)) == (NOBODY, NOBODY, "0o640")
    run("qemu-img", "check", str(img))


# -- a pending journal ------------------------------------------------------------------------

def _abandoned_edit(img: Path, writes: list[tuple[int, bytes]], batch: int | None = None) -> None:
    """Start an edit the way edit_image does, write, let some batches reach the files, and
    stop without commit or abort: what a killed run leaves."""
    with open_image(str(img)) as probe:
        files = [os.path.abspath(f) for f in probe.files]
    disk = open_image(str(img), writable=True)
    j = UndoJournal(str(img), files)
    if batch:
        j._batch = batch
    hostio.bind(j)
    try:
        for ext in disk.sparse_extents:
            ext.mark_in_use(True)
        for off, data in writes:
            disk.write_at(off, data)
        j.flush()
    finally:
        hostio.unbind(j)
        j.close()
        disk.close()


def test_read_commands_report_a_pending_journal(tmp_path: Path, runner) -> None:
    _fat_disk(tmp_path)
    img = tmp_path / "d.vmdk"
    ref = _to_raw(img, tmp_path / "ref.raw")
    _abandoned_edit(img, [(6 * MIB, b"\xff" * 4096)])   # a free cluster: the volume still reads
    for argv in (["check", str(img)], ["info", str(img)], ["fs", "check", str(img)],
                 ["fs", "ls", str(img)], ["fs", "tree", str(img)]):
        r = vdisk(runner, *argv, "--json") if argv[0] in ("check", "info") else vdisk(runner, *argv)
        assert r.exit_code == 1, (argv, r.output)
        assert "vmdk.pending-journal" in r.output, (argv, r.output)
        assert f"vdisk check {img} --repair" in r.output, (argv, r.output)
    found = json.loads(vdisk(runner, "check", str(img), "--json").stdout)["findings"]
    assert [f["code"] for f in found if f["severity"] == "error"][:1] == ["vmdk.pending-journal"]
    # the next writing command rolls back first, says so, then does its own change
    r = vdisk(runner, "fs", "mkdir", str(img), "/AFTER")
    assert r.exit_code == 0 and "rolled back first" in r.output, r.output
    with open_image(str(img)) as d, open(ref, "rb") as f:
        f.seek(6 * MIB)
        assert d.read_at(6 * MIB, 4096) == f.read(4096), "the interrupted write was not undone"
    assert vdisk(runner, "check", str(img)).exit_code == 0
    assert vdisk(runner, "fs", "check", str(img)).exit_code == 0


def test_foreign_journal_is_reported_never_applied(tmp_path: Path, runner) -> None:
    """A journal copied along with the image (new inodes) belongs to other files."""
    a = tmp_path / "a"
    a.mkdir()
    _fat_disk(a)
    _abandoned_edit(a / "d.vmdk", [(2048 * 512, b"\xee" * 4096)])
    b = tmp_path / "b"
    shutil.copytree(a, b)   # new inodes: the journal does not belong to these files
    mixed = (b / "d.vmdk").read_bytes()
    found = json.loads(vdisk(runner, "check", str(b / "d.vmdk"), "--json").stdout)["findings"]
    codes = {f["code"]: f for f in found}
    assert "vmdk.foreign-journal" in codes and not codes["vmdk.foreign-journal"]["fixable"]
    r = run_vdisk(["fs", "mkdir", "d.vmdk", "/X"], b, {})
    assert r.returncode == 3 and "is not applied" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2 and "Traceback" not in r.stderr
    assert (b / "d.vmdk").read_bytes() == mixed
    assert Path(journal_path(str(b / "d.vmdk"))).exists()
    # a journal whose header never became durable is dropped: nothing was written before it
    c = tmp_path / "c"
    c.mkdir()
    _fat_disk(c)
    Path(journal_path(str(c / "d.vmdk"))).write_bytes(b"VDISKJNL\1\0\0\0")
    pristine = (c / "d.vmdk").read_bytes()
    assert recover(str(c / "d.vmdk")) is True
    assert (c / "d.vmdk").read_bytes() == pristine


def test_recovery_across_batches_rewriting_a_region(tmp_path: Path) -> None:
    """Many small batches; the same pages written in the first and in later batches, and
    growth: recovery must give back the bytes from before the edit, not an intermediate."""
    _fat_disk(tmp_path)
    img = tmp_path / "d.vmdk"
    ref = _to_raw(img, tmp_path / "ref.raw")
    region = 2048 * 512 + 4096   # the FAT: allocated grains, overwritten in place
    writes = []
    for k in range(12):
        writes.append((region, bytes([0x40 + k]) * 20_000))        # same region, each batch
        writes.append((5 * MIB + k * 65536, bytes([k + 1]) * 65536))  # new grains: growth
    size_before = img.stat().st_size
    _abandoned_edit(img, writes, batch=16384)
    jp = Path(journal_path(str(img)))
    assert jp.exists() and img.stat().st_size > size_before
    assert recover(str(img)) is True
    assert not jp.exists() and img.stat().st_size == size_before
    assert run("qemu-img", "compare", "-f", "vmdk", "-F", "raw", str(img), str(ref),
               check=False).returncode == 0
    _vdisk_clean(img)


# -- a grain table that was never allocated ------------------------------------------------------

def _drop_table(img: Path, gd_index: int) -> None:
    """Zero directory entry `gd_index` in the GD and the RGD (as a disk whose table was never
    allocated has it); the table's old sectors stay, unused."""
    with open(img, "r+b") as f:
        hdr = f.read(512)
        rgd, gd = struct.unpack_from("<QQ", hdr, 0x30)
        for sector in (gd, rgd):
            f.seek(sector * 512 + 4 * gd_index)
            f.write(b"\0\0\0\0")


def test_write_into_a_never_allocated_grain_table(tmp_path: Path, runner) -> None:
    qemu_io = need_tool("qemu-io")
    img = tmp_path / "d.vmdk"
    run("qemu-img", "create", "-q", "-f", "vmdk", str(img), "64M")
    _drop_table(img, 1)   # grains 32 MiB .. 64 MiB
    from vdisk_tool.image.edit import edit_image
    with edit_image(str(img)) as disk:
        disk.write_at(40 * MIB + 512, b"\x5a" * 70_000)
        disk.write_at(MIB, b"\xa5" * 4096)
    run("qemu-img", "check", str(img))
    r = run(qemu_io, "-f", "vmdk", "-c", f"read -P 0x5a {40 * MIB + 512} 70000",
            "-c", f"read -P 0xa5 {MIB} 4096", "-c", f"read -P 0 {40 * MIB} 512", str(img))
    assert "Pattern verification failed" not in r.stdout, r.stdout
    _vdisk_clean(img)
    with open(img, "rb") as f:
        hdr = f.read(512)
        assert hdr[72] == 0, "uncleanShutdown left set"


# -- space ----------------------------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path: Path):
    """A tmpfs of 12 MiB (CI runs as root)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("VDISK_REQUIRE_TOOLS") == "1" and os.geteuid() == 0:
            pytest.fail(f"cannot mount a tmpfs: {r.stderr}")
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _free(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def test_nearly_full_file_system(tmp_path: Path, small_fs: Path) -> None:
    big = random.Random(2).randbytes(7 * MIB)
    build = tmp_path / "b"
    build.mkdir()
    _fat_disk(build, mib=12, files=dict(FILES, **{"BIG.BIN": big}))
    shutil.copy(build / "d.vmdk", small_fs / "d.vmdk")
    (small_fs / "filler").write_bytes(b"")
    # fill the rest of the file system but ~1 MiB
    with open(small_fs / "filler", "wb") as f:
        f.write(bytes(max(0, _free(small_fs) - MIB)))
    assert _free(small_fs) <= MIB
    note = tmp_path / "note.txt"
    note.write_bytes(b"n" * 4096)
    r = run_vdisk(["fs", "put", "d.vmdk", str(note), "/NOTE.TXT"], small_fs, {})
    assert r.returncode == 0, r.stderr
    # a change that needs more than is free: rolled back, one line, exit 3
    before = (small_fs / "d.vmdk").read_bytes()
    huge = tmp_path / "huge.bin"
    huge.write_bytes(random.Random(4).randbytes(3 * MIB // 2))
    r = run_vdisk(["fs", "put", "d.vmdk", str(huge), "/HUGE.BIN"], small_fs, {})
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left" in lines[0] and "bytes are free" in lines[0], lines
    assert "d.vmdk" in lines[0]
    assert (small_fs / "d.vmdk").read_bytes() == before
    assert [p.name for p in small_fs.iterdir() if ".vdisk-" in p.name] == []
    # the command that frees space works on the full file system
    r = run_vdisk(["fs", "rm", "d.vmdk", "/BIG.BIN"], small_fs, {})
    assert r.returncode == 0, r.stderr
    raw = _to_raw(small_fs / "d.vmdk", tmp_path / "after.raw")
    off = _part_offset(raw)
    fsck_clean(raw, off)
    assert _cat(raw, off, "/NOTE.TXT") == note.read_bytes()
    out = run("mdir", "-b", "-i", f"{raw}@@{off}", "::/", check=False).stdout
    assert "BIG.BIN" not in out


def test_leftover_hint_works_as_printed(tmp_path: Path, runner) -> None:
    """A leftover folder of a killed stream rewrite: the printed fix removes it."""
    from test_vmx import WORKSTATION_VMX
    folder = tmp_path / "ipva"
    folder.mkdir()
    (folder / "ipva.vmx").write_bytes(WORKSTATION_VMX.encode())
    left = folder / ".hd-cf.vmdk.vdisk-tmp-4000000.d"
    left.mkdir()
    (left / "scratch.vmdk").write_bytes(b"half a copy")
    doc = json.loads(vdisk(runner, "bundle", "check", str(folder), "--json").stdout)
    fixes = [i["fix"] for i in doc["findings"] if i["code"] == "bundle.leftover-temp"]
    assert fixes, doc
    r = subprocess.run(fixes[0], shell=True, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not left.exists()


def test_verify_reports_a_pending_journal(tmp_path: Path, runner) -> None:
    """verify reads IPVA.BIN from the boot disk: with an interrupted edit pending, what it
    read may be half changed, so it says so (exit 1) instead of a plain OK."""
    boot = tmp_path / "hd-boot.vmdk"
    shutil.copyfile(Path(__file__).resolve().parent.parent / "sample_images" / "ipva" / "hd-boot.vmdk",
                    boot)
    assert vdisk(runner, "verify", str(boot)).exit_code == 0
    _abandoned_edit(boot, [(30 * MIB, b"\xff" * 4096)])   # free space: the firmware still reads
    r = vdisk(runner, "verify", str(boot))
    assert r.exit_code == 1 and "vmdk.pending-journal" in r.output, r.output
    doc = json.loads(vdisk(runner, "verify", str(boot), "--json").stdout)
    assert doc["ok"] is False and doc["findings"][0]["code"] == "vmdk.pending-journal"


def test_every_image_command_reports_leftovers_beside_the_image(tmp_path: Path, runner) -> None:
    """A temporary file or folder an interrupted run left beside an image is named by read
    commands too, with a removal command that works as printed."""
    boot = tmp_path / "hd-boot.vmdk"
    shutil.copyfile(Path(__file__).resolve().parent.parent / "sample_images" / "ipva" / "hd-boot.vmdk",
                    boot)
    left = tmp_path / ".hd-boot.vmdk.vdisk-tmp-999999.d"     # no process 999999: a leftover
    left.mkdir()
    (left / "scratch.vmdk").write_bytes(b"x" * 4096)
    for argv in (["fs", "ls", str(boot), "/"], ["info", str(boot)], ["verify", str(boot)],
                 ["dump", "list", str(boot)]):
        r = vdisk(runner, *argv)
        assert str(left) in r.stderr and "interrupted run" in r.stderr, (argv, r.stderr)
    hint = vdisk(runner, "fs", "ls", str(boot), "/").stderr.split("(or: ", 1)[1].split(")", 1)[0]
    assert hint.startswith("rm -r ")
    subprocess.run(hint, shell=True, check=True)
    assert not left.exists()
    assert str(left) not in vdisk(runner, "fs", "ls", str(boot), "/").stderr
