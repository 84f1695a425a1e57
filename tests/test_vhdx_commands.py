"""Every appliance command on VHDX disks: the shipped sample bundle is converted with
`qemu-img convert -O vhdx` (dynamic and fixed), each command runs on the VHDX disk and on
a copy of the VMDK original, and the two must agree (output, exit code, and for writes
the content, by `qemu-img compare`); every VHDX vdisk wrote passes `qemu-img check`."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk

from vdisk_tool import clock
from vdisk_tool.image.safe import sparse_copy

SAMPLE = Path(__file__).resolve().parent.parent / "sample_images" / "ipva"
ROLES = ("boot", "cf", "dump", "flash")


@pytest.fixture(scope="module", params=["dynamic", "fixed"])
def converted(request, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(f"vhdx-{request.param}")
    for role in ROLES:
        run(need_tool("qemu-img"), "convert", "-O", "vhdx", "-o", f"subformat={request.param}",
            str(SAMPLE / f"hd-{role}.vmdk"), str(out / f"hd-{role}.vhdx"))
    return out


@pytest.fixture
def pair(converted, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(folder of VHDX disks, folder of VMDK disks), fresh copies, no vmx beside them."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a, b = tmp_path / "vhdx", tmp_path / "vmdk"
    a.mkdir()
    b.mkdir()
    for role in ROLES:
        sparse_copy(str(converted / f"hd-{role}.vhdx"), str(a / f"hd-{role}.vhdx"))
        sparse_copy(str(SAMPLE / f"hd-{role}.vmdk"), str(b / f"hd-{role}.vmdk"))
    shutil.copy(SAMPLE / "ipva.bin", tmp_path)
    return a, b


# the sample's dump store holds a torn newest record: dump list and extract say so (exit 1)
TORN_DUMP_EXIT = 1


def _both(runner, pair, *args: str, same_output: bool = True, code: int = 0):
    """Run the command on both disks; the outputs, names made equal, must be the same
    (for writes: the exit codes; their plans name the container), and the exit `code`."""
    outs = []
    for folder, ext in zip(pair, ("vhdx", "vmdk"), strict=True):
        clock._SEEDED.clear()     # the same identifiers for both runs
        argv = [a.format(d=folder, ext=ext, top=folder.parent) for a in args]
        res = vdisk(runner, *argv)
        outs.append((res.exit_code, res.stdout.replace(str(folder), "D").replace(f".{ext}", ".X")))
    assert outs[0] == outs[1] if same_output else outs[0][0] == outs[1][0], outs
    assert outs[0][0] == code, outs
    return outs[0][1]


def _same_content(pair, role: str) -> None:
    v, m = pair[0] / f"hd-{role}.vhdx", pair[1] / f"hd-{role}.vmdk"
    run(need_tool("qemu-img"), "check", "-f", "vhdx", str(v))
    run(need_tool("qemu-img"), "compare", "-f", "vhdx", "-F", "vmdk", str(v), str(m))


READS = [
    ("verify", "{d}/hd-boot.{ext}"), ("flash", "info", "{d}/hd-flash.{ext}"),
    ("dump", "list", "{d}/hd-dump.{ext}"), ("fs", "ls", "{d}/hd-cf.{ext}", "/CONFIG"),
    ("fs", "tree", "{d}/hd-cf.{ext}"), ("fs", "df", "{d}/hd-cf.{ext}"),
    ("fs", "check", "{d}/hd-cf.{ext}"), ("fs", "ls", "{d}/hd-boot.{ext}"),
]


@pytest.mark.parametrize("args", READS, ids=[" ".join(a[:2]) for a in READS])
def test_read_commands_agree(runner, pair, args):
    _both(runner, pair, *args, code=TORN_DUMP_EXIT if args[:2] == ("dump", "list") else 0)


def test_info_map_check_compare(runner, pair):
    a, b = pair
    for role in ROLES:
        v = str(a / f"hd-{role}.vhdx")
        for cmd in (["info"], ["map"], ["check"]):
            res = vdisk(runner, *cmd, v)
            assert res.exit_code == 0, (cmd, res.output)
        res = vdisk(runner, "compare", v, str(b / f"hd-{role}.vmdk"))
        assert res.exit_code == 0 and "identical" in res.stdout, res.output


def test_extracts_agree(runner, pair, tmp_path):
    _both(runner, pair, "flash", "backup", "{d}/hd-flash.{ext}", "-o", "{d}/flash.bin")
    _both(runner, pair, "dump", "extract", "{d}/hd-dump.{ext}", "-o", "{d}/dump.bin",
          code=TORN_DUMP_EXIT)
    for name in ("flash.bin", "dump.bin"):
        assert (pair[0] / name).read_bytes() == (pair[1] / name).read_bytes()


WRITES = [
    ("boot", [("boot", "restore", "{d}/hd-boot.{ext}", "--firmware", "{top}/ipva.bin", "--yes")]),
    ("flash", [("flash", "backup", "{d}/hd-flash.{ext}", "-o", "{d}/f.bin"),
               ("flash", "reset", "{d}/hd-flash.{ext}", "--yes"),
               ("flash", "restore", "{d}/hd-flash.{ext}", "{d}/f.bin", "--yes")]),
    ("dump", [("dump", "clear", "{d}/hd-dump.{ext}", "--yes")]),
    ("cf", [("fs", "mkdir", "{d}/hd-cf.{ext}", "/NEW"),
            ("fs", "put", "{d}/hd-cf.{ext}", "{top}/ipva.bin", "/NEW/IPVA.BIN"),
            ("fs", "mv", "{d}/hd-cf.{ext}", "/NEW/IPVA.BIN", "/NEW/FW.BIN"),
            ("fs", "rm", "{d}/hd-cf.{ext}", "/NEW/FW.BIN"),
            ("fs", "label", "{d}/hd-cf.{ext}", "CFDISK")]),
    ("cf", [("cf", "grow", "{d}/hd-cf.{ext}", "-s", "2G", "--yes")]),
    ("cf", [("cf", "format", "{d}/hd-cf.{ext}", "--yes")]),
    ("flash", [("grow", "{d}/hd-flash.{ext}", "-s", "200M")]),
]


@pytest.mark.parametrize("role,steps", WRITES, ids=[" ".join(s[0][:2]) for _, s in WRITES])
def test_write_commands_agree(runner, pair, role, steps):
    for step in steps:
        _both(runner, pair, *step, same_output=False)
    _same_content(pair, role)
    assert vdisk(runner, "check", str(pair[0] / f"hd-{role}.vhdx")).exit_code == 0


def test_convert_both_ways(runner, pair):
    a, b = pair
    for role in ROLES:
        v = a / f"hd-{role}.vhdx"
        assert vdisk(runner, "convert", str(v), str(a / f"{role}.vmdk")).exit_code == 0
        assert vdisk(runner, "convert", str(b / f"hd-{role}.vmdk"), str(a / f"{role}.vhdx")).exit_code == 0
        run(need_tool("qemu-img"), "check", str(a / f"{role}.vhdx"))
        run(need_tool("qemu-img"), "compare", str(a / f"{role}.vmdk"), str(b / f"hd-{role}.vmdk"))
        run(need_tool("qemu-img"), "compare", str(a / f"{role}.vhdx"), str(v))
