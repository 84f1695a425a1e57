"""Damaged FAT volumes built independently of vdisk (mkfs.fat + mtools, then byte edits at
the offsets of Microsoft's FAT specification, tests/fatspec.py), and one run of a case:
`vdisk fs check --repair --yes` on one copy, `fsck.fat -a` on another, both judged by
`fsck.fat -n` and read back with mtools. Used by tests/test_fat_damage.py and by
bench/fat_damage_table.py (the full table)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conftest import need_tool, run
from fatspec import CLEAN_SHUTDOWN, DIRTY_OFFSET, EOC, HARD_ERROR, LABEL_OFFSET, SpecVolume
from fatutil import MIB, PART_LBA, mkfs

LABEL = "VDISKVOL"
VOLUME_BYTES = {12: 2 * MIB, 16: 20 * MIB, 32: 40 * MIB}
CONTAINERS = ("raw-floppy", "raw-mbr", "vmdk-floppy", "vmdk-mbr")
FILES: dict[str, bytes] = {
    "README.TXT": b"plain 8.3 name\r\n",
    "OTHER.BIN": bytes(range(256)) * 6,
    "KEEP.BIN": bytes((i * 7) & 0xFF for i in range(2660)),
    "A long name file.txt": b"first long name\n" * 40,
    "B long name file.txt": b"second long name\n" * 40,
    "Folder/INNER.TXT": b"inner\n" * 30,
    "Folder/SECOND.TXT": b"second\n" * 30,
    "Folder/third long name.txt": b"third\n" * 120,
}
FULL_FILES = [f"F{i:02d}" for i in range(16)]     # with '.' and '..': 18 slots, 2 clusters


# -- damages -------------------------------------------------------------------------------
def dirty_flag(v: SpecVolume) -> None:
    for s in v.boot_sectors():
        at = s + DIRTY_OFFSET[v.fat_type]
        v.write(at, bytes([v.read(at, 1)[0] | 0x01]))


def dirty_fat(v: SpecVolume) -> None:
    v.fat_set(1, v.fat_get(1) & ~CLEAN_SHUTDOWN[v.fat_type])


def hard_error(v: SpecVolume) -> None:
    v.fat_set(1, v.fat_get(1) & ~HARD_ERROR[v.fat_type])


def duplicate_83(v: SpecVolume) -> None:
    v.write(v.find(b"OTHER   BIN"), b"README  TXT")


def duplicate_long(v: SpecVolume) -> None:
    v.write(v.lfn_first_part("B long") + 1, "a".encode("utf-16-le"))


def _boot_label(v: SpecVolume, raw: bytes) -> None:
    for s in v.boot_sectors():
        v.write(s + LABEL_OFFSET[v.fat_type], raw)


def label_differs(v: SpecVolume) -> None:
    _boot_label(v, b"OTHERNAME  ")


def label_boot_only(v: SpecVolume) -> None:
    v.write(v.label_slot(), b"\xe5")


def label_root_only(v: SpecVolume) -> None:
    _boot_label(v, b"NO NAME    ")


def chain_free(v: SpecVolume) -> None:
    chain = v.chain(v.start_cluster(v.find(b"KEEP    BIN")))
    assert len(chain) >= 4
    v.fat_set(chain[1], 0)


def chain_loop(v: SpecVolume) -> None:
    chain = v.chain(v.start_cluster(v.find(b"KEEP    BIN")))
    v.fat_set(chain[2], chain[1])


def lfn_field(v: SpecVolume) -> None:
    v.write(v.lfn_first_part("A long") + 0x1A, b"\x34\x12")        # LDIR_FstClusLO


def label_invalid(v: SpecVolume) -> None:
    v.write(v.label_slot(), b"BAD*LABEL  ")
    _boot_label(v, b"BAD*LABEL  ")


def lost_chain(v: SpecVolume) -> None:
    cs = v.free_clusters(v.clusters // 2, 3)
    for k, c in enumerate(cs):
        v.write(v.cluster_offset(c), bytes([0x40 + k]) * v.cluster_bytes)
    for a, b in zip(cs, cs[1:], strict=False):
        v.fat_set(a, b)
    v.fat_set(cs[-1], EOC[v.fat_type])


def dots_overwritten(v: SpecVolume) -> None:
    """The directory's entries start in slot 0: '.' and '..' are gone, two files in their
    slots (the case a repair must not overwrite)."""
    at = v.cluster_offset(v.start_cluster(v.find(b"FOLDER     ")))
    data = v.read(at, v.cluster_bytes)
    v.write(at, data[64:] + bytes(64))


def dots_full(v: SpecVolume) -> None:
    """As dots_overwritten, in a directory whose one cluster is full of live entries."""
    chain = v.chain(v.start_cluster(v.find(b"FULL       ")))
    assert len(chain) == 2 and v.cluster_bytes == 512, chain
    data = v.read(v.cluster_offset(chain[0]), 512) + v.read(v.cluster_offset(chain[1]), 512)
    v.write(v.cluster_offset(chain[0]), data[64:64 + 512])
    v.fat_set(chain[0], EOC[v.fat_type])
    v.fat_set(chain[1], 0)


@dataclass(frozen=True)
class Damage:
    apply: Callable[[SpecVolume], None]
    codes: frozenset[str]          # what vdisk's plain check must report
    fats: tuple[int, ...] = (12, 16, 32)


DAMAGES: dict[str, Damage] = {
    "dirty-flag": Damage(dirty_flag, frozenset({"fat.dirty-flag"})),
    "dirty-fat": Damage(dirty_fat, frozenset({"fat.dirty-fat"}), (16, 32)),
    "hard-error": Damage(hard_error, frozenset({"fat.hard-error"}), (16, 32)),
    "duplicate-8.3": Damage(duplicate_83, frozenset({"fat.duplicate-name"})),
    "duplicate-long": Damage(duplicate_long, frozenset({"fat.duplicate-name"})),
    "label-differs": Damage(label_differs, frozenset({"fat.label-mismatch"})),
    "label-boot-only": Damage(label_boot_only, frozenset({"fat.label-mismatch"})),
    "label-root-only": Damage(label_root_only, frozenset({"fat.label-mismatch"})),
    "chain-free": Damage(chain_free, frozenset({"fat.chain-free-cluster", "fat.chain-too-short",
                                                "fat.lost-clusters"})),
    "chain-loop": Damage(chain_loop, frozenset({"fat.chain-loop", "fat.chain-too-short",
                                                "fat.lost-clusters"})),
    "lost-chain": Damage(lost_chain, frozenset({"fat.lost-clusters"})),
    "lfn-field": Damage(lfn_field, frozenset({"fat.lfn-field"})),
    "label-invalid": Damage(label_invalid, frozenset({"fat.label-invalid"})),
    "dots-overwritten": Damage(dots_overwritten, frozenset({"fat.dot-entries"})),
    "dots-full-dir": Damage(dots_full, frozenset({"fat.dot-entries"})),
}


# -- images ---------------------------------------------------------------------------------
def build_base(path: Path, fat: int, partitioned: bool, work: Path) -> int:
    """A filled volume; returns its byte offset in the image."""
    size = VOLUME_BYTES[fat] + (PART_LBA * 512 if partitioned else 0)
    off = mkfs(path, size, fat, partitioned, ("-s", "1", "-n", LABEL))
    img = f"{path}@@{off}" if off else str(path)
    src = work / "src"
    src.mkdir(exist_ok=True)
    for d in ("Folder", "FULL"):
        run("mmd", "-i", img, f"::{d}")
    for i, (name, data) in enumerate(FILES.items()):
        (src / f"f{i}").write_bytes(data)
        run("mcopy", "-i", img, str(src / f"f{i}"), f"::{name}")
    for n in FULL_FILES:
        (src / n).write_bytes(b"")
    run("mcopy", "-i", img, *[str(src / n) for n in FULL_FILES], "::FULL/")
    return off


def _copy_out(image: Path, offset: int, dest: Path) -> Path:
    """The volume alone (fsck.fat has no offset option)."""
    if not offset:
        shutil.copyfile(image, dest)
        return dest
    with open(image, "rb") as f, open(dest, "wb") as g:
        f.seek(offset)
        shutil.copyfileobj(f, g)
    return dest


def fsck(volume: Path, *opts: str) -> tuple[bool, str]:
    """(reports a problem?, output) of fsck.fat on a volume file."""
    res = run("fsck.fat", *opts, str(volume), check=False)
    out = res.stdout + res.stderr
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return res.returncode != 0 or len(lines) > 2, out


def read_files(volume: Path, dest: Path) -> dict[str, bytes]:
    """Every file of the volume, by path, read with mtools."""
    dest.mkdir()
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    subprocess.run(["mcopy", "-s", "-n", "-i", str(volume), "::*", str(dest) + "/"],
                   check=True, capture_output=True, env=env)
    return {str(p.relative_to(dest)): p.read_bytes() for p in sorted(dest.rglob("*"))
            if p.is_file()}


RENAMED = re.compile(r"FSCK\d{4}\.\d{3}$")       # fsck.fat's name for a renamed entry


def files_kept(kept_by_fsck: dict[str, bytes], kept_by_vdisk: dict[str, bytes]) -> list[str]:
    """Files fsck.fat keeps that vdisk does not: each must be in vdisk's result under the
    same path with the same bytes, or, where vdisk renamed a duplicate that fsck.fat left
    alone, with the same bytes under vdisk's FSCKnnnn.nnn name in the same directory."""
    renamed = {p: d for p, d in kept_by_vdisk.items()
               if RENAMED.search(p) and p not in kept_by_fsck}
    missing = []
    for p, data in kept_by_fsck.items():
        if kept_by_vdisk.get(p) == data:
            continue
        folder = os.path.dirname(p)
        match = next((q for q, d in renamed.items()
                      if d == data and os.path.dirname(q) == folder), None)
        if match is None:
            missing.append(p)
        else:
            del renamed[match]
    return missing


@dataclass
class CaseResult:
    damage: str
    fat: int
    container: str
    vdisk_codes: list[str]
    vdisk_found: bool          # the plain check reported every code the damage causes
    fsck_found: bool           # fsck.fat -n reported something
    vdisk_clean: bool          # fsck.fat -n finds nothing after vdisk's repair
    fsck_clean: bool           # ... after fsck.fat -a
    vdisk_rc: int
    missing: list[str]         # files fsck.fat -a kept that vdisk did not
    vdisk_after: list[str]     # what vdisk's check still finds after its repair
    fsck_out: str

    def row(self) -> str:
        yn = {True: "yes", False: "NO"}
        return (f"| {self.damage} | FAT{self.fat} | {self.container} | {yn[self.vdisk_found]} | "
                f"{'yes' if self.fsck_found else 'no'} | {yn[self.vdisk_clean]} | "
                f"{'yes' if self.fsck_clean else 'no'} | "
                f"{'all' if not self.missing else 'lost ' + ', '.join(self.missing)} |")


TABLE_HEAD = ("| damage | FAT | container | vdisk found | fsck.fat found | vdisk repair clean | "
              "fsck.fat -a clean | files fsck.fat keeps, kept by vdisk |\n"
              "|---|---|---|---|---|---|---|---|")

VdiskFn = Callable[..., tuple[int, str]]


def run_case(damage: str, fat: int, container: str, base: tuple[Path, int], work: Path,
             vdisk: VdiskFn) -> CaseResult:
    base_img, off = base
    spec = DAMAGES[damage]
    damaged = work / "damaged.raw"
    shutil.copyfile(base_img, damaged)
    spec.apply(SpecVolume(damaged, off))
    fsck_found, fsck_out = fsck(_copy_out(damaged, off, work / "fsck-n.vol"), "-n")
    # vdisk: on the image as it comes (raw or VMDK)
    target = work / "vdisk.raw"
    if container.startswith("vmdk"):
        target = work / "vdisk.vmdk"
        run(need_tool("qemu-img"), "convert", "-f", "raw", "-O", "vmdk", str(damaged), str(target))
    else:
        shutil.copyfile(damaged, target)
    _rc, out = vdisk("fs", "check", str(target), "--json")
    codes = sorted({f["code"] for f in json.loads(out)["findings"]})
    rc, _out = vdisk("fs", "check", str(target), "--repair", "--yes")
    _rc2, out2 = vdisk("fs", "check", str(target), "--json")
    after = sorted({f["code"] for f in json.loads(out2)["findings"]})
    repaired = target
    if container.startswith("vmdk"):
        repaired = work / "vdisk-back.raw"
        run(need_tool("qemu-img"), "convert", "-f", "vmdk", "-O", "raw", str(target), str(repaired))
    vd_vol = _copy_out(repaired, off, work / "vdisk.vol")
    # fsck.fat -a on the second copy
    fs_vol = _copy_out(damaged, off, work / "fsck-a.vol")
    run("fsck.fat", "-a", str(fs_vol), check=False)
    vdisk_dirty, _ = fsck(vd_vol, "-n")
    fsck_dirty, _ = fsck(fs_vol, "-n")
    missing = files_kept(read_files(fs_vol, work / "by-fsck"), read_files(vd_vol, work / "by-vdisk"))
    return CaseResult(damage, fat, container, codes, spec.codes <= set(codes), fsck_found,
                      not vdisk_dirty, not fsck_dirty, rc, missing, after, fsck_out)


def sampled_cases() -> list[tuple[str, int, str]]:
    """Each damage on each FAT type, the container rotating so that every FAT type meets
    every container (raw/VMDK x superfloppy/MBR) several times."""
    out = []
    for i, (name, spec) in enumerate(DAMAGES.items()):
        for j, fat in enumerate((12, 16, 32)):
            if fat in spec.fats:
                out.append((name, fat, CONTAINERS[(i + j) % len(CONTAINERS)]))
    return out


def all_cases() -> list[tuple[str, int, str]]:
    return [(name, fat, c) for name, spec in DAMAGES.items() for fat in spec.fats
            for c in CONTAINERS]
