"""`--quiet/-q` on every command: no progress, no chatter, only the result or the error.

Every leaf command of the app (found by walking it, so a command added later must be given
a case here) runs once, successfully, on a copy of the sample bundle with -q: stderr stays
empty, and a command that changes something prints at most its one result line (a new
appliance: the folder, and the MAC and uuid.bios its licence depends on). Plans, progress
notes and the check that follows a change are chatter; a dry run's plan is its result.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import vdisk
from test_cli_shape import LEAVES

SAMPLE = Path(__file__).resolve().parent.parent / "sample_images" / "ipva"

# command words -> (arguments, whether it only reads); {d} is the copied bundle, {t} a
# scratch folder. Each runs on a fresh copy.
CASES: dict[str, tuple[list[str], bool]] = {
    "info": (["{d}/hd-boot.vmdk"], True),
    "map": (["{d}/hd-boot.vmdk"], True),
    "compare": (["{d}/hd-boot.vmdk", "{d}/hd-boot.vmdk"], True),
    "check": (["{d}/hd-cf.vmdk"], True),
    "create": (["{t}/new.vmdk", "--size", "1M"], False),
    "convert": (["{d}/hd-dump.vmdk", "{t}/copy.vmdk"], False),
    "grow": (["{d}/hd-dump.vmdk", "--size", "65M"], False),
    "verify": (["{d}/hd-boot.vmdk"], True),
    "firmware info": (["{d}/ipva.bin"], True),
    "firmware pack": (["-o", "{t}/fw.bin", "--section", "LOADER={d}/ipva.vmx", "--build", "1",
                       "--version", "1.0", "--timestamp", "1"], False),
    "boot create": (["{t}/boot.vmdk", "--firmware", "{d}/ipva.bin"], False),
    "boot restore": (["{d}/hd-boot.vmdk", "--firmware", "{d}/ipva.bin", "--yes"], False),
    "bundle check": (["{d}"], True),
    "bundle set-mac": (["{d}", "--mac", "00:50:56:00:12:34"], False),
    "bundle create": (["{t}/new", "--firmware", "{d}/ipva.bin", "--cf-size", "64M"], False),
    "bundle clone": (["{d}", "{t}/clone"], False),
    "bundle deploy": (["{t}/pkg/ipva.ova", "{t}/deployed"], False),
    "bundle convert": (["{d}", "{t}/pve", "--target", "proxmox"], False),
    "cf format": (["{d}/hd-cf.vmdk", "--yes"], False),
    "cf grow": (["{d}/hd-cf.vmdk", "--size", "2G", "--yes"], False),
    "dump list": (["{d}/hd-dump.vmdk"], True),
    "dump extract": (["{d}/hd-dump.vmdk", "--sequence", "1", "-o", "{t}/crash.txt"], False),
    "dump write": (["{d}/hd-dump.vmdk", "--text", "{d}/ipva.vmx"], False),
    "dump init": (["{d}/hd-dump.vmdk", "--yes"], False),
    "dump clear": (["{d}/hd-dump.vmdk", "--yes"], False),
    "flash info": (["{d}/hd-flash.vmdk"], True),
    "flash backup": (["{d}/hd-flash.vmdk", "-o", "{t}/flash.img"], False),
    "flash reset": (["{d}/hd-flash.vmdk", "--yes"], False),
    "flash restore": (["{d}/hd-flash.vmdk", "{t}/flash.img", "--yes"], False),
    "fs ls": (["{d}/hd-cf.vmdk", "/LOGS"], True),
    "fs tree": (["{d}/hd-cf.vmdk"], True),
    "fs cat": (["{d}/hd-cf.vmdk", "/CONFIG/NTP.CFG"], True),
    "fs df": (["{d}/hd-cf.vmdk"], True),
    "fs get": (["{d}/hd-cf.vmdk", "/CONFIG/NTP.CFG", "{t}/ntp.cfg"], False),
    "fs put": (["{d}/hd-cf.vmdk", "{d}/ipva.vmx", "/IPVA.VMX"], False),
    "fs mkdir": (["{d}/hd-cf.vmdk", "/NEW"], False),
    "fs mv": (["{d}/hd-cf.vmdk", "/CONFIG/NTP.CFG", "/NTP.CFG"], False),
    "fs rm": (["{d}/hd-cf.vmdk", "/CONFIG/NTP.CFG"], False),
    "fs label": (["{d}/hd-cf.vmdk", "NEWLABEL"], False),
    "fs check": (["{d}/hd-cf.vmdk"], True),
    "fs format": (["{d}/hd-cf.vmdk", "--yes"], False),
}
# Exit codes other than 0: the sample's dump store holds a torn record (a finding).
EXIT = {"dump list": 1}
# Result lines of the changing commands that print more than one.
RESULT_LINES = {"bundle create": 3, "bundle clone": 3, "bundle deploy": 2, "bundle set-mac": 2,
                "bundle convert": 3}
# What a command needs made first (with -q too), by command words.
BEFORE = {
    "flash restore": ["flash", "backup", "{d}/hd-flash.vmdk", "-o", "{t}/flash.img"],
    "bundle deploy": ["bundle", "create", "{t}/pkg", "--firmware", "{d}/ipva.bin", "--target",
                      "ova", "--cf-size", "64M"],
}


def test_every_command_has_a_case() -> None:
    assert sorted(" ".join(p) for p in LEAVES) == sorted(CASES)


@pytest.mark.parametrize("words", sorted(CASES))
def test_quiet_prints_only_the_result(tmp_path, runner, words) -> None:
    d, t = tmp_path / "ipva", tmp_path / "t"
    shutil.copytree(SAMPLE, d)
    t.mkdir()
    args, reads = CASES[words]

    def run(*line: str):
        return vdisk(runner, "-q", *[a.format(d=d, t=t) for a in line])

    if words in BEFORE:
        first = run(*BEFORE[words])
        assert first.exit_code == 0 and first.stderr == "", first.output
    r = run(*words.split(), *args)
    assert r.exit_code == EXIT.get(words, 0), r.output
    assert r.stderr == "", r.stderr
    if not reads:
        assert len(r.stdout.splitlines()) <= RESULT_LINES.get(words, 1), r.stdout


def test_a_dry_run_keeps_its_plan_under_quiet(tmp_path, runner) -> None:
    d = tmp_path / "ipva"
    shutil.copytree(SAMPLE, d)
    loud = vdisk(runner, "grow", str(d / "hd-dump.vmdk"), "--size", "65M", "--dry-run")
    quiet = vdisk(runner, "-q", "grow", str(d / "hd-dump.vmdk"), "--size", "65M", "--dry-run")
    assert quiet.exit_code == loud.exit_code == 0
    assert quiet.stdout == loud.stdout and "68157440" in quiet.stdout
