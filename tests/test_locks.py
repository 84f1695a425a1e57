"""VMware locks (issue #8): every mutating command refuses a disk that VMware holds, and
`--force` overrides with a warning.

Three kinds of lock are tried for each command:
- `disk`: a `<disk>.lck` folder beside the disk (Workstation; for bundle commands a disk of
  the bundle, for create/convert the target);
- `esxi`: a `.lck-0123456789abcdef` file in the disk's folder (ESXi on NFS);
- `vmx`: an `ipva.vmx.lck` folder beside the vmx that attaches the disk.
Refused: exit 3, exactly one `vdisk: error:` line naming the lock, every file unchanged.
Forced: the command succeeds and says on stderr that it overrode the lock.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import fwbuilder
import pytest
from conftest import break_grain_table_and_flag, need_tool, run, vdisk
from test_crash_all import FW, _dump_disk, _fat_disk, _flash_disk, _root_entry

MIB = 1 << 20
ESXI = ".lck-0123456789abcdef"


# -- seeds: small inputs, built once, copied per case -----------------------------------------

def _seed_fat(folder: Path) -> None:
    _fat_disk(folder, mib=16)
    (folder / "x.bin").write_bytes(b"x" * 3000)


def _seed_fat_bad(folder: Path) -> None:
    def damage(raw: Path) -> None:
        at = _root_entry(raw, b"FILE    BIN")
        with open(raw, "r+b") as f:
            f.seek(at + 28)
            f.write((90000).to_bytes(4, "little"))
    _fat_disk(folder, edit=damage)


def _seed_vmdk_bad(folder: Path) -> None:
    """A sparse VMDK with a grain table entry beyond the file and the unclean flag set."""
    p = folder / "d.vmdk"
    run(need_tool("qemu-img"), "create", "-q", "-f", "vmdk", str(p), "16M")
    run(need_tool("qemu-io"), "-f", "vmdk", "-c", "write -P 0xab 1M 64k", str(p))
    break_grain_table_and_flag(p)


def _seed_boot(folder: Path) -> None:
    build = folder / "build"
    build.mkdir()
    raw = fwbuilder.make_raw_boot(str(build / "b.img"), FW[:len(FW) // 2 + 333])
    fwbuilder.to_vmdk(raw, str(folder / "hd-boot.vmdk"))
    shutil.rmtree(build)
    (folder / "ipva.bin").write_bytes(FW)


def _seed_flash(folder: Path) -> None:
    _flash_disk(folder)
    with open(folder / "flash.img", "wb") as f:
        f.truncate(64 * MIB)
        f.seek(2 * MIB)
        f.write(b"\x33" * 65536)


def _seed_dump(folder: Path) -> None:
    _dump_disk(folder)
    (folder / "t.txt").write_bytes(b"IPVA crash dump\n" * 20)


def _seed_cf(folder: Path) -> None:
    _fat_disk(folder, "hd-cf.vmdk", mib=16, label="IPVACF")


def _seed_bundle(folder: Path) -> None:
    """A complete appliance (vdisk's own `bundle create`) whose vmx lacks the perfctr key."""
    from vdisk_tool.ipva import golden
    fw = folder.parent / "bundle-fw.bin"
    fw.write_bytes(fwbuilder.standard().to_bytes())
    golden.apply_create(golden.plan_create(str(folder / "ipva"), str(fw), cf_bytes=16 * MIB,
                                           mac="00:50:56:00:00:01"))
    vmx = folder / "ipva" / "ipva.vmx"
    lines = [ln for ln in vmx.read_text().splitlines(keepends=True)
             if "pseudo_perfctr" not in ln]
    vmx.write_text("".join(lines))
    (folder / "ipva.bin").write_bytes(fwbuilder.standard().to_bytes())


SEEDS = {"fat": _seed_fat, "fat-bad": _seed_fat_bad, "vmdk-bad": _seed_vmdk_bad,
         "boot": _seed_boot, "flash": _seed_flash, "dump": _seed_dump, "cf": _seed_cf,
         "bundle": _seed_bundle, "empty": lambda folder: None}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lock-seeds")
    out = {}
    for name, build in SEEDS.items():
        folder = root / name
        folder.mkdir()
        build(folder)
        out[name] = folder
    return out


# -- the commands -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cmd:
    seed: str
    args: tuple[str, ...]        # relative to the case folder; "{}" is that folder
    disk: str                    # what the lock belongs to, relative to the case folder
    ok_codes: tuple[int, ...] = (0,)
    vmx: str | None = None       # the vmx beside the disk (None: one is written for the case)


CMDS: dict[str, Cmd] = {
    "fs put": Cmd("fat", ("fs", "put", "d.vmdk", "x.bin", "/X.BIN"), "d.vmdk"),
    "fs rm": Cmd("fat", ("fs", "rm", "d.vmdk", "/Sub Directory", "-r", "--yes"), "d.vmdk"),
    "fs mv": Cmd("fat", ("fs", "mv", "d.vmdk", "/FILE.BIN", "/Sub Directory/f.bin"), "d.vmdk"),
    "fs mkdir": Cmd("fat", ("fs", "mkdir", "d.vmdk", "/new"), "d.vmdk"),
    "fs label": Cmd("fat", ("fs", "label", "d.vmdk", "NEWLABEL"), "d.vmdk"),
    "fs format": Cmd("fat", ("fs", "format", "d.vmdk", "--yes"), "d.vmdk"),
    "fs check --repair": Cmd("fat-bad", ("fs", "check", "d.vmdk", "--repair", "--yes"), "d.vmdk"),
    "check --repair": Cmd("vmdk-bad", ("check", "d.vmdk", "--repair"), "d.vmdk"),
    "grow": Cmd("fat", ("grow", "d.vmdk", "--size", "32M"), "d.vmdk"),
    "create": Cmd("empty", ("create", "new.vmdk", "--size", "10M"), "new.vmdk"),
    "convert": Cmd("fat", ("convert", "d.vmdk", "new.vmdk"), "new.vmdk"),
    "boot restore": Cmd("boot", ("boot", "restore", "hd-boot.vmdk", "--firmware", "ipva.bin"),
                        "hd-boot.vmdk"),
    "flash reset": Cmd("flash", ("flash", "reset", "hd-flash.vmdk", "--yes"), "hd-flash.vmdk"),
    "flash restore": Cmd("flash", ("flash", "restore", "hd-flash.vmdk", "flash.img", "--yes"),
                         "hd-flash.vmdk"),
    "dump write": Cmd("dump", ("dump", "write", "hd-dump.vmdk", "--text", "t.txt"),
                      "hd-dump.vmdk"),
    "dump clear": Cmd("dump", ("dump", "clear", "hd-dump.vmdk", "--yes"), "hd-dump.vmdk"),
    "dump init": Cmd("dump", ("dump", "init", "hd-dump.vmdk", "--yes"), "hd-dump.vmdk"),
    "cf format": Cmd("cf", ("cf", "format", "hd-cf.vmdk", "--yes"), "hd-cf.vmdk"),
    "cf grow": Cmd("cf", ("cf", "grow", "hd-cf.vmdk", "--size", "32M", "--yes"), "hd-cf.vmdk"),
    "bundle check --fix": Cmd("bundle", ("bundle", "check", "ipva", "--fix"),
                              "ipva/hd-boot.vmdk", (0, 1), vmx="ipva/ipva.vmx"),
    "bundle set-mac": Cmd("bundle", ("bundle", "set-mac", "ipva", "--mac", "00:50:56:12:34:56"),
                          "ipva/hd-boot.vmdk", (0, 1), vmx="ipva/ipva.vmx"),
    "bundle clone": Cmd("bundle", ("bundle", "clone", "ipva", "site2", "--mac",
                                   "00:50:56:00:aa:bb"), "ipva/hd-boot.vmdk", (0, 1),
                        vmx="ipva/ipva.vmx"),
    "bundle create": Cmd("bundle", ("bundle", "create", "new", "--firmware", "ipva.bin",
                                    "--cf-size", "16M"), "new/hd-boot.vmdk", (0, 1),
                         vmx="new/ipva.vmx"),
}

LOCKS = ("disk", "esxi", "vmx")

# `bundle create` writes into a new, empty folder: a lock there is refused and named, and
# there is nothing a --force could sensibly override, so it has no force case.
NO_FORCE = ("bundle create",)


def _params(mode: str) -> list:
    return [pytest.param(cmd, lock, id=f"{cmd}-{lock}") for cmd in CMDS for lock in LOCKS
            if not (mode == "force" and cmd in NO_FORCE)]


# -- helpers ------------------------------------------------------------------------------------

def _copy(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", "--sparse=always", str(src), str(dst)], check=True)


def _state(folder: Path) -> dict[str, str]:
    """Every entry under folder (dot files, folders and temporaries included) with a hash."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _vmx_for(disk: str) -> str:
    return ('.encoding = "UTF-8"\nconfig.version = "8"\nvirtualHW.version = "7"\n'
            'memsize = "64"\nmonitor_control.pseudo_perfctr = "TRUE"\n'
            f'ide0:0.present = "TRUE"\nide0:0.fileName = "{disk}"\n')


def _prepare(seeds: dict[str, Path], tmp_path: Path, cmd: Cmd, lock: str) -> tuple[Path, str]:
    """The case folder with its lock; returns (folder, the lock's file name)."""
    case = tmp_path / "case"
    _copy(seeds[cmd.seed], case)
    disk = case / cmd.disk
    disk.parent.mkdir(parents=True, exist_ok=True)
    if lock == "disk":
        (case / (cmd.disk + ".lck")).mkdir()
        return case, os.path.basename(cmd.disk) + ".lck"
    if lock == "esxi":
        (disk.parent / ESXI).write_bytes(b"")
        return case, ESXI
    vmx = case / (cmd.vmx or (os.path.dirname(cmd.disk) + "/ipva.vmx").lstrip("/"))
    if cmd.vmx is None:
        vmx.write_text(_vmx_for(os.path.basename(cmd.disk)))
    (vmx.parent / (vmx.name + ".lck")).mkdir(parents=True, exist_ok=True)
    return case, vmx.name + ".lck"


def _run(runner, case: Path, args: tuple[str, ...], *extra: str):
    old = os.getcwd()
    os.chdir(case)           # commands take the paths as a user in that folder types them
    try:
        return vdisk(runner, *args, *extra)
    finally:
        os.chdir(old)


# -- tests --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,lock", _params("refuse"))
def test_lock_refuses(seeds, tmp_path, runner, name: str, lock: str) -> None:
    cmd = CMDS[name]
    case, lck = _prepare(seeds, tmp_path, cmd, lock)
    before = _state(case)
    r = _run(runner, case, cmd.args)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("vdisk: error:")]
    assert r.exit_code == 3, (r.exit_code, r.output)
    assert len(errors) == 1 and lck in errors[0], r.stderr
    assert "Traceback" not in r.output
    assert _state(case) == before


@pytest.mark.parametrize("name,lock", _params("force"))
def test_lock_force_overrides_with_warning(seeds, tmp_path, runner, name: str, lock: str) -> None:
    cmd = CMDS[name]
    case, lck = _prepare(seeds, tmp_path, cmd, lock)
    before = _state(case)
    r = _run(runner, case, cmd.args, "--force")
    assert r.exit_code in cmd.ok_codes, (r.exit_code, r.output)
    warnings = [ln for ln in r.stderr.splitlines() if "warning" in ln.lower()]
    assert any(lck in ln and "--force" in ln for ln in warnings), r.stderr
    assert _state(case) != before
