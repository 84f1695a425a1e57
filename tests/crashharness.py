"""Crash-consistency harness: run a mutating vdisk command, SIGKILL it at many points, and
check that the target is either exactly as before or a complete new result.

Kill points are the command's own file-system mutations (see vdisk_tool._crashpoints):
a first run counts them, then the command is replayed once per chosen point.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TMP_MARKS = (".vdisk-tmp-", ".vdisk-journal")


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every regular file in folder (recursively), leftovers excluded."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not any(m in str(p.relative_to(folder)) for m in TMP_MARKS):
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[str(p.relative_to(folder))] = h.hexdigest()
    return out


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if any(m in p.name for m in TMP_MARKS)]


def run_vdisk(args: list[str], cwd: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_extra)
    env.pop("VDISK_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "vdisk_tool", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def spread(total: int, want: int) -> list[int]:
    """`want` kill points spread over 1..total (all of them when there are fewer)."""
    if total <= want:
        return list(range(1, total + 1))
    step = (total - 1) / (want - 1)
    return sorted({1 + round(i * step) for i in range(want)})


@dataclass
class CrashResult:
    total_points: int
    tried: int
    old_kept: int
    new_complete: int
    corrupt: list[str]


def crash_test(make: Callable[[Path], None], args: list[str], is_complete: Callable[[Path], bool],
               work: Path, points: int = 20, recover: list[str] | None = None,
               env: dict[str, str] | None = None) -> CrashResult:
    """`make(folder)` builds the pristine input; `args` run inside that folder;
    `is_complete(folder)` says whether a folder holds a complete, valid new result.
    `recover` is the command a user runs next (e.g. `check --repair`), which must undo what
    an interrupted run left half done. `env` is added to the environment of the runs."""
    template = work / "template"
    template.mkdir()
    make(template)
    before = snapshot(template)
    count_file = work / "count"
    probe = work / "probe"
    shutil.copytree(template, probe)
    r = run_vdisk(args, probe, dict(env or {}, VDISK_CRASH_COUNT=str(count_file)))
    assert r.returncode in (0, 1), f"uninterrupted run failed: {r.stderr}"
    assert is_complete(probe), "uninterrupted run did not produce a complete result"
    total = int(count_file.read_text())
    result = CrashResult(total, 0, 0, 0, [])
    for k in spread(total, points):
        run_dir = work / f"kill{k}"
        shutil.copytree(template, run_dir)
        r = run_vdisk(args, run_dir, dict(env or {}, VDISK_CRASH_AT=str(k)))
        result.tried += 1
        if recover and r.returncode < 0:
            run_vdisk(recover, run_dir, {})
        after = snapshot(run_dir)
        if after == before:
            result.old_kept += 1
        elif is_complete(run_dir):
            result.new_complete += 1
        else:
            result.corrupt.append(f"kill point {k}/{total} (exit {r.returncode}): neither old nor new")
        # the next run must find what the interrupted one left and remove it
        for p in leftovers(run_dir):
            assert ".vdisk-tmp-" in p.name or ".vdisk-journal" in p.name
        shutil.rmtree(run_dir)
    return result
