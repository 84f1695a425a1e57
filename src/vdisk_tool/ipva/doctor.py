"""`vdisk bundle check`: one report for a whole appliance (specs/vmx.md §Doctor).

The doctor runs a list of checks over a bundle. A vmx check takes the `Context` and yields
`Issue`s; a disk check takes the `Context` and one opened `DiskContext` and yields `Issue`s.
Other modules plug checks in with `vmx_check` / `disk_check`. An Issue wraps a `Finding`
with what a person needs next: the boot message the problem causes (where there is one)
and the command (or step) that fixes it.
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

from ..errors import Finding, FormatError, Severity, VdiskError
from ..fs.check import check_volume
from ..fs.partition import check_partition_table, looks_like_mbr, read_partition_table
from ..fs.volume import FatVolume, open_volume
from ..image import safe
from ..image.check import check_image
from ..image.disk import Disk, open_image
from .bundle import (
    MEMSIZE_MIN_MB,
    NIC,
    PERFCTR_KEY,
    SUPPORTED_NICS,
    Bundle,
    find_cid_break,
    format_mac,
    in_static_range,
    mac_state,
    open_bundle,
    parse_mac,
    read_descriptor,
    relpath_in,
)
from .flash import MAX_SEGMENTS, SEGMENT_BYTES, directory_segments, find_children
from .vmx import IDE_ROLES, DiskSlot, Vmx, vmx_bool

MEMSIZE_MAX_USEFUL_MB = 3072
MEMSIZE_FULL_FLASH_MB = 192
MEMSIZE_SHIPPED_MB = 64
MSG_PERFCTR = "perfcounter-not enabled!!!"
MSG_NIC = "NIC unavailable!"


@dataclass(frozen=True)
class Issue:
    """A finding about the appliance, its boot-time symptom and its fix."""

    finding: Finding
    subject: str                      # "vmx", "bundle", or a disk role: boot/cf/flash/dump
    boot_message: str | None = None
    fix: str | None = None

    @property
    def code(self) -> str:
        return self.finding.code

    @property
    def severity(self) -> Severity:
        return self.finding.severity

    def to_dict(self) -> dict[str, object]:
        d = self.finding.to_dict()
        d.update({"subject": self.subject, "boot_message": self.boot_message, "fix": self.fix})
        return d


@dataclass(frozen=True)
class DiskReport:
    slot: str
    role: str
    path: str | None
    capacity_bytes: int | None = None
    subformat: str | None = None
    chain: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"slot": self.slot, "role": self.role, "path": self.path,
                "capacity_bytes": self.capacity_bytes, "subformat": self.subformat,
                "chain": list(self.chain)}


@dataclass(frozen=True)
class Report:
    vmx_path: str
    issues: tuple[Issue, ...]
    disks: tuple[DiskReport, ...]

    @property
    def healthy(self) -> bool:
        return all(i.severity == Severity.INFO for i in self.issues)

    def to_dict(self) -> dict[str, object]:
        return {"vmx": self.vmx_path, "healthy": self.healthy,
                "disks": [d.to_dict() for d in self.disks],
                "issues": [i.to_dict() for i in self.issues]}


@dataclass
class Context:
    """What every check sees: the bundle and how the user named it (for fix commands)."""

    bundle: Bundle
    target: str

    @property
    def vmx(self) -> Vmx:
        return self.bundle.vmx

    def command(self, *words: str) -> str:
        return "vdisk " + " ".join(shlex.quote(w) for w in words)

    def rel(self, path: str) -> str:
        return relpath_in(self.bundle.folder, path)

    def memsize_mb(self) -> int | None:
        try:
            return int(self.vmx.get("memsize", "") or "")
        except ValueError:
            return None


@dataclass
class DiskContext:
    """One attached IPVA disk, opened read-only for the disk checks."""

    slot: DiskSlot
    role: str
    path: str
    disk: Disk
    notes: dict[str, object] = field(default_factory=dict)


VmxCheck = Callable[[Context], Iterable[Issue]]
DiskCheck = Callable[[Context, DiskContext], Iterable[Issue]]
VMX_CHECKS: list[VmxCheck] = []
DISK_CHECKS: list[tuple[tuple[str, ...], DiskCheck]] = []


def vmx_check(fn: VmxCheck) -> VmxCheck:
    VMX_CHECKS.append(fn)
    return fn


def disk_check(*roles: str) -> Callable[[DiskCheck], DiskCheck]:
    """Register a check for the disks of `roles` (all four when none is named)."""
    def register(fn: DiskCheck) -> DiskCheck:
        DISK_CHECKS.append((roles or tuple(IDE_ROLES.values()), fn))
        return fn
    return register


def issue(code: str, severity: Severity, message: str, subject: str, *, path: str | None = None,
          boot: str | None = None, fix: str | None = None, fixable: bool = False,
          offset: int | None = None) -> Issue:
    return Issue(Finding(code, severity, message, offset=offset, fixable=fixable, path=path),
                 subject, boot, fix)


# -- the whole run --------------------------------------------------------------------------
def check_bundle(dir_or_vmx: str) -> Report:
    """Run every registered check over the appliance at `dir_or_vmx`."""
    ctx = Context(open_bundle(dir_or_vmx), dir_or_vmx)
    issues: list[Issue] = []
    for check in VMX_CHECKS:
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
                    "bundle", path=tmp, fix=f"rm {shlex.quote(tmp)}")


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
    if not vmx_bool(vmx.get(f"{NIC}.present")):
        yield issue("vmx.nic-missing", Severity.ERROR, f"{NIC} is not present: the appliance has "
                    "no network adapter", "vmx", path=vp, boot=MSG_NIC,
                    fix="add a network adapter of type vlance to the VM")
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


def _check_mac(ctx: Context) -> Iterator[Issue]:
    st, vp = mac_state(ctx.vmx), ctx.bundle.vmx_path
    set_mac = ctx.command("bundle", "set-mac", ctx.target, "--random")
    if not st.is_static:
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
    if not in_static_range(mac):
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


# -- built-in disk checks ---------------------------------------------------------------------
FLASH_CAPACITY_BYTES = 100 << 20


@disk_check("flash")
def check_flash_capacity(ctx: Context, d: DiskContext) -> Iterator[Issue]:
    size = d.disk.size_bytes
    if size != FLASH_CAPACITY_BYTES:
        sev = Severity.ERROR if size < (64 << 20) else Severity.WARNING
        yield issue("bundle.flash-capacity", sev, f"flash disk holds {size} bytes; the appliance "
                    f"expects 100 MiB ({FLASH_CAPACITY_BYTES} bytes)", d.role, path=d.path,
                    fix="replace it with a blank 100 MiB disk (this erases the PBX objects)")


@disk_check()
def check_snapshots(ctx: Context, d: DiskContext) -> Iterator[Issue]:
    """A disk that is a snapshot child (its chain is open, so its CIDs matched), and
    snapshot children in the folder that the vmx does not use (writing the parent would
    break their CID chain)."""
    chain = [link.path for link in d.disk.chain()]
    if len(chain) > 1:
        yield issue("bundle.snapshot", Severity.INFO, f"{d.role} disk is a snapshot: "
                    + " -> ".join(ctx.rel(p) for p in chain), d.role, path=d.path)
    cid = getattr(d.disk.descriptor, "cid", None)
    for child in find_children(d.path, d.disk.files):
        desc = read_descriptor(child)
        pcid = desc.parent_cid if desc is not None else None
        if cid is not None and pcid is not None and pcid != cid:
            yield issue("bundle.cid-mismatch", Severity.ERROR, f"{ctx.rel(child)} is a snapshot of "
                        f"the {d.role} disk but expects parent CID {pcid:08x}, the disk has "
                        f"{cid:08x}: the parent was written after the snapshot", d.role, path=child,
                        fix="restore the parent from a backup, or discard the snapshot")
        else:
            yield issue("bundle.snapshot-unused", Severity.WARNING, f"{ctx.rel(child)} is a snapshot "
                        f"of the {d.role} disk, but the vmx uses the parent: writing the parent "
                        "breaks the snapshot", d.role, path=child,
                        fix="point the vmx at the snapshot, or delete it in the VMware snapshot manager")


# -- disk checks from the disk modules ---------------------------------------------------------
MSG_FIRMWARE = "checksum wrong! Loading failed for image=IPVA    BIN"


def adopt(f: Finding, d: DiskContext, fix: str | None = None, boot: str | None = None) -> Issue:
    """A disk module's Finding as an Issue about that disk."""
    return Issue(replace(f, path=f.path or d.path), d.role, boot, fix)


@disk_check()
def check_vmdk(ctx: Context, d: DiskContext) -> Iterator[Issue]:
    """`vdisk check`: the VMDK metadata of every disk."""
    for f in check_image(d.path).findings:
        yield adopt(f, d, ctx.command("check", d.path, "--repair") if f.fixable
                    else ctx.command("check", d.path))


@disk_check("boot")
def check_boot(ctx: Context, d: DiskContext) -> Iterator[Issue]:
    """`vdisk verify`: the IPVA.BIN the boot loader would load."""
    from .boot import verify_target

    fix = ctx.command("boot", "restore", d.path, "--firmware", "ipva.bin")
    for f in verify_target(d.path).findings:
        bad = f.severity == Severity.ERROR
        loader = bad and (f.code.startswith("fw.") or f.code.startswith("boot.chain"))
        yield adopt(f, d, fix if bad else None, MSG_FIRMWARE if loader else None)


@disk_check("cf")
def check_cf(ctx: Context, d: DiskContext) -> Iterator[Issue]:
    """The CF disk: its MBR and the FAT volume on it."""
    if d.disk.read_at(0, 512).count(0) == 512:
        yield issue("bundle.cf-blank", Severity.WARNING, "the CF disk holds no partition table "
                    "or file system (the appliance formats it on first start)", d.role, path=d.path)
        return
    if looks_like_mbr(d.disk.read_at(0, 512), d.disk.size_bytes):
        table = read_partition_table(d.disk, d.path)
        for f in check_partition_table(table, d.disk.size_bytes // 512):
            yield adopt(f, d)
    try:
        vol = open_volume(d.disk, path=d.path)
    except FormatError as exc:
        yield issue("bundle.cf-no-fat", Severity.ERROR, f"no FAT volume found: {exc.message}",
                    d.role, path=d.path)
        return
    yield from _fat_findings(ctx, d, vol)


def _fat_findings(ctx: Context, d: DiskContext, vol: FatVolume) -> Iterator[Issue]:
    """fs.check: boot sector copies, FAT copies, chains, directories, FSInfo."""
    for f in check_volume(vol, path=d.path).findings:
        yield adopt(f, d)


@disk_check("flash")
def check_flash(ctx: Context, d: DiskContext) -> Iterator[Issue]:
    """Flash in use against the directory the memsize allows."""
    from .flash import read_flash_info

    info = read_flash_info(d.disk, ctx.memsize_mb())
    limit = "" if info.directory_segments is None else \
        f"; memsize {info.memsize_mb} MB allows a directory of {info.directory_segments}"
    yield issue("bundle.flash-usage", Severity.INFO, f"{info.segments_in_use} of "
                f"{info.segments_total} flash segments in use{limit}", d.role, path=d.path)
    for f in info.findings:
        fix = f'set memsize = "{MEMSIZE_FULL_FLASH_MB}"' if f.code == "flash.directory-overflow" \
            else None
        yield adopt(f, d, fix)


@disk_check("dump")
def check_dump(ctx: Context, d: DiskContext) -> Iterator[Issue]:
    """The crash-dump store: header, torn records, the newest dump."""
    from .dump import read_store

    store = read_store(d.disk)
    for f in store.findings:
        fix = None
        if f.code == "dump.record-torn":
            fix = ctx.command("dump", "extract", d.path, "--salvage")
        elif f.severity != Severity.INFO and f.code.startswith("dump.header"):
            fix = ctx.command("dump", "init", d.path) + "  (deletes the records: extract first)"
        yield adopt(f, d, fix)
    newest = store.newest_good
    if newest is not None:
        yield issue("bundle.dump-present", Severity.INFO, f"{len(store.good)} crash dump(s); the "
                    f"newest is sequence {newest.sequence} (build {newest.build}, "
                    f"{newest.version or 'no version'})", d.role, path=d.path,
                    fix=ctx.command("dump", "extract", d.path))
