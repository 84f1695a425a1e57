"""The doctor's disk checks: capacity, snapshots, VMDK metadata, the firmware on the boot
disk, the FAT on the CF disk, flash usage and the dump store (specs/vmx.md §Doctor).

Importing this module registers the checks (`doctor` does so); each one reads a disk that
`check_bundle` opened read-only.
"""
from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import replace

from ..errors import FormatError, Severity
from ..fs.check import check_volume
from ..fs.partition import check_partition_table, looks_like_mbr, read_partition_table
from ..fs.volume import FatVolume, open_volume
from ..image.check import check_image
from .bundle import read_descriptor
from .doctor_model import (
    MEMSIZE_FULL_FLASH_MB,
    Context,
    DiskContext,
    Issue,
    adopt,
    disk_check,
    issue,
)
from .flash import find_children
from .fwversion import V9HF1, firmware_id, older_than
from .upgrade import BACKUP_NAME, judge
from .upgrade import CODE as UPGRADE_CODE
from .vmx_rules import at_path, check_vsphere5_firmware, settings_of

FLASH_CAPACITY_BYTES = 100 << 20
MSG_FIRMWARE = "checksum wrong! Loading failed for image=IPVA    BIN"


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
@disk_check()
def check_vmdk(ctx: Context, d: DiskContext) -> Iterator[Issue]:
    """`vdisk check`: the VMDK metadata of every disk."""
    for f in check_image(d.path).findings:
        yield adopt(f, d, ctx.command("check", d.path, "--repair") if f.fixable
                    else ctx.command("check", d.path))


@disk_check("boot")
def check_boot(ctx: Context, d: DiskContext) -> Iterator[Issue]:
    """`vdisk verify`: the IPVA.BIN the boot loader would load."""
    from .boot_verify import verify_target

    fix = ctx.command("boot", "restore", d.path, "--firmware", "ipva.bin")
    res = verify_target(d.path)
    for f in res.findings:
        bad = f.severity == Severity.ERROR
        loader = bad and (f.code.startswith("fw.") or f.code.startswith("boot.chain"))
        yield adopt(f, d, fix if bad else None, MSG_FIRMWARE if loader else None)
    ctx.firmware = firmware_id(res.firmware)
    for i in at_path(check_vsphere5_firmware(settings_of(ctx.vmx), ctx.firmware),
                     ctx.bundle.vmx_path):
        yield replace(i, fix=i.fix.replace("BOOT_DISK", shlex.quote(d.path)) if i.fix else None)


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
    """fs.check: boot sector copies, FAT copies, chains, directories, FSInfo; `vdisk fs check
    --repair` fixes what it can (the same volume: the disk's default partition)."""
    for f in check_volume(vol, path=d.path).findings:
        yield adopt(f, d, ctx.command("fs", "check", d.path, "--repair", "--yes") if f.fixable
                    else ctx.command("fs", "check", d.path))


@disk_check("flash")
def check_flash(ctx: Context, d: DiskContext) -> Iterator[Issue]:
    """Flash in use against the directory the memsize allows; with a firmware older than
    V9HF1 (the boot disk is checked first), against the directory an upgrade would allow."""
    from .flash import read_flash_info

    info = read_flash_info(d.disk, ctx.memsize_mb())
    limit = "" if info.directory_segments is None else \
        f"; memsize {info.memsize_mb} MB allows a directory of {info.directory_segments}"
    yield issue("bundle.flash-usage", Severity.INFO, f"{info.segments_in_use} of "
                f"{info.segments_total} flash segments in use{limit}", d.role, path=d.path)
    trap = None
    if ctx.firmware is not None and older_than(ctx.firmware, V9HF1) is not False:
        trap = judge(ctx.firmware, None, info.segments_in_use, ctx.memsize_mb(),
                     ctx.bundle.vmx_path, d.path)
    for f in info.findings:
        if trap is not None and f.code == "flash.directory-overflow":
            continue           # the installed firmware does not size the directory by RAM yet
        fix = f'set memsize = "{MEMSIZE_FULL_FLASH_MB}"' if f.code == "flash.directory-overflow" \
            else None
        yield adopt(f, d, fix)
    if trap is not None and trap.risk:
        yield issue(UPGRADE_CODE, Severity.WARNING, trap.reason, d.role, path=d.path,
                    fix=ctx.command("flash", "backup", d.path, "-o", BACKUP_NAME)
                    + " and save the configuration before the upgrade")


@disk_check("dump")
def check_dump(ctx: Context, d: DiskContext) -> Iterator[Issue]:
    """The crash-dump store: header, torn records, the newest dump. A torn record is what
    a crash during a crash dump leaves (specs/dump-store.md): worth knowing, since its dump
    is lost but for what --salvage recovers, yet nothing the appliance needs to boot."""
    from .dump import read_store

    store = read_store(d.disk)
    for f in store.findings:
        fix = None
        if f.code == "dump.record-torn":
            yield issue("bundle.dump-torn", Severity.INFO, f"{f.message}; the appliance died "
                        "while writing this crash dump (booting is not affected)", d.role,
                        path=d.path, offset=f.offset,
                        fix=ctx.command("dump", "extract", d.path, "--salvage"))
            continue
        if f.severity != Severity.INFO and f.code.startswith("dump.header"):
            fix = ctx.command("dump", "init", d.path) + "  (deletes the records: extract first)"
        yield adopt(f, d, fix)
    newest = store.newest_good
    if newest is not None:
        yield issue("bundle.dump-present", Severity.INFO, f"{len(store.good)} crash dump(s); the "
                    f"newest is sequence {newest.sequence} (build {newest.build}, "
                    f"{newest.version or 'no version'})", d.role, path=d.path,
                    fix=ctx.command("dump", "extract", d.path))
