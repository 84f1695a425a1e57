"""`vdisk grow` of a qcow2 with a backing file does what `qemu-img resize` does: the area
past the old size reads as zeros (zero clusters where the backing file is larger, nothing
where it ends before), the backing file is never written. Judged by `qemu-img check`, by
`qemu-img compare` against `qemu-img resize` of a copy and against the raw expectation."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk
from qcow2builder import Qcow2Builder
from test_qcow2_write import oracle_clean, same

MiB = 1 << 20


def _img() -> str:
    return need_tool("qemu-img")


def _overlay(tmp: Path, opts: str, size: str, base_mib: int = 16) -> Path:
    """base.qcow2 (`base_mib` MiB of 0x31) and top.qcow2 over it, with writes of its own
    (one into the last cluster before the old end)."""
    base = tmp / "base.qcow2"
    run(_img(), "create", "-q", "-f", "qcow2", str(base), f"{base_mib}M")
    run(need_tool("qemu-io"), "-f", "qcow2", "-c", f"write -P 0x31 0 {base_mib}M", str(base))
    top = tmp / "top.qcow2"
    run(_img(), "create", "-q", "-f", "qcow2", *(["-o", opts] if opts else []), "-b",
        "base.qcow2", "-F", "qcow2", str(top), size)
    old = int(json.loads(run(_img(), "info", "--output=json", str(top)).stdout)["virtual-size"])
    run(need_tool("qemu-io"), "-f", "qcow2", "-c", "write -P 0x77 64k 4k",
        "-c", f"write -P 0x78 {old - 4096} 4096", str(top))
    return top


def _expected_raw(tmp: Path, top: Path, new_bytes: int) -> Path:
    """The overlay's content before the grow, then zeros."""
    raw = tmp / "expected.raw"
    run(_img(), "convert", "-O", "raw", str(top), str(raw))
    with open(raw, "r+b") as f:
        f.truncate(new_bytes)
    return raw


@pytest.mark.parametrize("opts,size", [
    ("", "8M"),                                  # v3, 64 KiB clusters, whole clusters
    ("extended_l2=on", "8389120"),               # extended L2; the old end inside a cluster
    ("cluster_size=512", "8M"),                  # the L1 table moves, many new L2 tables
    ("cluster_size=4096,refcount_bits=1", "6291968"),
])
def test_grow_over_a_larger_backing_file_reads_zeros(tmp_path: Path, runner, opts: str,
                                                     size: str) -> None:
    top = _overlay(tmp_path, opts, size)
    base = tmp_path / "base.qcow2"
    base_before = base.read_bytes()
    expected = _expected_raw(tmp_path, top, 64 * MiB)
    qemu_copy = tmp_path / "qemu.qcow2"
    shutil.copy(top, qemu_copy)
    run(_img(), "resize", "-q", str(qemu_copy), "64M")
    r = vdisk(runner, "grow", str(top), "--size", "64M")
    assert r.exit_code == 0, r.output
    oracle_clean(top)
    same(top, qemu_copy, "qcow2")
    same(top, expected)
    assert base.read_bytes() == base_before
    info = json.loads(run(_img(), "info", "--output=json", str(top)).stdout)
    assert info["virtual-size"] == 64 * MiB
    assert info["backing-filename"] == "base.qcow2"
    # the new area is zero clusters (qemu-img map: depth 0, zero), not backing-file data
    tail = json.loads(run(_img(), "map", "--output=json", str(top)).stdout)[-1]
    assert tail["zero"] and tail["depth"] == 0 and tail["start"] + tail["length"] == 64 * MiB


def test_grow_over_a_shorter_backing_file_needs_no_zero_clusters(tmp_path: Path, runner) -> None:
    top = _overlay(tmp_path, "", "24M", base_mib=16)
    expected = _expected_raw(tmp_path, top, 40 * MiB)
    end_before = top.stat().st_size
    assert vdisk(runner, "grow", str(top), "--size", "40M").exit_code == 0
    oracle_clean(top)
    same(top, expected)
    assert top.stat().st_size == end_before        # only header fields changed


def test_grow_twice_and_write_past_the_old_end(tmp_path: Path, runner) -> None:
    top = _overlay(tmp_path, "cluster_size=16384", "4M")
    expected = _expected_raw(tmp_path, top, 32 * MiB)
    assert vdisk(runner, "grow", str(top), "--size", "12M").exit_code == 0
    assert vdisk(runner, "grow", str(top), "--size", "32M").exit_code == 0
    from vdisk_tool.image.edit import edit_image
    with edit_image(str(top)) as disk, open(expected, "r+b") as f:
        for off in (4 * MiB + 100, 14 * MiB - 3):
            disk.write_at(off, b"\x5e" * 3000)
            f.seek(off)
            f.write(b"\x5e" * 3000)
    oracle_clean(top)
    same(top, expected)


def test_grow_of_a_v2_image_over_a_larger_backing_file_is_refused(tmp_path: Path,
                                                                  runner) -> None:
    """qemu-img resize fails here too ("Failed to zero out new clusters"): version 2 has no
    zero clusters."""
    top = _overlay(tmp_path, "compat=0.10", "8M")
    before = top.read_bytes()
    r = vdisk(runner, "grow", str(top), "--size", "64M")
    assert r.exit_code == 3, r.output
    assert "compat=0.10" in r.output and "Traceback" not in r.output
    assert top.read_bytes() == before
    assert run(_img(), "resize", "-q", str(top), "64M", check=False).returncode != 0


def test_grow_of_a_v2_image_over_a_shorter_backing_file(tmp_path: Path, runner) -> None:
    top = _overlay(tmp_path, "compat=0.10", "20M")
    expected = _expected_raw(tmp_path, top, 48 * MiB)
    assert vdisk(runner, "grow", str(top), "--size", "48M").exit_code == 0
    oracle_clean(top)
    same(top, expected)


def test_grow_hides_a_stale_entry_past_the_old_size(tmp_path: Path, runner) -> None:
    """A builder-made overlay (1 MiB over a 4 MiB raw backing file) whose L2 table maps a
    cluster past its size: the grow zeroes it in place (its host cluster stays referenced,
    as qemu keeps it), so neither it nor the backing file shows."""
    (tmp_path / "base.raw").write_bytes(b"\x31" * (4 * MiB))
    b = Qcow2Builder(size=1 * MiB, backing="base.raw",
                     extensions=[(0xE2792ACA, b"raw")],
                     data={0: b"\x41" * 65536, 20: b"\x42" * 65536})
    b.build(tmp_path / "top.qcow2")
    top = tmp_path / "top.qcow2"
    oracle_clean(top)
    expected = _expected_raw(tmp_path, top, 8 * MiB)
    assert vdisk(runner, "grow", str(top), "--size", "8M").exit_code == 0
    oracle_clean(top)
    same(top, expected)
    assert (tmp_path / "base.raw").read_bytes() == b"\x31" * (4 * MiB)
