#!/usr/bin/env python3
"""Benchmarks of growing disks, beside the peer tools on the same work.

1. `vdisk grow` of a monolithicSparse from 1 GiB to 1 TiB: wall time and output size.
   Target: under 1 s, metadata only (qemu-img cannot resize a VMDK at all).
2. `vdisk cf grow` of a 1 GiB CF holding 200 MiB of files to 8 GiB, beside the same work
   done by hand on raw images: mcopy the files out, mkfs.fat a new 8 GiB partition, mcopy
   them back in (the wiki procedure with mtools and dosfstools).

Usage: python bench/bench_grow.py [--workdir DIR]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20
VDISK = [sys.executable, "-m", "vdisk_tool"]
ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")


def sh(*cmd: str, **kw) -> None:
    subprocess.run(list(cmd), check=True, stdout=subprocess.DEVNULL, env=ENV, **kw)


def timed(*cmd: str, **kw) -> float:
    t0 = time.perf_counter()
    sh(*cmd, **kw)
    return time.perf_counter() - t0


def make_files(root: str, total: int) -> None:
    rng = random.Random(1)
    done, i = 0, 0
    while done < total:
        folder = os.path.join(root, f"folder {i % 10}", f"sub {i % 3}")
        os.makedirs(folder, exist_ok=True)
        n = min(rng.randrange(64 * 1024, 2 * MiB), total - done)
        with open(os.path.join(folder, f"Long file name {i:04d}.bin"), "wb") as f:
            f.write(rng.randbytes(n))
        done += n
        i += 1


def partitioned_raw(path: str, size: int, fat: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", "-q", path], input=f"start=2048, type={'0c' if fat == 32 else '0e'}\n",
                   text=True, check=True, stdout=subprocess.DEVNULL)
    sh("mkfs.fat", "-F", str(fat), "-n", "IPVACF", "--offset", "2048", path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir")
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="vdisk-bench-grow-")
    os.makedirs(work, exist_ok=True)
    try:
        disk = os.path.join(work, "g.vmdk")
        sh(*VDISK, "create", disk, "--size", "1G")
        sh("qemu-io", "-f", "vmdk", "-c", "write -P 7 0 16M", disk)
        t = timed(*VDISK, "grow", disk, "--size", "1T")
        used = os.stat(disk).st_blocks * 512
        print(f"grow monolithicSparse 1 GiB -> 1 TiB: {t:.2f}s (target < 1 s), file "
              f"{os.path.getsize(disk) / MiB:.1f} MiB apparent, {used / MiB:.1f} MiB stored")

        files = os.path.join(work, "files")
        make_files(files, 200 * MiB)
        tops = [os.path.join(files, n) for n in sorted(os.listdir(files))]
        raw = os.path.join(work, "cf.raw")
        partitioned_raw(raw, 1 << 30, 32)
        sh("mcopy", "-s", "-m", "-i", f"{raw}@@1M", *tops, "::/")
        cf = os.path.join(work, "hd-cf.vmdk")
        sh("qemu-img", "convert", "-O", "vmdk", raw, cf)

        t_vdisk = timed(*VDISK, "cf", "grow", cf, "--size", "8G", "--yes")

        out = os.path.join(work, "out")
        t0 = time.perf_counter()
        os.makedirs(out)
        sh("mcopy", "-s", "-m", "-n", "-i", f"{raw}@@1M", "::/*", out)
        big = os.path.join(work, "cf8.raw")
        partitioned_raw(big, 8 << 30, 32)
        back = [os.path.join(out, n) for n in sorted(os.listdir(out))]
        sh("mcopy", "-s", "-m", "-i", f"{big}@@1M", *back, "::/")
        t_tools = time.perf_counter() - t0
        print(f"cf grow 1 GiB -> 8 GiB with 200 MiB of files: vdisk {t_vdisk:.2f}s "
              f"(checks the volume, copies, compares every file, fsyncs), "
              f"mcopy out + mkfs.fat + mcopy in {t_tools:.2f}s, ratio {t_vdisk / t_tools:.2f}; "
              f"VMDK stores {os.stat(cf).st_blocks * 512 / MiB:.0f} MiB, raw image "
              f"{os.stat(big).st_blocks * 512 / MiB:.0f} MiB")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
