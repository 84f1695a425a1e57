"""`vdisk flash`: the emulated flash on hd-flash (ipva-model.md §4)."""
from __future__ import annotations

import typer

from ..image.backup import check_backup_for
from ..image.disk import open_image
from ..image.edit import edit_image
from ..ipva import flash as fl
from ..ipva.locate import open_named
from ..ipva.role import Role
from ._role import ANY_DISK, VMX, guard
from .app import app
from .common import (
    ALLOW_OUTSIDE,
    OVERWRITE,
    confirm,
    emit_json,
    findings_exit,
    flag_pending_journal,
    handle_errors,
    print_findings,
    progress,
    refuse_existing,
    report,
    say,
    show_plan,
    takes_format,
    warn,
)

grp = typer.Typer(help="The flash disk hd-flash: info, backup, restore, factory reset.\n\n"
                       "Example: vdisk flash info hd-flash.vmdk --vmx ipva.vmx",
                  no_args_is_help=True)
app.add_typer(grp, name="flash")

DISK = typer.Argument(..., help="The flash disk (hd-flash.vmdk, any subformat, or a raw image).")
JSON = typer.Option(False, "--json", help="Print the result as JSON.")
DRY = typer.Option(False, "--dry-run", help="Show what would change; change nothing.")
BACKUP = typer.Option(None, "--backup", help="Keep the old file(s) here (a file, or a folder "
                                             "for several files).")
FORCE = typer.Option(False, "--force", help="Override a VMware lock (and, for reset, a snapshot "
                                            "child that depends on the disk).")
YES = typer.Option(False, "--yes", "-y", help="Do not ask before destroying the flash content.")


@grp.command()
@handle_errors
@takes_format("disk")
def info(disk: str = DISK,
         vmx: str | None = typer.Option(None, "--vmx", help="The VM's .vmx, for its memsize."),
         memsize: int | None = typer.Option(None, "--memsize", min=1,
                                               help="RAM in MB (instead of --vmx)."),
         json_out: bool = JSON, allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Blank or not, segments in use, and the directory the RAM allows.

    Flash segments are 64 KiB.

    The directory holds 224 segments at 64 MB of RAM and 900 from 192 MB on; sizes in
    between (and below 64 MB) are modelled: linear between those points, rounded down.
    Exit 1 when more segments are in use than the RAM allows.

    Example: vdisk flash info hd-flash.vmdk --vmx ipva.vmx
    """
    mem = memsize
    if vmx is not None and mem is None:
        mem = fl.read_memsize(vmx)
        if mem is None:
            warn(f"{vmx} has no memsize; the directory size is not shown")
    pending = flag_pending_journal(disk)
    with open_named(disk, allow_outside) as dev:
        res = fl.read_flash_info(dev, mem)
    if json_out:
        emit_json(res)
        raise typer.Exit(findings_exit(list(res.findings) + ([pending] if pending else [])))
    typer.echo(f"flash: {'blank' if res.blank else 'in use'}")
    typer.echo(f"segments in use: {res.segments_in_use} of {res.segments_total} "
               f"({fl.SEGMENT_BYTES // 1024} KiB each, first {res.region_bytes // fl.MiB} MiB)")
    if res.directory_segments is not None:
        typer.echo(f"flash directory at {res.memsize_mb} MB RAM: {res.directory_segments} "
                   "segments")
    print_findings(list(res.findings))
    raise typer.Exit(findings_exit(list(res.findings) + ([pending] if pending else [])))


@grp.command()
@handle_errors
@takes_format("disk")
def backup(disk: str = DISK,
           output: str = typer.Option(..., "--output", "-o", help="The raw flash image to write."),
           overwrite: bool = OVERWRITE, json_out: bool = JSON,
           allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Save the flash region (64 MiB) as a raw, sparse file: save the configuration first.

    Example: vdisk flash backup hd-flash.vmdk -o flash.img
    """
    refuse_existing(output, overwrite)
    with open_named(disk, allow_outside) as dev, progress("backup", not json_out) as cb:
        n = fl.write_backup(dev, output, cb)
    report(f"wrote {output}: {n} segment(s) in use", {"output": output, "segments_in_use": n})


@grp.command()
@handle_errors
@takes_format("disk")
def restore(disk: str = DISK,
            image: str = typer.Argument(..., help="A raw flash image from `vdisk flash backup`."),
            dry_run: bool = DRY, backup: str | None = BACKUP, force: bool = FORCE,
            yes: bool = YES, vmx: str | None = VMX, any_disk: bool = ANY_DISK,
            allow_outside: bool = ALLOW_OUTSIDE, json_out: bool = JSON) -> None:
    """Put a saved flash region back (the rest of the disk is kept).

    Example: vdisk flash restore hd-flash.vmdk flash.img
    """
    guard(disk, Role.FLASH, vmx, any_disk, allow_outside)
    check_backup_for(backup, disk, allow_outside)
    with fl.open_flash_image(image) as img:
        with open_image(disk, allow_outside=allow_outside) as dev:
            plan = fl.plan_restore(dev, img)
        segments = list(plan.segments_written)
        say(f"restore: {len(segments)} segment(s) change")
        result = {"path": disk, "image": image, "segments_written": segments, "dry_run": dry_run}
        if dry_run or not segments:
            report("dry run: nothing changed" if dry_run else "nothing to do", result)
            return
        confirm(f"this overwrites the flash of {disk}", yes)
        with edit_image(disk, force=force, backup=backup, allow_outside=allow_outside,
                        warnings=warn) as dev:
            fl.apply_restore(dev, img, fl.plan_restore(dev, img))
    report("done", result)


@grp.command()
@handle_errors
@takes_format("disk")
def reset(disk: str = DISK, dry_run: bool = DRY, backup: str | None = BACKUP,
          force: bool = FORCE, yes: bool = YES, json_out: bool = JSON, vmx: str | None = VMX,
          any_disk: bool = ANY_DISK, allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Factory reset: the disk becomes blank, with the same capacity, subformat, adapter,
    geometry and file names (new CID). Costs metadata only, whatever the data held.

    Refuses a locked disk and the parent of a snapshot child unless --force.
    Save the configuration first (`vdisk flash backup`).

    Example: vdisk flash reset hd-flash.vmdk --backup hd-flash.before-reset
    """
    guard(disk, Role.FLASH, vmx, any_disk, allow_outside)
    check_backup_for(backup, disk, allow_outside)
    plan = fl.plan_reset(disk, force=force, allow_outside=allow_outside)
    for w in plan.warnings:
        warn(w)
    if json_out:
        emit_json(plan)
    else:
        show_plan([f"reset: {plan.path} -> blank {plan.subformat}, {plan.size_bytes} bytes, "
                   f"adapter {plan.adapter}", *(f"  replace {f}" for f in plan.files)], dry_run)
    if dry_run:
        if not json_out:
            typer.echo("dry run: nothing changed")
        return
    confirm(f"this erases the flash (PBX configuration) of {disk}", yes)
    fl.apply_reset(plan, backup=backup, allow_outside=allow_outside)
    if not json_out:
        typer.echo("done")
