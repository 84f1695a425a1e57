"""`vdisk cf`: grow and format hd-cf, the emulated CompactFlash."""
from __future__ import annotations

import typer

from ..ipva.cf import apply_cf, plan_cf
from .app import app
from .common import confirm, emit_json, handle_errors, parse_size, progress, takes_format

cf_app = typer.Typer(help="hd-cf, the emulated CompactFlash: grow it keeping its files, or "
                          "format it.\n\nExample: vdisk cf grow hd-cf.vmdk --size 4G",
                     no_args_is_help=True)
app.add_typer(cf_app, name="cf")

FORCE = typer.Option(False, "--force", help="Modify even if a VMware lock exists.")
BACKUP = typer.Option(None, "--backup", help="Keep the original file(s) here.")
DRY = typer.Option(False, "--dry-run", help="Print the plan only.")
YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")
JSON = typer.Option(False, "--json", help="Print the plan as JSON.")


def _run(plan, dry_run: bool, yes: bool, force: bool, backup: str | None, json_out: bool,
         question: str) -> None:
    if json_out:
        emit_json({k: getattr(plan, k) for k in plan.__dataclass_fields__} | {"dry_run": dry_run})
    else:
        for line in plan.describe():
            typer.echo(line)
    if dry_run:
        if not json_out:
            typer.echo("dry run: nothing was changed")
        return
    confirm(question, yes)
    with progress("copying files", not json_out) as cb:
        apply_cf(plan, force=force, backup=backup, progress=cb)
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
         json_out: bool = JSON) -> None:
    """Enlarge the CF and reformat it (FAT16 below 512 MiB, FAT32 from there), keeping every
    file with its long name, attributes and timestamps. The old image stays untouched until
    the new one is complete and verified.

    Example: vdisk cf grow hd-cf.vmdk --size 4G --backup hd-cf.bak
    """
    plan = plan_cf(cf_disk, parse_size(size), keep_files)
    _run(plan, dry_run, yes, force, backup, json_out,
         f"reformat {cf_disk} at {plan.new_bytes} bytes" + ("" if keep_files else ", deleting its files"))


@cf_app.command("format")
@handle_errors
@takes_format("cf_disk")
def format_cmd(cf_disk: str = typer.Argument(..., help="The hd-cf disk."),
               dry_run: bool = DRY, yes: bool = YES, force: bool = FORCE, backup: str = BACKUP,
               json_out: bool = JSON) -> None:
    """Format the CF empty, as the appliance's Compact Flash/Format leaves it (MBR, one
    partition from LBA 2048, FAT16/FAT32 by size, label IPVACF). Deletes every file.

    Example: vdisk cf format hd-cf.vmdk --yes
    """
    plan = plan_cf(cf_disk, None, keep_files=False)
    _run(plan, dry_run, yes, force, backup, json_out, f"format {cf_disk}, deleting every file on it")
