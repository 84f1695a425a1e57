"""vdisk's FAT check and repair against fsck.fat on damage built independently of vdisk
(tests/fatdamage.py: mkfs.fat + mtools, byte edits at the offsets of Microsoft's FAT
specification). For each case, on two copies of the damaged image: `vdisk fs check --repair
--yes` (on the raw image or its VMDK) and `fsck.fat -a`. vdisk's repair must leave an
`fsck.fat -n`-clean volume and keep every file fsck.fat keeps, byte for byte (read with
mtools); vdisk's plain check must report what the damage is whenever fsck.fat reports
anything. `bench/fat_damage_table.py` runs every combination and prints the table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk
from fatdamage import (
    DAMAGES,
    FILES,
    LABEL,
    build_base,
    fsck,
    read_files,
    run_case,
    sampled_cases,
)
from fatspec import SpecVolume
from fatutil import MIB, mkfs

#: Damage fsck.fat -a does not repair (fsck.fat -n still complains afterwards), with why.
FSCK_CANNOT = {
    ("dots-full-dir", 12): "no free slot to move the entry to: 'No free entry found.'",
    ("dots-full-dir", 16): "no free slot to move the entry to: 'No free entry found.'",
    ("dots-full-dir", 32): "no free slot to move the entry to: 'No free entry found.'",
    ("dirty-flag", 32): "it clears the flag in sector 0 only; the backup boot sector then "
                        "differs",
}
#: Damage fsck.fat does not look for.
FSCK_BLIND = {"hard-error", "duplicate-long"}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    for tool in ("mkfs.fat", "fsck.fat", "mcopy", "qemu-img", "sfdisk"):
        need_tool(tool)
    made: dict[tuple[int, bool], tuple[Path, int]] = {}

    def get(fat: int, partitioned: bool) -> tuple[Path, int]:
        key = (fat, partitioned)
        if key not in made:
            work = tmp_path_factory.mktemp(f"base{fat}{'p' if partitioned else ''}")
            img = work / "base.raw"
            made[key] = (img, build_base(img, fat, partitioned, work))
        return made[key]
    return get


@pytest.fixture(scope="module")
def cli():
    from typer.testing import CliRunner
    runner = CliRunner()

    def call(*args: str) -> tuple[int, str]:
        res = vdisk(runner, *args)
        return res.exit_code, res.stdout
    return call


@pytest.mark.parametrize("damage,fat,container", sampled_cases(),
                         ids=[f"{d}-fat{f}-{c}" for d, f, c in sampled_cases()])
def test_damage(damage, fat, container, bases, cli, tmp_path):
    base = bases(fat, container.endswith("mbr"))
    res = run_case(damage, fat, container, base, tmp_path, cli)
    assert res.vdisk_found, (res.vdisk_codes, DAMAGES[damage].codes)
    if damage in FSCK_BLIND:
        assert not res.fsck_found, res.fsck_out
    else:
        assert res.fsck_found, res.fsck_out
    assert res.vdisk_rc == 0 and res.vdisk_after == [], res.vdisk_after
    assert res.vdisk_clean, "fsck.fat -n complains after vdisk's repair"
    assert res.missing == [], f"vdisk lost files fsck.fat keeps: {res.missing}"
    assert res.fsck_clean == ((damage, fat) not in FSCK_CANNOT), res


def _swap_dots(v: SpecVolume) -> None:
    at = v.cluster_offset(v.start_cluster(v.find(b"FOLDER     ")))
    v.write(at, v.read(at + 32, 32) + v.read(at, 32))


def test_dots_moved_not_overwritten(bases, cli, tmp_path):
    """The two files in the slots of '.' and '..' keep their names and contents, and the
    directory lists every one of its files, also where it had to grow by a cluster; dot
    entries in each other's slots are rewritten, not moved."""
    img, off = bases(32, False)
    for damage in ("dots-overwritten", "dots-full-dir", "dots-swapped"):
        work = tmp_path / damage
        work.mkdir()
        damaged = work / "d.raw"
        damaged.write_bytes(img.read_bytes())
        apply = _swap_dots if damage == "dots-swapped" else DAMAGES[damage].apply
        apply(SpecVolume(damaged, off))
        rc, out = cli("fs", "check", str(damaged), "--repair", "--yes", "--json")
        assert rc == 0 and {f["code"] for f in json.loads(out)["found"]} == {"fat.dot-entries"}
        got = read_files(damaged, work / "out")
        for name, data in FILES.items():
            assert got[name] == data, name
        if damage == "dots-full-dir":
            assert sorted(k for k in got if k.startswith("FULL/")) == \
                [f"FULL/F{i:02d}" for i in range(16)]
        assert not fsck(damaged, "-n")[0]


def test_lost_chain_saved_or_discarded(bases, cli, tmp_path):
    img, off = bases(16, False)
    for discard in (False, True):
        work = tmp_path / str(discard)
        work.mkdir()
        damaged = work / "d.raw"
        damaged.write_bytes(img.read_bytes())
        DAMAGES["lost-chain"].apply(SpecVolume(damaged, off))
        args = ["fs", "check", str(damaged), "--repair", "--yes"]
        assert cli(*args, *(["--discard-lost"] if discard else []))[0] == 0
        got = read_files(damaged, work / "out")
        if discard:
            assert not [k for k in got if k.startswith("FSCK")]
        else:
            assert got["FSCK0000.REC"] == b"".join(bytes([0x40 + k]) * 512 for k in range(3))
        assert not fsck(damaged, "-n")[0]


def test_bad_cluster_in_chain(tmp_path, cli):
    """A chain that runs into a cluster marked bad ends before it (fsck.fat: "Contains a bad
    cluster. Assuming EOF.")."""
    img = tmp_path / "b.raw"
    mkfs(img, 20 * MIB, 16, False, ("-s", "1"))
    src = tmp_path / "k"
    src.write_bytes(bytes(range(256)) * 10)
    run("mcopy", "-i", str(img), str(src), "::KEEP.BIN")
    v = SpecVolume(img)
    chain = v.chain(v.start_cluster(v.find(b"KEEP    BIN")))
    v.fat_set(chain[2], 0xFFF7)
    rc, out = cli("fs", "check", str(img), "--json")
    codes = {f["code"] for f in json.loads(out)["findings"]}
    assert rc == 1 and {"fat.chain-bad-cluster", "fat.chain-too-short"} <= codes, codes
    assert fsck(img, "-n")[0]
    assert cli("fs", "check", str(img), "--repair", "--yes")[0] == 0
    assert not fsck(img, "-n")[0]
    assert read_files(img, tmp_path / "out")["KEEP.BIN"] == (bytes(range(256)) * 10)[:1024]


def test_repair_asks_on_a_terminal_and_needs_yes_elsewhere(bases, cli, tmp_path):
    img, off = bases(12, False)
    damaged = tmp_path / "d.raw"
    damaged.write_bytes(img.read_bytes())
    DAMAGES["dirty-flag"].apply(SpecVolume(damaged, off))
    before = damaged.read_bytes()
    rc, _out = cli("fs", "check", str(damaged), "--repair")      # no TTY, no --yes
    assert rc == 2 and damaged.read_bytes() == before
    assert cli("fs", "check", str(damaged), "--repair", "--dry-run")[0] == 0
    assert damaged.read_bytes() == before
    assert cli("fs", "check", str(damaged), "--repair", "--yes")[0] == 0
    assert cli("fs", "check", str(damaged))[0] == 0


@pytest.mark.parametrize("damage,shown", [("label-differs", LABEL), ("label-boot-only", ""),
                                          ("label-root-only", LABEL)])
def test_label_is_the_root_entry(bases, cli, tmp_path, damage, shown):
    """`vdisk fs label` shows what fatlabel shows: the root directory's entry, or nothing
    when it is erased (whatever the boot sector's copy says)."""
    img, off = bases(16, False)
    damaged = tmp_path / "d.raw"
    damaged.write_bytes(img.read_bytes())
    DAMAGES[damage].apply(SpecVolume(damaged, off))
    rc, out = cli("fs", "label", str(damaged))
    assert rc == 0 and out.strip() == shown
    assert run(need_tool("fatlabel"), str(damaged)).stdout.strip() == shown
