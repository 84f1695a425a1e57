"""Crash consistency of the VMDK engine's mutating commands (check --repair, grow, convert)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import break_grain_table_and_flag, need_tool
from crashharness import crash_test

from vdisk_tool.image.check import check_image
from vdisk_tool.image.disk import open_image

PATTERN = [(1 << 20, 0xAB, 65536), (3 << 20, 0x5C, 200000), (40 << 20, 0x11, 4096)]


def _fill(path: Path) -> None:
    qemu_io = need_tool("qemu-io")
    cmds = []
    for off, byte, n in PATTERN:
        cmds += ["-c", f"write -P {byte} {off} {n}"]
    subprocess.run([qemu_io, "-f", "vmdk", *cmds, str(path)], check=True, capture_output=True)


def _make(subformat: str):
    def make(folder: Path) -> None:
        qemu_img = need_tool("qemu-img")
        first = "monolithicSparse" if subformat == "streamOptimized" else subformat
        name = "s.vmdk" if subformat == "streamOptimized" else "d.vmdk"
        subprocess.run([qemu_img, "create", "-q", "-f", "vmdk", "-o", f"subformat={first}",
                        str(folder / name), "64M"], check=True)
        _fill(folder / name)
        if name != "d.vmdk":  # qemu writes stream images only sequentially: convert
            subprocess.run([qemu_img, "convert", "-O", "vmdk", "-o", f"subformat={subformat}",
                            str(folder / name), str(folder / "d.vmdk")], check=True)
            os.unlink(folder / name)
    return make


def _content_ok(path: Path, size: int) -> bool:
    try:
        with open_image(str(path)) as d:
            if d.size_bytes != size:
                return False
            for off, byte, n in PATTERN:
                if d.read_at(off, n) != bytes([byte]) * n:
                    return False
        findings = check_image(str(path)).findings
        # a leftover temporary folder is reported (and removed by the next change): not damage
        return all(f.code == "vmdk.leftover-temp" or f.severity.value == "info" for f in findings)
    except Exception:
        return False


@pytest.mark.parametrize("subformat", ["monolithicSparse", "monolithicFlat", "streamOptimized"])
def test_grow_is_crash_safe(tmp_path: Path, subformat: str) -> None:
    res = crash_test(_make(subformat), ["grow", "d.vmdk", "--size", "128M"],
                     lambda f: _content_ok(f / "d.vmdk", 128 << 20), tmp_path, points=20,
                     recover=["check", "d.vmdk", "--repair"])
    assert res.corrupt == [], res.corrupt
    assert res.tried >= min(20, res.total_points)
    assert res.old_kept > 0 and res.new_complete > 0


def test_repair_is_crash_safe(tmp_path: Path) -> None:
    def make(folder: Path) -> None:
        _make("monolithicSparse")(folder)
        break_grain_table_and_flag(folder / "d.vmdk")

    res = crash_test(make, ["check", "d.vmdk", "--repair"],
                     lambda f: _content_ok(f / "d.vmdk", 64 << 20), tmp_path, points=20)
    assert res.corrupt == [], res.corrupt
    assert res.old_kept > 0 and res.new_complete > 0


def test_convert_leaves_no_partial_target(tmp_path: Path) -> None:
    def done(folder: Path) -> bool:
        return _content_ok(folder / "s.vmdk", 64 << 20)

    res = crash_test(_make("monolithicSparse"), ["convert", "d.vmdk", "s.vmdk", "-F", "streamOptimized"],
                     done, tmp_path, points=20)
    assert res.corrupt == [], res.corrupt
    assert not os.path.exists(tmp_path / "template" / "s.vmdk")
