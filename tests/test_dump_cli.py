"""`vdisk dump` on stores from the independent builder, as raw, flat, sparse and
streamOptimized disks (qemu-img does the conversion, so vdisk's writer is not involved)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run, vdisk
from dumpbuilder import StoreBuilder, dump_text, record_header, store_header

MiB = 1 << 20
SUBFORMATS = ["raw", "monolithicFlat", "monolithicSparse", "streamOptimized"]


def _as(raw: str, subformat: str, qemu_img: str) -> str:
    if subformat == "raw":
        return raw
    out = raw[:-4] + ".vmdk"
    run(qemu_img, "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}", raw, out)
    return out


def _store(tmp_path, *, torn_newest=False, header=True, wrap=False):
    """Slots 0..2 with sequences 1..3 (or a wrapped ring of 9); the newest maybe torn."""
    b = StoreBuilder(8 * MiB)
    texts = {}
    seqs = range(1, 10) if wrap else range(1, 4)
    for seq in seqs:
        tear = 300 if torn_newest and seq == seqs[-1] else None
        texts[seq] = b.record((seq - 1) % 7, seq, dump_text(seq, lines=60), tear_at=tear)
    if header:
        b.header()
    else:
        b.raw(0, b"\xff" * 512)
    return b.write(tmp_path / "hd-dump.img"), texts


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_list_and_extract_across_subformats(tmp_path, runner, qemu_img, subformat):
    raw, texts = _store(tmp_path, torn_newest=True)
    disk = _as(raw, subformat, qemu_img)
    r = vdisk(runner, "dump", "list", disk, "--json")
    assert r.exit_code == 1                      # a torn record
    d = json.loads(r.stdout)
    assert [(x["slot"], x["sequence"], x["status"]) for x in d["records"]] == [
        (0, 1, "good"), (1, 2, "good"), (2, 3, "torn")]
    assert d["header_ok"] and d["empty_slots"] == 4
    assert d["records"][0]["version"] == "13r2 sr11" and d["records"][0]["build"] == 90468
    out = tmp_path / "crash_dump.txt"
    r = vdisk(runner, "dump", "extract", disk, "-o", str(out))
    assert r.exit_code == 1 and "newest record 3 (slot 2) is torn" in r.stderr   # said, exit 1
    assert out.read_bytes() == texts[2]          # newest good, never the torn one
    r = vdisk(runner, "dump", "extract", disk, "-o", str(out))
    assert r.exit_code == 3 and "--overwrite" in r.stderr       # never overwritten silently
    r = vdisk(runner, "dump", "extract", disk, "-o", str(out), "--overwrite", "--sequence", "1")
    assert r.exit_code == 0 and out.read_bytes() == texts[1]


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized"])
def test_corrupt_header_and_wrap_around(tmp_path, runner, qemu_img, subformat):
    raw, texts = _store(tmp_path, header=False, wrap=True)
    disk = _as(raw, subformat, qemu_img)
    r = vdisk(runner, "dump", "list", disk)
    assert r.exit_code == 1
    assert "header damaged" in r.stdout and "dump.header-magic" in r.stdout
    assert "7 good" in r.stdout
    r = vdisk(runner, "dump", "extract", disk, "-o", "-")
    assert r.exit_code == 0
    assert r.stdout_bytes == texts[9]


def test_list_text_and_exit_codes(tmp_path, runner):
    raw, _ = _store(tmp_path)
    r = vdisk(runner, "dump", "list", raw)
    assert r.exit_code == 0
    assert "3 record(s): 3 good, 0 torn; 4 empty slot(s)" in r.stdout
    lines = [ln.split() for ln in r.stdout.splitlines() if ln.strip().startswith(("0", "1", "2"))]
    assert [ln[1] for ln in lines] == ["1", "2", "3"]
    r = vdisk(runner, "dump", "list", raw, "--all-slots", "--json")
    assert [x["status"] for x in json.loads(r.stdout)["records"]].count("empty") == 4


def test_extract_sequence_all_and_salvage(tmp_path, runner):
    raw, texts = _store(tmp_path, torn_newest=True)
    r = vdisk(runner, "dump", "extract", raw, "--sequence", "3", "-o", str(tmp_path / "x"))
    assert r.exit_code == 3 and "torn" in r.stderr and "--salvage" in r.stderr
    assert not (tmp_path / "x").exists()
    r = vdisk(runner, "dump", "extract", raw, "--sequence", "3", "--salvage", "-o",
              str(tmp_path / "x"))
    assert r.exit_code == 0 and "warning" in r.stderr
    got = (tmp_path / "x").read_bytes()
    assert got[:300] == texts[3][:300] and got[300:] == bytes(len(texts[3]) - 300)
    r = vdisk(runner, "dump", "extract", raw, "--sequence", "1", "-o", str(tmp_path / "one"))
    assert (tmp_path / "one").read_bytes() == texts[1]
    r = vdisk(runner, "dump", "extract", raw, "--sequence", "9", "-o", str(tmp_path / "n"))
    assert r.exit_code == 3
    r = vdisk(runner, "dump", "extract", raw, "--all", str(tmp_path / "all"))
    assert r.exit_code == 1 and "record 3 (slot 2) is torn: skipped" in r.stderr
    assert sorted(os.listdir(tmp_path / "all")) == ["crash_dump_1.txt", "crash_dump_2.txt"]
    r = vdisk(runner, "dump", "extract", raw, "--all", str(tmp_path / "all"), "--salvage",
              "--overwrite")
    assert r.exit_code == 0
    assert sorted(os.listdir(tmp_path / "all")) == ["crash_dump_1.txt", "crash_dump_2.txt",
                                                   "crash_dump_3.torn.txt"]
    r = vdisk(runner, "dump", "extract", raw, "--salvage", "-o", "-")
    assert r.stdout_bytes[:300] == texts[3][:300]


def test_empty_store(tmp_path, runner, qemu_img):
    raw = StoreBuilder(8 * MiB).header().write(tmp_path / "e.img")
    disk = _as(raw, "monolithicSparse", qemu_img)
    r = vdisk(runner, "dump", "list", disk)
    assert r.exit_code == 0 and "0 record(s)" in r.stdout
    r = vdisk(runner, "dump", "extract", disk, "-o", str(tmp_path / "c.txt"))
    assert r.exit_code == 3 and "no good crash dump" in r.stderr


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_init_write_clear(tmp_path, runner, qemu_img, subformat):
    raw = StoreBuilder(8 * MiB).write(tmp_path / "blank.img")
    disk = _as(raw, subformat, qemu_img)
    assert vdisk(runner, "dump", "init", disk, "--yes").exit_code == 0
    text = tmp_path / "t.txt"
    text.write_bytes(dump_text(1))
    for _ in range(2):
        r = vdisk(runner, "dump", "write", disk, "--text", str(text), "--build", "90468",
                  "--version", "13r2", "--time", "1700000000")
        assert r.exit_code == 0, r.stderr
    if subformat != "raw":
        assert run(qemu_img, "check", disk, check=False).returncode == 0
    # the bytes, read by qemu-img, are what the spec says
    flat = tmp_path / "back.raw"
    run(qemu_img, "convert", "-O", "raw", disk, str(flat))
    data = flat.read_bytes()
    assert data[:512] == store_header(2048, 7, 2)
    off = (2048 + 2048) * 512                     # slot 1
    assert data[off:off + 512] == record_header(2, dump_text(1), 90468, 1700000000, "13r2")
    r = vdisk(runner, "dump", "clear", disk)
    assert r.exit_code == 2                        # no --yes without a terminal
    assert vdisk(runner, "dump", "clear", disk, "--yes").exit_code == 0
    d = json.loads(vdisk(runner, "dump", "list", disk, "--json").stdout)
    assert d["records"] == [] and d["header_ok"]


def test_write_refused_on_a_damaged_header(tmp_path, runner):
    raw, _ = _store(tmp_path, header=False)
    text = tmp_path / "t.txt"
    text.write_bytes(b"x")
    before = Path(raw).read_bytes()
    r = vdisk(runner, "dump", "write", raw, "--text", str(text))
    assert r.exit_code == 3 and "dump init" in r.stderr
    assert Path(raw).read_bytes() == before


def test_init_dry_run_and_backup(tmp_path, runner):
    raw, _ = _store(tmp_path)
    before = Path(raw).read_bytes()
    r = vdisk(runner, "dump", "init", raw, "--dry-run")
    assert r.exit_code == 0 and "3 record(s) deleted" in r.stdout
    assert Path(raw).read_bytes() == before
    bak = tmp_path / "before.img"
    r = vdisk(runner, "dump", "init", raw, "--yes", "--backup", str(bak), "--slot-sectors", "1024")
    assert r.exit_code == 0
    assert bak.read_bytes() == before
    assert Path(raw).read_bytes()[:512] == store_header(1024, 14, 0)


def test_locked_disk_is_refused(tmp_path, runner):
    raw, _ = _store(tmp_path)
    os.mkdir(raw + ".lck")
    r = vdisk(runner, "dump", "clear", raw, "--yes")
    assert r.exit_code == 3 and "in use" in r.stderr
    assert vdisk(runner, "dump", "list", raw).exit_code == 0


def test_garbage_input_is_one_error_line(tmp_path, runner):
    p = tmp_path / "tiny.img"
    p.write_bytes(b"\xff" * 4096)
    r = vdisk(runner, "dump", "list", str(p))
    assert r.exit_code == 3 and r.stderr.count("\n") == 1
