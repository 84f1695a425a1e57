"""Benchmark: format an 8 GiB sparse VMDK and write 200 MiB of files into it with vdisk,
beside mkfs.fat + mcopy doing the same on a raw image. Prints times, file sizes and ratios.

Usage: python bench/bench_fat.py [--size-gib 8] [--data-mib 200] [--files 50]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from vdisk_tool.fs.format import format_volume
from vdisk_tool.fs.volume import open_volume
from vdisk_tool.image.create import create_image
from vdisk_tool.image.edit import edit_image


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=int, default=8)
    ap.add_argument("--data-mib", type=int, default=200)
    ap.add_argument("--files", type=int, default=50)
    args = ap.parse_args()
    size = args.size_gib << 30
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    with tempfile.TemporaryDirectory() as work:
        per = (args.data_mib << 20) // args.files
        srcs = []
        for i in range(args.files):
            p = os.path.join(work, f"file{i:03d}.bin")
            with open(p, "wb") as f:
                f.write(os.urandom(per))
            srcs.append(p)

        vmdk = os.path.join(work, "cf.vmdk")
        create_image(vmdk, size, "monolithicSparse")
        t0 = time.perf_counter()
        with edit_image(vmdk) as disk:
            format_volume(disk, label="IPVACF")
        t_fmt = time.perf_counter() - t0
        size_fmt = allocated(vmdk)
        t0 = time.perf_counter()
        with edit_image(vmdk) as disk:
            vol = open_volume(disk)
            for p in srcs:
                with open(p, "rb") as f:
                    vol.write_file("/" + os.path.basename(p), f)
            vol.flush()
        t_put = time.perf_counter() - t0

        raw = os.path.join(work, "cf.raw")
        with open(raw, "wb") as f:
            f.truncate(size)
        t0 = time.perf_counter()
        subprocess.run(["mkfs.fat", "-F", "32", "-n", "IPVACF", raw], check=True,
                       capture_output=True)
        t_mkfs = time.perf_counter() - t0
        size_mkfs = allocated(raw)
        t0 = time.perf_counter()
        subprocess.run(["mcopy", "-i", raw, *srcs, "::"], check=True, capture_output=True,
                       env=env)
        t_mcopy = time.perf_counter() - t0

        print(f"{'':28}{'vdisk (sparse VMDK)':>22}{'mkfs.fat+mcopy (raw)':>24}{'ratio':>8}")
        print(f"{'format time (s)':28}{t_fmt:>22.3f}{t_mkfs:>24.3f}{t_fmt / t_mkfs:>8.2f}")
        print(f"{'file after format (KiB)':28}{size_fmt // 1024:>22}{size_mkfs // 1024:>24}"
              f"{size_fmt / max(size_mkfs, 1):>8.2f}")
        print(f"{f'write {args.data_mib} MiB (s)':28}{t_put:>22.3f}{t_mcopy:>24.3f}"
              f"{t_put / t_mcopy:>8.2f}")
        print(f"{'file after write (MiB)':28}{allocated(vmdk) / 2**20:>22.1f}"
              f"{allocated(raw) / 2**20:>24.1f}")

        # the same work through the command line (new processes, as a user runs it)
        cli = [sys.executable, "-m", "vdisk_tool"]
        vmdk2 = os.path.join(work, "cf2.vmdk")
        create_image(vmdk2, size, "monolithicSparse")
        t0 = time.perf_counter()
        subprocess.run([*cli, "fs", "format", vmdk2, "--label", "IPVACF", "--yes"], check=True,
                       capture_output=True)
        t_fmt_cli = time.perf_counter() - t0
        srcdir = os.path.join(work, "srcdir")
        os.makedirs(srcdir)
        for p in srcs:
            os.link(p, os.path.join(srcdir, os.path.basename(p)))
        t0 = time.perf_counter()
        subprocess.run([*cli, "fs", "put", vmdk2, srcdir, "/data"], check=True, capture_output=True)
        t_put_cli = time.perf_counter() - t0
        print(f"{'CLI: fs format (s)':28}{t_fmt_cli:>22.3f}{t_mkfs:>24.3f}{t_fmt_cli / t_mkfs:>8.2f}")
        print(f"{f'CLI: fs put {args.data_mib} MiB (s)':28}{t_put_cli:>22.3f}{t_mcopy:>24.3f}"
              f"{t_put_cli / t_mcopy:>8.2f}")


if __name__ == "__main__":
    main()
