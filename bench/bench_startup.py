#!/usr/bin/env python3
"""Start-up cost of the `vdisk` command, side by side with its floor.

Measured, best of --repeat runs of a new process each (interpreter start included):

1. `vdisk info hd-boot.vmdk` on the small sample boot disk (the console script's code path:
   only the command group the line needs is imported, no rich unless something is drawn);
2. `python -c "import typer"`, what any typer command costs before it does anything.

Prints both wall times and their ratio (target: vdisk info at most 1.6x import typer), then
the modules `vdisk info` imports that `import typer` does not, largest first (-X importtime).

Usage: python bench/bench_startup.py [--repeat N]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "sample_images", "ipva", "hd-boot.vmdk")
VDISK = [sys.executable, "-c", "import sys; sys.argv[0] = 'vdisk'; "
         "from vdisk_tool.cli.main import main; main()", "info", SAMPLE]
TYPER = [sys.executable, "-c", "import typer"]


def best(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return min(times)


def heaviest(cmd: list[str], floor: list[str], n: int = 12) -> list[tuple[int, str]]:
    def cumulative(c: list[str]) -> dict[str, int]:
        r = subprocess.run([c[0], "-X", "importtime", *c[1:]], capture_output=True, text=True,
                           check=True)
        out = {}
        for line in r.stderr.splitlines():
            if line.startswith("import time:") and "|" in line:
                _self, cum, name = line[len("import time:"):].split("|")
                if cum.strip().isdigit():
                    out[name.strip()] = int(cum)
        return out
    base = cumulative(floor)
    extra = {k: v for k, v in cumulative(cmd).items() if k not in base and "." not in k}
    return sorted(((v, k) for k, v in extra.items()), reverse=True)[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    vdisk = best(VDISK, args.repeat)
    typer = best(TYPER, args.repeat)
    for label, secs in (("vdisk info hd-boot.vmdk", vdisk), ('python -c "import typer"', typer)):
        print(f"{label:<28} {secs * 1000:8.1f} ms")
    print(f"{'ratio':<28} {vdisk / typer:8.2f} x   (target <= 1.6 x)")
    print("top-level packages imported beyond typer (cumulative us):")
    for us, name in heaviest(VDISK, TYPER):
        print(f"  {us:>8}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
