"""`vdisk flash` and vdisk_tool.ipva.flash, held against qemu-img / qemu-io / vmdkinfo."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import assert_cid_renewed, descriptor_lines, run, vdisk

from vdisk_tool.image import base
from vdisk_tool.image.vmdk import sparse
from vdisk_tool.ipva import flash as fl

MiB = 1 << 20


def _qinfo(qemu_img: str, path: str) -> dict:
    return json.loads(run(qemu_img, "info", "--output=json", path).stdout)


def _flash(tmp_path, qemu_img, qemu_io, subformat="monolithicSparse", name="hd-flash.vmdk",
           writes=(("0xab", "1M", "3M"), ("0x11", "70M", "64k")), extra=()) -> str:
    path = str(tmp_path / name)
    opts = ["-o", f"subformat={subformat}"] if subformat != "raw" else []
    fmt = "raw" if subformat == "raw" else "vmdk"
    run(qemu_img, "create", "-q", "-f", fmt, *opts, *extra, path, "100M")
    for pat, off, n in writes:
        run(qemu_io, "-f", fmt, "-c", f"write -P {pat} {off} {n}", path)
    return path


def _blank(tmp_path, qemu_img, subformat="monolithicSparse") -> str:
    path = str(tmp_path / "blank" / "fresh.vmdk")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    run(qemu_img, "create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", path, "100M")
    return path


@pytest.mark.parametrize("mem,segs", [(64, 224), (192, 900), (3072, 900), (128, 562),
                                      (96, 393), (32, 112), (20, 70)])
def test_directory_segments(mem, segs):
    assert fl.directory_segments(mem) == segs


def test_read_memsize(tmp_path):
    vmx = tmp_path / "ipva.vmx"
    vmx.write_text('.encoding = "UTF-8"\n# memsize = "512"\nMemSize = "128"\nnumvcpus = "1"\n')
    assert fl.read_memsize(str(vmx)) == 128
    vmx.write_text('displayName = "ipva"\n')
    assert fl.read_memsize(str(vmx)) is None


def test_info_counts_segments(tmp_path, runner, qemu_img, qemu_io):
    # 3 MiB at 1 MiB = 48 segments; one byte pair straddling 0x10000 = two more
    disk = _flash(tmp_path, qemu_img, qemu_io,
                  writes=(("0xab", "1M", "3M"), ("0x01", "65535", "2"), ("0x11", "70M", "64k")))
    vmx = tmp_path / "ipva.vmx"
    vmx.write_text('memsize = "64"\n')
    r = vdisk(runner, "flash", "info", disk, "--vmx", str(vmx), "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["blank"], d["segments_in_use"], d["segments_total"]) == (False, 50, 1024)
    assert d["directory_segments"] == 224 and d["bytes_in_use_beyond_region"] == 65536


def test_info_blank_and_over_limit(tmp_path, runner, qemu_img, qemu_io):
    blank = _blank(tmp_path, qemu_img)
    r = vdisk(runner, "flash", "info", blank)
    assert r.exit_code == 0 and "flash: blank" in r.stdout
    disk = _flash(tmp_path, qemu_img, qemu_io, writes=(("0x5a", "0", "15M"),))   # 240 segments
    r = vdisk(runner, "flash", "info", disk, "--memsize", "64")
    assert r.exit_code == 1
    assert "flash.directory-overflow" in r.stdout and "lowering RAM can lose PBX objects" in r.stdout
    assert vdisk(runner, "flash", "info", disk, "--memsize", "256").exit_code == 0


def test_reset_monolithic_sparse_acceptance(tmp_path, runner, qemu_img, qemu_io, vmdkinfo):
    disk = _flash(tmp_path, qemu_img, qemu_io, extra=("-o", "adapter_type=lsilogic"),
                  writes=(("0xab", "0", "20M"), ("0x11", "70M", "64k")))
    before = _qinfo(qemu_img, disk)
    blank = _blank(tmp_path, qemu_img)
    r = vdisk(runner, "flash", "reset", disk, "--yes")
    assert r.exit_code == 0, r.stderr
    assert run(qemu_img, "compare", disk, blank, check=False).returncode == 0
    assert run(qemu_img, "check", disk, check=False).returncode == 0
    after = _qinfo(qemu_img, disk)
    assert after["virtual-size"] == before["virtual-size"] == 100 * MiB
    assert os.path.getsize(disk) <= os.path.getsize(blank)
    assert after["format-specific"]["data"]["create-type"] == "monolithicSparse"
    run(vmdkinfo, disk)
    desc = run(qemu_img, "info", disk).stdout
    r = vdisk(runner, "info", disk, "--json")
    d = json.loads(r.stdout)
    assert d["adapter"] == "lsilogic" and d["disk_size_bytes"] <= os.path.getsize(blank)
    assert "100 MiB" in desc
    assert json.loads(vdisk(runner, "flash", "info", disk, "--json").stdout)["blank"]


def test_reset_reads_no_data(tmp_path, qemu_img, qemu_io, monkeypatch):
    """The cost does not depend on the data: a reset never reads a data grain or block."""
    disk = _flash(tmp_path, qemu_img, qemu_io, writes=(("0xcd", "0", "40M"),))

    def boom(*a, **k):
        raise AssertionError("reset read data")

    monkeypatch.setattr(sparse.SparseExtent, "read_at", boom)
    monkeypatch.setattr(sparse.SparseExtent, "read_grain", boom)
    monkeypatch.setattr(base.FileDevice, "read_at", boom)
    fl.apply_reset(fl.plan_reset(disk))
    monkeypatch.undo()
    blank = _blank(tmp_path, qemu_img)
    assert run(qemu_img, "compare", disk, blank, check=False).returncode == 0


@pytest.mark.parametrize("subformat", ["monolithicFlat", "twoGbMaxExtentSparse",
                                       "twoGbMaxExtentFlat", "streamOptimized", "raw"])
def test_reset_other_subformats(tmp_path, runner, qemu_img, qemu_io, subformat):
    if subformat == "streamOptimized":
        src = _flash(tmp_path, qemu_img, qemu_io, name="src.vmdk")
        disk = str(tmp_path / "hd-flash.vmdk")
        run(qemu_img, "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", src, disk)
        os.unlink(src)
    else:
        disk = _flash(tmp_path, qemu_img, qemu_io, subformat=subformat,
                      name="hd-flash.img" if subformat == "raw" else "hd-flash.vmdk")
    names = sorted(os.listdir(tmp_path))
    desc_before = descriptor_lines(disk) if subformat != "raw" else None
    r = vdisk(runner, "flash", "reset", disk, "--yes")
    assert r.exit_code == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == names
    if subformat != "raw":
        assert desc_before is not None
        assert_cid_renewed(desc_before, descriptor_lines(disk))
        assert run(qemu_img, "check", disk, check=False).returncode == 0
    assert _qinfo(qemu_img, disk)["virtual-size"] == 100 * MiB
    blank = str(tmp_path / "blank.raw")
    with open(blank, "wb") as f:
        f.truncate(100 * MiB)
    assert run(qemu_img, "compare", "-F", "raw", disk, blank, check=False).returncode == 0
    if "Flat" in subformat or subformat == "raw":
        data = [p for p in os.listdir(tmp_path) if p.endswith("-flat.vmdk")
                or "-f00" in p or p == "hd-flash.img"]
        assert data
        for p in data:
            st = os.stat(tmp_path / p)
            assert st.st_blocks * 512 < 1 * MiB     # sparse on the host
    os.unlink(blank)


def test_reset_refuses_parent_of_snapshot_and_locked(tmp_path, runner, qemu_img, qemu_io):
    disk = _flash(tmp_path, qemu_img, qemu_io)
    child = str(tmp_path / "hd-flash-000001.vmdk")
    run(qemu_img, "create", "-q", "-f", "vmdk", "-b", "hd-flash.vmdk", "-F", "vmdk", child)
    before = Path(disk).read_bytes()
    r = vdisk(runner, "flash", "reset", disk, "--yes")
    assert r.exit_code == 3 and "hd-flash-000001.vmdk" in r.stderr and "--force" in r.stderr
    assert Path(disk).read_bytes() == before
    r = vdisk(runner, "flash", "reset", child, "--yes")
    assert r.exit_code == 3 and "snapshot child" in r.stderr
    os.unlink(child)
    os.mkdir(disk + ".lck")
    r = vdisk(runner, "flash", "reset", disk, "--yes")
    assert r.exit_code == 3 and "in use" in r.stderr
    assert Path(disk).read_bytes() == before
    r = vdisk(runner, "flash", "reset", disk, "--yes", "--force")
    assert r.exit_code == 0 and "warning" in r.stderr


def test_reset_dry_run_confirm_and_backup(tmp_path, runner, qemu_img, qemu_io):
    disk = _flash(tmp_path, qemu_img, qemu_io)
    before = Path(disk).read_bytes()
    r = vdisk(runner, "flash", "reset", disk, "--dry-run")
    assert r.exit_code == 0 and "dry run" in r.stdout
    assert vdisk(runner, "flash", "reset", disk).exit_code == 2      # no --yes, no terminal
    assert Path(disk).read_bytes() == before
    bak = str(tmp_path / "before.vmdk")
    assert vdisk(runner, "flash", "reset", disk, "--yes", "--backup", bak).exit_code == 0
    assert Path(bak).read_bytes() == before


def test_backup_and_restore(tmp_path, runner, qemu_img, qemu_io):
    disk = _flash(tmp_path, qemu_img, qemu_io,
                  writes=(("0xab", "1M", "3M"), ("0x22", "63M", "1M"), ("0x11", "70M", "64k")))
    img = str(tmp_path / "flash.img")
    r = vdisk(runner, "flash", "backup", disk, "-o", img)
    assert r.exit_code == 0 and "64 segment(s)" in r.stdout
    assert os.path.getsize(img) == 64 * MiB and os.stat(img).st_blocks * 512 <= 5 * MiB
    region = str(tmp_path / "region.raw")
    run(qemu_img, "dd", "-f", "vmdk", "-O", "raw", "bs=1M", "count=64", f"if={disk}",
        f"of={region}")
    assert Path(region).read_bytes() == Path(img).read_bytes()
    assert vdisk(runner, "flash", "backup", disk, "-o", img).exit_code == 3   # exists
    # change the flash, then put the saved region back; the rest of the disk is kept
    run(qemu_io, "-f", "vmdk", "-c", "write -P 0x77 10M 1M", "-c", "write -z 1M 1M", disk)
    r = vdisk(runner, "flash", "restore", disk, img, "--yes")
    assert r.exit_code == 0, r.stderr
    run(qemu_img, "dd", "-f", "vmdk", "-O", "raw", "bs=1M", "count=64", f"if={disk}",
        f"of={region}.2")
    assert Path(region + ".2").read_bytes() == Path(img).read_bytes()
    assert run(qemu_img, "check", disk, check=False).returncode == 0
    tail = run(qemu_io, "-f", "vmdk", "-c", "read -P 0x11 70M 64k", disk)
    assert "Pattern verification failed" not in tail.stdout
    small = tmp_path / "small.img"
    small.write_bytes(bytes(4096))
    r = vdisk(runner, "flash", "restore", disk, str(small), "--yes")
    assert r.exit_code == 3 and "flash region" in r.stderr


def test_reset_vmfs_descriptor_and_flat(tmp_path, runner, qemu_img):
    """ESX layout (descriptor + -flat.vmdk, as vCenter Converter writes it)."""
    from vdisk_tool.image.create import create_image
    raw = tmp_path / "src.raw"
    with open(raw, "wb") as f:
        f.truncate(100 * MiB)
        f.seek(5 * MiB)
        f.write(b"\x5a" * MiB)
    disk = str(tmp_path / "hd-flash.vmdk")
    with base.FileDevice(raw) as src:
        create_image(disk, 100 * MiB, "vmfs", "lsilogic", source=src)
    os.unlink(raw)
    desc_before = descriptor_lines(disk)
    assert any('createType="vmfs"' in ln for ln in desc_before)
    assert vdisk(runner, "flash", "reset", disk, "--yes").exit_code == 0
    assert_cid_renewed(desc_before, descriptor_lines(disk))
    flat = tmp_path / "hd-flash-flat.vmdk"
    assert flat.stat().st_size == 100 * MiB and flat.stat().st_blocks == 0
    d = json.loads(vdisk(runner, "flash", "info", disk, "--json").stdout)
    assert d["blank"]
