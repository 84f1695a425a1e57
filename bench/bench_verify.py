#!/usr/bin/env python3
"""Benchmark of `vdisk verify` on a 64 MiB ipva.bin inside a sparse boot VMDK.

The boot disk is made without vdisk: sfdisk + mkfs.fat + mcopy on a raw file, converted to
monolithicSparse by qemu-img. Measured, best of --repeat runs:

1. `vdisk verify hd-boot.vmdk` wall time (a new process: interpreter start and imports
   included). Target: under 0.5 s.
2. the same verify in-process (what the library costs), and its CRC phase alone
   (check_firmware over the file's cluster chain). Target: CRC phase at 1 GB/s or more.
3. peers on the same bytes: `qemu-img convert` of the disk to raw (the cheapest way another
   tool reads the whole disk), `cksum` (GNU, a CRC over the extracted 64 MiB file), and
   crcmod's crc-32 (the tests' oracle). Ratios are printed against vdisk.

Usage: python bench/bench_verify.py [--workdir DIR] [--repeat N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20
VDISK = [sys.executable, "-m", "vdisk_tool.cli"]
ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=True, capture_output=True, env=ENV, **kw)


def make_inputs(work: str) -> tuple[str, str]:
    """A 64 MiB firmware (random sections) and a 96 MiB sparse boot VMDK holding it."""
    from vdisk_tool.ipva.firmware import SectionInput, write_firmware
    parts = []
    for name, size in (("LOADER", 1 * MiB), ("KERNEL", 40 * MiB), ("PBX", 20 * MiB),
                       ("WEBUI", 3 * MiB - 4096)):
        p = os.path.join(work, name.lower())
        with open(p, "wb") as f:
            f.write(os.urandom(size))
        parts.append(SectionInput(name, p))
    fw = os.path.join(work, "ipva.bin")
    with open(fw, "wb") as f:
        write_firmware(f, parts, build=90468, version="9.00 hotfix4", timestamp=1700000000)
    for p in parts:
        os.unlink(p.path)
    raw = os.path.join(work, "boot.raw")
    with open(raw, "wb") as f:
        f.truncate(96 * MiB)
    sh("sfdisk", "-q", raw, input=b"start=2048, type=e, bootable\n")
    sh("mkfs.fat", "-F", "16", "-n", "IPVABOOT", "--offset", "2048", raw)
    sh("mcopy", "-i", f"{raw}@@{MiB}", fw, "::IPVA.BIN")
    disk = os.path.join(work, "hd-boot.vmdk")
    sh("qemu-img", "convert", "-O", "vmdk", "-o", "subformat=monolithicSparse", raw, disk)
    os.unlink(raw)
    return fw, disk


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    for tool in ("qemu-img", "sfdisk", "mkfs.fat", "mcopy", "cksum"):
        if shutil.which(tool) is None:
            print(f"bench_verify: {tool} is not installed", file=sys.stderr)
            return 2
    work = args.workdir or tempfile.mkdtemp(prefix="vdisk-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        from vdisk_tool.image.base import SliceDevice
        from vdisk_tool.image.disk import open_image
        from vdisk_tool.ipva import boot
        from vdisk_tool.ipva.firmware import check_firmware

        fw, disk = make_inputs(work)
        fw_bytes = os.path.getsize(fw)
        print(f"input: {disk} ({os.path.getsize(disk) // MiB} MiB on disk), "
              f"IPVA.BIN {fw_bytes} bytes")

        cli = best(lambda: sh(*VDISK, "verify", disk), args.repeat)
        lib = best(lambda: boot.verify_target(disk), args.repeat)

        def crc_phase() -> None:
            with open_image(disk) as d:
                volinfo, file, _ = boot.inspect_boot_volume(d)
                vol = SliceDevice(d, volinfo.start_bytes, volinfo.layout.volume_bytes)
                src = boot.ChainSource(vol, volinfo.layout, file.clusters, fw_bytes)
                t0 = time.perf_counter()
                assert check_firmware(src).ok
                crc_phase.seconds = time.perf_counter() - t0  # type: ignore[attr-defined]

        crc_times = []
        for _ in range(args.repeat):
            crc_phase()
            crc_times.append(crc_phase.seconds)  # type: ignore[attr-defined]
        crc = min(crc_times)
        rate = fw_bytes / crc / 1e9

        out_raw = os.path.join(work, "peer.raw")
        qemu = best(lambda: sh("qemu-img", "convert", "-O", "raw", disk, out_raw), args.repeat)
        os.unlink(out_raw)
        cks = best(lambda: sh("cksum", fw), args.repeat)
        import crcmod.predefined
        oracle = crcmod.predefined.mkCrcFun("crc-32")
        with open(fw, "rb") as f:
            data = f.read()
        cm = best(lambda: oracle(data), 1)

        print(f"vdisk verify (new process) : {cli:7.3f} s   target < 0.5 s   "
              f"{'PASS' if cli < 0.5 else 'MISS'}")
        print(f"verify in-process          : {lib:7.3f} s")
        print(f"CRC phase                  : {crc:7.3f} s = {rate:5.2f} GB/s   target >= 1 GB/s   "
              f"{'PASS' if rate >= 1 else 'MISS'}")
        print(f"peer qemu-img convert->raw : {qemu:7.3f} s   (vdisk verify in-process is "
              f"{qemu / lib:4.1f}x faster)")
        print(f"peer cksum ipva.bin        : {cks:7.3f} s   (ratio CRC phase / cksum "
              f"{crc / cks:4.2f})")
        print(f"oracle crcmod crc-32       : {cm:7.3f} s   (zlib CRC phase {cm / crc:4.1f}x faster)")
        return 0
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
