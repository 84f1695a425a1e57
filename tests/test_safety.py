"""Backups never destroy, and destructive commands ask on a terminal.

- `--backup PATH` onto an existing file, onto the image itself, onto its folder: exit 3,
  every file byte-identical (the earlier backup too), a hint with a free name;
- the library refuses the same at its last line of defence (`_keep_backup`);
- on a terminal every destructive command asks, also when nothing would be lost by its own
  measure (an empty dump store); answering no changes nothing.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk
from test_roles import COMMANDS, _alone, _args, _state, build_appliances

from vdisk_tool.cli import common
from vdisk_tool.cli.app import app
from vdisk_tool.errors import RefusedError
from vdisk_tool.image.backup import check_backup_target, free_name
from vdisk_tool.image.safe import Replacement
from vdisk_tool.ipva.role import Role


@pytest.fixture(scope="session")
def appliances(tmp_path_factory) -> dict[str, Path]:
    return build_appliances(tmp_path_factory.mktemp("safety"))


MIB = 1 << 20
# command -> (the disk it writes, extra arguments after the command's own)
BACKUP_CMDS = {
    "dump clear": (Role.DUMP, None),
    "flash reset": (Role.FLASH, None),
    "cf format": (Role.CF, None),
    "boot restore": (Role.BOOT, None),
    "fs mkdir": (Role.CF, ("fs", "mkdir", "{disk}", "/NEW")),
    "grow": (Role.CF, ("grow", "{disk}", "--size", "1100M")),
}


def _command(name: str, disk: Path, inputs: Path) -> list[str]:
    role, own = BACKUP_CMDS[name]
    if own is None:
        return _args(name, disk, inputs)
    return [str(disk) if a == "{disk}" else a for a in own]


def _target(kind: str, disk: Path) -> tuple[str, str]:
    """(the --backup value, the free name the hint should offer)."""
    if kind == "existing":
        old = disk.parent / "hd.bak"
        old.write_bytes(b"the only copy of an earlier backup")
        return str(old), str(old) + ".1"
    if kind == "image":
        return str(disk), str(disk.parent / (disk.stem + ".bak"))
    return str(disk.parent), str(disk.parent / (disk.stem + ".bak"))


@pytest.mark.parametrize("kind", ["existing", "image", "folder"])
@pytest.mark.parametrize("name", BACKUP_CMDS)
def test_backup_never_replaces_anything(appliances, runner, tmp_path, name, kind):
    disk = _alone(appliances, tmp_path, "vsphere", BACKUP_CMDS[name][0])
    backup, free = _target(kind, disk)
    before = _state(disk.parent)
    r = vdisk(runner, *_command(name, disk, appliances["inputs"]), "--backup", backup)
    assert r.exit_code == 3, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("vdisk: error:")]
    assert len(errors) == 1 and "--backup" in errors[0] and "nothing was changed" in errors[0]
    assert f"hint: choose a free name, e.g. --backup {free}" in r.stderr, r.stderr
    assert _state(disk.parent) == before


def test_backup_to_a_free_name_is_kept(appliances, runner, tmp_path):
    disk = _alone(appliances, tmp_path, "vsphere", Role.DUMP)
    old = hashlib.sha256(disk.read_bytes()).hexdigest()
    bak = tmp_path / "hd-dump.bak"
    r = vdisk(runner, *_args("dump clear", disk, appliances["inputs"]), "--backup", str(bak))
    assert r.exit_code == 0, r.output
    assert hashlib.sha256(bak.read_bytes()).hexdigest() == old


def test_the_library_refuses_too(tmp_path):
    """_keep_backup, under every commit: an existing backup stops it before a rename."""
    target, tmp = tmp_path / "disk.img", tmp_path / "disk.new"
    target.write_bytes(b"old")
    tmp.write_bytes(b"new")
    bak = tmp_path / "disk.bak"
    bak.write_bytes(b"earlier backup")
    rep = Replacement()
    rep.add(str(tmp), str(target))
    with pytest.raises(RefusedError, match="exists"):
        rep.commit(backup=str(bak))
    assert target.read_bytes() == b"old" and bak.read_bytes() == b"earlier backup"
    with pytest.raises(RefusedError, match="its folder does not exist"):
        check_backup_target(str(tmp_path / "no" / "such.bak"), [str(target)])
    (tmp_path / "disk.bak.1").write_bytes(b"")
    assert free_name(str(bak)) == str(bak) + ".2"


# -- confirmation on a terminal --------------------------------------------------------------
ASKING = ("dump init", "dump clear", "flash reset", "flash restore", "cf format", "cf grow",
          "boot restore", "fs format")


@pytest.fixture
def terminal(monkeypatch):
    monkeypatch.setattr(common, "stdin_is_terminal", lambda: True)


@pytest.mark.parametrize("name", ASKING)
def test_destructive_commands_ask_on_a_terminal(appliances, runner, tmp_path, terminal, name):
    """The sample dump store is empty: dump init and clear lose nothing and still ask."""
    wants = COMMANDS[name][0][0]
    disk = _alone(appliances, tmp_path, "vsphere", wants)
    args = [a for a in _args(name, disk, appliances["inputs"]) if a != "--yes"]
    before = _state(disk.parent)
    r = runner.invoke(app, args, input="n\n", catch_exceptions=False)
    assert "Continue?" in r.output and r.exit_code == 2 and "cancelled" in r.stderr, r.output
    assert _state(disk.parent) == before


def test_yes_on_a_terminal_goes_ahead(appliances, runner, tmp_path, terminal):
    disk = _alone(appliances, tmp_path, "vsphere", Role.DUMP)
    args = [a for a in _args("dump clear", disk, appliances["inputs"]) if a != "--yes"]
    r = runner.invoke(app, args, input="y\n", catch_exceptions=False)
    assert r.exit_code == 0 and "Continue?" in r.output, r.output


# -- --allow-outside on the fs, cf, dump and flash commands ------------------------------------
@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A monolithicFlat descriptor in A/ whose extent lies in B/ (a FAT volume made by
    mkfs.fat at sector 0)."""
    root = tmp_path_factory.mktemp("outside")
    (root / "A").mkdir()
    (root / "B").mkdir()
    flat = root / "B" / "d-flat.vmdk"
    with open(flat, "wb") as f:
        f.truncate(80 * MIB)
    run(need_tool("mkfs.fat"), "-F", "16", "-n", "OUTSIDE", str(flat))
    (root / "A" / "d.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
        'createType="monolithicFlat"\n\nRW 163840 FLAT "../B/d-flat.vmdk" 0\n\n'
        'ddb.adapterType = "ide"\n')
    return root / "A" / "d.vmdk"


OPENERS = [("fs", "ls", "{d}"), ("fs", "tree", "{d}"), ("fs", "get", "{d}", "/NONE"),
           ("fs", "mkdir", "{d}", "/N"), ("fs", "format", "{d}", "--yes"),
           ("dump", "list", "{d}"), ("dump", "extract", "{d}", "-o", "-"),
           ("dump", "init", "{d}", "--yes"), ("flash", "info", "{d}"),
           ("flash", "reset", "{d}", "--yes"), ("cf", "format", "{d}", "--yes"),
           ("cf", "grow", "{d}", "--size", "90M", "--yes")]
READERS = {("fs", "ls"): (0, ""), ("fs", "tree"): (0, "/ (OUTSIDE)"),
           ("dump", "list"): (1, "0 record(s)"), ("flash", "info"): (0, "flash: in use")}


@pytest.mark.parametrize("args", OPENERS, ids=[" ".join(a[:2]) for a in OPENERS])
def test_allow_outside_is_what_the_hint_says(outside, runner, args):
    argv = [str(outside) if a == "{d}" else a for a in args]
    before = _state(outside.parent.parent)
    r = vdisk(runner, *argv)
    assert r.exit_code == 3 and "pass --allow-outside to trust it" in r.stderr, r.output
    assert _state(outside.parent.parent) == before
    if tuple(args[:2]) in READERS:
        code, text = READERS[tuple(args[:2])]
        r = vdisk(runner, *argv, "--allow-outside")
        assert r.exit_code == code and text in r.stdout, r.output
