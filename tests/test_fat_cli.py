"""`vdisk fs` commands on raw images and VMDKs: exit codes, key lines, --json, sanitising."""
from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import run, vdisk
from fatutil import MIB, fsck_clean, mkfs, mtools_fill, mtype

from vdisk_tool.fs.transfer import safe_host_name


def _vmdk(tmp_path: Path, qemu_img: str, mib: int = 24) -> Path:
    p = tmp_path / "d.vmdk"
    run(qemu_img, "create", "-q", "-f", "vmdk", str(p), f"{mib}M")
    return p


def test_format_put_ls_get_on_sparse_vmdk(tmp_path: Path, runner, qemu_img: str) -> None:
    img = _vmdk(tmp_path, qemu_img)
    r = vdisk(runner, "fs", "format", str(img), "--label", "IPVABOOT", "--active", "--yes")
    assert r.exit_code == 0, r.output
    assert "FAT16 on partition 1 at LBA 2048" in r.output
    src = tmp_path / "hello world.txt"
    src.write_bytes(b"hi\n" * 1000)
    assert vdisk(runner, "fs", "mkdir", str(img), "/a/b", "-p").exit_code == 0
    assert vdisk(runner, "fs", "put", str(img), str(src), "/a/b/").exit_code == 0
    r = vdisk(runner, "fs", "ls", str(img), "/a/b", "--json")
    assert r.exit_code == 0
    (entry,) = json.loads(r.stdout)["entries"]
    assert entry["name"] == "hello world.txt" and entry["size_bytes"] == 3000
    r = vdisk(runner, "fs", "ls", str(img), "/a/b", "-l")
    assert "HELLOW~1.TXT" in r.stdout and "3,000" in r.stdout
    out = tmp_path / "out.txt"
    assert vdisk(runner, "fs", "get", str(img), "/a/b/hello world.txt", str(out)).exit_code == 0
    assert out.read_bytes() == src.read_bytes()
    r = vdisk(runner, "fs", "get", str(img), "/a/b/hello world.txt", "-")
    assert r.stdout_bytes == src.read_bytes()
    assert vdisk(runner, "fs", "label", str(img)).stdout.strip() == "IPVABOOT"
    assert vdisk(runner, "fs", "check", str(img)).exit_code == 0
    r = vdisk(runner, "fs", "tree", str(img))
    assert "hello world.txt" in r.stdout and "(IPVABOOT)" in r.stdout
    assert vdisk(runner, "fs", "mv", str(img), "/a/b/hello world.txt", "/top.txt").exit_code == 0
    assert vdisk(runner, "fs", "rm", str(img), "/a", "-r", "--yes").exit_code == 0
    listing = json.loads(vdisk(runner, "fs", "ls", str(img), "--json").stdout)["entries"]
    assert [e["name"] for e in listing] == ["top.txt"]
    raw = tmp_path / "d.raw"
    run(qemu_img, "convert", "-O", "raw", str(img), str(raw))
    fsck_clean(raw, 2048 * 512)
    assert mtype(raw, 2048 * 512, "top.txt") == src.read_bytes()
    out = run("sfdisk", "-d", str(raw)).stdout
    assert "start=        2048" in out and "type=e, bootable" in out


def test_dry_run_and_backup(tmp_path: Path, runner) -> None:
    img = tmp_path / "f.img"
    mkfs(img, 4 * MIB, 12)
    before = img.read_bytes()
    src = tmp_path / "x.bin"
    src.write_bytes(b"x" * 100)
    r = vdisk(runner, "fs", "put", str(img), str(src), "/X.BIN", "--dry-run")
    assert r.exit_code == 0 and "would write" in r.output
    assert img.read_bytes() == before
    bak = tmp_path / "f.bak"
    assert vdisk(runner, "fs", "put", str(img), str(src), "/X.BIN", "--backup",
                 str(bak)).exit_code == 0
    assert bak.read_bytes() == before and img.read_bytes() != before
    assert mtype(img, 0, "X.BIN") == b"x" * 100


def test_check_and_repair_cli(tmp_path: Path, runner) -> None:
    img = tmp_path / "f.img"
    mkfs(img, 20 * MIB, 16)
    mtools_fill(img, 0, {"FILE.BIN": b"y" * 5000}, tmp_path)
    data = bytearray(img.read_bytes())
    root = (4 + 2 * 40) * 512      # reserved 4 + 2 FATs of 40 sectors on this size
    assert data[root:root + 8] == b"FILE    "
    data[root + 28:root + 32] = (90000).to_bytes(4, "little")
    img.write_bytes(bytes(data))
    r = vdisk(runner, "fs", "check", str(img), "--json")
    assert r.exit_code == 1
    assert [f["code"] for f in json.loads(r.stdout)["findings"]] == ["fat.chain-too-short"]
    r = vdisk(runner, "fs", "check", str(img), "--repair", "--dry-run")
    assert r.exit_code == 0 and "would set the size of /FILE.BIN to" in r.stdout
    assert vdisk(runner, "fs", "check", str(img)).exit_code == 1
    r = vdisk(runner, "fs", "check", str(img), "--repair", "--yes")
    assert r.exit_code == 0 and "repaired" in r.stdout
    assert vdisk(runner, "fs", "check", str(img)).exit_code == 0
    fsck_clean(img)


def test_bad_input_is_one_line_exit_3(tmp_path: Path, runner) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(4096))
    r = vdisk(runner, "fs", "ls", str(junk))
    assert r.exit_code == 3 and "Traceback" not in r.output
    img = tmp_path / "f.img"
    mkfs(img, 4 * MIB, 12)
    r = vdisk(runner, "fs", "get", str(img), "/nope.txt", str(tmp_path / "o"))
    assert r.exit_code == 3 and "no such file" in r.output


def test_hostile_names_are_sanitised(tmp_path: Path, runner) -> None:
    assert safe_host_name("..") == "___"
    assert safe_host_name("C:evil") == "C_evil"
    for bad in ("..", ".", "a/b", "a\\b", "C:evil", "x\x01y", ""):
        s = safe_host_name(bad)
        assert s not in (".", "..", "") and "/" not in s and "\\" not in s
        assert ":" not in s and all(ord(c) >= 0x20 for c in s)
    img = tmp_path / "f.img"
    mkfs(img, 4 * MIB, 12)
    mtools_fill(img, 0, {"dir/ok.txt": b"ok"}, tmp_path)
    # forge a long name '..\\..\\evil' and one with a control character by rewriting bytes
    from vdisk_tool.formats import fat as ff
    from vdisk_tool.fs.volume import open_volume
    from vdisk_tool.image.base import FileDevice
    with FileDevice(img, writable=True) as dev:
        vol = open_volume(dev)
        vol.write_file("/dir/EVIL.TXT", b"evil")
        info = vol.stat("/dir/EVIL.TXT")
        d = vol.directory(info.parent_cluster)
        lfns = ff.build_lfn_entries("..\\..\\evil\x01", info.raw_name)
        end = next(i for i in range(d.slots) if d.data[i * 32] == 0)
        for k, raw in enumerate(lfns):
            d.write_slot(end + k, raw)
        d.write_slot(end + len(lfns), info.raw_entry)
        d.write_slot(info.slot, b"\xe5" + info.raw_entry[1:])
        vol.flush()
    dest = tmp_path / "out"
    dest.mkdir()
    r = vdisk(runner, "fs", "get", str(img), "/dir", str(dest))
    assert r.exit_code == 0, r.output
    names = sorted(os.listdir(dest / "dir"))
    assert names == [".._.._evil_", "ok.txt"]
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()
    assert "saved as" in r.output
