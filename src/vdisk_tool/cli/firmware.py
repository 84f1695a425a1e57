"""Firmware and boot disk commands: `verify`, `firmware info/pack`, `boot restore/create`."""
from __future__ import annotations

import datetime
import os

import typer

from .. import clock
from ..errors import RefusedError, VdiskError
from ..formats import ipva_firmware as fw
from ..image.backup import check_backup_for
from ..image.base import FileDevice
from ..image.safe import Replacement, create_temp
from ..ipva import boot as bootmod
from ..ipva.firmware import FirmwareReport, SectionInput, Status, check_firmware, write_firmware
from ..ipva.ova_check import verify_package
from ..ipva.packages import is_package
from ..ipva.role import Role, identify_disk
from ..ipva.upgrade import FlashUpgradeCheck, check_restore
from ._role import ANY_DISK, VMX, guard
from .app import app
from .choices import Adapter, Subformat
from .common import (
    ALLOW_OUTSIDE,
    EXIT_ERROR,
    EXIT_FINDINGS,
    EXIT_OK,
    EXIT_REPAIR_FAILED,
    OVERWRITE,
    confirm,
    emit_json,
    fail,
    handle_errors,
    parse_size,
    print_findings,
    progress,
    refuse_existing,
    say,
    show_plan,
    takes_format,
    warn,
)

firmware_grp = typer.Typer(help="The firmware image ipva.bin: describe it, pack a new one.",
                           no_args_is_help=True)
boot_grp = typer.Typer(help="The boot disk (hd-boot, ide0:0): restore its firmware, make a "
                            "fresh one.", no_args_is_help=True)
app.add_typer(firmware_grp, name="firmware")
app.add_typer(boot_grp, name="boot")

JSON = typer.Option(False, "--json", help="Print the result as JSON.")
LABELS = {"header": "header", "header-crc": "header CRC", "size": "size",
          "section-table": "section table", "image-crc": "image CRC"}


def _when(ts: int) -> str:
    try:
        return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{ts} (out of range)"


def _summary(rep: FirmwareReport) -> str:
    h = rep.header
    if h is None:
        return "no readable header"
    return (f"build {h.build}, version {h.version!r}, built {_when(h.timestamp)}, "
            f"{len(rep.sections)} sections, {h.image_bytes} bytes")


def _print_steps(rep: FirmwareReport) -> None:
    for s in rep.steps:
        label = LABELS.get(s.key, s.key.replace("section:", "section "))
        mark = s.status.value if s.sure or s.status != Status.FAILED else "failed?"
        typer.echo(f"  {label:<16} {mark:<8} {s.detail}")


@app.command()
@handle_errors
@takes_format("target")
def verify(target: str = typer.Argument(..., help="A boot disk, ipva.bin, an appliance folder, "
                                                  "its .vmx, or an .ova/.ovf/.zip package."),
           json_out: bool = JSON,
           verbose: bool = typer.Option(False, "--verbose", "-v",
                                        help="List every check, also when all pass."),
           allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Check the firmware the boot loader would load (IPVA.BIN): header, size, sections, CRCs.

    Exit 0 when it would boot, 1 when the loader would refuse it (and say why).

    Example: vdisk verify hd-boot.vmdk
    """
    with progress("verifying", not json_out) as cb:
        res = (verify_package(target, cb) if is_package(target)
               else bootmod.verify_target(target, cb, allow_outside=allow_outside))
    # an interrupted edit of the boot disk: what was read may be half changed
    from ..image.journal import pending_finding
    pending = None if is_package(target) or not res.path else pending_finding(res.path)
    findings = ([pending] if pending else []) + list(res.findings)
    if json_out:
        emit_json(res.to_dict(), ok=res.ok and pending is None, findings=findings)
        raise typer.Exit(EXIT_OK if res.ok and pending is None else EXIT_FINDINGS)
    rep = res.firmware
    where = res.path if res.via is None else f"{res.path} (ide0:0 of {res.via})"
    if res.volume:
        where += f", {res.volume.get('summary')}"
    if res.ok:
        assert rep is not None
        typer.echo(f"{where}: OK: IPVA firmware {_summary(rep)}")
        if verbose:
            _print_steps(rep)
        print_findings(findings)
        raise typer.Exit(EXIT_OK if not findings else EXIT_FINDINGS)
    typer.echo(fw.LOADER_FAILURE)
    typer.echo(f"{where}: DAMAGED" + (f": IPVA firmware {_summary(rep)}" if rep else ""))
    if rep is not None:
        _print_steps(rep)
    print_findings(findings)
    raise typer.Exit(EXIT_FINDINGS)


@firmware_grp.command("info")
@handle_errors
def firmware_info(path: str = typer.Argument(..., help="The firmware file (ipva.bin)."),
                  json_out: bool = JSON) -> None:
    """Describe a firmware image: header fields, sections with their CRCs, and its checks.

    Example: vdisk firmware info ipva.bin --json
    """
    rep = bootmod.verify_firmware_file(path)
    if json_out:
        emit_json(rep.to_dict())
        raise typer.Exit(EXIT_OK if rep.ok else EXIT_FINDINGS)
    typer.echo(f"file: {path} ({rep.file_bytes} bytes)")
    h = rep.header
    if h is not None:
        typer.echo(f"header version: {h.header_version} ({h.header_bytes} bytes)")
        typer.echo(f"build: {h.build}")
        typer.echo(f"version: {h.version if h.version is not None else '(not ASCII)'}")
        typer.echo(f"product: {h.product if h.product is not None else '(not ASCII)'}")
        typer.echo(f"built: {_when(h.timestamp)}")
        typer.echo(f"image size: {h.image_bytes} bytes")
        typer.echo(f"image crc32: 0x{h.image_crc32:08x}" + (
            f" (found 0x{rep.found_image_crc32:08x})" if rep.found_image_crc32 is not None
            and rep.found_image_crc32 != h.image_crc32 else ""))
        typer.echo(f"header crc32: 0x{h.header_crc32:08x}" + (
            f" (found 0x{h.found_header_crc32:08x})"
            if h.found_header_crc32 != h.header_crc32 else ""))
        typer.echo(f"sections: {h.section_count}")
        for s in rep.sections:
            found = "-" if s.found_crc32 is None else f"0x{s.found_crc32:08x}"
            typer.echo(f"  {s.name:<8} offset 0x{s.offset:08x} size {s.size_bytes:>10} "
                       f"crc32 0x{s.expected_crc32:08x} found {found} {s.status.value}")
    typer.echo("status: ok" if rep.ok else "status: damaged")
    print_findings(list(rep.findings))
    raise typer.Exit(EXIT_OK if rep.ok and not rep.findings else EXIT_FINDINGS)


def _parse_sections(items: list[str]) -> list[SectionInput]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise RefusedError(f"--section {item!r}: expected NAME=FILE")
        if not os.path.isfile(path):
            raise RefusedError(f"--section {name}: no such file {path!r}")
        out.append(SectionInput(name, path))
    return out


@firmware_grp.command("pack")
@handle_errors
def firmware_pack(build: int = typer.Option(..., "--build", min=0, max=0xFFFFFFFF,
                                            help="Firmware build number, e.g. 90468."),
                  version: str = typer.Option(..., "--version", help="Version text, e.g. "
                                                                    "'9.00 hotfix4'."),
                  section: list[str] = typer.Option(..., "--section",
                                                    help="NAME=FILE, in image order (1..16)."),
                  output: str = typer.Option(..., "-o", "--output", help="The image to write."),
                  timestamp: int | None = typer.Option(None, "--timestamp", min=0,
                                                          max=0xFFFFFFFF,
                                                          help="Build time (seconds since "
                                                               "1970 UTC); default now."),
                  align: int = typer.Option(512, "--align", min=1,
                                            help="Align each section's start to this many "
                                                 "bytes."),
                  overwrite: bool = OVERWRITE, json_out: bool = JSON) -> None:
    """Make a valid firmware image from section files (for samples, tests and lab setups).

    \b
    Example: vdisk firmware pack --build 90468 --version "9.00" --section PBX=pbx.bin -o ipva.bin
    """
    sections = _parse_sections(section)
    refuse_existing(output, overwrite)
    ts = clock.unix_time() if timestamp is None else timestamp
    rep = Replacement()
    tmp = create_temp(output)
    rep.add(tmp, os.path.abspath(output))
    try:
        with open(tmp, "r+b") as f, progress("packing", not json_out) as cb:
            write_firmware(f, sections, build=build, version=version, timestamp=ts,
                           align_bytes=align, progress=cb)
        with FileDevice(tmp) as dev:
            check = check_firmware(dev, output)
        if not check.ok:  # pragma: no cover - pack writes what verify accepts
            raise RefusedError("the packed image does not verify", path=output)
        rep.commit()
    except BaseException:
        rep.abort()
        raise
    if json_out:
        emit_json(check.to_dict())
        return
    typer.echo(f"{output}: wrote IPVA firmware {_summary(check)}")
    for s in check.sections:
        say(f"  {s.name:<8} offset 0x{s.offset:08x} size {s.size_bytes:>10} "
            f"crc32 0x{s.expected_crc32:08x}")


def _print_result(res: bootmod.VerifyResult) -> None:
    if res.ok and res.firmware is not None:
        typer.echo(f"verify: OK: IPVA firmware {_summary(res.firmware)}")
    else:
        typer.echo("verify: DAMAGED")
        print_findings(list(res.findings))


@boot_grp.command("restore")
@handle_errors
@takes_format("disk")
def boot_restore(disk: str = typer.Argument(..., help="The boot disk (hd-boot.vmdk)."),
                 firmware: str = typer.Option(..., "--firmware", help="The new ipva.bin."),
                 dry_run: bool = typer.Option(False, "--dry-run",
                                              help="Show the plan; change nothing."),
                 backup: str | None = typer.Option(None, "--backup",
                                                      help="Keep the old disk here."),
                 force: bool = typer.Option(False, "--force",
                                            help="Write even though a VMware lock exists."),
                 json_out: bool = JSON, allow_outside: bool = ALLOW_OUTSIDE,
                 yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for "
                                          "confirmation; also go on although the upgrade "
                                          "would lose PBX objects (back the flash up first)."),
                 vmx: str | None = VMX, any_disk: bool = ANY_DISK) -> None:
    """Write a verified ipva.bin as IPVA.BIN on the boot disk (crash-safe).

    The new firmware is verified first and refused if bad. When the boot volume is gone or
    its FAT cannot be trusted, the disk is rebuilt (MBR + FAT16 IPVABOOT, same capacity,
    subformat and adapter) with the firmware on it. An upgrade across 9.00 hotfix1 with more
    flash in use than the RAM then allows is refused without --yes.

    \b
    Example: vdisk boot restore hd-boot.vmdk --firmware ipva.bin --backup hd-boot.old.vmdk
    """
    guard(disk, Role.BOOT, vmx, any_disk, allow_outside)
    check_backup_for(backup, disk, allow_outside)
    plan = bootmod.plan_restore(disk, firmware, allow_outside)
    flash_check = _guard_flash_upgrade(disk, firmware, plan, yes=yes, dry_run=dry_run,
                                       json_out=json_out)
    if not json_out:
        if plan.action == "replace":
            lines = [f"plan: write {firmware} as IPVA.BIN on {disk}"
                     + (f" (partition {plan.partition})" if plan.partition else "")]
        else:
            lines = [f"plan: rebuild {disk} as a fresh boot disk ({plan.shape['size_bytes']} "
                     f"bytes, {plan.shape['subformat']}, adapter {plan.shape['adapter']}) "
                     f"with {firmware} as IPVA.BIN, because:"]
            lines += [f"  - {r}" for r in plan.reasons or ("no boot volume was found",)]
        lines += [f"  before: {f.code}: {f.message}" for f in plan.before]
        show_plan(lines, dry_run)
    if not dry_run:
        confirm(f"this replaces the firmware on {disk}" if plan.action == "replace" else
                f"this rebuilds {disk} (everything on it is lost)", yes)
    res = bootmod.apply_restore(plan, backup=backup, force=force, dry_run=dry_run,
                                allow_outside=allow_outside)
    if json_out:
        emit_json({"plan": plan.to_dict(), "dry_run": dry_run, "flash_check": flash_check.to_dict(),
                   "result": None if res is None else res.to_dict()})
    elif res is None:
        typer.echo("dry run: nothing was changed")
    else:
        _print_result(res)
    raise typer.Exit(EXIT_OK if res is None or res.ok else EXIT_REPAIR_FAILED)


def _guard_flash_upgrade(disk: str, firmware: str, plan: bootmod.RestorePlan, *, yes: bool,
                         dry_run: bool, json_out: bool) -> FlashUpgradeCheck:
    """The V9HF1 trap: warn with the numbers; without --yes refuse (exit 3), on a terminal
    too, since the loss comes at the next boot, long after any prompt."""
    chk = check_restore(disk, firmware)
    if not chk.risk:
        if not json_out and chk.status == "skipped":
            typer.echo(f"note: {chk.reason}")
        return chk
    warn(chk.reason)
    typer.echo(f"hint: back the flash up first: {chk.backup_command()}", err=True)
    if yes or dry_run:
        return chk
    message = f"refusing to install {firmware}: the upgrade would lose PBX objects"
    hint = "save the configuration and back the flash up, then pass --yes to go on"
    if json_out:        # one document: the refused plan (the error line stays on stderr)
        emit_json({"plan": plan.to_dict(), "dry_run": False, "flash_check": chk.to_dict(),
                   "refused": True, "result": None}, ok=False)
        typer.echo(f"vdisk: error: {message}\nhint: {hint}", err=True)
        raise typer.Exit(EXIT_ERROR)
    raise fail(message, EXIT_ERROR, hint)


def _refuse_existing(path: str, overwrite: bool) -> None:
    """boot create replaces a file only with --overwrite, and then only a boot disk or a
    blank one: another role's disk is refused, saying what it holds."""
    if not os.path.lexists(path):
        return
    try:
        ident = identify_disk(path)
        what = f" and holds {ident.evidence}{ident.where}"
        role = ident.role
    except (VdiskError, OSError):
        what, role = "", Role.UNKNOWN
    if overwrite and role in (Role.BOOT, Role.BLANK):
        return
    if overwrite:
        raise RefusedError(f"{path} exists{what}; boot create overwrites only a boot disk or a "
                           "blank one, nothing was changed", hint="choose a new name")
    raise RefusedError(f"{path} exists{what}; boot create does not overwrite it without "
                       "--overwrite, nothing was changed", hint="choose a new name" + (
                           ", or put the firmware on it with `vdisk boot restore`"
                           if role == Role.BOOT else "") + "; pass --overwrite to replace it")


@boot_grp.command("create")
@handle_errors
def boot_create(path: str = typer.Argument(..., help="The new boot disk to write."),
                firmware: str = typer.Option(..., "--firmware", help="The ipva.bin to put on it."),
                size: str = typer.Option("32M", "--size", help="Capacity, e.g. 32M."),
                subformat: Subformat = typer.Option(Subformat.monolithicSparse, "--subformat",
                                                     help="VMDK subformat, or raw."),
                adapter: Adapter = typer.Option(Adapter.ide, "--adapter", help="ddb.adapterType."),
                overwrite: bool = OVERWRITE, json_out: bool = JSON) -> None:
    """Make a fresh boot disk (MBR, FAT16 'IPVABOOT', IPVA.BIN) to replace a broken one.

    Example: vdisk boot create hd-boot.vmdk --firmware ipva.bin --size 32M
    """
    _refuse_existing(path, overwrite)     # says what the existing file holds
    bootmod.create_boot_disk(path, firmware, parse_size(size), subformat.value, adapter.value,
                             overwrite=overwrite)
    res = bootmod.verify_target(path)
    if json_out:
        emit_json(res.to_dict())
    else:
        typer.echo(f"{path}: created")
        if res.ok and res.firmware is not None:
            say(f"verify: OK: IPVA firmware {_summary(res.firmware)}")
        else:
            _print_result(res)
    raise typer.Exit(EXIT_OK if res.ok else EXIT_REPAIR_FAILED)
