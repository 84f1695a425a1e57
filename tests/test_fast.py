"""`vdisk check IMAGE` run without loading the parser (cli/fast.py) prints exactly what the
full command line prints: the same stdout, stderr and exit code, clean or not, as text or
JSON, with -q anywhere; errors and warnings are left to the full command line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need, need_tool, run

PROBE = """
import sys
sys.argv = ["vdisk", *sys.argv[1:]]
from vdisk_tool.cli.main import main
try:
    main()
finally:
    sys.stderr.write("\\nPARSER-LOADED=%s\\n" % ("typer" in sys.modules))
"""


def _vdisk(args: list[str], fast: bool) -> tuple[int, str, str, bool]:
    """(exit code, stdout, stderr without the probe's line, whether typer was loaded)."""
    env = dict(os.environ)
    env.pop("VDISK_NO_FAST", None)
    if not fast:
        env["VDISK_NO_FAST"] = "1"
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                       env=env)
    err, _, probe = r.stderr.rpartition("\nPARSER-LOADED=")
    return r.returncode, r.stdout, err, probe.strip() == "True"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    qemu_img, qemu_io = need_tool("qemu-img"), need_tool("qemu-io")
    d = tmp_path_factory.mktemp("fast")
    clean = d / "clean.vmdk"
    run(qemu_img, "create", "-q", "-f", "vmdk", str(clean), "64M")
    run(qemu_io, "-f", "vmdk", "-c", "write -P 0x5a 1M 192k", str(clean))
    unclean = d / "unclean.vmdk"
    data = bytearray(clean.read_bytes())
    data[72] = 1                                      # uncleanShutdown: a warning, exit 1
    unclean.write_bytes(bytes(data))
    mismatch = d / "mismatch.vmdk"                    # the two grain tables disagree: error
    data = bytearray(clean.read_bytes())
    gd_sector = int.from_bytes(data[56:64], "little")  # gdOffset
    gt = int.from_bytes(data[gd_sector * 512:gd_sector * 512 + 4], "little")
    data[gt * 512 + 16 * 4:gt * 512 + 16 * 4 + 4] = (0x7FFFFFF0).to_bytes(4, "little")
    mismatch.write_bytes(bytes(data))
    qcow2 = d / "clean.qcow2"
    run(qemu_img, "convert", "-O", "qcow2", str(clean), str(qcow2))
    garbage = d / "garbage.vmdk"
    garbage.write_bytes(b"KDMV" + bytes(508))         # a sparse magic and nothing sound
    leftover = d / "left.vmdk"
    leftover.write_bytes(clean.read_bytes())
    (d / ".left.vmdk.vdisk-tmp-4242").write_bytes(b"x")   # what an interrupted run leaves
    return {"clean": clean, "unclean": unclean, "mismatch": mismatch, "qcow2": qcow2,
            "garbage": garbage, "missing": d / "missing.vmdk", "leftover": leftover}


def _same(args: list[str]) -> tuple[int, bool]:
    fast = _vdisk(args, True)
    full = _vdisk(args, False)
    assert fast[:3] == full[:3], (args, fast, full)
    assert full[3], "the full command line loads the parser"
    return fast[0], not fast[3]


@pytest.mark.parametrize("name,code", [("clean", 0), ("unclean", 1), ("mismatch", 1),
                                       ("qcow2", 0), ("leftover", 1)])
@pytest.mark.parametrize("form", [["check", "{}"], ["-q", "check", "{}", "--json"],
                                  ["check", "--json", "{}", "--quiet"]])
def test_fast_check_prints_what_the_full_command_prints(images, name, code, form) -> None:
    args = [a.format(images[name]) for a in form]
    got, fast = _same(args)
    assert got == code
    assert fast, "a check the fast path understands does not load the parser"


@pytest.mark.parametrize("name", ["garbage", "missing"])
def test_errors_are_reported_by_the_full_command_line(images, name) -> None:
    got, fast = _same(["check", str(images[name])])
    assert got == 3 and not fast


@pytest.mark.parametrize("extra", [["--repair", "--dry-run"], ["-f", "vmdk"], ["--debug"],
                                   ["--allow-outside"]])
def test_other_command_lines_go_to_the_parser(images, extra) -> None:
    got, fast = _same(["check", str(images["unclean"]), *extra])
    assert not fast and got == 1


@pytest.mark.parametrize("args", [["check"], ["check", "a", "b"], ["--json", "check", "{}"],
                                  ["check", "--", "{}"], ["info", "{}"]])
def test_what_the_fast_path_does_not_understand_is_left_alone(images, args) -> None:
    _, fast = _same([a.format(images["clean"]) for a in args])
    assert not fast


@pytest.mark.parametrize("redirect", [">/dev/full", ">&-", "| true"])
@pytest.mark.parametrize("name", ["clean", "mismatch"])
def test_an_output_that_fails_ends_as_the_full_command_ends(images, name, redirect) -> None:
    """A full disk (error, exit 3), a closed stdout, a reader that went away (exit 0):
    the same line and exit code either way."""
    if redirect == ">/dev/full":
        need(os.path.exists("/dev/full"), "/dev/full")
    got = []
    for fast in (True, False):
        env = dict(os.environ, VDISK_NO_FAST="" if fast else "1")
        script = (f'"{sys.executable}" -m vdisk_tool check "{images[name]}" {redirect}; '
                  'echo "rc=${PIPESTATUS[0]}" >&2')
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
        got.append(r.stderr)
    assert got[0] == got[1]
    # no stdout at all: nothing is printed and the verdict is the exit code
    want = {">/dev/full": 3, "| true": 0}.get(redirect, 0 if name == "clean" else 1)
    assert got[0].strip().endswith(f"rc={want}"), got
