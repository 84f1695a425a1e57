"""Print the table of FAT damage cases: every damage of tests/fatdamage.py on FAT12/16/32,
superfloppy and MBR-partitioned, raw and VMDK; for each, whether vdisk's check and
fsck.fat -n find it, whether `vdisk fs check --repair --yes` and `fsck.fat -a` each leave an
fsck.fat -n-clean volume, and whether vdisk keeps every file fsck.fat keeps.

    .venv/bin/python bench/fat_damage_table.py [--sampled] [--out table.md]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fatdamage import (  # noqa: E402
    TABLE_HEAD,
    CaseResult,
    all_cases,
    build_base,
    run_case,
    sampled_cases,
)
from typer.testing import CliRunner  # noqa: E402

import vdisk_tool.cli.main  # noqa: E402,F401  (registers the commands)
from vdisk_tool.cli.app import app  # noqa: E402


def _cell(results: list[CaseResult]) -> str:
    """vdisk found / fsck.fat found / vdisk clean / fsck.fat clean / files kept, each y, n or
    the number of containers out of those run where it holds."""
    def agg(flags: list[bool]) -> str:
        n = sum(flags)
        return "y" if n == len(flags) else "n" if n == 0 else f"{n}/{len(flags)}"
    return "/".join(agg(f) for f in (
        [r.vdisk_found for r in results], [r.fsck_found for r in results],
        [r.vdisk_clean for r in results], [r.fsck_clean for r in results],
        [not r.missing for r in results]))


def summary(results: list[CaseResult]) -> str:
    """One row per damage, one column per FAT type, the containers folded into each cell."""
    damages = list(dict.fromkeys(r.damage for r in results))
    out = ["| damage (vdisk found/fsck.fat found/vdisk clean/fsck.fat -a clean/kept) | "
           "FAT12 | FAT16 | FAT32 |", "|---|---|---|---|"]
    for d in damages:
        cells = []
        for fat in (12, 16, 32):
            rs = [r for r in results if r.damage == d and r.fat == fat]
            cells.append(_cell(rs) + f" ({len(rs)})" if rs else "n/a")
        out.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sampled", action="store_true", help="only the cases the test runs")
    ap.add_argument("--out", help="also write the table here")
    args = ap.parse_args()
    runner = CliRunner()

    def cli(*a: str) -> tuple[int, str]:
        res = runner.invoke(app, list(a), catch_exceptions=False)
        return res.exit_code, res.stdout

    cases = sampled_cases() if args.sampled else all_cases()
    rows = [TABLE_HEAD]
    results: list[CaseResult] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bases: dict[tuple[int, bool], tuple[Path, int]] = {}
        for n, (damage, fat, container) in enumerate(cases):
            key = (fat, container.endswith("mbr"))
            if key not in bases:
                work = root / f"base{fat}{key[1]}"
                work.mkdir()
                bases[key] = (work / "base.raw", build_base(work / "base.raw", fat, key[1], work))
            work = root / f"case{n}"
            work.mkdir()
            res = run_case(damage, fat, container, bases[key], work, cli)
            rows.append(res.row())
            results.append(res)
            print(res.row(), flush=True)
    text = "\n".join(rows) + "\n\n" + summary(results) + "\n"
    print(f"\n{len(cases)} cases in {time.monotonic() - t0:.1f} s\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
