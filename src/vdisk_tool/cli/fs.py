"""FAT commands: ls, tree, get, put, rm, mkdir, mv, label, format, check — on any image vdisk
opens (raw or VMDK), partitioned or not, without root or loop devices."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from ..fs.check import check_volume
from ..fs.dirent import attr_string
from ..fs.format import format_volume
from ..fs.repair import repair_volume
from ..fs.transfer import extract
from ..fs.volume import FatVolume, open_volume
from ..image.backup import check_backup_for
from ..image.edit import edit_image
from ..ipva.locate import open_named
from ..ipva.role import Role
from ._role import ANY_DISK, VMX, guard
from .app import app
from .choices import FatBits
from .common import (
    ALLOW_OUTSIDE,
    EXIT_FINDINGS,
    EXIT_OK,
    EXIT_REPAIR_FAILED,
    EXIT_USAGE,
    OVERWRITE,
    confirm,
    emit_json,
    fail,
    flag_pending_journal,
    handle_errors,
    print_findings,
    progress,
    report,
    takes_format,
    warn,
)

fs_app = typer.Typer(help="FAT volumes inside disk images: list, read, write, format, check.",
                     no_args_is_help=True)
app.add_typer(fs_app, name="fs")

IMAGE = typer.Argument(..., help="A raw image or any VMDK.")
PART = typer.Option(None, "--partition", help="Partition number (1-4) when the disk has several.")
JSON = typer.Option(False, "--json", help="Print the result as JSON.")
DRY = typer.Option(False, "--dry-run", help="Show what would change; write nothing.")
BACKUP = typer.Option(None, "--backup", help="Keep the unchanged image files under this name.")
FORCE = typer.Option(False, "--force", help="Modify even though a .lck says the disk is in use.")
YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")


@contextmanager
def _read(image: str, partition: int | None, allow_outside: bool = False) -> Iterator[FatVolume]:
    """The volume, read-only; a pending undo journal is reported and makes the exit 1."""
    pending = flag_pending_journal(image)
    with open_named(image, allow_outside) as disk:
        yield open_volume(disk, partition, image)
    if pending is not None:
        raise typer.Exit(EXIT_FINDINGS)


@contextmanager
def _edit(image: str, partition: int | None, dry_run: bool, backup: str | None,
          force: bool, allow_outside: bool = False) -> Iterator[FatVolume]:
    if not dry_run:
        check_backup_for(backup, image, allow_outside)
    with edit_image(image, force=force, backup=backup, dry_run=dry_run,
                    allow_outside=allow_outside, warnings=warn) as disk:
        vol = open_volume(disk, partition, image)
        yield vol
        vol.flush()


def _size(n: int) -> str:
    return f"{n:>12,}"


def _done(verb: str, path: str, dry_run: bool) -> None:
    report(verb + path, {"path": path, "dry_run": dry_run})


@fs_app.command("ls")
@handle_errors
@takes_format("image")
def ls(image: str = IMAGE, path: str = typer.Argument("/", help="Directory or file on the volume."),
       long: bool = typer.Option(False, "-l", help="Long listing: attributes, size, date, 8.3 name."),
       json_out: bool = JSON, partition: int | None = PART,
       allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """List a directory of the FAT volume.

    Example: vdisk fs ls hd-boot.vmdk / -l
    """
    with _read(image, partition, allow_outside) as vol:
        info = vol.stat(path)
        entries = vol.listdir(path) if info.is_dir else [info]
    if json_out:
        emit_json({"path": path, "entries": [e.to_dict() for e in entries]})
        return
    for e in entries:
        name = e.name + ("/" if e.is_dir else "")
        if long:
            when = e.modified.strftime("%Y-%m-%d %H:%M:%S") if e.modified else "-" * 19
            typer.echo(f"{attr_string(e.attributes)} {_size(e.size_bytes)} {when} "
                       f"{e.short_name:<12} {name}")
        else:
            typer.echo(name)


@fs_app.command("tree")
@handle_errors
@takes_format("image")
def tree(image: str = IMAGE, json_out: bool = JSON, partition: int | None = PART,
         allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Show every file and directory of the volume.

    Example: vdisk fs tree hd-cf.vmdk
    """
    with _read(image, partition, allow_outside) as vol:
        items = [k for _d, kids in vol.walk("/") for k in kids]
        label = vol.label
    if json_out:
        emit_json({"label": label, "entries": [e.to_dict() for e in items]})
        return
    typer.echo(f"/ ({label or 'no label'})")
    for e in sorted(items, key=lambda k: k.path.casefold()):
        depth = e.path.count("/") - 1
        suffix = "/" if e.is_dir else f"  ({e.size_bytes} bytes)"
        typer.echo("  " * (depth + 1) + e.name + suffix)


@fs_app.command("get")
@handle_errors
@takes_format("image")
def get(image: str = IMAGE, path: str = typer.Argument(..., help="File or directory on the volume."),
        dest: str | None = typer.Argument(None, help="Host path; '-' writes to stdout."),
        partition: int | None = PART, overwrite: bool = OVERWRITE, json_out: bool = JSON,
        allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Copy a file (or a directory, recursively) out of the volume. Names are sanitised.

    Example: vdisk fs get hd-boot.vmdk /IPVA.BIN ipva.bin
    """
    with _read(image, partition, allow_outside) as vol:
        info = vol.stat(path)
        if dest == "-":
            if info.is_dir:
                raise typer.BadParameter("a directory cannot go to stdout")
            out = sys.stdout.buffer
            for piece in vol.iter_file(info):
                out.write(piece)
            out.flush()
            return
        with progress(f"get {info.name}") as cb:
            res = extract(vol, path, dest or ".", cb, overwrite=overwrite)
    for vpath, host in res.renamed:
        warn(f"{vpath}: saved as {host!r} (name not safe on the host)")
    report(f"{res.files} file(s), {res.bytes} bytes",
           {"path": path, "dest": dest or ".", "files": res.files, "bytes": res.bytes,
            "renamed": [{"path": v, "host": h} for v, h in res.renamed]})


@fs_app.command("cat")
@handle_errors
@takes_format("image")
def cat(image: str = IMAGE, path: str = typer.Argument(..., help="File on the volume."),
        partition: int | None = PART, allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Write a file of the volume to stdout.

    Example: vdisk fs cat hd-cf.vmdk /LOGS/SYSLOG.TXT | less
    """
    with _read(image, partition, allow_outside) as vol:
        info = vol.stat(path)
        if info.is_dir:
            raise fail(f"{path}: is a directory", EXIT_USAGE, "`vdisk fs ls` lists it")
        out = sys.stdout.buffer
        for piece in vol.iter_file(info):
            out.write(piece)
        out.flush()


@fs_app.command("df")
@handle_errors
@takes_format("image")
def df(image: str = IMAGE, json_out: bool = JSON, partition: int | None = PART,
       allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Show the volume's size, used and free space and its clusters (as mdir's summary).

    Example: vdisk fs df hd-cf.vmdk
    """
    with _read(image, partition, allow_outside) as vol:
        lay = vol.layout
        free = vol.fat.count_free()
        label = vol.label
    cb, total = lay.cluster_bytes, lay.cluster_count
    data = {"label": label or None, "fat_type": lay.fat_type, "size_bytes": total * cb,
            "used_bytes": (total - free) * cb, "free_bytes": free * cb, "cluster_bytes": cb,
            "clusters_total": total, "clusters_used": total - free, "clusters_free": free}
    pct = 100 * (total - free) // total if total else 0
    report(f"{'volume':<12} {'type':<6} {'size':>14} {'used':>14} {'free':>14} use%\n"
           f"{label or '-':<12} FAT{lay.fat_type:<3} {total * cb:>14} {(total - free) * cb:>14} "
           f"{free * cb:>14} {pct:>3}%\n"
           f"clusters: {total} of {cb} bytes, {total - free} used, {free} free", data)


@fs_app.command("put")
@handle_errors
@takes_format("image")
def put(image: str = IMAGE, src: str = typer.Argument(..., help="Host file or directory; '-' "
                                                    "reads stdin."),
        path: str = typer.Argument(..., help="Target path on the volume."),
        partition: int | None = PART, dry_run: bool = DRY,
        backup: str | None = BACKUP, force: bool = FORCE, json_out: bool = JSON,
        allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Copy a host file (or directory, recursively) onto the volume; replaces a file.

    Example: vdisk fs put hd-boot.vmdk ipva.bin /IPVA.BIN
    """
    with _edit(image, partition, dry_run, backup, force, allow_outside) as vol:
        if src == "-":
            if path.endswith("/") or (vol.exists(path) and vol.stat(path).is_dir):
                raise fail("stdin has no name: give the file's path on the volume", EXIT_USAGE)
            vol.write_file(path, sys.stdin.buffer)
        elif os.path.isdir(src):
            for root, _dirs, files in os.walk(src):
                rel = os.path.relpath(root, src)
                base = path.rstrip("/") + ("" if rel == "." else "/" + rel.replace(os.sep, "/"))
                if base:
                    vol.mkdir(base, parents=True, exist_ok=True)
                for name in sorted(files):
                    with open(os.path.join(root, name), "rb") as f:
                        vol.write_file(f"{base}/{name}", f)
        else:
            if path.endswith("/") or (vol.exists(path) and vol.stat(path).is_dir):
                path = path.rstrip("/") + "/" + os.path.basename(src)
            with open(src, "rb") as f:
                vol.write_file(path, f)
    _done("would write " if dry_run else "wrote ", path, dry_run)


@fs_app.command("rm")
@handle_errors
@takes_format("image")
def rm(image: str = IMAGE, path: str = typer.Argument(..., help="File or directory on the volume."),
       recursive: bool = typer.Option(False, "-r", "--recursive", help="Remove a directory tree."),
       partition: int | None = PART, dry_run: bool = DRY, backup: str | None = BACKUP,
       force: bool = FORCE, yes: bool = YES, json_out: bool = JSON,
       allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Delete a file or directory from the volume.

    Example: vdisk fs rm hd-cf.vmdk /old -r --yes
    """
    if recursive and not dry_run:
        confirm(f"remove {path} and everything under it", yes)
    with _edit(image, partition, dry_run, backup, force, allow_outside) as vol:
        vol.remove(path, recursive=recursive)
    _done("would remove " if dry_run else "removed ", path, dry_run)


@fs_app.command("mkdir")
@handle_errors
@takes_format("image")
def mkdir(image: str = IMAGE, path: str = typer.Argument(..., help="New directory."),
          parents: bool = typer.Option(False, "-p", "--parents", help="Create missing parents."),
          partition: int | None = PART, dry_run: bool = DRY, backup: str | None = BACKUP,
          force: bool = FORCE, json_out: bool = JSON,
          allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Create a directory on the volume.

    Example: vdisk fs mkdir hd-cf.vmdk /logs/old -p
    """
    with _edit(image, partition, dry_run, backup, force, allow_outside) as vol:
        vol.mkdir(path, parents=parents)
    _done("would create " if dry_run else "created ", path, dry_run)


@fs_app.command("mv")
@handle_errors
@takes_format("image")
def mv(image: str = IMAGE, src: str = typer.Argument(..., help="Existing path."),
       dst: str = typer.Argument(..., help="New path."), partition: int | None = PART,
       dry_run: bool = DRY, backup: str | None = BACKUP, force: bool = FORCE,
       json_out: bool = JSON, allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Rename or move a file or directory on the volume.

    Example: vdisk fs mv hd-cf.vmdk /a.txt /old/a.txt
    """
    with _edit(image, partition, dry_run, backup, force, allow_outside) as vol:
        if vol.exists(dst) and vol.stat(dst).is_dir:
            dst = dst.rstrip("/") + "/" + vol.stat(src).name
        vol.rename(src, dst)
    report(("would move " if dry_run else "moved ") + f"{src} -> {dst}",
           {"path": src, "new_path": dst, "dry_run": dry_run})


@fs_app.command("label")
@handle_errors
@takes_format("image")
def label(image: str = IMAGE, new: str | None = typer.Argument(None, help="New label ('' removes it)."),
          partition: int | None = PART, dry_run: bool = DRY, backup: str | None = BACKUP,
          force: bool = FORCE, json_out: bool = JSON,
          allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Show or set the volume label. The label is the root directory's label entry, as
    Windows and fatlabel read it (nothing when it is absent or erased); setting it writes
    that entry and the boot sector's copy.

    Example: vdisk fs label hd-boot.vmdk IPVABOOT
    """
    if new is None:
        with _read(image, partition, allow_outside) as vol:
            report(vol.label, {"label": vol.label})   # the root directory's label entry
        return
    with _edit(image, partition, dry_run, backup, force, allow_outside) as vol:
        vol.set_label(new)
    report(("would set label " if dry_run else "label ") + repr(new.upper()),
           {"label": new.upper(), "dry_run": dry_run})


@fs_app.command("format")
@handle_errors
@takes_format("image")
def fmt(image: str = IMAGE,
        fat: FatBits | None = typer.Option(None, "--fat",
                                           help="Default: 32 from 512 MiB on, else 16."),
        label_: str = typer.Option("", "--label", help="Volume label."),
        no_partition: bool = typer.Option(False, "--no-partition", help="Volume at sector 0, no MBR."),
        active: bool = typer.Option(False, "--active", help="Mark the partition active (bootable)."),
        dry_run: bool = DRY, backup: str | None = BACKUP, force: bool = FORCE,
        yes: bool = YES, vmx: str | None = VMX, any_disk: bool = ANY_DISK,
        allow_outside: bool = ALLOW_OUTSIDE, json_out: bool = JSON) -> None:
    """Make a new, empty FAT volume (erases what the image holds). A disk that holds a
    crash-dump store or flash content is refused (the FAT roles are boot and CF).

    Example: vdisk fs format hd-cf.vmdk --label IPVACF --yes
    """
    guard(image, (Role.CF, Role.BOOT), vmx, any_disk, allow_outside)
    if not dry_run:
        check_backup_for(backup, image, allow_outside)
        confirm(f"format {image} (its content is lost)", yes)
    with edit_image(image, force=force, backup=backup, dry_run=dry_run,
                    allow_outside=allow_outside, warnings=warn) as disk:
        res = format_volume(disk, None if fat is None else int(fat.value), label_,
                            partition=not no_partition, active=active)
    lay = res.layout
    where = f"partition 1 at LBA {res.partition.first_lba}" if res.partition else "sector 0"
    report(("would format " if dry_run else "formatted ") +
           f"FAT{lay.fat_type} on {where}: {lay.cluster_count} clusters of "
           f"{lay.cluster_bytes} bytes" + (f", label {res.label}" if res.label else ""),
           {"fat_type": lay.fat_type, "cluster_count": lay.cluster_count,
            "cluster_bytes": lay.cluster_bytes, "label": res.label or None,
            "partition_lba": res.partition.first_lba if res.partition else None,
            "dry_run": dry_run})


@fs_app.command("check")
@handle_errors
@takes_format("image")
def check(image: str = IMAGE, json_out: bool = JSON,
          repair: bool = typer.Option(False, "--repair", help="Repair what can be repaired."),
          discard_lost: bool = typer.Option(
              False, "--discard-lost",
              help="Free lost cluster chains instead of saving them as /FSCKnnnn.REC files."),
          partition: int | None = PART, dry_run: bool = DRY, backup: str | None = BACKUP,
          force: bool = FORCE, yes: bool = YES, allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Check the FAT volume (FAT copies, chains, directory entries, long and duplicate
    names, dot entries, label, dirty flags, FSInfo, backup boot sector); with --repair fix
    what was found, crash-safely. Lost chains are saved as /FSCK0000.REC, ... unless
    --discard-lost. A repair asks first on a terminal (--yes skips the question).

    Example: vdisk fs check hd-cf.vmdk --repair --yes --backup hd-cf.old.vmdk
    """
    if not repair or (not dry_run and not yes):
        from ..image.journal import pending_finding
        pending = pending_finding(image) if not repair else None
        with open_named(image, allow_outside) as disk:
            res = check_volume(disk, partition, image)
        findings = ([pending] if pending else []) + list(res.findings)
        if not repair or not res.findings:
            if json_out:
                emit_json({"findings": findings, "trusted_fat": res.fat_copy + 1,
                           "clean": not findings})
            else:
                print_findings(findings)
                if not findings:
                    typer.echo("clean")
            raise typer.Exit(EXIT_FINDINGS if findings else EXIT_OK)
        confirm(f"repair {len(res.findings)} finding(s) on {image}", yes)
    with edit_image(image, force=force, backup=backup, dry_run=dry_run,
                    allow_outside=allow_outside, warnings=warn) as disk:
        rep = repair_volume(disk, partition, image, discard_lost=discard_lost)
    if json_out:
        emit_json(dict(rep.to_dict(), dry_run=dry_run), ok=not rep.remaining, findings=rep.found)
    else:
        print_findings(rep.found)
        for a in rep.actions:
            typer.echo(("would " if dry_run else "did: ") + a)
        if rep.remaining:
            typer.echo("still wrong after the repair:")
            print_findings(rep.remaining, prefix="  ")
        elif rep.found:
            typer.echo("repaired" if not dry_run else "a repair would leave the volume clean")
        else:
            typer.echo("clean")
    raise typer.Exit(EXIT_REPAIR_FAILED if rep.remaining else EXIT_OK)
