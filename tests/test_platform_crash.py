"""The crash harnesses on the platform module's fallback write path (what Windows runs):
VDISK_PLATFORM_FALLBACK=1 in the child turns off pread/pwrite (seek + write under a lock),
SEEK_DATA (zero detection) and folder fsync (replace without folder sync).

- SIGKILL at every point (>= 16) of an in-place edit of a flat and of a raw disk: after the next
  writer's roll-back, the folder is the old one or the complete new one (qemu-img check,
  fsck.fat -n, mtools).
- Power loss under the NTFS crash model (tests/powerloss.py, model="ntfs": no folder
  fsync exists, a file fsync commits the names, a rename is written through), on the undo
  journal and on the rename path: every state recovers to the old or the new image.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need_tool
from crashharness import crash_test
from powerloss import power_loss_test, rename_violations
from test_crash_all import _fat_disk
from test_crash_inplace import DATA, _fat_raw, _put_result
from test_crash_inplace import FILES as RAW_FILES
from test_powerloss import SCENARIOS, _disk, _fat_judge, same_files  # noqa: F401 - fixture

FALLBACK = {"VDISK_PLATFORM_FALLBACK": "1"}
ONE_PAGE_BATCHES = FALLBACK | {"VDISK_JOURNAL_BATCH_BYTES": "4096"}   # more kill points
POINTS = 22


def _finish(res) -> None:
    """Every killed run left the old folder or the complete new one. (Without a folder
    fsync the journal's deletion is the edit's last mutation: a kill lands before it, so
    each killed run rolls back to the old image; the run that is not killed gives the new.)"""
    # two mutations fewer than on POSIX: the folder fsyncs after the journal's creation
    # and deletion
    assert res.total_points >= 16, f"only {res.total_points} kill points"
    assert res.corrupt == [], res.corrupt
    assert res.tried >= min(POINTS, res.total_points)


def test_the_child_takes_the_fallback_paths() -> None:
    import os
    out = subprocess.run([sys.executable, "-c", "from vdisk_tool.image import platform as p; "
                          "f = p.FEATURES; print(f.positional, f.seek_data, f.dir_fsync)"],
                         env=dict(os.environ, **FALLBACK), capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_kill_during_an_edit_of_a_flat_disk(tmp_path: Path) -> None:
    def make(folder: Path) -> None:
        _fat_disk(folder, subformat="monolithicFlat")
        (folder / "new.bin").write_bytes(DATA)

    res = crash_test(make, ["fs", "put", "d.vmdk", "new.bin", "/NEW.BIN"],
                     _put_result("d.vmdk"), tmp_path, points=POINTS, env=ONE_PAGE_BATCHES)
    _finish(res)


def test_kill_during_an_edit_of_a_raw_disk(tmp_path: Path) -> None:
    def make(folder: Path) -> None:
        _fat_raw(folder / "d.img", 16, 2048, RAW_FILES)
        (folder / "new.bin").write_bytes(DATA)

    res = crash_test(make, ["fs", "put", "d.img", "new.bin", "/NEW.BIN"],
                     _put_result("d.img"), tmp_path, points=POINTS, env=ONE_PAGE_BATCHES)
    _finish(res)


@pytest.mark.parametrize("name", ["inplace-sparse", "inplace-raw", "rewrite-stream", "grow-sparse"])
def test_power_loss_without_folder_fsync(tmp_path: Path, name: str) -> None:
    need_tool("qemu-img")
    sc = next(s for s in SCENARIOS if s.name == name)
    res = power_loss_test(_disk(sc.subformat), list(sc.args), sc.image, tmp_path, states=80,
                          env=dict(sc.env) | FALLBACK, judge=_fat_judge(sc.image, dict(sc.adds)),
                          model="ntfs")
    assert res.recording is not None
    assert not [o for o in res.recording.ops if o.kind == "dirsync"], "a folder was fsynced"
    if name in ("rewrite-stream", "grow-sparse"):
        # the rename path: the data is fsynced before each rename (no folder fsync follows)
        assert all("no fsync of" in v for v in rename_violations(res.recording)), \
            rename_violations(res.recording)
    assert res.corrupt == [], f"{res.summary()}\n" + "\n".join(res.corrupt[:10])
    assert res.old > 0 and res.new > 0, res.summary()
