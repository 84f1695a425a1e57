"""vdisk cf grow / cf format, held against mkfs.fat, mtools, fsck.fat and qemu-img."""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

from conftest import need_tool, run, vdisk
from crashharness import crash_test

MIB = 1 << 20


def _tree(root: Path, count: int, max_bytes: int, seed: int = 7) -> int:
    """`count` files in nested folders with long names and fixed old timestamps."""
    rng = random.Random(seed)
    total = 0
    for i in range(count):
        folder = root / f"dir {i % 7} with a long name" / f"level two {i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        n = rng.choice([0, 1, 511, 512, 4096, rng.randrange(1, max_bytes)])
        p = folder / f"A file with a Long Name number {i:03d}.dat"
        p.write_bytes(rng.randbytes(n))
        stamp = 1262304000 + i * 86400 * 3 + 2 * rng.randrange(1000)
        os.utime(p, (stamp, stamp))
        total += n
    return total


def _cf_image(tmp: Path, size_mib: int, fat: int, files: int, max_bytes: int) -> tuple[Path, Path]:
    """A CF built without vdisk: sfdisk + mkfs.fat + mcopy, converted by qemu-img."""
    for t in ("sfdisk", "mkfs.fat", "mcopy", "qemu-img"):
        need_tool(t)
    raw = tmp / "cf.raw"
    with open(raw, "wb") as f:
        f.truncate(size_mib * MIB)
    subprocess.run(["sfdisk", "-q", str(raw)], input=f"start=2048, type={'0c' if fat == 32 else '0e'}\n",
                   text=True, check=True, capture_output=True)
    run("mkfs.fat", "-F", str(fat), "-n", "IPVACF", "--offset", "2048", str(raw))
    src = tmp / "src"
    src.mkdir()
    _tree(src, files, max_bytes)
    run("mcopy", "-s", "-m", "-i", f"{raw}@@1M", *[str(p) for p in sorted(src.iterdir())], "::/")
    vmdk = tmp / "hd-cf.vmdk"
    run("qemu-img", "convert", "-O", "vmdk", str(raw), str(vmdk))
    raw.unlink()
    return vmdk, src


def _partition_copy(raw: Path, out: Path) -> None:
    """Copy the partition from LBA 2048 on, keeping holes (fsck.fat has no offset option)."""
    with open(raw, "rb") as fi, open(out, "wb") as fo:
        size = os.fstat(fi.fileno()).st_size
        fo.truncate(size - MIB)
        pos = MIB
        while pos < size:
            try:
                pos = os.lseek(fi.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fi.fileno(), pos, os.SEEK_HOLE)
            while pos < end:
                n = min(8 * MIB, end - pos)
                fo.seek(pos - MIB)
                fo.write(os.pread(fi.fileno(), n, pos))
                pos += n


def _assert_same_tree(raw: Path, src: Path, tmp: Path) -> None:
    back = tmp / "back"
    back.mkdir()
    run("mcopy", "-s", "-m", "-n", "-i", f"{raw}@@1M", "::/*", str(back))
    for p in src.rglob("*"):
        q = back / p.relative_to(src)
        assert q.exists(), p
        if p.is_file():
            assert q.read_bytes() == p.read_bytes(), p
            assert int(q.stat().st_mtime) == int(p.stat().st_mtime), p
    assert sorted(str(p.relative_to(back)) for p in back.rglob("*")) == \
        sorted(str(p.relative_to(src)) for p in src.rglob("*"))


def test_cf_grow_1g_to_8g_keeps_200_files(tmp_path: Path, runner) -> None:
    vmdk, src = _cf_image(tmp_path, 1024, 32, 200, 2 * MIB)
    data = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    res = vdisk(runner, "cf", "grow", str(vmdk), "--size", "8G", "--yes")
    assert res.exit_code == 0, res.output
    assert "FAT32" in res.stdout
    assert run("qemu-img", "check", str(vmdk), check=False).returncode == 0
    raw = tmp_path / "out.raw"
    run("qemu-img", "convert", "-O", "raw", str(vmdk), str(raw))
    assert raw.stat().st_size == 8 << 30
    part = tmp_path / "part.raw"
    _partition_copy(raw, part)
    fsck = run("fsck.fat", "-n", str(part), check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "differ" not in fsck.stdout and "Free cluster summary wrong" not in fsck.stdout
    _assert_same_tree(raw, src, tmp_path)
    label = run("mlabel", "-s", "-i", f"{raw}@@1M", "::").stdout
    assert "IPVACF" in label
    # sparse: the VMDK holds little more than the files
    assert vmdk.stat().st_blocks * 512 < data + 24 * MIB


def test_cf_grow_fat16_to_fat32_and_format(tmp_path: Path, runner) -> None:
    vmdk, src = _cf_image(tmp_path, 64, 16, 12, 200_000)
    res = vdisk(runner, "cf", "grow", str(vmdk), "--size", "600M", "--yes")
    assert res.exit_code == 0, res.output
    raw = tmp_path / "out.raw"
    run("qemu-img", "convert", "-O", "raw", str(vmdk), str(raw))
    sfd = run("sfdisk", "-d", str(raw)).stdout
    assert "start=        2048" in sfd and "type=c" in sfd
    _assert_same_tree(raw, src, tmp_path)
    # format: empty, same size
    res = vdisk(runner, "cf", "format", str(vmdk), "--yes")
    assert res.exit_code == 0, res.output
    raw.unlink()
    run("qemu-img", "convert", "-O", "raw", str(vmdk), str(raw))
    assert raw.stat().st_size == 600 * MIB
    listing = run("mdir", "-b", "-i", f"{raw}@@1M", "::/", check=False).stdout
    assert listing.strip() == ""


def test_cf_grow_refuses_damaged_volume(tmp_path: Path, runner) -> None:
    vmdk, _src = _cf_image(tmp_path, 64, 16, 5, 100_000)
    raw = tmp_path / "d.raw"
    run("qemu-img", "convert", "-O", "raw", str(vmdk), str(raw))
    with open(raw, "r+b") as f:   # cross-link: FAT #1 entry 3 -> 2 in both copies' view
        f.seek(MIB + 512 * 4)       # first FAT sector of a FAT16 volume with 4 reserved sectors
        f.write(b"\xf8\xff\xff\xff" + b"\x05\x00" * 4)
    bad = tmp_path / "bad.vmdk"
    run("qemu-img", "convert", "-O", "vmdk", str(raw), str(bad))
    before = bad.read_bytes()
    res = vdisk(runner, "cf", "grow", str(bad), "--size", "128M", "--yes")
    assert res.exit_code == 3, res.output
    assert "damaged" in res.stderr
    assert bad.read_bytes() == before


def test_cf_grow_needs_confirmation_without_tty(tmp_path: Path, runner) -> None:
    vmdk, _src = _cf_image(tmp_path, 64, 16, 3, 1000)
    before = vmdk.read_bytes()
    res = vdisk(runner, "cf", "grow", str(vmdk), "--size", "128M")
    assert res.exit_code == 2
    assert vmdk.read_bytes() == before


def test_cf_grow_is_crash_safe(tmp_path: Path) -> None:
    def make(folder: Path) -> None:
        work = folder.parent / "build"
        work.mkdir()
        vmdk, _ = _cf_image(work, 40, 16, 8, 300_000)
        os.rename(vmdk, folder / "hd-cf.vmdk")

    def complete(folder: Path) -> bool:
        p = folder / "hd-cf.vmdk"
        out = folder.parent / "probe.raw"
        if out.exists():
            out.unlink()
        r = subprocess.run(["qemu-img", "convert", "-O", "raw", str(p), str(out)], capture_output=True)
        ok = r.returncode == 0 and out.stat().st_size == 80 * MIB
        if out.exists():
            out.unlink()
        return ok

    res = crash_test(make, ["cf", "grow", "hd-cf.vmdk", "--size", "80M", "--yes"], complete,
                     tmp_path, points=20)
    assert res.corrupt == [], res.corrupt
    assert res.tried >= 20
    assert res.old_kept > 0 and res.new_complete > 0
