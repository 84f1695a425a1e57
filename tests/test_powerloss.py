"""Power loss on today's write paths (tests/powerloss.py builds the crash states).

Each scenario is one real command on a small FAT disk built without vdisk (mkfs.fat,
mtools, qemu-img). >= 200 power-loss states each must recover to the image before or the
complete image after. The scenarios are data: to cover a new write path, add a row.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import need_tool, run
from fatutil import fsck, mkfs, mtools_fill, mtype
from powerloss import (
    PowerLossResult,
    power_loss_test,
    record,
    rename_violations,
    rewritten_after_fsync,
    vdisk_in_process,
)

MIB = 1 << 20
STATES = 200
PAYLOAD = random.Random(22).randbytes(150_000)
FILES = {"README.TXT": b"keep me\r\n", "Long Folder Name/inner file.bin": b"\x5a" * 9000}


def _raw_fat(path: Path, mib: int = 4) -> None:
    """A FAT16 volume filling a raw image (mkfs.fat), with FILES copied by mtools."""
    need_tool("mkfs.fat")
    with open(path, "wb") as f:
        f.truncate(mib * MIB)
    run("mkfs.fat", "-F", "16", "-s", "1", "-n", "PLOSS", str(path))
    mtools_fill(path, 0, FILES, path.parent)


def _disk(subformat: str):
    def make(folder: Path) -> None:
        raw = folder.parent / f"{folder.name}.raw"
        _raw_fat(raw)
        if subformat == "raw":
            os.rename(raw, folder / "d.img")
        elif subformat.startswith("vhdx-"):
            # a file of zeros first: what is added lands in a block never allocated
            mtools_fill(raw, 0, {"ZEROS.BIN": bytes(MIB + 65536)}, raw.parent)
            run(need_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "vhdx", "-o",
                f"subformat={subformat[5:]},block_size=1M", str(raw), str(folder / "d.vhdx"))
            raw.unlink()
        elif subformat == "qcow2-overlay":
            # a 4 MiB overlay (512-byte clusters) over a 6 MiB base that holds the volume
            # and, past it, bytes the grow must hide behind zero clusters
            with open(raw, "ab") as f:
                f.write(b"\x5a" * (2 * MIB))
            run(need_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                str(folder / "base.qcow2"))
            raw.unlink()
            run(need_tool("qemu-img"), "create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
                "-b", "base.qcow2", "-F", "qcow2", str(folder / "d.qcow2"), "4M")
        elif subformat.startswith("qcow2"):
            run(need_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "qcow2", "-o",
                subformat.partition(":")[2], str(raw), str(folder / "d.qcow2"))
            raw.unlink()
            if subformat.startswith("qcow2+holes"):
                # free clusters inside the file, where the volume holds nothing (zeros)
                run(need_tool("qemu-io"), "-f", "qcow2", "-c", "write -P 0x5a 3M 512k",
                    "-c", "discard 3M 512k", str(folder / "d.qcow2"))
        else:
            run(need_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "vmdk", "-o",
                f"subformat={subformat}", str(raw), str(folder / "d.vmdk"))
            raw.unlink()
        (folder / "payload.bin").write_bytes(PAYLOAD)
    return make


def _fat_judge(image: str, want: dict[str, bytes]):
    """A reference folder is good when qemu-img and vdisk check it clean, fsck.fat -n finds
    nothing and mtools reads `want` (before: FILES; after: FILES plus what was added)."""
    def judge(folder: Path) -> str | None:
        img = folder / image
        raw = folder.parent / f"{folder.name}-judge.raw"
        if image.endswith((".vmdk", ".vhdx", ".qcow2")):
            fmt = image.rsplit(".", 1)[1]
            if run("qemu-img", "check", "-f", fmt, str(img), check=False).returncode:
                return "qemu-img check failed"
            run("qemu-img", "convert", "-q", "-f", fmt, "-O", "raw", str(img), str(raw))
        else:
            raw.write_bytes(img.read_bytes())
        try:
            with open(raw, "rb") as f:
                f.seek(4 * MIB)
                if any(f.read()):
                    return "a grown image does not read zeros past the volume"
            code, out = fsck(raw)
            if code:
                return f"fsck.fat -n: {out}"
            for name, data in FILES.items():
                if mtype(raw, 0, "/" + name) != data:
                    return f"mtools reads {name} wrong"
            if folder.name == "after":
                for name, data in want.items():
                    if mtype(raw, 0, name) != data:
                        return f"mtools reads {name} wrong"
        finally:
            raw.unlink()
        code = vdisk_in_process(["check", image], folder)
        return f"vdisk check {image}: exit {code}" if code else None
    return judge


@dataclass(frozen=True)
class Scenario:
    """One write path: the disk, the command, the environment that selects the path."""

    name: str
    subformat: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    adds: tuple[tuple[str, bytes], ...] = (("/NEW.BIN", PAYLOAD),)

    @property
    def image(self) -> str:
        if self.subformat.startswith("vhdx-"):
            return "d.vhdx"
        if self.subformat.startswith("qcow2"):
            return "d.qcow2"
        return "d.img" if self.subformat == "raw" else "d.vmdk"


SCENARIOS = [
    # in place under the undo journal (image/edit.py, image/journal.py, image/hostio.py)
    Scenario("inplace-sparse", "monolithicSparse", ("fs", "put", "d.vmdk", "payload.bin", "/NEW.BIN")),
    Scenario("inplace-flat", "monolithicFlat", ("fs", "put", "d.vmdk", "payload.bin", "/NEW.BIN")),
    Scenario("inplace-split", "twoGbMaxExtentSparse", ("fs", "put", "d.vmdk", "payload.bin", "/NEW.BIN")),
    Scenario("inplace-raw", "raw", ("fs", "put", "d.img", "payload.bin", "/NEW.BIN")),
    Scenario("inplace-sparse-mkdir", "monolithicSparse", ("fs", "mkdir", "d.vmdk", "/NEWDIR"), adds=()),
    # the rewrite path that remains (stream disks)
    Scenario("rewrite-stream", "streamOptimized", ("fs", "put", "d.vmdk", "payload.bin", "/NEW.BIN")),
    # grow: sparse by copy and rename, flat in place under its length journal (image/grow.py)
    Scenario("grow-sparse", "monolithicSparse", ("grow", "d.vmdk", "--size", "6M"), adds=()),
    Scenario("grow-flat", "monolithicFlat", ("grow", "d.vmdk", "--size", "6M"), adds=()),
    # VHDX in place under the undo journal: new blocks and BAT entries, the header update
    Scenario("inplace-vhdx-dynamic", "vhdx-dynamic", ("fs", "put", "d.vhdx", "payload.bin", "/NEW.BIN")),
    Scenario("inplace-vhdx-fixed", "vhdx-fixed", ("fs", "put", "d.vhdx", "payload.bin", "/NEW.BIN")),
    Scenario("grow-vhdx", "vhdx-dynamic", ("grow", "d.vhdx", "--size", "6M"), adds=()),
    # qcow2 in place: new clusters, L2 tables, refcount blocks; grow moves the L1 table
    Scenario("inplace-qcow2", "qcow2:cluster_size=4096,lazy_refcounts=on",
             ("fs", "put", "d.qcow2", "payload.bin", "/NEW.BIN")),
    Scenario("grow-qcow2", "qcow2:cluster_size=512", ("grow", "d.qcow2", "--size", "6M"), adds=()),
    # qcow2 overlay grown over a larger backing file: zero clusters hide its data
    Scenario("grow-qcow2-overlay", "qcow2-overlay", ("grow", "d.qcow2", "--size", "6M"), adds=()),
    # qcow2 with free clusters inside the file: the new clusters reuse them
    Scenario("inplace-qcow2-reuse", "qcow2+holes:cluster_size=4096",
             ("fs", "put", "d.qcow2", "payload.bin", "/NEW.BIN")),
]


def _report(name: str, res: PowerLossResult) -> None:
    target = os.environ.get("VDISK_POWERLOSS_REPORT")
    if target:
        with open(target, "a") as f:
            f.write(json.dumps({"scenario": name, **{k: v for k, v in vars(res).items()
                                                     if k not in ("corrupt", "recording", "exhausted")},
                                "mixed": len(res.corrupt)}) + "\n")


@pytest.fixture(autouse=True)
def same_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash state is materialised into new files (new inodes) that stand for the same
    files: the journal's inode check would call every journal foreign. The check itself is
    tested in test_inplace.py::test_foreign_journal_is_reported_never_applied."""
    from vdisk_tool.image import journal
    monkeypatch.setattr(journal, "identity_problem",
                        lambda path, ino: None if os.path.exists(path) else "missing")


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
def test_power_loss_leaves_old_or_new(tmp_path: Path, sc: Scenario) -> None:
    need_tool("qemu-img")
    res = power_loss_test(_disk(sc.subformat), list(sc.args), sc.image, tmp_path,
                          states=STATES, env=dict(sc.env),
                          judge=_fat_judge(sc.image, dict(sc.adds)))
    _report(sc.name, res)
    assert res.corrupt == [], f"{res.summary()}\n" + "\n".join(res.corrupt[:10])
    assert res.states >= STATES or res.exhausted, res.summary()
    assert res.old > 0 and res.new > 0, res.summary()



def test_the_crash_model_on_a_hand_made_log(tmp_path: Path) -> None:
    """The model itself: an fsynced write always survives; an unsynced one may be lost or
    torn at a sector boundary; a rename no folder fsync covers may be undone."""
    import subprocess as sp

    from powerloss import Op, Recording, crash_states, materialise
    ops = [Op(0, "write", inode=0, offset=0, data=b"A" * 1024), Op(1, "fsync", inode=0),
           Op(2, "create", path="new", inode=1), Op(3, "write", inode=1, offset=0, data=b"B" * 2048),
           Op(4, "rename", path="new", dst="old"), Op(5, "write", inode=0, offset=0, data=b"C" * 1024)]
    rec = Recording(tmp_path, tmp_path, {"old": 0}, set(), {0: b"o" * 1024}, ops,
                    sp.CompletedProcess([], 0))
    seen = set()
    for state in crash_states(rec, 200, seed=1):
        files, _ = materialise(rec, state)
        seen.add(bytes(files["old"]))
        if state.crash >= 2:
            assert files["old"] in (b"A" * 1024, b"C" * 1024, b"C" * 512 + b"A" * 512) or \
                set(files["old"]) <= {ord("B"), 0}, files["old"][:8]
    assert b"o" * 1024 in seen and b"A" * 1024 in seen and b"C" * 1024 in seen
    assert b"C" * 512 + b"A" * 512 in seen                  # torn at 512
    assert b"" in seen and b"B" * 2048 in seen              # renamed over, data lost or kept
    assert b"B" * 1024 + bytes(1024) not in seen            # a tear keeps a prefix, no hole

# -- a journalled edit over several batches, rewriting the same sectors ------------------------
SMALL_BATCHES = (("VDISK_JOURNAL_BATCH_BYTES", "16384"),)


def test_power_loss_in_a_multi_batch_journalled_edit(tmp_path: Path) -> None:
    """The edit is journalled and applied in many small batches (the batch size is lowered in
    the child), so some sectors are journalled twice, and the image writes of one batch are
    not fsynced before the next batch's undo records are appended."""
    need_tool("qemu-img")
    sc = Scenario("journal-batches", "monolithicFlat", PUT, SMALL_BATCHES)
    res = power_loss_test(_disk(sc.subformat), list(sc.args), sc.image, tmp_path,
                          states=STATES, env=dict(sc.env), judge=_fat_judge(sc.image, dict(sc.adds)))
    _report(sc.name, res)
    assert res.recording and rewritten_after_fsync(res.recording, "d-flat.vmdk"), \
        "no sector is written in two batches"
    assert res.corrupt == [], f"{res.summary()}\n" + "\n".join(res.corrupt[:10])
    assert res.old > 0 and res.new > 0 and res.recovered > 0, res.summary()

# -- every rename: the file fsynced before, its folder fsynced after ---------------------------
def _flash(folder: Path) -> None:
    disk = str(folder / "hd-flash.vmdk")
    run(need_tool("qemu-img"), "create", "-q", "-f", "vmdk", disk, "100M")
    run(need_tool("qemu-io"), "-f", "vmdk", "-c", "write -P 0xab 1M 64k", disk)


def _cf(folder: Path) -> None:
    raw = folder.parent / "cf.raw"
    mkfs(raw, 16 * MIB, 16, partition=True, extra=("-n", "IPVACF"))
    run(need_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "vmdk", str(raw),
        str(folder / "hd-cf.vmdk"))
    raw.unlink()


PUT = ("fs", "put", "d.vmdk", "payload.bin", "/NEW.BIN")
RENAMING = [   # (name, make, args, env)
    ("fs put, streamOptimized", _disk("streamOptimized"), PUT, ()),
    ("grow, sparse", _disk("monolithicSparse"), ("grow", "d.vmdk", "--size", "8M"), ()),
    ("convert", _disk("monolithicSparse"), ("convert", "d.vmdk", "s.vmdk", "-F", "streamOptimized"), ()),
    ("convert, flat", _disk("monolithicSparse"), ("convert", "d.vmdk", "f.vmdk", "-F", "monolithicFlat"), ()),
    ("create, vhdx child", _disk("vhdx-dynamic"),
     ("create", "c.vhdx", "-O", "vhdx", "-o", "backing_file=d.vhdx"), ()),
    ("flash reset", _flash, ("flash", "reset", "hd-flash.vmdk", "--yes"), ()),
    ("cf format", _cf, ("cf", "format", "hd-cf.vmdk", "--yes"), ()),
]


@pytest.mark.parametrize("name,make,args,env", RENAMING, ids=[r[0] for r in RENAMING])
def test_every_rename_is_fsynced_before_and_after(tmp_path: Path, name, make, args, env) -> None:
    need_tool("qemu-img")
    rec = record(make, list(args), tmp_path, dict(env))
    assert rec.result.returncode in (0, 1), rec.result.stderr
    renames = [o for o in rec.ops if o.kind == "rename"]
    assert renames, f"{name}: no rename recorded"
    assert rename_violations(rec) == []
