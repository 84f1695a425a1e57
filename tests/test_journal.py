"""Big flat images are edited in place under an undo journal (no full copy); a crash at any
point leaves the old image after the next run, or the complete new one."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import need_tool, run
from crashharness import crash_test, run_vdisk
from powerloss import child_env, record, rewritten_after_fsync

from vdisk_tool.image.disk import open_image
from vdisk_tool.image.journal import journal_path

MiB = 1 << 20


def _flat_fat(folder: Path, subformat: str = "monolithicFlat", mib: int = 32) -> Path:
    """A FAT16 volume (mkfs.fat) in a flat VMDK written by qemu-img."""
    need_tool("mkfs.fat")
    qemu_img = need_tool("qemu-img")
    raw = folder / "v.raw"
    with open(raw, "wb") as f:
        f.truncate(mib * MiB)
    run("mkfs.fat", "-F", "16", "-n", "FLATVOL", str(raw))
    disk = folder / "d.vmdk"
    if subformat == "raw":
        os.rename(raw, folder / "d.img")
        return folder / "d.img"
    run(qemu_img, "convert", "-O", "vmdk", "-o", f"subformat={subformat}", str(raw), str(disk))
    raw.unlink()
    return disk


@pytest.fixture(autouse=True)
def journal_everything(monkeypatch):
    monkeypatch.setenv("VDISK_JOURNAL_MIN_BYTES", "0")


@pytest.mark.parametrize("subformat", ["monolithicFlat", "raw"])
def test_fs_put_on_flat_image_edits_in_place(tmp_path, subformat):
    disk = _flat_fat(tmp_path, subformat)
    payload = tmp_path / "hello.txt"
    payload.write_bytes(os.urandom(300_000))
    data_file = tmp_path / ("d-flat.vmdk" if subformat != "raw" else "d.img")
    inode = data_file.stat().st_ino
    r = run_vdisk(["fs", "put", disk.name, str(payload), "/HELLO.TXT"], tmp_path, {})
    assert r.returncode == 0, r.stderr
    assert data_file.stat().st_ino == inode, "the flat file was replaced, not edited in place"
    assert not Path(journal_path(str(disk))).exists()
    raw = tmp_path / "check.raw"
    run("qemu-img", "convert", "-O", "raw", str(disk), str(raw))
    out = tmp_path / "out.bin"
    run("mcopy", "-n", "-i", str(raw), "::/HELLO.TXT", str(out))
    assert out.read_bytes() == payload.read_bytes()
    assert run("fsck.fat", "-n", str(raw), check=False).returncode == 0


def test_interrupted_edit_is_undone_by_check_repair(tmp_path):
    disk = _flat_fat(tmp_path)
    payload = tmp_path / "big.bin"
    payload.write_bytes(os.urandom(3 * MiB))
    with open_image(str(disk)) as d:
        before = d.read_at(0, 32 * MiB)

    def make(folder: Path) -> None:
        for p in tmp_path.iterdir():
            if p.is_file():
                (folder / p.name).write_bytes(p.read_bytes())

    def complete(folder: Path) -> bool:
        r = subprocess.run(["mtype", "-i", str(folder / "d-flat.vmdk"), "::/BIG.BIN"],
                           capture_output=True, env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
        return r.returncode == 0 and r.stdout == payload.read_bytes()

    (tmp_path / "crash").mkdir()
    res = crash_test(make, ["fs", "put", "d.vmdk", "big.bin", "/BIG.BIN"], complete,
                     tmp_path / "crash", points=20, recover=["check", "d.vmdk", "--repair"])
    assert res.corrupt == [], res.corrupt
    assert res.old_kept > 0 and res.new_complete > 0
    with open_image(str(disk)) as d:
        assert d.read_at(0, 32 * MiB) == before


def test_multi_batch_edit_is_rolled_back_newest_first(tmp_path):
    """An edit journalled in many batches (the batch size is lowered in the child) journals
    some blocks twice; a run killed after several batches must come back as the old image,
    which needs the undo records applied newest first."""
    _flat_fat(tmp_path, mib=16)
    payload = tmp_path / "big.bin"
    payload.write_bytes(os.urandom(1_500_000))   # several 512 KiB write chunks
    env = dict(child_env(), VDISK_JOURNAL_MIN_BYTES="0",
               VDISK_TEST_SETATTR="vdisk_tool.image.journal.BATCH_BYTES=16384")
    args = ["fs", "put", "d.vmdk", "big.bin", "/BIG.BIN"]

    def make(folder: Path) -> None:
        for p in tmp_path.iterdir():
            if p.is_file():
                (folder / p.name).write_bytes(p.read_bytes())

    rec = record(make, args, tmp_path / "rec", env)
    assert rec.result.returncode == 0, rec.result.stderr
    assert rewritten_after_fsync(rec, "d-flat.vmdk"), "no block is journalled in two batches"

    def complete(folder: Path) -> bool:
        r = subprocess.run(["mtype", "-i", str(folder / "d-flat.vmdk"), "::/BIG.BIN"],
                           capture_output=True, env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
        return r.returncode == 0 and r.stdout == payload.read_bytes()

    (tmp_path / "crash").mkdir()
    res = crash_test(make, args, complete, tmp_path / "crash", points=12,
                     recover=["check", "d.vmdk", "--repair"], env=env)
    assert res.corrupt == [], res.corrupt
    assert res.old_kept >= 8 and res.new_complete > 0
