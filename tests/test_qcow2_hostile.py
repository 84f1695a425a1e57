"""Hostile qcow2 images, built by tests/qcow2builder.py (from qemu's docs/interop/qcow2.txt,
not by vdisk's writer): each is refused by every reading command with one `vdisk: error:`
line naming the problem, exit 3, no traceback, the file unchanged, and a bounded peak of
memory (a huge L1 or refcount table is never allocated)."""
from __future__ import annotations

import re
import struct
import tracemalloc
from pathlib import Path

import pytest
from conftest import need_tool, run
from qcow2builder import COPIED, Qcow2Builder
from typer.testing import CliRunner

from vdisk_tool.cli.app import app
from vdisk_tool.errors import VdiskError
from vdisk_tool.image.check import check_image
from vdisk_tool.image.disk import open_image

PEAK_BYTES = 24 << 20


def _ext(etype: int, data: bytes) -> tuple[int, bytes]:
    return etype, data


CASES: dict[str, tuple[dict, str]] = {
    "cluster-bits-8": (dict(header={"cluster_bits": 8}), r"cluster_bits.*got 8"),
    "cluster-bits-31": (dict(header={"cluster_bits": 31}), r"cluster_bits.*got 31"),
    "version-4": (dict(header={"version": 4}), r"qcow"),
    "l1-past-eof": (dict(header={"l1_table_offset": 1 << 40}), r"L1 table.*past the end"),
    "l1-size-huge": (dict(header={"l1_size": 0xFFFFFFF0}), r"l1_size.*larger than 32 MiB"),
    "l1-too-small": (dict(header={"l1_size": 0}), r"cannot map"),
    "reftable-over-header": (dict(header={"refcount_table_offset": 0}), r"refcount_table_offset"),
    "reftable-huge": (dict(header={"refcount_table_clusters": 1 << 30}), r"refcount_table_clusters"),
    "reftable-over-l1": (dict(header={"refcount_table_offset": 3 << 16}), r"overlaps"),
    "refcount-order-7": (dict(header={"refcount_order": 7}), r"refcount_order.*got 7"),
    "header-length-bogus": (dict(header={"header_length": 0xFFFF0}), r"header_length"),
    "header-length-short": (dict(header={"header_length": 72}), r"header_length"),
    "extension-length-bogus": (dict(extensions=[(0x12345678, b"")], header={}),
                               r"header extension"),
    "backing-name-too-long": (dict(header={"backing_file_offset": 200,
                                           "backing_file_size": 5000}), r"backing file name"),
    "encrypted": (dict(header={"crypt_method": 1}), r"encrypted"),
    "external-data-file": (dict(incompatible=1 << 2), r"external data file"),
    "unknown-incompatible": (dict(incompatible=1 << 9), r"incompatible features.*bit 9"),
    "zstd": (dict(incompatible=1 << 3, header={"header_length": 112}), r"zstd"),
    "snapshots-huge": (dict(header={"nb_snapshots": 1 << 31}), r"nb_snapshots"),
}


COMMANDS = (["info"], ["check"], ["map"], ["fs", "ls"], ["verify"])


def _build(tmp: Path, name: str) -> Path:
    kw, _ = CASES[name]
    kw = dict(kw)
    b = Qcow2Builder(**{k: v for k, v in kw.items() if k != "extensions"})
    b.data = {0: b"\x42" * 4096}
    p = tmp / f"{name}.qcow2"
    b.build(p)
    if name == "extension-length-bogus":
        data = bytearray(p.read_bytes())
        struct.pack_into(">II", data, 104, 0x12345678, 0x7FFFFFF0)   # length past the cluster
        p.write_bytes(bytes(data))
    if name == "zstd":
        data = bytearray(p.read_bytes())
        data[104:112] = b"\x01" + bytes(7)                           # compression_type 1
        data[112:120] = bytes(8)
        p.write_bytes(bytes(data))
    return p


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_header_is_refused(tmp_path: Path, name: str) -> None:
    p = _build(tmp_path, name)
    before = p.read_bytes()
    runner = CliRunner()
    for cmd in COMMANDS:
        res = runner.invoke(app, [*cmd, str(p)])
        assert res.exit_code == 3, (cmd, res.output)
        lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("hint:")]
        assert len(lines) == 1 and lines[0].startswith("vdisk: error:"), res.stderr
        assert re.search(CASES[name][1], lines[0]), lines[0]
        assert "Traceback" not in res.output
    for what in (open_image, check_image):   # what the commands do first, measured
        tracemalloc.start()
        with pytest.raises(VdiskError):
            what(str(p))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < PEAK_BYTES, f"{what.__name__}: {peak} bytes"
    assert p.read_bytes() == before


def test_backing_chain_loop_is_refused(tmp_path: Path) -> None:
    for me, other in (("a", "b"), ("b", "a")):
        b = Qcow2Builder(backing=f"{other}.qcow2")
        b.build(tmp_path / f"{me}.qcow2")
    res = CliRunner().invoke(app, ["info", str(tmp_path / "a.qcow2")])
    assert res.exit_code == 3 and "loops back" in res.stderr, res.output


def test_backing_chain_depth_is_bounded(tmp_path: Path) -> None:
    Qcow2Builder().build(tmp_path / "l0.qcow2")
    for i in range(1, 70):
        Qcow2Builder(backing=f"l{i - 1}.qcow2").build(tmp_path / f"l{i}.qcow2")
    res = CliRunner().invoke(app, ["info", str(tmp_path / "l69.qcow2")])
    assert res.exit_code == 3 and "deeper than 64" in res.stderr, res.output


def test_backing_outside_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    Qcow2Builder().build(tmp_path / "base.qcow2")
    Qcow2Builder(backing="../base.qcow2").build(tmp_path / "sub" / "top.qcow2")
    res = CliRunner().invoke(app, ["info", str(tmp_path / "sub" / "top.qcow2")])
    assert res.exit_code == 3 and "outside the image's folder" in res.stderr, res.output
    res = CliRunner().invoke(app, ["info", "--allow-outside", str(tmp_path / "sub" / "top.qcow2")])
    assert res.exit_code == 0, res.output


def test_l2_entry_past_eof_reads_as_an_error(tmp_path: Path) -> None:
    b = Qcow2Builder(data={0: b"\x01" * 512}, l2_override={1: (1 << 40) | COPIED})
    p = tmp_path / "d.qcow2"
    b.build(p)
    res = CliRunner().invoke(app, ["convert", str(p), str(tmp_path / "out.raw")])
    assert res.exit_code == 3 and "past the end of the file" in res.stderr, res.output
    assert not (tmp_path / "out.raw").exists()


def test_builder_image_is_what_qemu_reads(tmp_path: Path) -> None:
    """The builder is sound: qemu-img checks its images clean and reads the same bytes."""
    p = tmp_path / "ok.qcow2"
    Qcow2Builder(data={0: b"\x11" * 65536, 5: b"\x22" * 100}, refcount_order=2).build(p)
    assert run(need_tool("qemu-img"), "check", str(p), check=False).returncode == 0
    out = tmp_path / "ok.raw"
    run("qemu-img", "convert", "-O", "raw", str(p), str(out))
    with open_image(p) as d:
        assert d.read_at(0, d.size_bytes) == out.read_bytes()
