"""Golden images: a complete new appliance bundle, and clones of an existing one.

`create_bundle` writes the vmx (every key the appliance needs, ipva-model §6), a boot disk
holding a verified firmware, a formatted CF, a blank 100 MiB flash and an initialised dump
store, in the subformat of the target hypervisor. `clone_bundle` stamps a new appliance
from a golden one: new MAC and uuid.bios, disks copied sparse, optionally a blank flash.

Both build everything in a temporary folder beside the destination and rename it into
place at the end: a crash leaves no half-made bundle under the destination's name.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import RefusedError, UnsupportedError
from ..formats import dump_store as ds
from ..fs.format import format_volume
from ..image import platform, safe
from ..image.base import FileDevice
from ..image.create import create_image, like
from ..image.disk import open_image
from .appliance import (
    attachment_name,
    empty_destination,
    install,
    new_uuid,
    refuse_running,
    work_folder,
    write_attachment,
)
from .attachments import Machine, PlatformOptions, check_machine, nic_for
from .boot import DEFAULT_BOOT_BYTES, build_boot_image, check_new_firmware
from .bundle import (
    apply_mac,
    format_mac,
    format_uuid_bios,
    open_bundle,
    random_static_mac,
    relpath_in,
    validate_static_mac,
)
from .dump import apply_clear, plan_clear
from .targets import ROLES, TARGETS, TargetSpec, target_spec, write_disk
from .vmx import IDE_ROLES, Vmx

__all__ = ["TARGETS", "CreatePlan", "ClonePlan", "apply_clone", "apply_create", "new_uuid",
           "plan_clone", "plan_create"]

MiB = 1 << 20
FLASH_BYTES = 100 * MiB
DUMP_BYTES = 64 * MiB
DEFAULT_CF_BYTES = 1 << 30
CF_LABEL = "IPVACF"
DISK_NAMES = TARGETS["workstation"].disk_names()      # the names of the shipped bundle
Progress = Callable[[str], None]


@dataclass(frozen=True)
class CreatePlan:
    folder: str
    name: str
    firmware: str
    target: str
    cf_bytes: int
    memsize_mb: int
    mac: int
    uuid_bios: bytes = b""          # chosen with the plan, so a dry run shows what is written
    compression_level: int = 6      # zlib's, for the streamOptimized disks of an OVA
    cpus: int = 1
    options: PlatformOptions = field(default_factory=PlatformOptions)

    @property
    def spec(self) -> TargetSpec:
        return TARGETS[self.target]

    @property
    def subformat(self) -> str:
        return self.spec.subformat

    @property
    def machine(self) -> Machine:
        return Machine(self.name, self.memsize_mb, self.cpus, self.mac,
                       self.uuid_bios or None, "vlance")

    def disk_names(self) -> dict[str, str]:
        return self.spec.disk_names(self.options.vmid)

    def sizes(self) -> dict[str, int]:
        return {"boot": DEFAULT_BOOT_BYTES, "cf": self.cf_bytes, "flash": FLASH_BYTES,
                "dump": DUMP_BYTES}

    def to_dict(self) -> dict[str, object]:
        names = self.disk_names()
        return {"folder": self.folder, "name": self.name, "firmware": self.firmware,
                "target": self.target, "container": self.spec.container,
                "subformat": self.subformat, "memsize_mb": self.memsize_mb, "cpus": self.cpus,
                "nic_model": nic_for(self.target, "vlance", self.options.nic_model),
                "mac": format_mac(self.mac),
                "uuid_bios": format_uuid_bios(self.uuid_bios) if self.uuid_bios else None,
                "attachment": attachment_name(self.spec, self.machine, self.options),
                "disks": {names[r]: n for r, n in self.sizes().items()}}


def plan_create(folder: str, firmware: str, *, cf_bytes: int = DEFAULT_CF_BYTES,
                memsize_mb: int = 64, mac: str | None = None, target: str = "workstation",
                name: str = "ipva", cpus: int = 1,
                options: PlatformOptions | None = None, compression_level: int = 6
                ) -> CreatePlan:
    """Check every input before anything is written."""
    if not 1 <= compression_level <= 9:
        raise RefusedError(f"compression level must be 1..9, got {compression_level}")
    target_spec(target)                  # refuses an unknown target
    opts = options or PlatformOptions()
    if os.path.basename(name) != name or name in (".", "..") or not name.strip() or \
            any(c in name for c in '\\/:*?"<>|'):
        raise RefusedError(f"name {name!r} is not a file name")
    check_machine(Machine(name, memsize_mb, cpus))
    nic_for(target, "vlance", opts.nic_model)
    if cf_bytes < 16 * MiB or cf_bytes % MiB:
        raise RefusedError(f"CF size {cf_bytes} bytes: must be whole MiB, at least 16 MiB")
    if not os.path.isfile(firmware):
        raise RefusedError("no such firmware file", path=firmware)
    empty_destination(folder)
    value = validate_static_mac(mac) if mac else random_static_mac()
    return CreatePlan(os.path.abspath(folder), name, firmware, target, cf_bytes, memsize_mb, value,
                      new_uuid(value), cpus=cpus, options=opts,
                      compression_level=compression_level)


def build_vmx_text(plan: CreatePlan) -> str:
    """The vmx of a new appliance: every key ipva-model §6 asks for."""
    from .appliance import vmx_for_machine
    return vmx_for_machine(plan.machine, plan.target, plan.disk_names())


def apply_create(plan: CreatePlan, progress: Progress | None = None) -> list[str]:
    """Write the bundle; returns its files (relative to the folder)."""
    say = progress or (lambda _msg: None)
    work = work_folder(plan.folder)
    try:
        spec, sizes, names = plan.spec, plan.sizes(), plan.disk_names()
        path = {role: os.path.join(work, names[role]) for role in ROLES}
        say("boot disk")
        level = plan.compression_level
        check_new_firmware(plan.firmware)
        _from_scratch(path["boot"], sizes["boot"], spec,
                      lambda scratch: build_boot_image(scratch, sizes["boot"], plan.firmware),
                      raw_path=True, compression_level=level)
        say("CF disk")
        _from_scratch(path["cf"], sizes["cf"], spec,
                      lambda dev: format_volume(dev, label=CF_LABEL, partition=True),
                      compression_level=level)
        say("flash disk")
        write_disk(path["flash"], spec, sizes["flash"], None, compression_level=level)
        say("dump disk")
        _from_scratch(path["dump"], sizes["dump"], spec,
                      lambda dev: apply_clear(dev, plan_clear(dev, ds.DEFAULT_SLOT_SECTORS)),
                      compression_level=level)
        say("attachment")
        write_attachment(work, spec, plan.machine, plan.options, names, sizes)
        install(work, plan.folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return sorted(os.listdir(plan.folder))


def _from_scratch(path: str, size_bytes: int, spec: TargetSpec, fill: Callable[..., object],
                  raw_path: bool = False, compression_level: int = 6) -> None:
    """Fill a sparse raw scratch file (through a device, or by its path), then write it in
    the target's container."""
    scratch = safe.create_temp(path + ".raw")
    try:
        with open(scratch, "r+b") as f:
            platform.set_sparse(f.fileno())
            f.truncate(size_bytes)
        if raw_path:
            fill(scratch)
        else:
            with FileDevice(scratch, writable=True) as dev:
                fill(dev)
                dev.flush()
        with FileDevice(scratch) as src:
            write_disk(path, spec, size_bytes, src, compression_level=compression_level)
    finally:
        os.unlink(scratch)


# -- clone ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClonePlan:
    source_vmx: str
    folder: str
    mac: int
    reset_flash: bool
    disks: tuple[tuple[str, str, tuple[str, ...]], ...]   # (slot, new fileName, files to copy)
    uuid_bios: bytes = b""          # chosen with the plan, so a dry run shows what is written

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source_vmx, "folder": self.folder, "mac": format_mac(self.mac),
                "uuid_bios": format_uuid_bios(self.uuid_bios) if self.uuid_bios else None,
                "reset_flash": self.reset_flash,
                "disks": [{"slot": s, "file": n, "copies": list(f)} for s, n, f in self.disks]}


def plan_clone(src: str, dst: str, *, mac: str | None = None, reset_flash: bool = False,
               force: bool = False) -> ClonePlan:
    """Check the source (not running, disks present, chains inside its folder)."""
    b = open_bundle(src)
    refuse_running(b.lock_paths(), force)
    empty_destination(dst)
    disks = []
    for slot_name in IDE_ROLES:
        path = b.vmx.disk_for_slot(slot_name)
        if path is None:
            raise RefusedError(f"the source attaches no disk at {slot_name}", path=b.vmx_path,
                               hint="run 'vdisk bundle check' on it")
        with open_image(path) as disk:
            files: list[str] = []
            for link in disk.chain():
                for f in link.files:
                    if f not in files:
                        files.append(f)
        for f in files:
            if relpath_in(b.folder, f) == f or os.path.dirname(relpath_in(b.folder, f)):
                raise UnsupportedError(f"{f} lies outside the bundle folder; copy or consolidate "
                                       "it first", path=b.vmx_path)
        disks.append((slot_name, relpath_in(b.folder, path), tuple(files)))
    value = validate_static_mac(mac) if mac else random_static_mac()
    return ClonePlan(b.vmx_path, os.path.abspath(dst), value, reset_flash, tuple(disks),
                     new_uuid(value))


def apply_clone(plan: ClonePlan, progress: Progress | None = None) -> list[str]:
    say = progress or (lambda _msg: None)
    work = work_folder(plan.folder)
    try:
        vmx = Vmx.read(plan.source_vmx)
        for slot, name, files in plan.disks:
            if plan.reset_flash and IDE_ROLES[slot] == "flash":
                say(f"{name}: blank flash")
                with open_image(os.path.join(os.path.dirname(plan.source_vmx), name)) as disk:
                    shape = like(disk)
                create_image(os.path.join(work, os.path.basename(name)), int(shape["size_bytes"]),
                             str(shape["subformat"]), str(shape["adapter"]),
                             template=shape["template"])
                continue
            for f in files:
                say(f"copying {os.path.basename(f)}")
                safe.sparse_copy(f, os.path.join(work, os.path.basename(f)))
        apply_mac(vmx, plan.mac)
        vmx.set("uuid.bios", format_uuid_bios(plan.uuid_bios or new_uuid(plan.mac)))
        for key in ("uuid.location", "vc.uuid", "sched.swap.derivedName"):
            vmx.remove(key)
        vmx.set("displayName", os.path.basename(plan.folder))
        vmx.save(os.path.join(work, os.path.basename(plan.source_vmx)))
        install(work, plan.folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return sorted(os.listdir(plan.folder))
