"""Options with one meaning: --overwrite for every command that writes an output file
(never overwritten without it), --force only for VMware locks, --debug and --quiet/-q
anywhere on the line (and VDISK_DEBUG=1)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk
from typer.main import get_command

from vdisk_tool.cli.app import app, polish

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"

# each writes the output file {o}; {s} is a copy of sample_images
WRITERS = [
    ["create", "{o}", "--size", "1M"],
    ["convert", "{s}/ipva/hd-boot.vmdk", "{o}"],
    ["boot", "create", "{o}", "--firmware", "{s}/ipva/ipva.bin"],
    ["flash", "backup", "{s}/hd-flash-used.vmdk", "-o", "{o}"],
    ["firmware", "pack", "--build", "1", "--version", "x", "--section", "A={s}/README.md",
     "-o", "{o}"],
    ["dump", "extract", "{s}/hd-dump-3-torn.vmdk", "--sequence", "1", "-o", "{o}"],
    ["fs", "get", "{s}/ipva/hd-boot.vmdk", "/IPVA.BIN", "{o}"],
]


@pytest.mark.parametrize("case", WRITERS, ids=lambda c: " ".join(c[:2]))
def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path, runner, case) -> None:
    shutil.copytree(SAMPLES, tmp_path / "s")
    out = tmp_path / "out.vmdk"
    # boot create replaces only a boot disk or a blank one (test_roles.py): give it a blank one
    if case[0] == "boot":
        run(need_tool("qemu-img"), "create", "-q", "-f", "vmdk", str(out), "32M")
    else:
        out.write_bytes(b"keep me")
    keep = out.read_bytes()
    args = [a.format(s=tmp_path / "s", o=out) for a in case]
    r = vdisk(runner, *args)
    assert r.exit_code == 3, r.output
    assert "--overwrite" in r.stderr and out.read_bytes() == keep
    r = vdisk(runner, *args, "--overwrite")
    assert r.exit_code in (0, 1), r.output
    assert out.read_bytes() != keep


def _leaves():
    root = get_command(app)
    polish(root)
    stack, out = [((), root)], []
    while stack:
        path, cmd = stack.pop()
        subs = getattr(cmd, "commands", None)
        if subs:
            stack += [((*path, n), c) for n, c in subs.items()]
        else:
            out.append((path, cmd))
    return out


def test_force_means_a_vmware_lock_and_overwrite_means_an_output_file() -> None:
    for path, cmd in _leaves():
        for p in cmd.params:
            opts = getattr(p, "opts", ())
            if "--force" in opts:
                assert "lock" in (p.help or "").lower() or ".lck" in (p.help or ""), path
            if "--overwrite" in opts:
                assert "output" in (p.help or "").lower() or "existing" in (p.help or ""), path


def test_debug_and_quiet_count_anywhere(tmp_path, runner) -> None:
    r = vdisk(runner, "info", str(tmp_path / "nope.vmdk"), "--debug")
    assert r.exit_code == 3 and "Traceback" in r.stderr
    disk = tmp_path / "d.img"
    assert vdisk(runner, "create", str(disk), "-s", "64M", "-F", "raw").exit_code == 0
    assert vdisk(runner, "dump", "init", str(disk), "--yes").exit_code == 0
    text = tmp_path / "t.txt"
    text.write_text("crash\n")
    loud = vdisk(runner, "dump", "write", str(disk), "--text", str(text), "--time", "0")
    quiet = vdisk(runner, "dump", "write", str(disk), "-q", "--text", str(text), "--time", "0")
    assert loud.exit_code == quiet.exit_code == 0
    assert "write: record 1" in loud.stdout and quiet.stdout == "done\n"


def test_vdisk_debug_environment(tmp_path) -> None:
    env = dict(os.environ, VDISK_DEBUG="1")
    r = subprocess.run([sys.executable, "-m", "vdisk_tool", "info", str(tmp_path / "nope")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 3 and "Traceback" in r.stderr and "vdisk: error:" in r.stderr
