"""`vdisk cf`: grow and format hd-cf, the emulated CompactFlash."""
from __future__ import annotations

import typer

from ..image.backup import check_backup_for
from ..ipva.cf import apply_cf, plan_cf
from ..ipva.role import Role
from ._role import ANY_DISK, VMX, guard
from .app import app
from .common import (
    ALLOW_OUTSIDE,
    confirm,
    emit_json,
    handle_errors,
    parse_size,
    progress,
    show_plan,
    takes_format,
)

cf_app = typer.Typer(help="hd-cf, the emulated CompactFlash: grow it keeping its files, or "
                          "format it.\n\nExample: vdisk cf grow hd-cf.vmdk --size 4G",
                     no_args_is_help=True)
app.add_typer(cf_app, name="cf")

FORCE = typer.Option(False, "--force", help="Modify even if a VMware lock exists.")
BACKUP = typer.Option(None, "--backup", help="Keep the original file(s) here.")
DRY = typer.Option(False, "--dry-run", help="Print the plan only.")
YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")
JSON = typer.Option(False, "--json", help="Print the plan as JSON.")


def _check(cf_disk: str, backup: str | None, vmx: str | None, any_disk: bool,
           allow_outside: bool) -> None:
    guard(cf_disk, Role.CF, vmx, any_disk, allow_outside)
    check_backup_for(backup, cf_disk, allow_outside)


def _run(plan, dry_run: bool, yes: bool, force: bool, backup: str | None, json_out: bool,
         question: str, allow_outside: bool) -> None:
    if json_out:
        emit_json({k: getattr(plan, k) for k in plan.__dataclass_fields__} | {"dry_run": dry_run})
    else:
        show_plan(list(plan.describe()), dry_run)
    if dry_run:
        if not json_out:
            typer.echo("dry run: nothing was changed")
        return
    confirm(question, yes)
    with progress("copying files", not json_out) as cb:
        apply_cf(plan, force=force, backup=backup, progress=cb, allow_outside=allow_outside)
    if not json_out:
        typer.echo(f"done: {plan.path} is {plan.new_bytes} bytes, FAT{plan.new_fat_type}"
                   + (f", {plan.files} file(s) kept" if plan.keep_files else ", empty"))


@cf_app.command("grow")
@handle_errors
@takes_format("cf_disk")
def grow(cf_disk: str = typer.Argument(..., help="The hd-cf disk (any VMDK subformat or raw)."),
         size: str = typer.Option(..., "--size", "-s", help="New capacity, e.g. 4G."),
         keep_files: bool = typer.Option(True, "--keep-files/--no-keep-files",
                                         help="Put the files back after formatting (default)."),
         dry_run: bool = DRY, yes: bool = YES, force: bool = FORCE, backup: str = BACKUP,
         json_out: bool = JSON, vmx: str | None = VMX, any_disk: bool = ANY_DISK,
         allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Enlarge the CF and reformat it, keeping every file.

    FAT16 below 512 MiB, FAT32 from there; every file keeps its long name, attributes and
    timestamps. The old image stays untouched until
    the new one is complete and verified.

    Example: vdisk cf grow hd-cf.vmdk --size 4G --backup hd-cf.bak
    """
    new_bytes = parse_size(size)
    _check(cf_disk, backup, vmx, any_disk, allow_outside)
    plan = plan_cf(cf_disk, new_bytes, keep_files, allow_outside=allow_outside)
    _run(plan, dry_run, yes, force, backup, json_out,
         f"reformat {cf_disk} at {plan.new_bytes} bytes" + ("" if keep_files else ", deleting its files"),
         allow_outside)


@cf_app.command("format")
@handle_errors
@takes_format("cf_disk")
def format_cmd(cf_disk: str = typer.Argument(..., help="The hd-cf disk."),
               dry_run: bool = DRY, yes: bool = YES, force: bool = FORCE, backup: str = BACKUP,
               json_out: bool = JSON, vmx: str | None = VMX, any_disk: bool = ANY_DISK,
               allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Format the CF empty, as the appliance's Compact Flash/Format does.

    It leaves an MBR, one partition from LBA 2048, FAT16/FAT32 by size, label IPVACF.
    Deletes every file.

    Example: vdisk cf format hd-cf.vmdk --yes
    """
    _check(cf_disk, backup, vmx, any_disk, allow_outside)
    plan = plan_cf(cf_disk, None, keep_files=False, allow_outside=allow_outside)
    _run(plan, dry_run, yes, force, backup, json_out, f"format {cf_disk}, deleting every file on it",
         allow_outside)
