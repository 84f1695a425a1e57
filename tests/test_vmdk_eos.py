"""The end-of-stream marker of streamOptimized files: required after a footer (as qemu-img
requires it: "Invalid footer"), named by `check` (vmdk.stream-no-eos) and restored by
`check --repair`. Streams come from python3-vmdkstream (VMware's layout) and from qemu-img
(no EOS at all), never from vdisk's writer."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import vmdkcorpus as vc
from conftest import need, need_tool, vdisk

MIB = 1 << 20
WRITES = [vc.Write(0x5A, 0, 65536), vc.Write(0x6B, 3 * MIB + 5, 3000)]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return vc.write_raw(tmp_path_factory.mktemp("eos") / "src.raw", 8 * MIB, WRITES)


@pytest.fixture
def vmware_stream(src, tmp_path) -> Path:
    need(vc.vmdkstream_available(), "python3-vmdkstream (for /usr/bin/python3)")
    return vc.write_stream_vmdkstream(src, tmp_path / "vs.vmdk")


def qemu(*args: str) -> subprocess.CompletedProcess:
    need_tool("qemu-img")
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)


def cut_eos(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 512)


def garble_eos(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(-512, os.SEEK_END)
        f.write(b"\x47" * 512)


@pytest.mark.parametrize("damage", [cut_eos, garble_eos], ids=["cut", "garbled"])
def test_missing_eos_is_refused_named_and_restored(runner, src, vmware_stream, damage):
    assert qemu("info", str(vmware_stream)).returncode == 0
    damage(vmware_stream)
    q = qemu("info", str(vmware_stream))
    assert q.returncode != 0 and "Invalid footer" in q.stderr   # the oracle refuses it
    for cmd in (["info"], ["convert"]):
        args = [*cmd, str(vmware_stream)] + ([str(vmware_stream) + ".raw"] if cmd == ["convert"] else [])
        res = vdisk(runner, *args)
        assert res.exit_code == 3, res.output
        assert "end-of-stream marker" in res.stderr
    res = vdisk(runner, "check", "--json", str(vmware_stream))
    assert res.exit_code == 1
    import json
    codes = [f["code"] for f in json.loads(res.stdout)["findings"]]
    assert codes == ["vmdk.stream-no-eos"]          # not "unknown marker type"
    res = vdisk(runner, "check", "--repair", str(vmware_stream))
    assert res.exit_code == 0, res.output
    assert qemu("check", str(vmware_stream)).returncode == 0
    cmp = qemu("compare", "-f", "vmdk", "-F", "raw", str(vmware_stream), str(src))
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    with open(vmware_stream, "rb") as f:
        f.seek(-512, os.SEEK_END)
        assert f.read() == bytes(512)


def test_qemu_stream_without_eos_is_a_fixable_warning(runner, src, tmp_path):
    out = tmp_path / "q.vmdk"
    assert qemu("convert", "-O", "vmdk", "-o", "subformat=streamOptimized", str(src),
                str(out)).returncode == 0
    while True:   # qemu versions differ: take away any zero sectors (an EOS) at the end
        with open(out, "rb") as f:
            f.seek(-512, os.SEEK_END)
            if f.read() != bytes(512):
                break
        cut_eos(out)
    assert qemu("compare", "-f", "vmdk", "-F", "raw", str(out), str(src)).returncode == 0
    res = vdisk(runner, "check", str(out))
    assert res.exit_code == 1 and "warning: vmdk.stream-no-eos" in res.stdout
    assert vdisk(runner, "info", str(out)).exit_code == 0   # readable: no footer needs it
    assert vdisk(runner, "check", "--repair", str(out)).exit_code == 0
    assert vdisk(runner, "check", str(out)).exit_code == 0
    cmp = qemu("compare", "-f", "vmdk", "-F", "raw", str(out), str(src))
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr


def test_eos_not_restored_when_the_stream_is_damaged(runner, vmware_stream):
    """'when the rest of the stream is intact': a broken grain keeps the repair away."""
    with open(vmware_stream, "r+b") as f:
        data = f.read()
        lba0 = data.index(b"\x78", 0x10000)        # the first grain's zlib header
        f.seek(lba0 + 40)
        f.write(b"\xff" * 64)
    garble_eos(vmware_stream)
    res = vdisk(runner, "check", str(vmware_stream))
    assert "vmdk.stream-no-eos" in res.stdout and "(fixable)" not in res.stdout.split(
        "vmdk.stream-no-eos")[1].splitlines()[0]
