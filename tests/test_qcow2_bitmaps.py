"""Persistent dirty bitmaps of qcow2 images qemu-img made: an edit through vdisk marks the
`auto` ones in use (qemu and libvirt then distrust them, as after any writer that cannot
update them), leaves the disabled ones alone, and keeps the image clean for qemu-img
check; reading marks nothing; grow is refused while bitmaps exist."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk


def _flags(qemu_img: str, image: Path) -> dict[str, list[str]]:
    info = json.loads(run(qemu_img, "info", "--output=json", str(image)).stdout)
    return {b["name"]: sorted(b["flags"]) for b in info["format-specific"]["data"]["bitmaps"]}


@pytest.fixture
def fat_qcow2(tmp_path: Path) -> Path:
    """A FAT volume in a qcow2 with two bitmaps: b0 recording (auto), b1 disabled."""
    qemu_img, mkfs = need_tool("qemu-img"), need_tool("mkfs.fat")
    raw = tmp_path / "f.raw"
    with open(raw, "wb") as f:
        f.truncate(64 << 20)
    run(mkfs, str(raw))
    img = tmp_path / "f.qcow2"
    run(qemu_img, "convert", "-O", "qcow2", str(raw), str(img))
    run(qemu_img, "bitmap", "--add", str(img), "b0")
    run(qemu_img, "bitmap", "--add", "-g", "128k", str(img), "b1")
    run(qemu_img, "bitmap", "--disable", str(img), "b1")
    assert _flags(qemu_img, img) == {"b0": ["auto"], "b1": []}
    return img


def test_an_edit_marks_the_recording_bitmaps_in_use(tmp_path: Path, runner, fat_qcow2: Path):
    qemu_img, mcopy = need_tool("qemu-img"), need_tool("mcopy")
    src = tmp_path / "hello.txt"
    src.write_bytes(b"hello bitmaps\n")
    res = vdisk(runner, "fs", "put", str(fat_qcow2), str(src), "/HELLO.TXT")
    assert res.exit_code == 0, res.output
    assert _flags(qemu_img, fat_qcow2) == {"b0": ["auto", "in-use"], "b1": []}
    assert run(qemu_img, "check", str(fat_qcow2), check=False).returncode == 0
    raw = tmp_path / "after.raw"
    run(qemu_img, "convert", "-O", "raw", str(fat_qcow2), str(raw))
    got = run(mcopy, "-n", "-i", str(raw), "::/HELLO.TXT", "-")
    assert got.stdout == "hello bitmaps\n"
    # a second edit finds it marked already and changes nothing more about the bitmaps
    assert vdisk(runner, "fs", "put", str(fat_qcow2), str(src), "/AGAIN.TXT").exit_code == 0
    assert _flags(qemu_img, fat_qcow2) == {"b0": ["auto", "in-use"], "b1": []}


def test_reading_and_a_dry_run_mark_nothing(tmp_path: Path, runner, fat_qcow2: Path):
    before = fat_qcow2.read_bytes()
    assert vdisk(runner, "fs", "ls", str(fat_qcow2), "/").exit_code == 0
    src = tmp_path / "x.txt"
    src.write_bytes(b"x")
    assert vdisk(runner, "fs", "put", str(fat_qcow2), str(src), "/X.TXT",
                 "--dry-run").exit_code == 0
    assert vdisk(runner, "check", str(fat_qcow2)).exit_code == 0
    assert fat_qcow2.read_bytes() == before


def test_grow_is_refused_while_bitmaps_exist(runner, fat_qcow2: Path):
    before = fat_qcow2.read_bytes()
    res = vdisk(runner, "grow", str(fat_qcow2), "--size", "128M")
    assert res.exit_code == 3
    assert "bitmap" in res.stderr and "qemu-img bitmap" in res.stderr
    assert fat_qcow2.read_bytes() == before
