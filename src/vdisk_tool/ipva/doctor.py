"""`vdisk bundle check`: one report for a whole appliance (specs/vmx.md §Doctor).

The doctor runs a list of checks over a bundle. A vmx check takes the `Context` and yields
`Issue`s; a disk check takes the `Context` and one opened `DiskContext` and yields `Issue`s.
Other modules plug checks in with `vmx_check` / `disk_check`. An Issue wraps a `Finding`
with what a person needs next: the boot message the problem causes (where there is one)
and the command (or step) that fixes it.

The Issue/Report types and the registry live in `doctor_model`, the disk checks in
`doctor_disks`; the vmx checks and the run over a bundle are here.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

from ..errors import FormatError, ImageError, Severity, VdiskError
from ..image import safe
from ..image.disk import open_image
from . import (
    doctor_disks,  # noqa: F401  (registers the disk checks)
    doctor_log,  # noqa: F401  (registers the vmware.log check)
)
from .appliance import open_platform_bundle
from .bundle import (
    CHECK_MAC_KEY,
    MEMSIZE_MIN_MB,
    NIC,
    PERFCTR_KEY,
    SUPPORTED_NICS,
    bundle_without_vmx,
    find_cid_break,
    format_mac,
    in_static_range,
    mac_state,
    open_bundle,
    parse_mac,
)
from .doctor_disks import FLASH_CAPACITY_BYTES, MSG_FIRMWARE
from .doctor_model import (
    DISK_CHECKS,
    MEMSIZE_FULL_FLASH_MB,
    MEMSIZE_MAX_USEFUL_MB,
    MEMSIZE_SHIPPED_MB,
    VMX_CHECKS,
    Context,
    DiskCheck,
    DiskContext,
    DiskReport,
    Issue,
    Report,
    VmxCheck,
    adopt,
    disk_check,
    issue,
    vmx_check,
)
from .doctor_role import check_role  # noqa: F401  (registers the role check)
from .flash import MAX_SEGMENTS, SEGMENT_BYTES, directory_segments
from .vmx import IDE_ROLES, DiskSlot, vmx_bool
from .vmx_rules import (
    at_path,
    check_eth0,
    check_eth1,
    check_hardware,
    check_tools,
    eth0_present,
    settings_of,
)

__all__ = [
    "DISK_CHECKS", "FLASH_CAPACITY_BYTES", "MEMSIZE_FULL_FLASH_MB", "MEMSIZE_MAX_USEFUL_MB",
    "MEMSIZE_SHIPPED_MB", "MSG_FIRMWARE", "MSG_NIC", "MSG_PERFCTR", "VMX_CHECKS",
    "Context", "DiskCheck", "DiskContext", "DiskReport", "Issue", "Report", "VmxCheck",
    "adopt", "check_bundle", "disk_check", "issue", "vmx_check",
]

MSG_PERFCTR = "perfcounter-not enabled!!!"
MSG_NIC = "NIC unavailable!"


# -- the whole run --------------------------------------------------------------------------
def check_bundle(dir_or_vmx: str) -> Report:
    """Run every registered check over the appliance at `dir_or_vmx`. A Proxmox or Hyper-V
    folder vdisk wrote is seen through a vmx made from its configuration; a folder without
    any (bare qcow2 or VHDX disks) is checked disk by disk, its disks found by content and
    name, and the vmx checks are then skipped, as `bundle.no-vmx` says."""
    bundle = open_platform_bundle(dir_or_vmx)
    if bundle is None:
        try:
            bundle = open_bundle(dir_or_vmx)
        except ImageError:
            loose = bundle_without_vmx(dir_or_vmx)
            if loose is None:
                raise
            bundle = loose
    ctx = Context(bundle, dir_or_vmx)
    issues: list[Issue] = []
    if bundle.synthetic:
        names = ", ".join(f"{role} {ctx.rel(s.path or '')}" for slot, role in IDE_ROLES.items()
                          if (s := bundle.vmx.slot(slot)) is not None and s.is_disk)
        issues.append(issue("bundle.no-vmx", Severity.INFO, "no .vmx in the folder: the disks "
                            f"were found by content and name ({names}); the vmx checks were "
                            "skipped", "bundle"))
    for check in VMX_CHECKS if not bundle.synthetic else ():
        issues.extend(check(ctx))
    disks = []
    for slot_name, role in IDE_ROLES.items():
        slot = ctx.vmx.slot(slot_name)
        if slot is None or not slot.is_disk or slot.path is None:
            continue
        rep, found = _check_disk(ctx, slot, role)
        disks.append(rep)
        issues.extend(found)
    return Report(ctx.bundle.vmx_path, tuple(issues), tuple(disks))


def _check_disk(ctx: Context, slot: DiskSlot, role: str) -> tuple[DiskReport, list[Issue]]:
    assert slot.path is not None
    if not os.path.exists(slot.path):
        return DiskReport(slot.slot, role, slot.path), []   # vmx check reports it
    try:
        disk = open_image(slot.path)
    except (VdiskError, OSError) as exc:
        brk = find_cid_break(slot.path)
        if brk is not None:
            return DiskReport(slot.slot, role, slot.path), [issue(
                "bundle.cid-mismatch", Severity.ERROR, f"{ctx.rel(brk.child)} expects parent CID "
                f"{brk.expected_cid:08x}, {ctx.rel(brk.parent)} has {brk.parent_cid:08x}: the "
                "parent was written after the snapshot was taken", role, path=brk.child,
                fix="restore the parent from a backup, or discard the snapshot")]
        return DiskReport(slot.slot, role, slot.path), [issue(
            "bundle.disk-unreadable", Severity.ERROR, f"{role} disk cannot be opened: {exc}",
            role, path=slot.path, fix=ctx.command("check", slot.path))]
    found: list[Issue] = []
    with disk:
        dctx = DiskContext(slot, role, slot.path, disk)
        for roles, check in DISK_CHECKS:
            if role in roles:
                try:
                    found.extend(check(ctx, dctx))
                except Exception as exc:  # noqa: BLE001 - one failed check must not end the report
                    what = str(exc) if isinstance(exc, (VdiskError, OSError)) else \
                        f"{type(exc).__name__}: {exc}"
                    found.append(issue("bundle.check-failed", Severity.ERROR,
                                       f"{check.__name__} could not read the {role} disk: {what}",
                                       role, path=slot.path))
        rep = DiskReport(slot.slot, role, slot.path, disk.size_bytes, disk.subformat,
                         tuple(link.path for link in disk.chain()))
    return rep, found


# -- vmx checks ------------------------------------------------------------------------------
@vmx_check
def check_locks(ctx: Context) -> Iterator[Issue]:
    for lck in ctx.bundle.lock_paths():
        yield issue("bundle.locked", Severity.ERROR,
                    f"{ctx.rel(lck)} exists: VMware has the VM open; nothing may be modified",
                    "bundle", path=lck, fix="power off the VM (remove the lock only if it is stale)")
    for tmp in safe.leftover_temps(ctx.bundle.folder):
        yield issue("bundle.leftover-temp", Severity.WARNING,
                    f"{ctx.rel(tmp)} is a temporary file an interrupted vdisk run left behind",
                    "bundle", path=tmp,
                    fix=safe.removal_command(tmp))


@vmx_check
def check_keys(ctx: Context) -> Iterator[Issue]:
    for key in ctx.vmx.duplicates():
        yield issue("vmx.duplicate-key", Severity.WARNING,
                    f"{key} is set more than once; VMware may refuse the file", "vmx",
                    path=ctx.bundle.vmx_path, fix="remove all but one of the lines")
    if not vmx_bool(ctx.vmx.get(PERFCTR_KEY)):
        yield issue("vmx.perfctr-missing", Severity.ERROR,
                    f'{PERFCTR_KEY} is not "TRUE"', "vmx", path=ctx.bundle.vmx_path,
                    boot=MSG_PERFCTR, fixable=True, fix=ctx.command("bundle", "check", ctx.target, "--fix"))


@vmx_check
def check_nic(ctx: Context) -> Iterator[Issue]:
    vmx, vp = ctx.vmx, ctx.bundle.vmx_path
    settings = settings_of(vmx)
    if not eth0_present(settings):
        for i in at_path(check_eth0(settings), vp):
            yield replace(i, boot_message=MSG_NIC)
        return
    model = vmx.get(f"{NIC}.virtualDev")
    fix = ctx.command("bundle", "check", ctx.target, "--fix")
    if model is None:
        yield issue("vmx.nic-model-unset", Severity.WARNING, f"{NIC}.virtualDev is not set: the "
                    "hypervisor picks a model from guestOS, which the firmware may not drive",
                    "vmx", path=vp, boot=MSG_NIC, fixable=True, fix=fix)
    elif model.lower() not in SUPPORTED_NICS:
        yield issue("vmx.nic-model", Severity.ERROR, f'{NIC}.virtualDev is "{model}"; the firmware '
                    f"drives {' and '.join(SUPPORTED_NICS)}", "vmx", path=vp, boot=MSG_NIC,
                    fixable=True, fix=fix)
    yield from _check_mac(ctx)
    yield from at_path(check_eth0(settings), vp)
    yield from at_path(check_eth1(settings), vp)


@vmx_check
def check_platform(ctx: Context) -> Iterator[Issue]:
    """ESX 3.x hardware and VMware Tools keys (vSphere 5 needs the firmware: check_boot)."""
    settings = settings_of(ctx.vmx)
    yield from at_path(check_hardware(settings), ctx.bundle.vmx_path)
    yield from at_path(check_tools(settings), ctx.bundle.vmx_path)


def _check_mac(ctx: Context) -> Iterator[Issue]:
    st, vp = mac_state(ctx.vmx), ctx.bundle.vmx_path
    set_mac = ctx.command("bundle", "set-mac", ctx.target, "--random")
    if not st.is_static:
        if st.effective:        # freeze the MAC the licence is bound to
            set_mac = ctx.command("bundle", "set-mac", ctx.target, "--mac", st.effective)
        now = f" (now {st.effective})" if st.effective else ""
        yield issue("vmx.mac-generated", Severity.WARNING,
                    f"the MAC is {st.address_type or 'generated'}{now}: it can change when the VM is "
                    "moved or rebuilt, and licences are bound to it", "vmx", path=vp, fix=set_mac)
        return
    if not st.address:
        yield issue("vmx.mac-missing", Severity.ERROR, f"{NIC}.addressType is static but "
                    f"{NIC}.address is not set", "vmx", path=vp, fix=set_mac)
        return
    try:
        mac = parse_mac(st.address)
    except FormatError as exc:
        yield issue("vmx.mac-invalid", Severity.ERROR, exc.message, "vmx", path=vp, fix=set_mac)
        return
    if not in_static_range(mac) and (ctx.vmx.get(CHECK_MAC_KEY) or "").upper() != "FALSE":
        yield issue("vmx.mac-range", Severity.WARNING, f"static MAC {format_mac(mac)} lies outside "
                    "VMware's static range 00:50:56:00:00:00-00:50:56:3F:FF:FF", "vmx", path=vp,
                    fix=ctx.command("bundle", "set-mac", ctx.target, "--mac", "00:50:56:XX:XX:XX"))


@vmx_check
def check_memory(ctx: Context) -> Iterator[Issue]:
    vmx, vp = ctx.vmx, ctx.bundle.vmx_path
    raw = vmx.get("memsize")
    fix = ctx.command("bundle", "check", ctx.target, "--fix")
    if raw is None:
        yield issue("vmx.memsize-missing", Severity.WARNING, "memsize is not set: the hypervisor "
                    "picks the RAM", "vmx", path=vp, fix=f'set memsize = "{MEMSIZE_SHIPPED_MB}" or more')
        return
    mem = ctx.memsize_mb()
    if mem is None or mem <= 0:
        yield issue("vmx.memsize-invalid", Severity.ERROR, f'memsize "{raw}" is not a number of MB',
                    "vmx", path=vp, fix=f'set memsize = "{MEMSIZE_SHIPPED_MB}" or more')
        return
    if mem % 4:
        yield issue("vmx.memsize-multiple", Severity.ERROR, f"memsize {mem} MB is not a multiple "
                    "of 4", "vmx", path=vp, fixable=True, fix=fix)
    if mem < MEMSIZE_MIN_MB:
        yield issue("vmx.memsize-low", Severity.ERROR, f"memsize {mem} MB is below the minimum of "
                    f"{MEMSIZE_MIN_MB} MB", "vmx", path=vp, fixable=True, fix=fix)
    if mem > MEMSIZE_MAX_USEFUL_MB:
        yield issue("vmx.memsize-high", Severity.WARNING, f"memsize {mem} MB: more than "
                    f"{MEMSIZE_MAX_USEFUL_MB} MB brings the appliance nothing", "vmx", path=vp,
                    fix=f'set memsize = "{MEMSIZE_MAX_USEFUL_MB}" or less')
    if mem < MEMSIZE_FULL_FLASH_MB:
        have, full = directory_segments(mem), MAX_SEGMENTS
        sev = Severity.INFO if mem >= MEMSIZE_SHIPPED_MB else Severity.WARNING
        yield issue("vmx.flash-limited", sev, f"memsize {mem} MB gives the flash directory {have} "
                    f"segments of 64 KiB ({_mib(have)}); {MEMSIZE_FULL_FLASH_MB} MB or more gives "
                    f"{full} ({_mib(full)}). Lowering the RAM can lose PBX objects", "vmx", path=vp,
                    fix=f'set memsize = "{MEMSIZE_FULL_FLASH_MB}" for the full flash directory')
    cpus = vmx.get("numvcpus")
    if cpus is not None and cpus.strip().isdigit() and int(cpus) > 1:
        yield issue("vmx.numvcpus", Severity.WARNING, f"numvcpus {cpus}: more than 1 vCPU brings "
                    "the appliance nothing", "vmx", path=vp, fix='set numvcpus = "1"')


def _mib(segments: int) -> str:
    return f"{segments * SEGMENT_BYTES / (1 << 20):.1f} MiB"


@vmx_check
def check_slots(ctx: Context) -> Iterator[Issue]:
    vp = ctx.bundle.vmx_path
    slots = ctx.vmx.slots()
    for s in slots:
        if s.bus != "ide" and s.is_disk:
            yield issue("vmx.disk-not-ide", Severity.ERROR, f"{s.slot} holds {s.file_name}: the "
                        "appliance boots only from IDE disks", "vmx", path=vp,
                        fix="attach the disks to IDE (ide0:0 boot, ide0:1 cf, ide1:0 flash, ide1:1 dump)")
    for slot_name, role in IDE_ROLES.items():
        found = ctx.vmx.slot(slot_name)
        if found is None or not found.is_disk:
            why = ("is not in the vmx" if found is None else
                   "is not present" if not found.present else
                   "names no .vmdk file" if not (found.file_name or "").lower().endswith(".vmdk")
                   else f"is a {found.device_type}")
            yield issue("vmx.slot-missing", Severity.ERROR, f"{slot_name} ({role} disk) {why}",
                        "vmx", path=vp, fix=f'set {slot_name}.present = "TRUE" and '
                        f'{slot_name}.fileName to the {role} disk')
        elif found.path is not None and not os.path.exists(found.path):
            yield issue("bundle.disk-missing", Severity.ERROR, f"{slot_name} ({role} disk) names "
                        f"{found.file_name}, which does not exist", role, path=found.path,
                        fix=f"restore {found.file_name} or correct {slot_name}.fileName")
