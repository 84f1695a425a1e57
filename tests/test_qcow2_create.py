"""`vdisk create`/`convert -O qcow2 -o extended_l2=on,preallocation=…` as qemu-img offers
them: judged by `qemu-img check`, `qemu-img info --output=json`, `qemu-img map` (against
`qemu-img create` with the same options) and `qemu-img compare`; then writes into the new
images, and into mixed extended-L2 subclusters, through vdisk's edit path, against a raw
model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk
from test_qcow2_write import oracle_clean, qemu_image, same, to_raw, write_both

SIZE = "5000k"


def _img() -> str:
    return need_tool("qemu-img")


def _info(p: Path) -> dict:
    return json.loads(run(_img(), "info", "--output=json", str(p)).stdout)


def _map(p: Path) -> list[tuple]:
    """qemu-img map without host offsets: what is data, zero, present, where."""
    return [(e["start"], e["length"], e["data"], e["zero"], e["present"])
            for e in json.loads(run(_img(), "map", "--output=json", str(p)).stdout)]


@pytest.mark.parametrize("opts", [
    "extended_l2=on", "extended_l2=on,cluster_size=16k", "preallocation=metadata",
    "preallocation=falloc", "preallocation=full", "extended_l2=on,preallocation=metadata",
    "extended_l2=on,preallocation=full", "compat=0.10,preallocation=metadata,cluster_size=4096",
    "cluster_size=512,refcount_bits=1,preallocation=metadata",
])
def test_create_matches_qemu_img_create(tmp_path: Path, runner, opts: str) -> None:
    p, ref = tmp_path / "v.qcow2", tmp_path / "q.qcow2"
    r = vdisk(runner, "create", str(p), "--size", SIZE, "-o", opts)
    assert r.exit_code == 0, r.output
    run(_img(), "create", "-q", "-f", "qcow2", "-o", opts, str(ref), SIZE)
    oracle_clean(p)
    same(p, ref, "qcow2")
    info, want = _info(p), _info(ref)
    for key in ("virtual-size", "cluster-size"):
        assert info[key] == want[key], key
    for key in ("compat", "extended-l2", "refcount-bits"):
        assert info["format-specific"]["data"].get(key) == want["format-specific"]["data"].get(
            key), key
    assert _map(p) == _map(ref)
    if "falloc" in opts or "full" in opts:
        assert info["actual-size"] >= info["virtual-size"]
    elif "metadata" in opts:
        assert info["actual-size"] < info["virtual-size"] // 4   # data clusters are holes
    # writes land in the preallocated clusters: the file does not grow
    model = to_raw(p, tmp_path / "model.raw")
    end = p.stat().st_size
    with open(model, "r+b") as f:
        f.truncate(5000 * 1024)
    from vdisk_tool.image.edit import edit_image
    with edit_image(str(p)) as disk, open(model, "r+b") as f:
        for off, n in ((100, 3000), (1 << 20, 70000), (5000 * 1024 - 512, 512)):
            disk.write_at(off, b"\xc3" * n)
            f.seek(off)
            f.write(b"\xc3" * n)
    oracle_clean(p)
    same(p, model)
    if "preallocation" in opts:
        assert p.stat().st_size == end


@pytest.mark.parametrize("opts", ["extended_l2=on", "extended_l2=on,preallocation=metadata",
                                  "preallocation=falloc,cluster_size=4096"])
def test_convert_with_options(tmp_path: Path, runner, opts: str) -> None:
    src = qemu_image(tmp_path, "s.qcow2")
    out = tmp_path / "o.qcow2"
    r = vdisk(runner, "convert", str(src), str(out), "-O", "qcow2", "-o", opts)
    assert r.exit_code == 0, r.output
    oracle_clean(out)
    same(out, src, "qcow2")
    data = _info(out)["format-specific"]["data"]
    assert data["extended-l2"] is ("extended_l2=on" in opts)
    model = to_raw(out, tmp_path / "model.raw")
    write_both(out, model)
    oracle_clean(out)
    same(out, model)


def test_extended_preallocation_over_a_backing_file(tmp_path: Path, runner) -> None:
    """qemu-img allows a backing file with preallocation only with extended L2: the
    preallocated clusters have no subcluster allocated, so they read from the backing
    file; a partial write copies the rest of its cluster from there, in place."""
    base = qemu_image(tmp_path, "base.qcow2", writes=("write -P 0x31 0 8M",))
    top = tmp_path / "top.qcow2"
    opts = "extended_l2=on,preallocation=metadata,backing_file=base.qcow2,backing_fmt=qcow2"
    r = vdisk(runner, "create", str(top), "--size", "8M", "-o", opts)
    assert r.exit_code == 0, r.output
    ref = tmp_path / "ref.qcow2"
    run(_img(), "create", "-q", "-f", "qcow2", "-o", opts, str(ref), "8M")
    oracle_clean(top)
    same(top, base, "qcow2")
    assert _map(top) == _map(ref)
    model = to_raw(top, tmp_path / "model.raw")
    end = top.stat().st_size
    write_both(top, model)
    oracle_clean(top)
    same(top, model)
    assert top.stat().st_size == end


@pytest.mark.parametrize("opts,word", [
    ("extended_l2=on,compat=0.10", "compat=1.1"),
    ("extended_l2=on,cluster_size=8k", "16k"),
    ("preallocation=metadata,backing_file=b.qcow2", "extended_l2=on"),
    ("preallocation=sparse", "preallocation"),
    ("extended_l2=maybe", "on or off"),
])
def test_refusals_as_qemu_img_refuses(tmp_path: Path, runner, opts: str, word: str) -> None:
    p = tmp_path / "v.qcow2"
    r = vdisk(runner, "create", str(p), "--size", "8M", "-o", opts)
    assert r.exit_code in (2, 3), r.output
    assert word in r.output and "Traceback" not in r.output
    assert not p.exists()
    if "backing_file" not in opts:
        assert run(_img(), "create", "-q", "-f", "qcow2", "-o", opts, str(tmp_path / "q"), "8M",
                   check=False).returncode != 0


def test_a_write_into_mixed_subclusters_fills_them_as_they_read(tmp_path: Path) -> None:
    """A builder-made extended-L2 overlay (64 KiB clusters, 2 KiB subclusters) over a raw
    backing file: cluster 0 has subclusters allocated (even), zero (every third odd) and
    unallocated (the rest, reading the backing file). A 100-byte write into it makes the
    whole cluster allocated in place: each subcluster keeps what it read as (qemu-io is the
    judge), and the bitmap becomes 32 allocated, none zero."""
    import struct

    from qcow2builder import Qcow2Builder

    from vdisk_tool.image.edit import edit_image
    (tmp_path / "base.raw").write_bytes(b"\x31" * (1 << 20))
    alloc = sum(1 << k for k in range(0, 32, 2))
    zero = sum(1 << k for k in range(1, 32, 6))
    where = Qcow2Builder(size=1 << 20, backing="base.raw", extended_l2=True,
                         extensions=[(0xE2792ACA, b"raw")], data={0: b"\x41" * 65536},
                         bitmap_override={0: zero << 32 | alloc}).build(tmp_path / "top.qcow2")
    top = tmp_path / "top.qcow2"
    oracle_clean(top)
    model = to_raw(top, tmp_path / "model.raw")
    assert model.read_bytes()[:2048] == b"\x41" * 2048            # the builder is sound
    assert model.read_bytes()[2048:4096] == bytes(2048)
    assert model.read_bytes()[6144:8192] == b"\x31" * 2048
    end = top.stat().st_size
    with edit_image(str(top)) as disk, open(model, "r+b") as f:
        disk.write_at(5000, b"\x5e" * 100)
        f.seek(5000)
        f.write(b"\x5e" * 100)
    oracle_clean(top)
    same(top, model)
    assert top.stat().st_size == end                              # written in place
    l2 = where["l2"][0] * 65536
    entry, bitmap = struct.unpack_from(">QQ", top.read_bytes(), l2)
    assert entry & 0x00FFFFFFFFFFFE00 == where["data"][0] * 65536
    assert bitmap == 0xFFFFFFFF


def test_convert_keeps_extended_l2_unless_the_options_exclude_it(tmp_path: Path,
                                                                 runner) -> None:
    src = qemu_image(tmp_path, "s.qcow2", "extended_l2=on")
    for opts, ext in (("", True), ("cluster_size=4096", False), ("compat=0.10", False)):
        out = tmp_path / f"o{len(opts)}.qcow2"
        r = vdisk(runner, "convert", str(src), str(out), *(["-o", opts] if opts else []))
        assert r.exit_code == 0, r.output
        oracle_clean(out)
        same(out, src, "qcow2")
        assert _info(out)["format-specific"]["data"].get("extended-l2", False) is ext, opts
