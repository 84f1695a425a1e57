"""`vdisk dump`: the crash-dump store on hd-dump (specs/dump-store.md)."""
from __future__ import annotations

import os
import sys
from datetime import datetime, timezone

import typer

from .. import clock
from ..errors import RefusedError
from ..formats.dump_store import MAX_SLOT_SECTORS
from ..image.backup import check_backup_for
from ..image.disk import open_image
from ..image.edit import edit_image
from ..ipva import dump as dp
from ..ipva.locate import open_named
from ..ipva.role import Role
from ._role import ANY_DISK, VMX, guard
from .app import app
from .common import (
    ALLOW_OUTSIDE,
    EXIT_ERROR,
    EXIT_FINDINGS,
    EXIT_OK,
    OVERWRITE,
    confirm,
    emit_json,
    fail,
    findings_exit,
    flag_pending_journal,
    handle_errors,
    print_findings,
    refuse_existing,
    report,
    say,
    takes_format,
    warn,
)

grp = typer.Typer(help="The crash-dump store on hd-dump: list, extract, clear, init, write.\n\n"
                       "Example: vdisk dump list hd-dump.vmdk",
                  no_args_is_help=True)
app.add_typer(grp, name="dump")

DISK = typer.Argument(..., help="The dump disk (hd-dump.vmdk, any subformat, or a raw image).")
JSON = typer.Option(False, "--json", help="Print the result as JSON.")
DRY = typer.Option(False, "--dry-run", help="Show what would change; change nothing.")
BACKUP = typer.Option(None, "--backup", help="Keep the old file(s) here (a file, or a folder "
                                             "for several files).")
FORCE = typer.Option(False, "--force", help="Modify the disk even though a VMware lock exists.")
YES = typer.Option(False, "--yes", "-y", help="Do not ask before deleting crash dumps.")


def _when(t: int) -> str:
    try:
        return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"@{t}"


def _read(path: str, allow_outside: bool = False) -> dp.DumpStore:
    with open_named(path, allow_outside) as disk:
        return dp.read_store(disk)


@grp.command("list")
@handle_errors
@takes_format("disk")
def list_cmd(disk: str = DISK, json_out: bool = JSON,
             all_slots: bool = typer.Option(False, "--all-slots", help="Also list empty slots."),
             allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """List the crash dumps: slot, sequence, time, build, version, size, status.

    Status is good, torn (the appliance died while writing it) or empty. Exit 1 when a
    record is torn or the store header is damaged (records are then found by scanning).

    Example: vdisk dump list hd-dump.vmdk --json
    """
    pending = flag_pending_journal(disk)
    store = _read(disk, allow_outside)
    rows = list(store.used)
    if all_slots:
        have = {r.slot for r in rows}
        rows += [dp.DumpRecord(i, 0, dp.RecordStatus.EMPTY, 0, 0, 0, "", 0, 0)
                 for i in range(store.slot_count) if i not in have]
        rows.sort(key=lambda r: r.slot)
    if json_out:
        d = store.to_dict()
        d["records"] = [r.to_dict() for r in rows]
        emit_json(d)
        raise typer.Exit(findings_exit(list(store.findings) + ([pending] if pending else [])))
    head = "ok" if store.header_ok else ("missing" if not store.header_present else "damaged")
    nxt = "" if store.next_slot is None else f", next slot {store.next_slot}"
    typer.echo(f"store: header {head}, slot size {store.slot_sectors} sectors, "
               f"{store.slot_count} slots{nxt}" + (" (layout found by scanning)" if store.scanned
                                                   and store.used else ""))
    if rows:
        typer.echo(f"{'slot':>4} {'sequence':>8}  {'time (UTC)':<19}  {'build':>7}  "
                   f"{'version':<16} {'bytes':>8}  status")
        for r in rows:
            when = _when(r.time) if r.status != dp.RecordStatus.EMPTY else "-"
            seq = str(r.sequence) if r.status != dp.RecordStatus.EMPTY else "-"
            typer.echo(f"{r.slot:>4} {seq:>8}  {when:<19}  {r.build:>7}  {r.version[:16]:<16} "
                       f"{r.payload_size:>8}  {r.status.value}")
    typer.echo(f"{len(store.used)} record(s): {len(store.good)} good, {len(store.torn)} torn; "
               f"{store.slot_count - len(store.used)} empty slot(s)")
    print_findings(list(store.findings))
    raise typer.Exit(findings_exit(list(store.findings) + ([pending] if pending else [])))


def _pick(store: dp.DumpStore, sequence: int | None, salvage: bool) -> dp.DumpRecord:
    if sequence is not None:
        found = sorted(store.by_sequence(sequence), key=lambda r: r.status != dp.RecordStatus.GOOD)
        if not found:
            raise RefusedError(f"no record with sequence {sequence}",
                               hint="`vdisk dump list` shows the sequences")
        return found[0]
    rec = store.newest if salvage else store.newest_good
    if rec is None:
        hint = "pass --salvage to take a torn record's bytes" if store.torn else None
        raise RefusedError("the store holds no good crash dump", hint=hint)
    return rec


def _emit(data: bytes, out: str) -> None:
    if out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    with open(out, "wb") as f:
        f.write(data)


@grp.command()
@handle_errors
@takes_format("disk")
def extract(disk: str = DISK,
            output: str = typer.Option("crash_dump.txt", "--output", "-o",
                                       help="Output file; '-' writes to stdout."),
            sequence: int | None = typer.Option(None, "--sequence", help="Take this record."),
            all_dir: str | None = typer.Option(None, "--all", help="Write every good record "
                                                  "to this folder as crash_dump_<sequence>.txt "
                                                  "(with --salvage torn ones too, as "
                                                  "crash_dump_<sequence>.torn.txt)."),
            salvage: bool = typer.Option(False, "--salvage", help="Also take torn records "
                                         "(their bytes as they are, with a warning)."),
            allow_outside: bool = ALLOW_OUTSIDE,
            overwrite: bool = OVERWRITE, json_out: bool = JSON) -> None:
    """Write a crash dump out as text: the newest good record unless told otherwise.

    With --salvage and no --sequence, the newest record is taken even if it is torn.
    Exit 1 (with a warning) when a torn record newer than the one written was skipped.

    Example: vdisk dump extract hd-dump.vmdk -o crash_dump.txt
    """
    if all_dir is not None and sequence is not None:
        raise fail("--all and --sequence exclude each other", 2)
    with open_named(disk, allow_outside) as dev:
        store = dp.read_store(dev)
        for f in store.findings:
            if f.code.startswith("dump.header") and f.severity.value == "error":
                warn(f"{f.message} (records found by scanning)")
        if all_dir is not None:
            os.makedirs(all_dir, exist_ok=True)
            written: list[dict[str, object]] = []
            skipped = 0
            seqs = [r.sequence for r in store.used]
            for rec in sorted(store.used, key=lambda r: (r.sequence, r.slot)):
                if rec.status == dp.RecordStatus.TORN and not salvage:
                    warn(f"record {rec.sequence} (slot {rec.slot}) is torn: skipped; "
                         "--salvage writes it")
                    skipped += 1
                    continue
                name = f"crash_dump_{rec.sequence}" + (
                    f"-slot{rec.slot}" if seqs.count(rec.sequence) > 1 else "") + (
                    ".torn" if rec.status == dp.RecordStatus.TORN else "") + ".txt"
                refuse_existing(os.path.join(all_dir, name), overwrite)
                _emit(dp.read_payload(dev, rec, salvage), os.path.join(all_dir, name))
                if rec.status == dp.RecordStatus.TORN:
                    warn(f"record {rec.sequence} is torn ({rec.problem}); wrote its bytes as "
                         f"they are to {name}")
                written.append({"sequence": rec.sequence, "slot": rec.slot,
                                "status": rec.status.value, "file": os.path.join(all_dir, name)})
            say(f"wrote {len(written)} crash dump(s) to {all_dir}", err=True)
            if json_out:
                emit_json({"dir": all_dir, "records": written, "skipped_torn": skipped},
                          ok=not skipped)
            raise typer.Exit(EXIT_FINDINGS if skipped else EXIT_OK)
        rec = _pick(store, sequence, salvage)
        refuse_existing(output, overwrite)
        data = dp.read_payload(dev, rec, salvage)
    newest = store.newest
    skipped = sequence is None and newest is not None and newest.sequence > rec.sequence
    if skipped:
        assert newest is not None
        warn(f"the newest record {newest.sequence} (slot {newest.slot}) is torn; wrote record "
             f"{rec.sequence} instead (--salvage takes the torn one)")
    if rec.status == dp.RecordStatus.TORN:
        warn(f"record {rec.sequence} (slot {rec.slot}) is torn ({rec.problem}); "
             "its bytes are written as they are and may be incomplete")
    _emit(data, output)
    if output != "-":
        say(f"wrote record {rec.sequence} ({len(data)} bytes, {_when(rec.time)} UTC) "
            f"to {output}", err=True)
        if json_out:
            emit_json({"output": output, "sequence": rec.sequence, "slot": rec.slot,
                       "status": rec.status.value, "bytes": len(data),
                       "skipped_torn": newest.sequence if skipped and newest else None},
                      ok=not skipped)
    raise typer.Exit(EXIT_FINDINGS if skipped else EXIT_OK)


def _clear(disk: str, slot_sectors: int | None, dry_run: bool, backup: str | None,
           force: bool, yes: bool, verb: str, role: tuple[str | None, bool, bool]) -> None:
    vmx, any_disk, allow_outside = role
    guard(disk, Role.DUMP, vmx, any_disk, allow_outside)
    check_backup_for(backup, disk, allow_outside)
    with open_image(disk, allow_outside=allow_outside) as dev:
        plan = dp.plan_clear(dev, slot_sectors)
    say(f"{verb}: empty store, slot size {plan.slot_sectors} sectors, {plan.slot_count} "
        f"slots; {plan.records_lost} record(s) deleted, {len(plan.zeroed_slots)} slot(s) "
        "zeroed")
    result = {"path": disk, "slot_sectors": plan.slot_sectors, "slot_count": plan.slot_count,
              "records_deleted": plan.records_lost, "slots_zeroed": len(plan.zeroed_slots),
              "dry_run": dry_run}
    if dry_run:
        report("dry run: nothing changed", result)
        return
    confirm(f"this writes an empty store on {disk}, deleting its {plan.records_lost} crash "
            "dump(s)", yes)
    with edit_image(disk, force=force, backup=backup, allow_outside=allow_outside,
                    warnings=warn) as dev:
        dp.apply_clear(dev, dp.plan_clear(dev, plan.slot_sectors))
    report("done", result)


@grp.command()
@handle_errors
@takes_format("disk")
def init(disk: str = DISK,
         slot_sectors: int | None = typer.Option(None, "--slot-sectors",
                                                    help="Slot size (default: keep, else 2048)."),
         dry_run: bool = DRY, backup: str | None = BACKUP, force: bool = FORCE,
         yes: bool = YES, vmx: str | None = VMX, any_disk: bool = ANY_DISK,
         allow_outside: bool = ALLOW_OUTSIDE, json_out: bool = JSON) -> None:
    """Write an empty store (a new header; any records are deleted).

    Example: vdisk dump init hd-dump.vmdk
    """
    _clear(disk, slot_sectors, dry_run, backup, force, yes, "init", (vmx, any_disk, allow_outside))


@grp.command()
@handle_errors
@takes_format("disk")
def clear(disk: str = DISK, dry_run: bool = DRY, backup: str | None = BACKUP,
          force: bool = FORCE, yes: bool = YES, vmx: str | None = VMX,
          any_disk: bool = ANY_DISK, allow_outside: bool = ALLOW_OUTSIDE,
          json_out: bool = JSON) -> None:
    """Delete every crash dump (the store stays, empty, with its slot size).

    Example: vdisk dump clear hd-dump.vmdk --yes
    """
    _clear(disk, None, dry_run, backup, force, yes, "clear", (vmx, any_disk, allow_outside))


@grp.command()
@handle_errors
@takes_format("disk")
def write(disk: str = DISK,
          text: str = typer.Option(..., "--text", help="The crash_dump.txt to store ('-' = stdin)."),
          build: int = typer.Option(0, "--build", min=0, max=0xFFFFFFFF, help="Firmware build."),
          version: str = typer.Option("", "--version", help="Firmware version text (ASCII)."),
          when: int | None = typer.Option(None, "--time", help="Seconds since 1970 UTC "
                                             "(default: now)."),
          dry_run: bool = DRY, backup: str | None = BACKUP, force: bool = FORCE,
          yes: bool = YES, vmx: str | None = VMX, any_disk: bool = ANY_DISK,
          allow_outside: bool = ALLOW_OUTSIDE, json_out: bool = JSON) -> None:
    """Append a record the way the appliance does (for samples, tests and labs). When the
    ring is full the oldest record is overwritten (asked first).

    \b
    Example: vdisk dump write hd-dump.vmdk --text crash_dump.txt --build 90468 --version "13r2"
    """
    limit = MAX_SLOT_SECTORS * 512 + 1          # bounded: a slot never holds more
    if text == "-":
        payload = sys.stdin.buffer.read(limit)
    else:
        with open(text, "rb") as f:
            payload = f.read(limit)
    stamp = clock.unix_time() if when is None else when
    guard(disk, Role.DUMP, vmx, any_disk, allow_outside)
    check_backup_for(backup, disk, allow_outside)
    with open_image(disk, allow_outside=allow_outside) as dev:
        store = dp.read_store(dev)
    if not store.header_ok:
        raise RefusedError("the store header is missing or damaged; not appending to it",
                           hint="run `vdisk dump init` first (it deletes the records)")
    seq = max((r.sequence for r in store.used), default=0) + 1
    say(f"write: record {seq} ({len(payload)} bytes) into slot {store.next_slot}")
    result = {"path": disk, "sequence": seq, "slot": store.next_slot, "bytes": len(payload),
              "dry_run": dry_run}
    if dry_run:
        report("dry run: nothing changed", result)
        return
    if any(r.slot == store.next_slot for r in store.used):
        confirm(f"slot {store.next_slot} of {disk} holds a crash dump; this overwrites it", yes)
    with edit_image(disk, force=force, backup=backup, allow_outside=allow_outside,
                    warnings=warn) as dev:
        rec = dp.write_record(dev, payload, build=build, version=version, time=stamp)
    if rec.status != dp.RecordStatus.GOOD:
        raise fail(f"the record reads back as {rec.status.value}", EXIT_ERROR)
    report("done", result)
