"""Never the wrong disk: every role-specific write identifies the disk first (ipva/role.py).

Judged on copies of the shipped sample bundle (sample_images/ipva, its blank flash replaced
by sample_images/hd-flash-used.vmdk so that every disk holds its role's structure) and on a
vSphere-renamed copy (xxx.vmdk, xxx_1.vmdk, xxx_2.vmdk, xxx_3.vmdk, no vmx beside them):
- each command on each disk of another role: exit 3, one line naming what the disk holds
  and what the command expected, a hint naming --any-disk, every file byte-identical;
- the same command on the right disk still works;
- --any-disk writes anyway and says so on stderr;
- a blank disk is fine for every role, an unknown one needs the override, a vmx slot
  outranks the content.
Refusals run against one shared set of copies (nothing may change them); a command that
is meant to write gets its own copy of the one disk it writes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk

from vdisk_tool.image.disk import open_image
from vdisk_tool.ipva.role import Role, identify_device, identify_disk

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"
MIB = 1 << 20
BUNDLE_NAMES = {Role.BOOT: "hd-boot.vmdk", Role.CF: "hd-cf.vmdk", Role.FLASH: "hd-flash.vmdk",
                Role.DUMP: "hd-dump.vmdk"}
VSPHERE_NAMES = {Role.BOOT: "xxx.vmdk", Role.CF: "xxx_1.vmdk", Role.FLASH: "xxx_2.vmdk",
                 Role.DUMP: "xxx_3.vmdk"}
LAYOUTS = {"bundle": BUNDLE_NAMES, "vsphere": VSPHERE_NAMES}
SLOTS = {Role.BOOT: "ide0:0", Role.CF: "ide0:1", Role.FLASH: "ide1:0", Role.DUMP: "ide1:1"}
DISK_ROLES = tuple(BUNDLE_NAMES)

# command -> (the roles it writes, its arguments); {disk} {fw} {text} {img} are filled in
COMMANDS: dict[str, tuple[tuple[Role, ...], tuple[str, ...]]] = {
    "dump init": ((Role.DUMP,), ("dump", "init", "{disk}", "--yes")),
    "dump clear": ((Role.DUMP,), ("dump", "clear", "{disk}", "--yes")),
    "dump write": ((Role.DUMP,), ("dump", "write", "{disk}", "--text", "{text}", "--yes")),
    "flash reset": ((Role.FLASH,), ("flash", "reset", "{disk}", "--yes")),
    "flash restore": ((Role.FLASH,), ("flash", "restore", "{disk}", "{img}", "--yes")),
    "cf format": ((Role.CF,), ("cf", "format", "{disk}", "--yes")),
    "cf grow": ((Role.CF,), ("cf", "grow", "{disk}", "--size", "1100M", "--yes")),
    "boot restore": ((Role.BOOT,), ("boot", "restore", "{disk}", "--firmware", "{fw}", "--yes")),
    "fs format": ((Role.CF, Role.BOOT), ("fs", "format", "{disk}", "--yes")),
}
EXPECTED_TEXT = {"dump": "not a crash-dump store", "flash": "not a flash disk",
                 "cf": "not a CompactFlash (CF) disk", "boot": "not a boot disk",
                 "fs": "not a CompactFlash (CF) disk or a boot disk"}
HOLDS = {Role.BOOT: "the boot volume 'IPVABOOT' with IPVA.BIN",
         Role.CF: "the CF's FAT volume 'IPVACF'", Role.DUMP: "a crash-dump store",
         Role.FLASH: "flash content (3 segment(s) of 64 KiB in use)"}


def _copy(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)


@pytest.fixture(scope="session")
def appliances(tmp_path_factory) -> dict[str, Path]:
    return build_appliances(tmp_path_factory.mktemp("roles"))


def build_appliances(root: Path) -> dict[str, Path]:
    """The two layouts of the same four disks, plus the inputs the commands read."""
    bundle = root / "bundle"
    bundle.mkdir()
    for name in ("ipva.vmx", *BUNDLE_NAMES.values()):
        _copy(SAMPLES / "ipva" / name, bundle / name)
    _copy(SAMPLES / "hd-flash-used.vmdk", bundle / "hd-flash.vmdk")
    vsphere = root / "vsphere"
    vsphere.mkdir()
    for role, name in VSPHERE_NAMES.items():
        _copy(bundle / BUNDLE_NAMES[role], vsphere / name)
    inputs = root / "inputs"
    inputs.mkdir()
    _copy(SAMPLES / "ipva" / "ipva.bin", inputs / "ipva.bin")
    (inputs / "t.txt").write_bytes(b"IPVA crash dump\n" * 10)
    with open(inputs / "flash.img", "wb") as f:
        f.truncate(64 * MIB)
        f.seek(5 * MIB)
        f.write(b"\x5a" * 65536)
    return {"bundle": bundle, "vsphere": vsphere, "inputs": inputs}


def _state(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else
            hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))}


def _args(name: str, disk: Path, inputs: Path) -> list[str]:
    fill = {"{disk}": str(disk), "{fw}": str(inputs / "ipva.bin"),
            "{text}": str(inputs / "t.txt"), "{img}": str(inputs / "flash.img")}
    return [fill.get(a, a) for a in COMMANDS[name][1]]


def _refusal_cases() -> list:
    return [pytest.param(layout, name, role, id=f"{layout}-{name}-{role.value}")
            for layout in LAYOUTS for name, (wants, _a) in COMMANDS.items()
            for role in DISK_ROLES if role not in wants]


@pytest.mark.parametrize("layout,role", [pytest.param(lay, r, id=f"{lay}-{r.value}")
                                         for lay in LAYOUTS for r in DISK_ROLES])
def test_sample_disks_are_identified(appliances, layout, role):
    ident = identify_disk(str(appliances[layout] / LAYOUTS[layout][role]))
    assert ident.role == role and ident.evidence == HOLDS[role]
    assert ident.slot == (SLOTS[role] if layout == "bundle" else None)


@pytest.mark.parametrize("layout,name,role", _refusal_cases())
def test_another_roles_disk_is_refused(appliances, runner, layout, name, role):
    folder = appliances[layout]
    disk = folder / LAYOUTS[layout][role]
    before = _state(folder)
    r = vdisk(runner, *_args(name, disk, appliances["inputs"]))
    assert r.exit_code == 3, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("vdisk: error:")]
    assert len(errors) == 1, r.stderr
    line = errors[0]
    assert f"{disk.name} holds {HOLDS[role]}" in line, line
    assert EXPECTED_TEXT[name.split()[0]] in line and line.endswith("nothing was changed"), line
    where = f"({SLOTS[role]} in ipva.vmx)"
    assert (where in line) == (layout == "bundle"), line
    assert "--any-disk" in r.stderr.splitlines()[-1] and "Traceback" not in r.output
    assert _state(folder) == before


def _alone(appliances, tmp_path: Path, layout: str, role: Role) -> Path:
    """A copy of one disk (and, for the bundle, the vmx that attaches it)."""
    src = appliances[layout]
    case = tmp_path / layout
    case.mkdir()
    if layout == "bundle":
        _copy(src / "ipva.vmx", case / "ipva.vmx")
    _copy(src / LAYOUTS[layout][role], case / LAYOUTS[layout][role])
    return case / LAYOUTS[layout][role]


@pytest.mark.parametrize("layout,name", [pytest.param(lay, n, id=f"{lay}-{n}")
                                         for lay in LAYOUTS for n in COMMANDS])
def test_the_right_disk_still_works(appliances, runner, tmp_path, layout, name):
    disk = _alone(appliances, tmp_path, layout, COMMANDS[name][0][0])
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    r = vdisk(runner, *_args(name, disk, appliances["inputs"]))
    assert r.exit_code == 0, r.output
    assert "--any-disk" not in r.stderr
    assert hashlib.sha256(disk.read_bytes()).hexdigest() != before


# one disk of another role per command, on which the command can do its work
OVERRIDES = {"dump init": Role.CF, "dump clear": Role.FLASH, "flash reset": Role.CF,
             "flash restore": Role.DUMP, "cf format": Role.BOOT, "cf grow": Role.BOOT,
             "boot restore": Role.CF, "fs format": Role.DUMP}


@pytest.mark.parametrize("name", OVERRIDES)
def test_any_disk_overrides_with_a_warning(appliances, runner, tmp_path, name):
    role = OVERRIDES[name]
    disk = _alone(appliances, tmp_path, "bundle", role)
    r = vdisk(runner, *_args(name, disk, appliances["inputs"]), "--any-disk")
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("vdisk: warning:")]
    assert any(f"holds {HOLDS[role]} ({SLOTS[role]} in ipva.vmx)" in ln and "--any-disk" in ln
               for ln in warnings), r.stderr


def test_dump_write_override_reaches_the_store_check(appliances, runner, tmp_path):
    """dump write past --any-disk still needs a store header on the disk."""
    disk = _alone(appliances, tmp_path, "vsphere", Role.CF)
    before = disk.read_bytes()
    r = vdisk(runner, *_args("dump write", disk, appliances["inputs"]), "--any-disk")
    assert r.exit_code == 3 and "--any-disk" in r.stderr and "store header" in r.stderr
    assert disk.read_bytes() == before


# -- blank, unknown, slots -----------------------------------------------------------------------
def _raw(path: Path, data_at: int | None = None, size: int = 80 * MIB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        if data_at is not None:
            f.seek(data_at)
            f.write(b"\x77" * 4096)
    return path


@pytest.mark.parametrize("name", ["dump init", "dump clear", "flash reset", "cf format",
                                  "boot restore", "fs format"])
def test_a_blank_disk_is_fine_for_every_role(appliances, runner, tmp_path, name):
    disk = _raw(tmp_path / "blank.img")
    assert identify_disk(str(disk)).role == Role.BLANK
    r = vdisk(runner, *_args(name, disk, appliances["inputs"]))
    assert r.exit_code == 0, r.output
    assert "warning" not in r.stderr


def test_an_unknown_disk_needs_the_override(appliances, runner, tmp_path):
    disk = _raw(tmp_path / "odd.img", data_at=70 * MIB)
    ident = identify_disk(str(disk))
    assert ident.role == Role.UNKNOWN and "after the first 64 MiB" in ident.evidence
    before = disk.read_bytes()
    r = vdisk(runner, *_args("dump init", disk, appliances["inputs"]))
    assert r.exit_code == 3 and "odd.img holds data vdisk does not recognise" in r.stderr
    assert disk.read_bytes() == before
    r = vdisk(runner, *_args("dump init", disk, appliances["inputs"]), "--any-disk")
    assert r.exit_code == 0 and "--any-disk" in r.stderr, r.output


def _as_vmdk(raw: Path, vmdk: Path) -> Path:
    """The raw image as a sparse VMDK (qemu-img), as a vmx attaches disks."""
    run(need_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "vmdk", str(raw), str(vmdk))
    raw.unlink()
    return vmdk


def _vmx(folder: Path, slots: dict[str, str]) -> Path:
    vmx = folder / "ipva.vmx"
    vmx.write_text('config.version = "8"\n' + "".join(
        f'{s}.present = "TRUE"\n{s}.fileName = "{name}"\n' for s, name in slots.items()))
    return vmx


def test_the_slot_outranks_the_content(appliances, runner, tmp_path):
    """A blank disk at the flash slot is the flash (not a dump store); an unreadable disk at
    the dump slot is the dump disk; the slot also comes from --vmx."""
    blank = _as_vmdk(_raw(tmp_path / "flash.img", size=70 * MIB), tmp_path / "hd-flash.vmdk")
    odd = _as_vmdk(_raw(tmp_path / "dump.img", data_at=70 * MIB), tmp_path / "hd-dump.vmdk")
    _vmx(tmp_path, {"ide1:0": "hd-flash.vmdk", "ide1:1": "hd-dump.vmdk"})
    r = vdisk(runner, *_args("dump init", blank, appliances["inputs"]))
    assert r.exit_code == 3, r.output
    assert ("hd-flash.vmdk is attached as a flash disk (ide1:0 in ipva.vmx) and holds no data, "
            "not a crash-dump store") in r.stderr
    r = vdisk(runner, *_args("dump init", odd, appliances["inputs"]))
    assert r.exit_code == 0 and "warning" not in r.stderr, r.output
    other = tmp_path / "elsewhere"
    other.mkdir()
    cf = other / "xxx_1.vmdk"
    _copy(appliances["vsphere"] / "xxx_1.vmdk", cf)
    vmx = _vmx(tmp_path, {"ide0:1": str(cf)})
    ident = identify_disk(str(cf), str(vmx))
    assert ident.slot == "ide0:1" and ident.role == Role.CF
    r = vdisk(runner, "dump", "clear", str(cf), "--yes", "--vmx", str(vmx))
    assert r.exit_code == 3 and "(ide0:1 in ipva.vmx)" in r.stderr, r.output


def _boot_copy(tmp_path: Path) -> Path:
    disk = tmp_path / "boot.img"
    with open_image(str(SAMPLES / "ipva" / "hd-boot.vmdk")) as src, open(disk, "wb") as f:
        f.truncate(src.size_bytes)
        for run in src.runs():
            if run.kind.value == "data":
                f.seek(run.offset)
                f.write(src.read_at(run.offset, run.length_bytes))
    return disk


def _poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_damaged_structures_are_still_recognised(tmp_path):
    boot = _boot_copy(tmp_path)
    _poke(boot, 0, bytes(512))                         # the MBR gone
    ident = identify_disk(str(boot))
    assert ident.role == Role.BOOT and "partition table lost" in ident.evidence
    boot = _boot_copy(tmp_path)
    _poke(boot, 2048 * 512, bytes(512))                # the partition's boot sector gone
    ident = identify_disk(str(boot))
    assert ident.role == Role.BOOT and ident.evidence.startswith("an active FAT partition")
    dump = tmp_path / "dump.vmdk"
    _copy(SAMPLES / "hd-dump-3-torn.vmdk", dump)
    with open_image(str(dump), writable=True) as d:
        raw = bytearray(d.read_at(0, 512))
        raw[0x10] ^= 0xFF                              # slot_count: the CRC fails
        d.write_at(0, bytes(raw))
    assert identify_disk(str(dump)).evidence == "a crash-dump store (its header damaged)"
    with open_image(str(dump), writable=True) as d:
        d.write_at(0, bytes(512))                      # the header wiped, records remain
    ident = identify_disk(str(dump))
    assert ident.role == Role.DUMP and "without a store header" in ident.evidence


def test_an_empty_unlabelled_fat_volume_may_become_the_boot_volume(appliances, runner, tmp_path):
    disk = _raw(tmp_path / "empty-fat.img", size=40 * MIB)
    assert vdisk(runner, "fs", "format", str(disk), "--yes").exit_code == 0
    ident = identify_disk(str(disk))
    assert ident.role == Role.CF and ident.files == 0 and ident.accepts(Role.BOOT)
    r = vdisk(runner, *_args("boot restore", disk, appliances["inputs"]))
    assert r.exit_code == 0, r.output


class _Counting:
    """A BlockDevice that counts the bytes read through it."""

    def __init__(self, dev) -> None:
        self.dev, self.read_bytes = dev, 0
        self.size_bytes, self.writable = dev.size_bytes, False

    def read_at(self, offset: int, length: int) -> bytes:
        self.read_bytes += length
        return self.dev.read_at(offset, length)

    def runs(self):
        return self.dev.runs()


def test_identifying_costs_the_data_not_the_capacity(tmp_path):
    """A 64 GiB blank disk and a 64 GiB disk with 4 KiB of data after the flash region:
    identify_device reads a few sectors, not the capacity."""
    for data_at, role in ((None, Role.BLANK), (40 << 30, Role.UNKNOWN)):
        path = _raw(tmp_path / f"big-{role.value}.img", data_at, size=64 << 30)
        with open_image(str(path)) as disk:
            dev = _Counting(disk)
            assert identify_device(dev).role == role  # type: ignore[arg-type]
            assert dev.read_bytes <= 256 * 1024, dev.read_bytes


def test_boot_create_never_overwrites_and_says_what_is_there(appliances, runner):
    cf = appliances["vsphere"] / "xxx_1.vmdk"
    before = _state(appliances["vsphere"])
    r = vdisk(runner, "boot", "create", str(cf), "--firmware",
              str(appliances["inputs"] / "ipva.bin"))
    assert r.exit_code == 3, r.output
    assert "holds the CF's FAT volume 'IPVACF'" in r.stderr and "without --overwrite" in r.stderr
    assert "--any-disk" not in r.stderr and "boot restore" not in r.stderr
    r = vdisk(runner, "boot", "create", str(cf), "--overwrite", "--firmware",
              str(appliances["inputs"] / "ipva.bin"))
    assert r.exit_code == 3 and "overwrites only a boot disk or a blank one" in r.stderr, r.output
    assert _state(appliances["vsphere"]) == before


def test_bundle_check_reports_a_disk_that_contradicts_its_slot(appliances, runner, tmp_path):
    case = tmp_path / "swapped"
    shutil.copytree(appliances["bundle"], case)
    vmx = case / "ipva.vmx"
    text = vmx.read_text()
    vmx.write_text(text.replace("hd-cf.vmdk", "@").replace("hd-dump.vmdk", "hd-cf.vmdk")
                   .replace("@", "hd-dump.vmdk"))
    r = vdisk(runner, "bundle", "check", str(case), "--json")
    assert r.exit_code == 1
    found = [i for i in json.loads(r.stdout)["findings"] if i["code"] == "bundle.role-mismatch"]
    assert sorted((i["subject"], os.path.basename(i["path"])) for i in found) == [
        ("cf", "hd-dump.vmdk"), ("dump", "hd-cf.vmdk")]
    assert "holds a crash-dump store" in next(i["message"] for i in found if i["subject"] == "cf")
    r = vdisk(runner, "bundle", "check", str(appliances["bundle"]), "--json")
    assert "bundle.role-mismatch" not in r.stdout
