"""vdisk grow for every writable subformat, checked by qemu-img and vmdkinfo."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk

SUBFORMATS = ["monolithicSparse", "monolithicFlat", "vmfs", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat", "streamOptimized"]


def _source(tmp: Path) -> Path:
    qemu_img, qemu_io = need_tool("qemu-img"), need_tool("qemu-io")
    src = tmp / "src.vmdk"
    run(qemu_img, "create", "-q", "-f", "vmdk", str(src), "2100M")
    run(qemu_io, "-f", "vmdk", "-c", "write -P 0x3c 0 64k", "-c", "write -P 0xe1 2047M 3M",
        "-c", "write -P 0x77 2099M 1M", str(src))
    return src


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_grow_every_subformat(tmp_path: Path, runner, subformat: str) -> None:
    qemu_img, vmdkinfo = need_tool("qemu-img"), need_tool("vmdkinfo")
    src = _source(tmp_path)
    disk = tmp_path / f"g-{subformat}.vmdk"
    assert vdisk(runner, "convert", str(src), str(disk), "-F", subformat).exit_code == 0
    res = vdisk(runner, "grow", str(disk), "--size", "4500M")
    assert res.exit_code == 0, res.output
    info = json.loads(run(qemu_img, "info", "--output=json", str(disk)).stdout)
    assert info["virtual-size"] == 4500 << 20
    assert run(qemu_img, "check", str(disk), check=False).returncode == 0
    # the old-capacity prefix equals the original, the rest reads as zeros
    assert run(qemu_img, "compare", str(src), str(disk), check=False).returncode == 0
    raw = tmp_path / "tail.raw"
    run(qemu_img, "convert", "-O", "raw", str(disk), str(raw))
    with open(raw, "rb") as f:
        f.seek(2100 << 20)
        tail = f.read()
    assert tail.count(0) == len(tail) == (2400 << 20)
    assert run(vmdkinfo, str(disk), check=False).returncode == 0
    assert vdisk(runner, "check", str(disk)).exit_code == 0


def test_grow_keeps_descriptor_lines(tmp_path: Path, runner) -> None:
    need_tool("qemu-img")
    src = _source(tmp_path)
    disk = tmp_path / "d.vmdk"
    assert vdisk(runner, "convert", str(src), str(disk), "-F", "monolithicFlat").exit_code == 0
    before = disk.read_text().splitlines()
    assert vdisk(runner, "grow", str(disk), "--size", "3G").exit_code == 0
    after = disk.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=False) if a != b]
    keys = sorted(a.split("=")[0].split()[0] for a, _ in changed)
    assert keys == ["CID", "RW", "ddb.geometry.cylinders"], changed
    assert len(before) == len(after)


def test_grow_refuses_shrink_and_changes_nothing(tmp_path: Path, runner) -> None:
    need_tool("qemu-img")
    src = _source(tmp_path)
    data = src.read_bytes()
    res = vdisk(runner, "grow", str(src), "--size", "1G")
    assert res.exit_code == 3
    assert "shrinking is not supported" in res.stderr
    assert src.read_bytes() == data


def test_grow_dry_run_and_backup(tmp_path: Path, runner) -> None:
    need_tool("qemu-img")
    src = _source(tmp_path)
    data = src.read_bytes()
    res = vdisk(runner, "grow", str(src), "--size", "3G", "--dry-run")
    assert res.exit_code == 0 and "dry run" in res.stdout
    assert src.read_bytes() == data
    bak = tmp_path / "src.bak"
    assert vdisk(runner, "grow", str(src), "--size", "3G", "--backup", str(bak)).exit_code == 0
    assert bak.read_bytes() == data


def test_grow_refuses_locked_disk(tmp_path: Path, runner) -> None:
    need_tool("qemu-img")
    src = _source(tmp_path)
    (tmp_path / "src.vmdk.lck").mkdir()
    res = vdisk(runner, "grow", str(src), "--size", "3G")
    assert res.exit_code == 3 and "in use by VMware" in res.stderr
    res = vdisk(runner, "grow", str(src), "--size", "3G", "--force")
    assert res.exit_code == 0


def test_grow_terabyte_is_metadata_only(tmp_path: Path, runner) -> None:
    """1 GiB -> 1 TiB writes metadata, not capacity: the host file stays small."""
    need_tool("qemu-img")
    disk = tmp_path / "big.vmdk"
    assert vdisk(runner, "create", str(disk), "--size", "1G").exit_code == 0
    assert vdisk(runner, "grow", str(disk), "--size", "1T").exit_code == 0
    assert disk.stat().st_blocks * 512 < 4 << 20
    assert vdisk(runner, "check", str(disk)).exit_code == 0


def test_bad_size_is_a_usage_error(tmp_path: Path, runner) -> None:
    res = vdisk(runner, "create", str(tmp_path / "x.vmdk"), "--size", "abc")
    assert res.exit_code == 2
    assert "not a size" in res.output
    assert not (tmp_path / "x.vmdk").exists()
