"""`vdisk bundle convert APPLIANCE OUT --target T`: the same appliance on another platform
(specs/platforms.md §Convert).

The source is a bundle folder or its vmx, an OVF package (.ova, .ovf, .zip), or a Proxmox
or Hyper-V folder vdisk wrote (found by its qm configuration or its script). Every disk is
converted sparse into the target's container, checked and compared with its source; the
MAC and uuid.bios stay (the licence is bound to the MAC; a generated MAC is frozen as a
static one), unless `new_mac` makes a clone. All is built in a temporary folder beside OUT
and renamed into place.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from ..errors import FormatError, ImageError, RefusedError
from ..image import safe
from ..image.disk import Disk, open_image
from .appliance import (
    attachment_name,
    empty_destination,
    find_platform_config,
    install,
    new_uuid,
    read_platform_config,
    refuse_running,
    verify_copy,
    work_folder,
)
from .appliance import write_attachment as write_files
from .attachments import (
    Machine,
    PlatformOptions,
    check_machine,
    nic_for,
    parse_qm_conf,
)
from .bundle import (
    CHECK_MAC_KEY,
    apply_mac,
    format_mac,
    format_uuid_bios,
    in_static_range,
    mac_state,
    open_bundle,
    parse_mac,
    parse_uuid_bios,
    random_static_mac,
)
from .ova import is_package, memsize_text, open_package, vmx_text
from .ova_deploy import _check_digests, with_uuid_bios
from .targets import ROLES, TargetSpec, target_spec, write_disk
from .vmx import IDE_ROLES, Vmx, find_vmx

SLOT_OF_ROLE = {role: slot for slot, role in IDE_ROLES.items()}
Say = Callable[[str], None]
Bytes = Callable[[int, int], None]


@dataclass(frozen=True)
class Source:
    """An appliance to convert: where its settings are and where each role's disk is."""

    path: str
    kind: str                       # "vmx", "package", "proxmox" or "hyperv"
    config: str                     # the vmx, package, qm configuration or script
    machine: Machine
    disks: dict[str, str]           # role -> file (a package: its member name)
    capacities: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ConvertPlan:
    source: Source
    folder: str
    target: str
    machine: Machine                # what the output gets (identity kept or renewed)
    options: PlatformOptions
    mac_renewed: bool

    @property
    def spec(self) -> TargetSpec:
        return target_spec(self.target)

    def disk_names(self) -> dict[str, str]:
        return self.spec.disk_names(self.options.vmid)

    def to_dict(self) -> dict[str, object]:
        names = self.disk_names()
        m = self.machine
        return {"source": self.source.config, "source_kind": self.source.kind,
                "folder": self.folder, "target": self.target, "container": self.spec.container,
                "subformat": self.spec.subformat, "name": m.name, "memsize_mb": m.memsize_mb,
                "cpus": m.cpus, "nic_model": nic_for(self.target, m.nic, self.options.nic_model),
                "mac": None if m.mac is None else format_mac(m.mac),
                "uuid_bios": None if m.uuid_bios is None else format_uuid_bios(m.uuid_bios),
                "mac_renewed": self.mac_renewed,
                "attachment": attachment_name(self.spec, m, self.options),
                "disks": [{"slot": SLOT_OF_ROLE[r], "role": r, "from": self.source.disks[r],
                           "file": names[r], "capacity_bytes": self.source.capacities.get(r)}
                          for r in ROLES]}


# -- reading the source ----------------------------------------------------------------------
def find_source(path: str) -> Source:
    """Open the appliance at `path` (nothing is written)."""
    if is_package(path):
        return _package_source(path)
    if os.path.isfile(path):
        found = find_platform_config(path)
        return _platform_source(*found) if found else _vmx_source(path)
    if not os.path.isdir(path):
        raise ImageError("no such file or folder", path=path)
    if glob.glob(os.path.join(glob.escape(path), "*.vmx")):
        return _vmx_source(find_vmx(path))
    found = find_platform_config(path)
    if found is not None:
        return _platform_source(*found)
    raise ImageError("no .vmx, Proxmox .conf or Hyper-V .ps1 in this folder", path=path,
                     hint="pass the appliance's folder, its .vmx or its package")


def _vmx_source(vmx_path: str) -> Source:
    b = open_bundle(vmx_path)
    v = b.vmx
    disks: dict[str, str] = {}
    for role in ROLES:
        p = v.disk_for_slot(SLOT_OF_ROLE[role])
        if p is None:
            raise RefusedError(f"the source attaches no disk at {SLOT_OF_ROLE[role]} (the {role} "
                               "disk)", path=vmx_path, hint="run 'vdisk bundle check' on it")
        disks[role] = p
    st = mac_state(v)
    mac = _mac_or_none(st.effective)
    uuid = None
    if v.get("uuid.bios"):
        try:
            uuid = parse_uuid_bios(v.get("uuid.bios") or "")
        except FormatError:
            uuid = None
    name = v.get("displayName") or os.path.splitext(os.path.basename(vmx_path))[0]
    m = Machine(name, _int(v.get("memsize"), 64), _int(v.get("numvcpus"), 1), mac, uuid,
                v.get("ethernet0.virtualDev"))
    return Source(vmx_path, "vmx", b.vmx_path, m, disks)


def _package_source(path: str) -> Source:
    with open_package(path) as pkg:
        env = pkg.envelope
        disks: dict[str, str] = {}
        for role in ROLES:
            d = pkg.disk_for(SLOT_OF_ROLE[role])
            if d is None or d.member is None:
                raise RefusedError(f"the package attaches no disk at {SLOT_OF_ROLE[role]} (the "
                                   f"{role} disk)", path=path)
            disks[role] = d.member.name
        nics = pkg.nics()
        cpu = next((i for i in env.items if i.resource_type == 3), None)
        uuid = dict(env.extra_config).get("uuid.bios")
        m = Machine(env.name or pkg.ovf_name[:-4] or "ipva", _int(memsize_text(env), 64),
                    _int(cpu.get("VirtualQuantity") if cpu else None, 1),
                    _mac_or_none(nics[0].mac if nics else None),
                    parse_uuid_bios(uuid) if uuid else None, nics[0].model if nics else None)
    return Source(path, "package", path, m, disks)


def _platform_source(config: str, kind: str) -> Source:
    m, disks = read_platform_config(config, kind)
    return Source(config, kind, config, m, disks)


def file_stem(name: str) -> str:
    """The VM's name as the stem of its files: no path separators or characters Windows
    refuses in a file name."""
    out = re.sub(r'[\\/:*?"<>|\x00-\x1f]', "-", name).strip(" .")
    return out or "ipva"


def _int(text: str | None, default: int) -> int:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return default


def _mac_or_none(text: str | None) -> int | None:
    try:
        return parse_mac(text) if text else None
    except FormatError:
        return None


@contextmanager
def open_source_disk(src: Source, role: str) -> Iterator[Disk]:
    if src.kind == "package":
        with open_package(src.path) as pkg, pkg.open_disk(SLOT_OF_ROLE[role]) as disk:
            yield disk
    else:
        with open_image(src.disks[role]) as disk:
            yield disk


def source_locks(src: Source) -> list[str]:
    """VMware lock artefacts beside the configuration or any disk of the source."""
    found: list[str] = []
    files = [src.config] + ([] if src.kind == "package" else list(src.disks.values()))
    for f in files:
        for lck in safe.lock_paths(f):
            if lck not in found:
                found.append(lck)
    return found


# -- plan and apply --------------------------------------------------------------------------
def plan_convert(appliance: str, out: str, *, target: str, new_mac: bool = False,
                 memsize_mb: int | None = None, cpus: int | None = None,
                 options: PlatformOptions | None = None, force: bool = False,
                 name: str | None = None) -> ConvertPlan:
    """Read the source and check every input; nothing is written."""
    target_spec(target)                  # refuses an unknown target
    opts = options or PlatformOptions()
    src = find_source(appliance)
    refuse_running(source_locks(src), force)
    if src.kind == "proxmox" and not force:
        with open(src.config, encoding="utf-8") as f:
            held = parse_qm_conf(f.read(1 << 20)).get("lock")
        if held:
            raise RefusedError(f"the configuration says 'lock: {held}': Proxmox VE is working on "
                               "the VM", path=src.config,
                               hint="wait for it to finish (or --force for a stale lock)")
    caps = {}
    for role in ROLES:
        with open_source_disk(src, role) as disk:
            caps[role] = disk.size_bytes
    src = replace(src, capacities=caps)
    m = src.machine
    m = replace(m, name=file_stem(name or m.name), memsize_mb=memsize_mb or m.memsize_mb,
                cpus=cpus or m.cpus)
    if new_mac or m.mac is None:
        mac = random_static_mac()
        m = replace(m, mac=mac, uuid_bios=new_uuid(mac))
    elif m.uuid_bios is None:
        m = replace(m, uuid_bios=new_uuid(m.mac))
    if opts.nic_model is not None:
        m = replace(m, nic=nic_for(target, m.nic, opts.nic_model))
    check_machine(m)
    nic_for(target, m.nic, opts.nic_model)
    if os.path.abspath(out) == os.path.dirname(os.path.abspath(src.config)):
        raise RefusedError("the output folder is the source's own folder", path=out)
    empty_destination(out)
    return ConvertPlan(src, os.path.abspath(out), target, m, opts,
                       new_mac or src.machine.mac is None)


def apply_convert(plan: ConvertPlan, say: Say | None = None, progress: Bytes | None = None
                  ) -> list[str]:
    """Write the converted appliance; returns its files (relative to the folder)."""
    tell = say or (lambda _m: None)
    spec, names, src = plan.spec, plan.disk_names(), plan.source
    work = work_folder(plan.folder)
    try:
        if src.kind == "package":
            with open_package(src.path) as pkg:
                tell("manifest digests")
                _check_digests(pkg, list(src.disks.values()))
        for role in ROLES:
            out = os.path.join(work, names[role])
            tell(f"{SLOT_OF_ROLE[role]} {role}: {os.path.basename(src.disks[role])} -> {names[role]}")
            with open_source_disk(src, role) as disk:
                if disk.size_bytes != src.capacities[role]:
                    raise RefusedError(f"the {role} disk changed size while being converted",
                                       path=src.disks[role])
                write_disk(out, spec, disk.size_bytes, disk, progress)
                verify_copy(disk, out)
        write_files(work, spec, plan.machine, plan.options, names, src.capacities,
                    _vmx_text(plan, names) if spec.vmware else None)
        install(work, plan.folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return sorted(os.listdir(plan.folder))


def _vmx_text(plan: ConvertPlan, names: dict[str, str]) -> str | None:
    """A VMware source keeps its own vmx keys (slots renamed, identity kept or renewed);
    a package's settings become a vmx as deploy writes it; others get a new vmx."""
    src, m = plan.source, plan.machine
    assert m.mac is not None
    if src.kind == "package":
        with open_package(src.path) as pkg:
            text = vmx_text(pkg, {SLOT_OF_ROLE[r]: names[r] for r in ROLES}, m.mac,
                            "vsphere" if plan.target == "vsphere" else "workstation", m.name)
        return with_uuid_bios(text, m.mac, renew=plan.mac_renewed)
    if src.kind != "vmx":
        return None
    v = Vmx.read(src.config)
    for role in ROLES:
        v.set(f"{SLOT_OF_ROLE[role]}.fileName", names[role])
    if plan.mac_renewed or not mac_state(v).is_static:
        apply_mac(v, m.mac)           # a generated MAC is frozen: the licence is bound to it
        if not in_static_range(m.mac):
            v.set(CHECK_MAC_KEY, "FALSE")
    if m.uuid_bios is not None and (plan.mac_renewed or not v.get("uuid.bios")):
        v.set("uuid.bios", format_uuid_bios(m.uuid_bios))
    if m.name != src.machine.name:
        v.set("displayName", m.name)
    v.set("memsize", str(m.memsize_mb))
    v.set("numvcpus", str(m.cpus))
    if plan.options.nic_model is not None:
        v.set("ethernet0.virtualDev", nic_for(plan.target, m.nic, plan.options.nic_model))
    if plan.target == "vsphere" and not v.get("ethernet0.networkName"):
        v.set("ethernet0.networkName", "VM Network")
    for key in ("uuid.location", "vc.uuid", "sched.swap.derivedName"):
        v.remove(key)
    return v.render().decode("utf-8", "replace")

