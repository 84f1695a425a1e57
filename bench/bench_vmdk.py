#!/usr/bin/env python3
"""Benchmarks of the VMDK engine beside qemu-img, on the same input, in one run.

1. convert: a 1 GiB monolithicSparse with half its grains allocated (random data), made by
   qemu-img from a raw image, converted to raw by `vdisk convert` and by
   `qemu-img convert -O raw`. Target: vdisk at most 1.25x qemu-img's wall time, peak RSS
   under 100 MB.
2. check: `vdisk check` against `qemu-img check` on a 64 GiB-capacity sparse disk with data
   spread over it. Target: at most 2x qemu-img's time (vdisk checks far more).

Usage: python bench/bench_vmdk.py [--workdir DIR] [--repeat N]
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

VDISK = [sys.executable, "-m", "vdisk_tool.cli"]


def timed(cmd: list[str], repeat: int) -> tuple[float, int]:
    """Best wall time over `repeat` runs and the peak RSS (KiB) of the children."""
    best = float("inf")
    peak = 0
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
    return best, peak


def make_half_allocated(raw: str, size: int, grain: int = 65536) -> None:
    with open(raw, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 2 * grain):
            f.seek(off)
            f.write(os.urandom(grain))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="vdisk-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        raw = os.path.join(work, "src.raw")
        src = os.path.join(work, "src.vmdk")
        make_half_allocated(raw, 1 << 30)
        subprocess.run(["qemu-img", "convert", "-O", "vmdk", raw, src], check=True)
        os.unlink(raw)
        out_q, out_v = os.path.join(work, "q.raw"), os.path.join(work, "v.raw")

        def fresh_q() -> list[str]:
            return ["qemu-img", "convert", "-O", "raw", src, out_q]

        tq, rq = timed(fresh_q(), args.repeat)
        for p in (out_v,):
            if os.path.exists(p):
                os.unlink(p)
        best_v, peak_v = float("inf"), 0
        for _ in range(args.repeat):
            if os.path.exists(out_v):
                os.unlink(out_v)
            t, peak_v = timed(VDISK + ["convert", src, out_v], 1)
            best_v = min(best_v, t)
        same = subprocess.run(["qemu-img", "compare", out_q, out_v], capture_output=True).returncode == 0
        t_start, _ = timed([sys.executable, "-c", "from vdisk_tool.cli import _select; "
                            "_select.ONLY = ('vmdk',); import vdisk_tool.cli.app"], args.repeat)
        # the same durability for qemu-img's output: convert, then fsync it (vdisk fsyncs its
        # output before renaming it into place; qemu-img does not sync at all)
        best_qs = float("inf")
        for _ in range(args.repeat):
            os.unlink(out_q)
            t0 = time.perf_counter()
            subprocess.run(fresh_q(), check=True, stdout=subprocess.DEVNULL)
            fd = os.open(out_q, os.O_RDWR)
            os.fsync(fd)
            os.close(fd)
            best_qs = min(best_qs, time.perf_counter() - t0)
        print(f"convert 1 GiB half-allocated sparse -> raw: qemu-img {tq:.2f}s, vdisk {best_v:.2f}s, "
              f"ratio {best_v / tq:.2f} (target <= 1.25); vdisk peak RSS {peak_v / 1024:.0f} MB "
              f"(target < 100); outputs identical: {same}")
        print(f"  with the same durability (qemu-img, then fsync of its output): {best_qs:.2f}s, "
              f"ratio {best_v / best_qs:.2f}; vdisk's interpreter and import start-up {t_start:.2f}s")

        big = os.path.join(work, "big.vmdk")
        subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", big, "64G"], check=True)
        cmds = [f"write -P {i % 250 + 1} {i * 1024 + 7}M 256k" for i in range(0, 64)]
        subprocess.run(["qemu-io", "-f", "vmdk"] + sum((["-c", c] for c in cmds), []) + [big],
                       check=True, stdout=subprocess.DEVNULL)
        tq, _ = timed(["qemu-img", "check", big], args.repeat)
        tv, _ = timed(VDISK + ["check", big], args.repeat)
        print(f"check 64 GiB-capacity sparse: qemu-img {tq:.2f}s, vdisk {tv:.2f}s, "
              f"ratio {tv / tq:.2f} (target <= 2)")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
