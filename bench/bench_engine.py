#!/usr/bin/env python3
"""The stream and copy engine beside qemu-img, on the same inputs, in one run.

Each case runs qemu-img and vdisk alternately `--repeat` times and prints the medians of
wall and CPU time (user + system of the child), the ratio vdisk / qemu-img and vdisk's
peak RSS. The machine's load changes while the bench runs: alternating runs and medians
keep the ratio fair, not the absolute numbers.

1. raw -> streamOptimized, 128 MiB (half text, half random), zlib level 6 on both sides.
   Targets: wall <= 0.60x qemu-img on 2 cores, output at most 1 % larger.
2. sparse -> raw, 512 MiB virtual with 256 MiB of data: qemu-img convert followed by an
   fsync of its output (vdisk fsyncs its output before renaming it into place).
   Targets: wall <= 1.0x, CPU <= qemu-img's.
3. stream -> raw, the stream of case 1 (made by qemu-img). Target: wall <= 0.7x.
4. a 16 GiB-capacity stream: convert to raw, compare, check. Target: peak RSS < 100 MB.
5. check of a 64 GiB-capacity sparse disk. Target: at most qemu-img check's time.

Usage: python bench/bench_engine.py [--workdir DIR] [--repeat N] [--only 1,2,...]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from benchlib import vdisk_command

VDISK = vdisk_command("-q")
MiB = 1 << 20


@dataclass
class Sample:
    wall: float
    cpu: float
    rss_mb: float


def measure(cmd: list[str], after=None) -> Sample:
    """One run of `cmd` (then `after()`, counted in the wall time)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, use = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err}")
    if after:
        after()
    return Sample(time.perf_counter() - t0, use.ru_utime + use.ru_stime, use.ru_maxrss / 1024)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def compare(name: str, qemu, vdisk, repeat: int, target: str) -> tuple[Sample, Sample]:
    """Alternate qemu() and vdisk() (each returns a Sample); print and return the medians."""
    qs, vs_ = [], []
    for _ in range(repeat):
        qs.append(qemu())
        vs_.append(vdisk())
    q = Sample(*(statistics.median(getattr(s, f) for s in qs) for f in ("wall", "cpu", "rss_mb")))
    v = Sample(*(statistics.median(getattr(s, f) for s in vs_) for f in ("wall", "cpu", "rss_mb")))
    peak = max(s.rss_mb for s in vs_)
    print(f"{name}: qemu-img {q.wall:.2f}s (cpu {q.cpu:.2f}s), vdisk {v.wall:.2f}s "
          f"(cpu {v.cpu:.2f}s); wall ratio {v.wall / q.wall:.2f}, cpu ratio {v.cpu / q.cpu:.2f} "
          f"({target}); vdisk peak RSS {peak:.0f} MB (target < 100)")
    return q, v


def fresh(path: str) -> str:
    if os.path.exists(path):
        os.unlink(path)
    return path


def in_child(fn_name: str, *args: object) -> None:
    """Run a maker of this module in a child process: the bench process stays small, and
    a child's peak RSS (which starts from its parent's at fork) stays its own."""
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import bench_engine as b; b.{fn_name}(*{args!r})")
    subprocess.run([sys.executable, "-c", code], check=True)


def make_text_random(path: str, total: int) -> None:
    rng = random.Random(16)
    words = [bytes(rng.choice(b"etaoinshrdlucmfwyp ") for _ in range(rng.randint(2, 10)))
             for _ in range(5000)]
    text = bytearray()
    while len(text) < total // 2:
        text += rng.choice(words) + b" "
    with open(path, "wb") as f:
        f.write(text[:total // 2])
        f.write(os.urandom(total - total // 2))


def make_half_allocated(path: str, size: int, grain: int = 1 * MiB) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 2 * grain):
            f.seek(off)
            f.write(os.urandom(grain))


def make_spread(path: str, capacity: str, writes: list[str]) -> None:
    """A monolithicSparse disk made by qemu-img, with qemu-io's writes in it."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", path, capacity], check=True)
    subprocess.run(["qemu-io", "-f", "vmdk"] + sum((["-c", c] for c in writes), []) + [path],
                   check=True, stdout=subprocess.DEVNULL)


def qemu_same(a: str, b: str) -> bool:
    return subprocess.run(["qemu-img", "compare", a, b], capture_output=True).returncode == 0


def case_stream_write(work: str, repeat: int) -> None:
    raw = os.path.join(work, "tr.raw")
    in_child("make_text_random", raw, 128 * MiB)
    q_out, v_out = os.path.join(work, "q.vmdk"), os.path.join(work, "v.vmdk")
    compare("1. raw -> streamOptimized 128 MiB, level 6",
            lambda: measure(["qemu-img", "convert", "-O", "vmdk", "-o",
                             "subformat=streamOptimized", raw, fresh(q_out)]),
            lambda: measure(VDISK + ["convert", raw, fresh(v_out), "-F", "streamOptimized",
                                     "--compression-level", "6"]),
            repeat, "target wall <= 0.60")
    qs, vs_ = os.path.getsize(q_out), os.path.getsize(v_out)
    print(f"   output: qemu-img {qs} bytes, vdisk {vs_} bytes ({100 * (vs_ / qs - 1):+.2f} %, "
          f"target <= +1 %); same content: {qemu_same(q_out, v_out)}")


def case_sparse_to_raw(work: str, repeat: int) -> None:
    raw = os.path.join(work, "half.raw")
    src = os.path.join(work, "half.vmdk")
    in_child("make_half_allocated", raw, 512 * MiB)
    subprocess.run(["qemu-img", "convert", "-O", "vmdk", raw, src], check=True)
    os.unlink(raw)
    to_raw(work, src, repeat, [("2. sparse -> raw, 512 MiB virtual, 256 MiB data "
                                "(qemu-img + fsync)", True, "targets wall <= 1.0, cpu <= 1.0")])


def to_raw(work: str, src: str, repeat: int, variants: list[tuple[str, bool, str]]) -> None:
    """qemu-img convert -O raw (then an fsync of its output where asked) against vdisk."""
    q_out, v_out = os.path.join(work, "q.raw"), os.path.join(work, "v.raw")
    for name, sync, target in variants:
        compare(name,
                lambda sync=sync: measure(["qemu-img", "convert", "-O", "raw", src, fresh(q_out)],
                                          (lambda: fsync_file(q_out)) if sync else None),
                lambda: measure(VDISK + ["convert", src, fresh(v_out)]), repeat, target)
    print(f"   same content: {qemu_same(q_out, v_out)}")
    fresh(q_out), fresh(v_out)


def case_stream_to_raw(work: str, repeat: int) -> None:
    stream = os.path.join(work, "q.vmdk")
    if not os.path.exists(stream):
        raw = os.path.join(work, "tr.raw")
        in_child("make_text_random", raw, 128 * MiB)
        subprocess.run(["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
                        raw, stream], check=True)
    to_raw(work, stream, repeat, [("3. streamOptimized -> raw, 128 MiB", False,
                                   "target wall <= 0.7"),
                                  ("   the same with an fsync of qemu-img's output", True, "")])


def case_big_stream(work: str, repeat: int) -> None:
    src = os.path.join(work, "big16.vmdk")
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized",
                    src, "16G"], check=True)
    spread = os.path.join(work, "spread.vmdk")
    make_spread(spread, "16G", [f"write -P {i % 250 + 1} {i * 256 + 3}M 1M" for i in range(64)])
    subprocess.run(["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
                    spread, fresh(src)], check=True)
    out = os.path.join(work, "big16.raw")
    for what, q, v in (
            ("convert to raw", ["qemu-img", "convert", "-O", "raw", src, out],
             VDISK + ["convert", src, out]),
            ("compare", ["qemu-img", "compare", src, spread], VDISK + ["compare", src, spread]),
            ("check", ["qemu-img", "check", src], VDISK + ["check", src])):
        compare(f"4. 16 GiB-capacity stream (64 MiB of data): {what}",
                lambda q=q: (fresh(out), measure(q))[1],
                lambda v=v: (fresh(out), measure(v))[1],
                repeat, "")
    fresh(out)


def case_check(work: str, repeat: int) -> None:
    big = os.path.join(work, "big64.vmdk")
    make_spread(big, "64G", [f"write -P {i % 250 + 1} {i * 1024 + 7}M 256k" for i in range(64)])
    compare("5. check of a 64 GiB-capacity sparse disk",
            lambda: measure(["qemu-img", "check", big]),
            lambda: measure(VDISK + ["check", big]), repeat, "target wall <= 1.0")


CASES = {"1": case_stream_write, "2": case_sparse_to_raw, "3": case_stream_to_raw,
         "4": case_big_stream, "5": case_check}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", default=",".join(CASES))
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="vdisk-bench-")
    os.makedirs(work, exist_ok=True)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; medians of "
          f"{args.repeat} alternating runs")
    try:
        for key in args.only.split(","):
            CASES[key.strip()](work, args.repeat)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
