"""Helpers for the FAT tests: volumes made by mkfs.fat and filled by mtools, fsck.fat runs."""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from conftest import need_tool, run

KIB = 1024
MIB = 1024 * 1024
PART_LBA = 2048

#: name on the volume -> content; long names, nested dirs, empty file, exact cluster multiples
#: and a file written in pieces so that it ends up fragmented.
def sample_files(cluster_bytes: int, seed: int = 1) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {
        "README.TXT": b"plain 8.3 name\r\n",
        "A Long File Name with spaces.txt": b"long name content\n" * 50,
        "empty.dat": b"",
        "exact.bin": rnd.randbytes(cluster_bytes * 3),
        "Sub Directory/inner file.bin": rnd.randbytes(5000),
        "Sub Directory/Deeper/deep.txt": b"deep\n",
        "Sub Directory/Deeper/Ünïcödé naïve.txt": "ünicode".encode(),
        "lower.txt": b"lower case 8.3\n",
    }


def mkfs(path: Path, size_bytes: int, fat: int, partition: bool = False,
         extra: tuple[str, ...] = ()) -> int:
    """A fresh image with a FAT volume (at LBA 2048 inside an MBR when `partition`).
    Returns the volume's byte offset."""
    need_tool("mkfs.fat")
    with open(path, "wb") as f:
        f.truncate(size_bytes)
    offset = 0
    if partition:
        need_tool("sfdisk")
        ptype = {12: "1", 16: "e", 32: "c"}[fat]
        run("sfdisk", "-q", str(path), input=f"label: dos\n{PART_LBA},,{ptype}\n")
        offset = PART_LBA * 512
        sectors = size_bytes // 512 - PART_LBA
        run("mkfs.fat", "-F", str(fat), "--offset", str(PART_LBA), *extra, str(path),
            str(sectors // 2))
    else:
        run("mkfs.fat", "-F", str(fat), *extra, str(path))
    return offset


def mt(path: Path, offset: int) -> str:
    return f"{path}@@{offset}" if offset else str(path)


def mtools_fill(path: Path, offset: int, files: dict[str, bytes], work: Path) -> None:
    """Copy `files` onto the volume with mmd/mcopy; the file 'frag.bin' is made fragmented
    by interleaving it with a file that is then deleted."""
    need_tool("mcopy")
    img = mt(path, offset)
    made: set[str] = set()
    for name, data in files.items():
        parts = name.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in made:
                run("mmd", "-i", img, f"::{d}")
                made.add(d)
        src = work / f"src{len(made)}_{abs(hash(name))}"
        src.write_bytes(data)
        run("mcopy", "-i", img, str(src), f"::{name}")


def make_fragmented(path: Path, offset: int, work: Path, cluster_bytes: int) -> bytes:
    """Write 'frag.bin' so that its clusters are not contiguous; returns its content."""
    img = mt(path, offset)
    pieces = [os.urandom(cluster_bytes) for _ in range(4)]
    for i, p in enumerate(pieces):
        (work / f"p{i}").write_bytes(p)
        run("mcopy", "-i", img, str(work / f"p{i}"), f"::gap{i}.bin")
    run("mdel", "-i", img, "::gap1.bin")
    run("mdel", "-i", img, "::gap3.bin")
    with open(path, "r+b") as f:  # FAT32: point the FSInfo next-free hint back to the start
        f.seek(offset)
        boot = f.read(512)
        if boot[22:24] == b"\0\0":
            fsinfo = int.from_bytes(boot[48:50], "little")
            f.seek(offset + fsinfo * 512 + 492)
            f.write((2).to_bytes(4, "little"))
    content = os.urandom(cluster_bytes * 3 + 100)
    (work / "frag").write_bytes(content)
    run("mcopy", "-i", img, str(work / "frag"), "::frag.bin")
    return content


def mtype(path: Path, offset: int, name: str) -> bytes:
    import subprocess
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    return subprocess.run(["mtype", "-i", mt(path, offset), f"::{name}"], check=True,
                          capture_output=True, env=env).stdout


def fsck(path: Path, offset: int = 0, size_bytes: int | None = None,
         work: Path | None = None) -> tuple[int, str]:
    """fsck.fat -n on the volume (copied out of its partition first); (exit code, output)."""
    need_tool("fsck.fat")
    target = path
    if offset:
        target = (work or path.parent) / (path.name + ".part")
        with open(path, "rb") as src, open(target, "wb") as dst:
            src.seek(offset)
            remaining = size_bytes if size_bytes is not None else os.path.getsize(path) - offset
            while remaining > 0:
                block = src.read(min(remaining, 1 << 20))
                if not block:
                    break
                dst.write(block)
                remaining -= len(block)
    res = run("fsck.fat", "-n", str(target), check=False)
    return res.returncode, res.stdout + res.stderr


def fsck_clean(path: Path, offset: int = 0) -> None:
    code, out = fsck(path, offset)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    # a clean run prints the version line and the summary line only
    assert code == 0 and len(lines) == 2, out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
