"""A 4 KiB `vdisk fs put` into a CF VMDK holding much data, side by side with `vdisk fs ls`
of the same image and `mcopy` on the raw image (not a test: prints figures).

    python bench/bench_put.py [--held 300M,2G] [--runs 5] [--keep DIR]

For each amount held: a raw disk (1 GiB, or twice the amount held when that is more) with
one FAT32 partition (sfdisk, mkfs.fat) holding one file of that size (mcopy), converted to
a monolithicSparse VMDK by qemu-img. Then, best of --runs: wall time of `vdisk fs put`
(a new 4 KiB file each run), of `vdisk fs ls /`, of `mcopy` of the same note into the raw
image; the undo journal's size and the bytes the image file newly allocated for one put.
Targets (specs/journal.md): put <= ls + 0.1 s whatever the data held; newly allocated
<= 1 MiB plus the change.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
LBA = 2048
PROBE = r"""
import json, sys
from vdisk_tool.image import journal
seen = []
real = journal.UndoJournal.commit
def commit(self):
    self.flush()
    seen.append(self.journal_bytes)
    real(self)
journal.UndoJournal.commit = commit
from vdisk_tool.cli.main import main
sys.argv = ["vdisk"] + sys.argv[1:]
try:
    main()
finally:
    sys.stderr.write("JOURNAL " + json.dumps(seen) + "\n")
"""


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": MIB, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    return subprocess.run(list(args), check=True, capture_output=True, env=env, **kw)


def _wall(*args: str) -> float:
    t = time.perf_counter()
    _run(*args)
    return time.perf_counter() - t


def build(folder: str, held: int) -> tuple[str, str]:
    disk = max(1 << 30, 2 * held)
    raw = os.path.join(folder, "cf.raw")
    with open(raw, "wb") as f:
        f.truncate(disk)
    _run("sfdisk", "-q", raw, input=f"start={LBA}, type=c\n".encode())
    _run("mkfs.fat", "-F", "32", "-n", "IPVACF", "--offset", str(LBA), raw)
    data = os.path.join(folder, "held.bin")
    with open(data, "wb") as f:
        left = held
        while left:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n
    _run("mcopy", "-i", f"{raw}@@{LBA * 512}", data, "::/HELD.BIN")
    os.unlink(data)
    vmdk = os.path.join(folder, "hd-cf.vmdk")
    _run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse", raw, vmdk)
    return raw, vmdk


def bench(held: int, runs: int, keep: str | None) -> dict:
    folder = tempfile.mkdtemp(prefix="bench-put-", dir=keep)
    try:
        raw, vmdk = build(folder, held)
        note = os.path.join(folder, "note.txt")
        with open(note, "wb") as f:
            f.write(os.urandom(4096))
        vd = [sys.executable, "-m", "vdisk_tool"]
        blocks = os.stat(vmdk).st_blocks * 512
        r = _run(sys.executable, "-c", PROBE, "fs", "put", vmdk, note, "/FIRST.TXT")
        journal = json.loads(r.stderr.decode().split("JOURNAL ", 1)[1])
        grown = os.stat(vmdk).st_blocks * 512 - blocks
        put = min(_wall(*vd, "fs", "put", vmdk, note, f"/NOTE{i}.TXT") for i in range(runs))
        ls = min(_wall(*vd, "fs", "ls", vmdk, "/") for _ in range(runs))
        mc = min(_wall("mcopy", "-o", "-i", f"{raw}@@{LBA * 512}", note, f"::/NOTE{i}.TXT")
                 for i in range(runs))
        return {"held_bytes": held, "disk_bytes": os.path.getsize(raw), "put_s": put, "ls_s": ls,
                "mcopy_raw_s": mc, "journal_bytes": journal[0] if journal else 0,
                "newly_allocated_bytes": grown}
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--held", default="300M,2G", help="amounts of data the CF holds")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", default=None, help="build the images under this folder")
    args = ap.parse_args()
    print(f"{'held':>8} {'disk':>6} {'fs put':>8} {'fs ls':>8} {'put-ls':>8} {'mcopy':>8} "
          f"{'journal':>9} {'allocated':>10}  targets")
    for text in args.held.split(","):
        r = bench(_size(text), args.runs, args.keep)
        ok_time = r["put_s"] <= r["ls_s"] + 0.1
        ok_space = r["newly_allocated_bytes"] <= MIB + 4096
        print(f"{text:>8} {r['disk_bytes'] >> 30:>4}G {r['put_s']:>7.3f}s {r['ls_s']:>7.3f}s "
              f"{r['put_s'] - r['ls_s']:>+7.3f}s {r['mcopy_raw_s']:>7.3f}s "
              f"{r['journal_bytes']:>9} {r['newly_allocated_bytes']:>10}  "
              f"time {'ok' if ok_time else 'MISSED'}, space {'ok' if ok_space else 'MISSED'}")


if __name__ == "__main__":
    main()
