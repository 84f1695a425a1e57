"""vdisk reads every qcow2 that qemu-img writes byte for byte as `qemu-img convert -O raw`
does: compat 0.10/1.1, cluster sizes 512 B to 2 MiB, refcount widths 1 to 64 bits,
lazy refcounts, compressed clusters, zero clusters of both kinds, extended L2 entries with
subclusters, every preallocation mode, internal snapshots and backing chains of qcow2,
VMDK and raw files. Patterns are put in with qemu-io; runs() agrees with `qemu-img map`."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk

from vdisk_tool.image.base import RunKind
from vdisk_tool.image.disk import open_image

MiB = 1 << 20


def qemu_img_bin() -> str:
    return need_tool("qemu-img")


def qemu_io_bin() -> str:
    return need_tool("qemu-io")

WRITES = ("write -P 0x11 0 4k", "write -P 0xab 1M 64k", "write -P 0x5c 3333k 7k",
          "write -z 2M 64k", "write -P 0x77 4M 128k", "write -z -u 4M 64k", "write -z 4160k 64k",
          "write -P 0xee 8188k 4k")


def _make(tmp: Path, name: str, opts: str = "", size: str = "8M", writes=WRITES,
          extra: tuple[str, ...] = ()) -> Path:
    p = tmp / name
    args = [qemu_img_bin(), "create", "-q", "-f", "qcow2"]
    if opts:
        args += ["-o", opts]
    run(*args, *extra, str(p), size)
    if writes:
        cmds = sum((["-c", w] for w in writes), [])
        run(qemu_io_bin(), "-f", "qcow2", *cmds, str(p))
    return p


def _raw_sha(p: Path, tmp: Path) -> str:
    out = tmp / (p.name + ".raw")
    run(qemu_img_bin(), "convert", "-O", "raw", str(p), str(out))
    return hashlib.sha256(out.read_bytes()).hexdigest()


def _vdisk_sha(p: Path) -> str:
    h = hashlib.sha256()
    with open_image(p) as d:
        pos = 0
        while pos < d.size_bytes:
            n = min(1 << 20, d.size_bytes - pos)
            h.update(d.read_at(pos, n))
            pos += n
    return h.hexdigest()


OPTIONS = ["compat=0.10", "compat=1.1", "cluster_size=512", "cluster_size=4096",
           "cluster_size=2M", "refcount_bits=1", "refcount_bits=2", "refcount_bits=4",
           "refcount_bits=8", "refcount_bits=32", "refcount_bits=64", "lazy_refcounts=on",
           "extended_l2=on", "extended_l2=on,cluster_size=2M", "preallocation=metadata",
           "preallocation=falloc", "preallocation=full", "compat=0.10,cluster_size=2048"]


@pytest.mark.parametrize("opts", OPTIONS)
def test_reads_what_qemu_writes(tmp_path: Path, opts: str) -> None:
    p = _make(tmp_path, "d.qcow2", opts)
    assert _vdisk_sha(p) == _raw_sha(p, tmp_path)


def test_compressed_clusters(tmp_path: Path) -> None:
    src = _make(tmp_path, "s.qcow2", writes=WRITES + ("write -P 0x42 6M 1M",))
    p = tmp_path / "c.qcow2"
    run(qemu_img_bin(), "convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", str(src), str(p))
    m = json.loads(run(qemu_img_bin(), "map", "--output=json", str(p)).stdout)
    assert any(e["data"] and "offset" not in e for e in m), "no compressed cluster made"
    assert _vdisk_sha(p) == _raw_sha(src, tmp_path)
    # a compressed cluster partly overwritten by qemu-io stays readable
    run(qemu_io_bin(), "-f", "qcow2", "-c", "write -P 0x99 6M 1k", str(p))
    assert _vdisk_sha(p) == _raw_sha(p, tmp_path)


def test_backing_chain_of_three_formats(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(range(256)) * (8 * MiB // 256))
    vm = tmp_path / "mid.vmdk"
    run(qemu_img_bin(), "convert", "-O", "vmdk", str(base), str(vm))
    _make(tmp_path, "mid.qcow2", writes=("write -P 0x33 1M 64k",),
           extra=("-b", "mid.vmdk", "-F", "vmdk"))
    top = _make(tmp_path, "top.qcow2", "extended_l2=on",
                writes=("write -P 0x44 1M 4k", "write -z 2M 8k", "write -P 0x55 100k 1k"),
                extra=("-b", "mid.qcow2", "-F", "qcow2"))
    assert _vdisk_sha(top) == _raw_sha(top, tmp_path)
    with open_image(top) as d:
        assert [Path(link.path).name for link in d.chain()] == ["top.qcow2", "mid.qcow2",
                                                                "mid.vmdk"]
        kinds = {r.kind for r in d.runs()}
        assert RunKind.PARENT in kinds and RunKind.ZERO in kinds


def test_backing_without_format_is_probed(tmp_path: Path) -> None:
    _make(tmp_path, "b.qcow2", writes=("write -P 0x61 0 64k",))
    top = _make(tmp_path, "t.qcow2", "compat=0.10", writes=("write -P 0x62 32k 1k",),
                extra=("-b", "b.qcow2", "-F", "qcow2"))
    data = bytearray(top.read_bytes())
    at = data.index(bytes.fromhex("e2792aca"))   # the backing format extension: made unknown
    data[at:at + 4] = bytes.fromhex("7a7a7a7a")
    top.write_bytes(bytes(data))
    assert _vdisk_sha(top) == _raw_sha(top, tmp_path)


def test_runs_match_qemu_map(tmp_path: Path) -> None:
    p = _make(tmp_path, "m.qcow2")
    qmap = json.loads(run(qemu_img_bin(), "map", "--output=json", str(p)).stdout)
    want = sorted((e["start"], e["start"] + e["length"]) for e in qmap if e["data"])
    with open_image(p) as d:
        got = [(r.offset, r.end) for r in d.runs() if r.kind == RunKind.DATA]
    merged: list[tuple[int, int]] = []
    for a, b in got:
        if merged and merged[-1][1] == a:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    assert merged == want


def test_info_lists_snapshots_and_backing(tmp_path: Path, runner) -> None:
    p = _make(tmp_path, "s.qcow2", "lazy_refcounts=on")
    run(qemu_img_bin(), "snapshot", "-c", "before-update", str(p))
    run(qemu_io_bin(), "-f", "qcow2", "-c", "write -P 0x12 1M 64k", str(p))
    res = vdisk(runner, "info", str(p))
    assert res.exit_code == 0, res.output
    assert "before-update" in res.stdout and "lazy refcounts: true" in res.stdout
    doc = json.loads(vdisk(runner, "info", str(p), "--json").stdout)
    assert doc["format"] == "qcow2" and doc["qcow2"]["snapshots"][0]["name"] == "before-update"
    # the active layer is what is read
    assert _vdisk_sha(p) == _raw_sha(p, tmp_path)


def test_format_option_forces_qcow2(tmp_path: Path, runner) -> None:
    p = _make(tmp_path, "disk.img")
    assert vdisk(runner, "info", "-f", "qcow2", str(p)).exit_code == 0
    raw = tmp_path / "r.img"
    raw.write_bytes(bytes(MiB))
    res = vdisk(runner, "info", "-f", "qcow2", str(raw))
    assert res.exit_code == 3 and "not a qcow2 image" in res.stderr


@pytest.mark.parametrize("target", ["out.raw", "out.qcow2", "out.vmdk"])
def test_the_unwritten_tail_of_the_last_cluster_reads_as_zeros(tmp_path: Path, runner,
                                                               target: str) -> None:
    """A file that ends inside its last data cluster (qemu writes no more than the data):
    the rest of that cluster reads as zeros, in runs() too, so every converter copies the
    stored part and leaves the rest as zeros, the bytes qemu-img reads."""
    from qcow2builder import Qcow2Builder
    p = tmp_path / "short.qcow2"
    where = Qcow2Builder(data={0: b"\x11" * 65536, 5: b"\x22" * 65536}).build(p)
    last = where["data"][5] * 65536
    with open(p, "r+b") as f:
        f.truncate(last + 1000)
    ref = tmp_path / "ref.raw"
    run(need_tool("qemu-img"), "convert", "-O", "raw", str(p), str(ref))
    with open_image(p) as d:
        runs = [r for r in d.extents[0].device.runs() if r.offset >= 5 * 65536]
        assert (runs[0].kind, runs[0].length_bytes, runs[0].file_offset) == (RunKind.DATA, 1000, last)
        assert runs[1].kind == RunKind.ZERO and runs[1].offset == 5 * 65536 + 1000
    r = vdisk(runner, "convert", str(p), str(tmp_path / target))
    assert r.exit_code == 0, r.output
    res = run("qemu-img", "compare", "-F", "raw", str(tmp_path / target), str(ref), check=False)
    assert res.returncode == 0, res.stdout
