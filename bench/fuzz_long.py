"""The long fuzz run (issue #8): tests/test_fuzz.py's harness with many more examples and a
random seed each time.

    python bench/fuzz_long.py [--examples 2000] [--cli-examples 100] [--only sparse,fat16]
                              [--seed N] [--json]

Prints the inputs per parser, the failures (tracebacks, internal errors, hangs, bad exit
codes, writes to the input) with the damage recipe that caused each, and the peak RSS of the
CLI children (each run with a 1 GiB address-space limit). Exit 1 when anything failed.
Needs qemu-img, qemu-io, sfdisk, mkfs.fat and mtools, like the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import fuzzstrategies as fz  # noqa: E402
import test_fuzz as tf  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import seed as hseed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def fuzz_seed(seed: fz.Seed, work: Path, lib_n: int, cli_n: int, rnd: int,
              failures: list[str]) -> None:
    base = settings(deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))

    @settings(base, max_examples=lib_n)
    @given(dmg=fz.damage(seed, max_ops=5))
    def lib(dmg: fz.Damage) -> None:
        path = fz.apply(seed, dmg, work / "lib")
        out = tf.run_library(seed, path)
        if not out.ok:
            failures.append(f"[library {seed.kind}] {dmg}\n{out.detail}")

    @settings(base, max_examples=max(1, cli_n))
    @given(dmg=fz.damage(seed, max_ops=5), which=st.integers(0, 9))
    def cli(dmg: fz.Damage, which: int) -> None:
        for problem in tf.check_cli(seed, dmg, which, work):
            failures.append(f"[cli] {dmg}\n{problem}")

    for fn in (lib, cli):
        if fn is cli and cli_n == 0:
            continue
        hseed(rnd)(fn)()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=2000, help="library inputs per seed")
    ap.add_argument("--cli-examples", type=int, default=100, help="CLI runs per seed")
    ap.add_argument("--only", default="", help="comma-separated seed names")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args()
    rnd = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    os.environ["MTOOLS_SKIP_CHECK"] = "1"
    failures: list[str] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vdisk-fuzz-") as tmp:
        seeds = fz.build_seeds(Path(tmp) / "seeds")
        names = [n for n in args.only.split(",") if n] or list(seeds)
        for name in names:
            work = Path(tmp) / "work" / name
            work.mkdir(parents=True)
            before = len(failures)
            t = time.monotonic()
            fuzz_seed(seeds[name], work, args.examples, args.cli_examples, rnd, failures)
            print(f"{name:<14} {time.monotonic() - t:7.1f} s  failures {len(failures) - before}"
                  f"  peak RSS {tf.STATS['peak_rss_bytes'] >> 20} MiB", file=sys.stderr)
            for f in failures[before:before + 3]:
                print(f, file=sys.stderr)
    summary = {"random_seed": rnd, "seconds": round(time.monotonic() - t0, 1),
               "inputs": dict(sorted(tf.COUNTS.items())), "failures": len(failures),
               "tracebacks": tf.STATS["tracebacks"], "cli_runs": tf.STATS["cli_runs"],
               "peak_rss_mib": round(tf.STATS["peak_rss_bytes"] / (1 << 20), 1)}
    for f in failures[:20]:
        print("-" * 78 + "\n" + f)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"random seed {rnd}, {summary['seconds']} s")
        for key, n in summary["inputs"].items():
            print(f"  {key:<22} {n:>7} inputs")
        print(f"failures {len(failures)}, tracebacks {summary['tracebacks']}, "
              f"CLI runs {summary['cli_runs']}, peak RSS of a CLI run {summary['peak_rss_mib']} MiB")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
