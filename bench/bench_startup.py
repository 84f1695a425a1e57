#!/usr/bin/env python3
"""Start-up cost of the `vdisk` command, side by side with its floor.

Measured in --repeat rounds that run the two commands alternately, a new process each
(interpreter start included), so that load on the machine hits both alike; the median
of each is reported (and the best). Byte code is cached as an installed package has it:
the children write it to a temporary PYTHONPYCACHEPREFIX, after one warm-up run each.

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
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "sample_images", "ipva", "hd-boot.vmdk")
VDISK = [sys.executable, "-c", "import sys; sys.argv[0] = 'vdisk'; "
         "from vdisk_tool.cli.main import main; main()", "info", SAMPLE]
TYPER = [sys.executable, "-c", "import typer"]


def _env(cache: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    return env


def alternate(cmds: list[list[str]], repeat: int, env: dict[str, str]) -> list[list[float]]:
    """Wall times of each command, run in turn `repeat` times (after one warm-up each)."""
    times: list[list[float]] = [[] for _ in cmds]
    for rnd in range(repeat + 1):
        for i, cmd in enumerate(cmds):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
            if rnd:
                times[i].append(time.perf_counter() - t)
    return times


def heaviest(cmd: list[str], floor: list[str], env: dict[str, str],
             n: int = 12) -> list[tuple[int, str]]:
    def cumulative(c: list[str]) -> dict[str, int]:
        r = subprocess.run([c[0], "-X", "importtime", *c[1:]], capture_output=True, text=True,
                           check=True, env=env)
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
    ap.add_argument("--repeat", type=int, default=21)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vdisk-bench-pyc-") as cache:
        env = _env(cache)
        vdisk, typer = alternate([VDISK, TYPER], args.repeat, env)
        print(f"{'':<28} {'median':>9} {'best':>9}   ({args.repeat} alternating runs each)")
        for label, secs in (("vdisk info hd-boot.vmdk", vdisk), ('python -c "import typer"', typer)):
            print(f"{label:<28} {statistics.median(secs) * 1000:6.1f} ms {min(secs) * 1000:6.1f} ms")
        ratio = statistics.median(vdisk) / statistics.median(typer)
        print(f"{'ratio of the medians':<28} {ratio:6.2f} x   (target <= 1.6 x)")
        print("top-level packages imported beyond typer (cumulative us):")
        for us, name in heaviest(VDISK, TYPER, env):
            print(f"  {us:>8}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
