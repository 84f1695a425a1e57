"""vdisk writes into qcow2 images qemu-img made with every option (compat, cluster sizes,
refcount widths, lazy refcounts, compressed clusters, internal snapshots, backing files,
extended L2, preallocation), through the journalled edit path; after each, `qemu-img
check` is clean and `qemu-img compare` finds the content of a raw model that got the same
writes. Images vdisk creates and converts pass the same oracle, and vdisk grow too."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk

from vdisk_tool.image.disk import open_image
from vdisk_tool.image.edit import edit_image

MiB = 1 << 20
QEMU_WRITES = ("write -P 0x11 0 4k", "write -P 0xab 1M 64k", "write -z 2M 64k",
               "write -P 0x77 4M 128k", "write -P 0xee 8188k 4k")
# (offset, length): unaligned, across clusters, into unallocated, zero and data clusters
VDISK_WRITES = ((100, 3000), (1 * MiB + 5000, 70000), (2 * MiB + 512, 4096),
                (3 * MiB - 700, 1400), (4 * MiB, 128 * 1024), (6 * MiB + 1, 1), (8 * MiB - 512, 512))


def _img() -> str:
    return need_tool("qemu-img")


def _io() -> str:
    return need_tool("qemu-io")


def qemu_image(tmp: Path, name: str, opts: str = "", extra: tuple[str, ...] = (),
               writes: tuple[str, ...] = QEMU_WRITES) -> Path:
    p = tmp / name
    run(_img(), "create", "-q", "-f", "qcow2", *(["-o", opts] if opts else []), *extra, str(p), "8M")
    if writes:
        run(_io(), "-f", "qcow2", *sum((["-c", w] for w in writes), []), str(p))
    return p


def oracle_clean(p: Path) -> None:
    res = run(_img(), "check", "-f", "qcow2", str(p), check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def write_both(p: Path, model: Path, seed: int = 1) -> None:
    """The same writes through vdisk's edit path and into the raw model."""
    rnd = random.Random(seed)
    with edit_image(str(p)) as disk, open(model, "r+b") as f:
        for off, n in VDISK_WRITES:
            data = rnd.randbytes(n)
            disk.write_at(off, data)
            f.seek(off)
            f.write(data)


def to_raw(p: Path, out: Path) -> Path:
    run(_img(), "convert", "-O", "raw", str(p), str(out))
    return out


def same(a: Path, b: Path, fmt_b: str = "raw") -> None:
    res = run(_img(), "compare", "-F", fmt_b, str(a), str(b), check=False)
    assert res.returncode == 0, res.stdout + res.stderr


OPTIONS = ["compat=0.10", "compat=1.1", "cluster_size=512", "cluster_size=2M",
           "refcount_bits=1", "refcount_bits=2", "refcount_bits=4", "refcount_bits=8",
           "refcount_bits=64", "lazy_refcounts=on", "extended_l2=on",
           "preallocation=metadata", "preallocation=falloc"]


@pytest.mark.parametrize("opts", OPTIONS)
def test_writes_into_qemu_images(tmp_path: Path, opts: str) -> None:
    p = qemu_image(tmp_path, "d.qcow2", opts)
    model = to_raw(p, tmp_path / "model.raw")
    write_both(p, model)
    oracle_clean(p)
    same(p, model)
    info = json.loads(run(_img(), "info", "--output=json", str(p)).stdout)
    assert not info["format-specific"]["data"].get("corrupt")


def test_writes_into_compressed_clusters(tmp_path: Path) -> None:
    src = qemu_image(tmp_path, "s.qcow2", writes=QEMU_WRITES + ("write -P 0x42 5M 1M",))
    p = tmp_path / "c.qcow2"
    run(_img(), "convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", str(src), str(p))
    model = to_raw(p, tmp_path / "model.raw")
    with edit_image(str(p)) as disk, open(model, "r+b") as f:
        for off in (5 * MiB + 100, 5 * MiB + 4096 * 7, 1 * MiB):
            disk.write_at(off, b"\x5a" * 1000)
            f.seek(off)
            f.write(b"\x5a" * 1000)
    oracle_clean(p)
    same(p, model)


def test_writes_keep_internal_snapshots(tmp_path: Path) -> None:
    p = qemu_image(tmp_path, "s.qcow2")
    before = to_raw(p, tmp_path / "before.raw")
    run(_img(), "snapshot", "-c", "snap", str(p))
    model = to_raw(p, tmp_path / "model.raw")
    write_both(p, model)
    oracle_clean(p)
    same(p, model)
    # the snapshot still holds the old content
    snap = tmp_path / "snap.qcow2"
    run(_img(), "convert", "-l", "snap", "-O", "qcow2", str(p), str(snap))
    same(snap, before)


@pytest.mark.parametrize("opts", ["compat=1.1", "extended_l2=on", "compat=0.10,cluster_size=4096"])
def test_partial_writes_copy_from_the_backing_file(tmp_path: Path, opts: str) -> None:
    base = qemu_image(tmp_path, "base.qcow2", writes=("write -P 0x31 0 8M",))
    top = qemu_image(tmp_path, "top.qcow2", opts, ("-b", "base.qcow2", "-F", "qcow2"),
                     writes=("write -P 0x32 1M 4k",))
    model = to_raw(top, tmp_path / "model.raw")
    base_before = base.read_bytes()
    write_both(top, model)
    oracle_clean(top)
    same(top, model)
    assert base.read_bytes() == base_before


def test_dirty_lazy_refcount_image_is_repaired_before_an_edit(tmp_path: Path) -> None:
    p = qemu_image(tmp_path, "l.qcow2", "lazy_refcounts=on", writes=())
    res = run(_io(), "-f", "qcow2", "-c", "write -P 0x61 0 1M", "-c", "sigraise 9", str(p),
              check=False)
    assert res.returncode != 0
    assert run(_img(), "check", str(p), check=False).returncode != 0   # leaks / errors
    model = to_raw(p, tmp_path / "model.raw")
    write_both(p, model)
    oracle_clean(p)
    same(p, model)
    info = json.loads(run(_img(), "info", "--output=json", str(p)).stdout)
    assert info["dirty-flag"] is False


@pytest.mark.parametrize("opts", ["", "compat=0.10", "cluster_size=512,refcount_bits=64",
                                  "cluster_size=2M,refcount_bits=1", "lazy_refcounts=on"])
def test_convert_and_create_pass_the_oracle(tmp_path: Path, runner, opts: str) -> None:
    src = qemu_image(tmp_path, "src.qcow2", "extended_l2=on",
                     writes=QEMU_WRITES + ("write -P 0x9 3M 1M",))
    vm = tmp_path / "mid.vmdk"
    r = vdisk(runner, "convert", str(src), str(vm), "--subformat", "monolithicSparse")
    assert r.exit_code == 0, r.output
    out = tmp_path / "out.qcow2"
    r = vdisk(runner, "convert", str(vm), str(out), "-O", "qcow2", *(["-o", opts] if opts else []))
    assert r.exit_code == 0, r.output
    oracle_clean(out)
    same(out, src, "qcow2")
    info = json.loads(run(_img(), "info", "--output=json", str(out)).stdout)
    if "cluster_size=512" in opts:
        assert info["cluster-size"] == 512
    back = tmp_path / "back.raw"
    assert vdisk(runner, "convert", str(out), str(back)).exit_code == 0
    same(back, src, "qcow2")
    new = tmp_path / "new.qcow2"
    r = vdisk(runner, "create", str(new), "--size", "3G", *(["-o", opts] if opts else []))
    assert r.exit_code == 0, r.output
    oracle_clean(new)
    assert json.loads(run(_img(), "info", "--output=json", str(new)).stdout)["virtual-size"] == 3 << 30


def test_grow_moves_the_l1_table(tmp_path: Path, runner) -> None:
    p = qemu_image(tmp_path, "g.qcow2", "cluster_size=512")
    model = to_raw(p, tmp_path / "model.raw")
    # 8 MiB of 512-byte clusters: an L1 of 128 entries in 2 clusters; 1 GiB needs 16384
    r = vdisk(runner, "grow", str(p), "--size", "1G")
    assert r.exit_code == 0, r.output
    oracle_clean(p)
    same(p, model)
    with open_image(p) as d:
        assert d.size_bytes == 1 << 30
    with edit_image(str(p)) as disk:
        disk.write_at((1 << 30) - 4096, b"\x7e" * 4096)
    oracle_clean(p)
    with open(model, "r+b") as f:
        f.truncate(1 << 30)
        f.seek((1 << 30) - 4096)
        f.write(b"\x7e" * 4096)
    same(p, model)
