"""No limit below the format's own: a 2 TiB + 64 KiB twoGbMaxExtentFlat disk from qemu-img
(1025 extent files, sparse and cheap) opens, reads and converts with a bounded number of
open files; streamOptimized goes past 2 TiB (written, converted and grown at 3 TiB with a
few grains), judged by qemu-img/qemu-io and vmdkinfo."""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need_tool, vdisk

from vdisk_tool.image.disk import open_image
from vdisk_tool.image.vmdk import open as vmdk_open

TIB, GIB, KIB = 1 << 40, 1 << 30, 1 << 10
BIG = 2 * TIB + 64 * KIB


def qemu_io(image: Path, *cmds: str, fmt: str = "vmdk") -> str:
    args = [need_tool("qemu-io"), "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    res = subprocess.run([*args, str(image)], capture_output=True, text=True, check=True)
    assert "failed" not in res.stdout + res.stderr and "Pattern verification" not in res.stdout, res.stdout
    return res.stdout


@pytest.fixture(scope="module")
def split_flat(tmp_path_factory) -> Path:
    """qemu-img's twoGbMaxExtentFlat of 2 TiB + 64 KiB: 1025 extents, the last of 64 KiB."""
    qemu = need_tool("qemu-img")
    p = tmp_path_factory.mktemp("split") / "big.vmdk"
    subprocess.run([qemu, "create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentFlat",
                    str(p), str(BIG)], check=True)
    qemu_io(p, f"write -P 0xab {2 * TIB} 64k", f"write -P 0xcd {GIB - 512} 4k")
    return p


def test_thousand_extents_open_like_qemu_and_vmdkinfo(runner, split_flat):
    res = vdisk(runner, "info", "--json", str(split_flat))
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["virtual_size_bytes"] == BIG and len(d["extents"]) == 1025
    q = json.loads(subprocess.run([need_tool("qemu-img"), "info", "--output=json", str(split_flat)],
                                  check=True, capture_output=True, text=True).stdout)
    assert q["virtual-size"] == BIG
    v = subprocess.run([need_tool("vmdkinfo"), str(split_flat)], capture_output=True, text=True)
    assert re.search(r"Number of extents:\s+1025", v.stdout), v.stdout[:400]
    with open_image(split_flat) as disk:
        assert disk.read_at(2 * TIB, 64 * KIB) == b"\xab" * (64 * KIB)
        assert disk.read_at(GIB - 512, 4 * KIB) == b"\xcd" * (4 * KIB)
        for ext in disk.extents:            # touch every extent file once
            ext.device.read_at(0, 512)
        assert vmdk_open.EXTENT_FILES.open_count <= 64
        assert disk.read_at(0, 512) == bytes(512)   # a parked extent reopens


def test_thousand_extents_need_few_file_descriptors(split_flat):
    """With a 100-descriptor limit vdisk still compares the disk with itself (1025 files)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))

    res = subprocess.run([sys.executable, "-m", "vdisk_tool", "compare", str(split_flat),
                          str(split_flat)], capture_output=True, text=True, preexec_fn=limit)
    assert res.returncode == 0, res.stderr
    assert "identical" in res.stdout


def test_thousand_extents_convert_to_a_stream(runner, split_flat, tmp_path):
    out = tmp_path / "big-stream.vmdk"
    res = vdisk(runner, "convert", str(split_flat), str(out), "-F", "streamOptimized")
    assert res.exit_code == 0, res.output
    qemu_io(out, f"read -P 0xab {2 * TIB} 64k", f"read -P 0xcd {GIB - 512} 4k",
            f"read -P 0 {TIB} 64k")
    assert subprocess.run([need_tool("qemu-img"), "check", str(out)]).returncode == 0


def test_thousand_extents_created_like_qemu(runner, split_flat, tmp_path):
    """vdisk creates what qemu-img does (VMware's 2047 MiB cut: 1025 extents for 2 TiB + 64 KiB)."""
    out = tmp_path / "made.vmdk"
    res = vdisk(runner, "create", str(out), "--size", str(BIG), "-F", "twoGbMaxExtentFlat")
    assert res.exit_code == 0, res.output
    q = json.loads(subprocess.run([need_tool("qemu-img"), "info", "--output=json", str(out)],
                                  check=True, capture_output=True, text=True).stdout)
    assert q["virtual-size"] == BIG
    v = subprocess.run([need_tool("vmdkinfo"), str(out)], capture_output=True, text=True)
    assert re.search(r"Number of extents:\s+1025", v.stdout), v.stdout[:400]


def test_descriptor_over_the_extent_limit_is_refused(tmp_path):
    lines = ["# Disk DescriptorFile", "version=1", "CID=12345678", "parentCID=ffffffff",
             'createType="twoGbMaxExtentFlat"']
    lines += ['RW 1 ZERO'] * (65536 + 1)
    p = tmp_path / "many.vmdk"
    p.write_text("\n".join(lines) + "\n")
    from vdisk_tool.errors import FormatError
    with pytest.raises(FormatError, match="more than 65536 extents"):
        open_image(p)


# -- streamOptimized past 2 TiB -------------------------------------------------------------------
PATTERNS = [(0x11, 0, "64k"), (0x22, 2 * TIB + 12288, "3000"), (0x33, 3 * TIB - 64 * KIB, "64k")]


def test_stream_of_3_tib_written_and_read_by_qemu(runner, tmp_path):
    src = tmp_path / "src.raw"
    src.write_bytes(b"")
    os.truncate(src, 3 * TIB)
    qemu_io(src, *[f"write -P {p:#x} {o} {n}" for p, o, n in PATTERNS], fmt="raw")
    out = tmp_path / "s3.vmdk"
    res = vdisk(runner, "convert", str(src), str(out), "-F", "streamOptimized")
    assert res.exit_code == 0, res.output
    assert out.stat().st_size < 1 << 20
    info = json.loads(subprocess.run([need_tool("qemu-img"), "info", "--output=json", str(out)],
                                     check=True, capture_output=True, text=True).stdout)
    assert info["virtual-size"] == 3 * TIB
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    assert subprocess.run([need_tool("qemu-img"), "check", str(out)]).returncode == 0
    qemu_io(out, *[f"read -P {p:#x} {o} {n}" for p, o, n in PATTERNS])
    v = subprocess.run([need_tool("vmdkinfo"), str(out)], capture_output=True, text=True)
    assert "3298534883328 bytes" in v.stdout, v.stdout[:400]


def test_stream_grows_past_2_tib(runner, tmp_path):
    img = tmp_path / "g.vmdk"
    subprocess.run([need_tool("qemu-img"), "create", "-q", "-f", "vmdk", "-o",
                    "subformat=streamOptimized", str(img), "1G"], check=True)
    qemu_io(img, "write -P 0x44 1m 64k")
    res = vdisk(runner, "grow", str(img), "--size", "3T")
    assert res.exit_code == 0, res.output
    info = json.loads(subprocess.run([need_tool("qemu-img"), "info", "--output=json", str(img)],
                                     check=True, capture_output=True, text=True).stdout)
    assert info["virtual-size"] == 3 * TIB
    assert subprocess.run([need_tool("qemu-img"), "check", str(img)]).returncode == 0
    qemu_io(img, "read -P 0x44 1m 64k", f"read -P 0 {3 * TIB - 64 * KIB} 64k")


def test_monolithic_sparse_keeps_its_2_tib_limit(runner, tmp_path):
    res = vdisk(runner, "create", str(tmp_path / "m.vmdk"), "--size", "3T")
    assert res.exit_code == 3 and "at most 2 TiB" in res.stderr
    assert "streamOptimized" in res.stderr
