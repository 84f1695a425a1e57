#!/usr/bin/env python3
"""qcow2 → raw: `vdisk convert` beside `qemu-img convert -O raw` + fsync, on the same input.

The input is a 1 GiB qcow2 (64 KiB clusters) made by qemu-img from a raw image with half
its clusters holding random data. vdisk fsyncs its output before renaming it into place;
qemu-img does not sync, so its time includes an fsync of its output. Target: a ratio of at
most 1.0. Also reported: the peak RSS of vdisk, and `vdisk check` beside `qemu-img check`.

Usage: python bench/bench_qcow2.py [--workdir DIR] [--repeat N] [--size-mib N]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import vdisk_command

VDISK = vdisk_command()


def timed(cmd: list[str], before=None) -> tuple[float, int]:
    """Wall time of one run (after `before()` cleans up) and the children's peak RSS (KiB)."""
    if before:
        before()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def fsync_file(path: str) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024)
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="vdisk-bench-qcow2-")
    os.makedirs(work, exist_ok=True)
    try:
        raw, src = os.path.join(work, "src.raw"), os.path.join(work, "src.qcow2")
        size = args.size_mib << 20
        with open(raw, "wb") as f:
            f.truncate(size)
            for off in range(0, size, 2 << 16):
                f.seek(off)
                f.write(os.urandom(1 << 16))
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, src], check=True)
        os.unlink(raw)
        out_q, out_v = os.path.join(work, "q.raw"), os.path.join(work, "v.raw")

        def rm(p: str):
            return lambda: os.path.exists(p) and os.unlink(p)

        tq = tv = float("inf")
        peak = 0
        for _ in range(args.repeat):
            t, _ = timed(["qemu-img", "convert", "-O", "raw", src, out_q], rm(out_q))
            tq = min(tq, t + fsync_file(out_q))
            t, peak = timed(VDISK + ["convert", src, out_v], rm(out_v))
            tv = min(tv, t)
        same = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", out_q, out_v],
                              capture_output=True).returncode == 0
        cq = min(timed(["qemu-img", "check", src])[0] for _ in range(args.repeat))
        cv = min(timed(VDISK + ["check", src])[0] for _ in range(args.repeat))
        print(f"qcow2 -> raw, {args.size_mib} MiB, half allocated (64 KiB clusters)")
        print(f"  qemu-img convert + fsync: {tq:.3f} s")
        print(f"  vdisk convert:            {tv:.3f} s  (peak RSS {peak // 1024} MiB)")
        print(f"  ratio vdisk/qemu-img:     {tv / tq:.2f}  (target <= 1.0)  same content: {same}")
        print(f"check: qemu-img {cq:.3f} s, vdisk {cv:.3f} s, ratio {cv / cq:.2f}")
        return 0 if same else 1
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
