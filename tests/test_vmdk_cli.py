"""`vdisk info / map / compare` on images qemu-img made, held against qemu-img's own view
(`qemu-img info --output=json`, `qemu-img map --output=json`) and against the offsets
qemu-io wrote."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import vmdkcorpus as vc
from conftest import need_tool, vdisk

MIB = 1 << 20
GRAIN = 64 * 1024
SIZE = 2 * (1 << 30) + 3 * MIB  # two extents in the split subformats
WRITES = [vc.Write(0xA1, 0, 3000), vc.Write(0xB2, 5 * GRAIN - 100, 200),
          vc.Write(0xC3, 40 * MIB, GRAIN), vc.Write(0xD4, (1 << 31) - 512, 1024)]
STREAM_WRITES = [vc.Write(0xA1, 0, GRAIN), vc.Write(0xC3, 40 * MIB, GRAIN),
                 vc.Write(0xD4, (1 << 31) - GRAIN, 2 * GRAIN)]
SUBFORMATS = ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat", "streamOptimized"]


def writes_for(sub: str) -> list[vc.Write]:
    return STREAM_WRITES if sub == "streamOptimized" else WRITES


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    need_tool("qemu-img")
    need_tool("qemu-io")
    out = {}
    for sub in SUBFORMATS:
        img = vc.qemu_create(tmp_path_factory.mktemp(sub) / "disk.vmdk", SIZE, sub)
        vc.qemu_write(img, writes_for(sub))
        out[sub] = img
    return out


def qemu_json(*args: str) -> object:
    res = subprocess.run(["qemu-img", *args, "--output=json"], capture_output=True, text=True,
                         check=True)
    return json.loads(res.stdout)


def spans(ranges) -> list[tuple[int, int]]:
    """Merge (start, end) pairs."""
    out: list[list[int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def covers(outer: list[tuple[int, int]], inner: list[tuple[int, int]]) -> bool:
    return all(any(s <= a and b <= e for s, e in outer) for a, b in inner)


@pytest.mark.parametrize("sub", SUBFORMATS)
def test_info_json_matches_qemu(runner, made, sub):
    image = made[sub]
    res = vdisk(runner, "info", "--json", str(image))
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    q = qemu_json("info", str(image))
    qd = q["format-specific"]["data"]
    assert got["format"] == "vmdk"
    assert got["subformat"] == qd["create-type"] == sub
    assert got["virtual_size_bytes"] == q["virtual-size"] == SIZE
    assert got["cid"] == f"{qd['cid']:08x}"
    assert got["parent_cid"] == f"{qd['parent-cid']:08x}" == "ffffffff"
    assert [Path(e["file"]).name for e in got["extents"]] == [Path(e["filename"]).name
                                                          for e in qd["extents"]]
    assert [e["sectors"] * 512 for e in got["extents"]] == [e["virtual-size"]
                                                            for e in qd["extents"]]
    # qemu names the extent type only when a text descriptor lists it
    assert [e["type"] for e in got["extents"]] == [e["format"] or "SPARSE" for e in qd["extents"]]
    assert got["adapter"] == "ide"
    assert got["geometry"]["heads"] == 16 and got["geometry"]["sectors"] == 63


def test_info_text(runner, made):
    res = vdisk(runner, "info", str(made["twoGbMaxExtentSparse"]))
    assert res.exit_code == 0
    assert "twoGbMaxExtentSparse" in res.stdout
    assert f"({SIZE} bytes)" in res.stdout
    assert res.stdout.count("extent: RW") == 2


@pytest.mark.parametrize("sub", SUBFORMATS)
def test_map_data_runs_match_writes_and_qemu(runner, made, sub):
    image = made[sub]
    res = vdisk(runner, "map", "--json", str(image))
    assert res.exit_code == 0, res.output
    runs = json.loads(res.stdout)["runs"]
    # runs tile the disk exactly
    pos = 0
    for r in runs:
        assert r["offset"] == pos and r["length"] > 0
        pos += r["length"]
    assert pos == SIZE
    data = spans((r["offset"], r["offset"] + r["length"]) for r in runs if r["kind"] == "data")
    written = [(w.offset, w.offset + w.length) for w in writes_for(sub)]
    grains = spans((w.offset // GRAIN * GRAIN, -(-(w.offset + w.length) // GRAIN) * GRAIN)
                   for w in writes_for(sub))
    assert covers(data, written), (data, written)   # every written byte is in a data run
    assert covers(grains, data), (data, grains)     # and data runs only where writes landed
    qmap = qemu_json("map", str(image))
    qdata = spans((m["start"], m["start"] + m["length"]) for m in qmap if m["data"])
    if "Flat" in sub:  # qemu calls a whole flat extent data; vdisk asks the host for holes
        assert covers(qdata, data)
    else:
        assert data == qdata


def test_map_shows_parent_runs(runner, tmp_path):
    need_tool("qemu-img")
    parent = vc.qemu_create(tmp_path / "base.vmdk", 8 * MIB)
    vc.qemu_write(parent, [vc.Write(0x10, 0, 2 * GRAIN)])
    child = vc.qemu_create(tmp_path / "snap.vmdk", 8 * MIB, backing=parent)
    vc.qemu_write(child, [vc.Write(0x20, 3 * GRAIN, 10)])
    res = vdisk(runner, "map", "--json", str(child))
    assert res.exit_code == 0, res.output
    runs = json.loads(res.stdout)["runs"]
    data = [(r["offset"], r["length"]) for r in runs if r["kind"] == "data"]
    assert data == [(3 * GRAIN, GRAIN)]
    # "parent": the parent stores these bytes (with its file offsets); elsewhere nothing is stored
    parent_runs = [(r["offset"], r["length"]) for r in runs if r["kind"] == "parent"]
    assert parent_runs == [(0, 2 * GRAIN)]
    assert all(Path(r["file"]).name == "base.vmdk" for r in runs if r["kind"] == "parent")
    assert {r["kind"] for r in runs} == {"data", "parent", "unallocated"}
    info = json.loads(vdisk(runner, "info", "--json", str(child)).stdout)
    assert info["parent_cid"] == json.loads(
        vdisk(runner, "info", "--json", str(parent)).stdout)["cid"]
    assert [Path(p).name for p in info["chain"]] == ["snap.vmdk", "base.vmdk"]


def test_compare_identical_across_subformats(runner, made, tmp_path):
    sparse = made["monolithicSparse"]
    raw = vc.qemu_to_raw(sparse, tmp_path / "same.raw")
    res = vdisk(runner, "compare", str(sparse), str(raw))
    assert res.exit_code == 0, res.output
    assert "identical" in res.stdout
    split = made["twoGbMaxExtentFlat"]
    res = vdisk(runner, "compare", "--json", str(sparse), str(split))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["same"] is True


@pytest.mark.parametrize("offset", [0, 3001, 40 * MIB + 12345, (1 << 31) + 300, SIZE - 1])
def test_compare_reports_first_difference(runner, made, tmp_path, offset):
    src = made["monolithicSparse"]
    copy = tmp_path / "copy.vmdk"
    shutil.copy2(src, copy)
    vc.qemu_write(copy, [vc.Write(0xEE, offset, 1),
                         vc.Write(0xEE, min(offset + 5000, SIZE - 1), 1)])
    res = vdisk(runner, "compare", str(src), str(copy))
    assert res.exit_code == 1, res.output
    assert f"offset {offset} " in res.stdout
    res = vdisk(runner, "compare", "--json", str(copy), str(src))
    assert res.exit_code == 1
    assert json.loads(res.stdout)["first_difference"] == offset
    q = subprocess.run(["qemu-img", "compare", str(src), str(copy)], capture_output=True,
                       text=True, check=False)
    # qemu-img names the first differing sector
    assert q.returncode == 1 and f"offset {offset // 512 * 512}!" in q.stdout


def test_compare_size_difference_with_zero_tail(runner, tmp_path):
    need_tool("qemu-img")
    a = vc.qemu_create(tmp_path / "a.vmdk", 4 * MIB)
    b = vc.qemu_create(tmp_path / "b.vmdk", 6 * MIB)
    for img in (a, b):
        vc.qemu_write(img, [vc.Write(0x42, 1000, 1000)])
    assert vdisk(runner, "compare", str(a), str(b)).exit_code == 0
    vc.qemu_write(b, [vc.Write(0x01, 5 * MIB, 1)])
    res = vdisk(runner, "compare", "--json", str(a), str(b))
    assert res.exit_code == 1
    assert json.loads(res.stdout)["first_difference"] == 5 * MIB


def test_info_raw_image(runner, tmp_path):
    raw = vc.write_raw(tmp_path / "disk.img", 3 * MIB, [vc.Write(0x01, 0, 512)])
    res = vdisk(runner, "info", "--json", str(raw))
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["format"] == got["subformat"] == "raw"
    assert got["virtual_size_bytes"] == 3 * MIB
    assert got["extents"][0]["sectors"] == 3 * MIB // 512
    assert got["extents"][0]["type"] != "SPARSE"


def test_missing_image_is_one_error_line(runner, tmp_path):
    res = vdisk(runner, "info", str(tmp_path / "nope.vmdk"))
    assert res.exit_code == 3
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("vdisk: error:") and "nope.vmdk" in lines[0]
    assert all(ln.startswith("hint:") for ln in lines[1:])


# -- the other direction: vdisk writes, qemu-img and libvmdk read ----------------------------------
WRITE_SUBFORMATS = ["monolithicSparse", "monolithicFlat", "vmfs", "twoGbMaxExtentSparse",
                    "twoGbMaxExtentFlat", "streamOptimized"]


@pytest.mark.parametrize("sub", WRITE_SUBFORMATS)
def test_convert_output_reads_back_in_qemu(runner, made, tmp_path, sub):
    """`vdisk convert` of a qemu-made disk (2 GiB + 3 MiB, data across the 2 GiB line) to
    every subformat: qemu-img compare finds it identical, qemu-img check and vmdkinfo
    accept it, and the split subformats are cut where VMware cuts (2047 MiB)."""
    need_tool("vmdkinfo")
    src = made["monolithicSparse"]
    dst = tmp_path / "out.vmdk"
    res = vdisk(runner, "convert", "--subformat", sub, str(src), str(dst))
    assert res.exit_code == 0, res.output
    q = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "vmdk", str(src), str(dst)],
                       capture_output=True, text=True, check=False)
    assert q.returncode == 0, q.stdout + q.stderr
    q = subprocess.run(["qemu-img", "check", str(dst)], capture_output=True, text=True,
                       check=False)
    assert q.returncode == 0, q.stdout + q.stderr
    info = qemu_json("info", str(dst))
    assert info["virtual-size"] == SIZE
    assert info["format-specific"]["data"]["create-type"] == sub
    if sub.startswith("twoGb"):
        sizes = [e["virtual-size"] for e in info["format-specific"]["data"]["extents"]]
        assert sizes == [2047 * MIB, SIZE - 2047 * MIB]
    v = subprocess.run(["vmdkinfo", str(dst)], capture_output=True, text=True, check=False)
    assert v.returncode == 0 and f"({SIZE} bytes)" in v.stdout, v.stdout + v.stderr
    res = vdisk(runner, "check", str(dst))
    assert res.exit_code == 0, res.output


def test_stream_output_has_vmware_layout(runner, made, tmp_path):
    """vdisk's streamOptimized is VMware's: version 3, GD_AT_END, footer, EOS at the end."""
    dst = tmp_path / "s.vmdk"
    assert vdisk(runner, "convert", "-F", "streamOptimized", str(made["monolithicSparse"]),
                 str(dst)).exit_code == 0
    h = vc.read_header(dst)
    assert h["version"] == 3 and h["gd_offset"] == vc.GD_AT_END
    both = vc.FLAG_COMPRESSED | vc.FLAG_MARKERS
    assert h["flags"] & both == both
    tail = dst.read_bytes()[-1536:]
    assert tail[512:516] == b"KDMV" and tail[1024:] == bytes(512)
    assert int.from_bytes(tail[12:16], "little") == vc.MARKER_FOOTER
    footer = vc.read_header(dst, dst.stat().st_size - 1024)
    assert footer["gd_offset"] not in (0, vc.GD_AT_END)


@pytest.mark.parametrize("sub", WRITE_SUBFORMATS)
@pytest.mark.parametrize("adapter", ["ide", "lsilogic"])
def test_create_matches_qemu_view(runner, tmp_path, sub, adapter):
    need_tool("qemu-img")
    dst = tmp_path / "new.vmdk"
    res = vdisk(runner, "create", "--size", "100M", "-F", sub, "--adapter", adapter, str(dst))
    assert res.exit_code == 0, res.output
    info = qemu_json("info", str(dst))
    assert info["virtual-size"] == 100 * MIB
    assert info["format-specific"]["data"]["create-type"] == sub
    got = json.loads(vdisk(runner, "info", "--json", str(dst)).stdout)
    assert got["adapter"] == adapter
    heads = 16 if adapter == "ide" else 255
    assert got["geometry"] == {"cylinders": 100 * MIB // 512 // (heads * 63), "heads": heads,
                               "sectors": 63}
    if "Flat" not in sub and sub != "vmfs":  # qemu calls every flat byte data
        assert not any(e["data"] for e in qemu_json("map", str(dst)))
