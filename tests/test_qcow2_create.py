"""`vdisk create`/`convert -O qcow2 -o extended_l2=on,preallocation=…` as qemu-img offers
them: judged by `qemu-img check`, `qemu-img info --output=json`, `qemu-img map` (against
`qemu-img create` with the same options) and `qemu-img compare`; then writes into the new
images through vdisk's edit path, against a raw model."""
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
