"""What every command shares: the exit-code table, one-line errors, --json output,
progress bars and confirmation prompts. The only layer that prints."""
from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional, TypeVar

import typer

from ..errors import Finding, RepairError, VdiskError
from ..image import platform
from ..image.detect import FORMATS, forced_format
from . import _plain

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_ERROR = 3
EXIT_REPAIR_FAILED = 4
SCHEMA = _plain.SCHEMA

F = TypeVar("F", bound=Callable[..., Any])
_USAGE_ERRORS: tuple[type[BaseException], ...] = (typer.BadParameter.__mro__[1],)  # UsageError
# click's ClickException (usage errors and the like) and Abort, whichever click typer uses
CLICK_ERRORS: tuple[type[BaseException], ...] = (typer.BadParameter.__mro__[2], typer.Abort)
DEBUG = {"on": os.environ.get("VDISK_DEBUG", "") not in ("", "0")}
ALLOW_OUTSIDE = typer.Option(False, "--allow-outside",
                             help="Trust extent and parent paths outside the image's folder.")
MODE: dict[str, Any] = {"json": False, "quiet": False, "command": ""}
GLOBAL_FLAGS = {"--debug": "debug", "--quiet": "quiet", "-q": "quiet"}


def begin(argv: list[str]) -> list[str]:
    """Read the flags that count anywhere on the command line (--debug, --quiet/-q) and
    note --json for the error path; return the arguments without the global flags."""
    MODE.update(json=False, quiet=False, command="")
    DEBUG["on"] = os.environ.get("VDISK_DEBUG", "") not in ("", "0")
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            out += argv[i:]
            break
        flag = GLOBAL_FLAGS.get(arg)
        if flag == "debug":
            DEBUG["on"] = True
            continue
        if flag == "quiet":
            MODE["quiet"] = True
            continue
        MODE["json"] = MODE["json"] or arg == "--json"
        out.append(arg)
    return out


def error(message: str, hint: str | None = None, path: str | None = None,
          offset: int | None = None) -> None:
    """The one place an error is reported: a line on stderr (plus a hint); under --json also
    the error envelope on stdout (specs/json.md)."""
    if MODE["json"]:
        import json
        head = {"schema": SCHEMA, "command": MODE["command"]} if MODE.get("command") else \
            {"schema": SCHEMA}
        typer.echo(json.dumps({**head, "ok": False, "error": {
            "message": message, "hint": hint, "path": path, "offset": offset}}, indent=2))
    typer.echo(f"vdisk: error: {message}", err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)


def report_click_error(exc: BaseException) -> int:
    """A usage error from the parser: one line and a hint, exit 2 (Abort: cancelled, 1)."""
    if isinstance(exc, typer.Abort):
        error("cancelled")
        return EXIT_FINDINGS
    show_help = type(exc).__name__ == "NoArgsIsHelpError"
    ctx = getattr(exc, "ctx", None)
    if show_help:
        typer.echo(ctx.get_help() if ctx is not None else exc.format_message(), err=True)  # type: ignore[attr-defined]
        return EXIT_USAGE
    text = exc.format_message().replace("Value error, ", "")  # type: ignore[attr-defined]
    message, _sep, suggestion = text.partition(" Did you mean ")
    message, _sep, possible = message.partition(" (Possible options: ")
    suggestion = suggestion or possible.rstrip(")")
    message = message.rstrip(".") if message.endswith(".") and message.count(".") == 1 else message
    message = message[:1].lower() + message[1:]
    where = ctx.command_path if ctx is not None else "vdisk"
    hint = (f"did you mean {suggestion.rstrip('?')}?" if suggestion
            else f"'{where} -h' shows the usage")
    error(message, hint)
    code = getattr(exc, "exit_code", EXIT_USAGE)
    return EXIT_USAGE if code in (None, 2) or isinstance(exc, _USAGE_ERRORS) else int(code)


COMPRESSION_LEVEL = typer.Option(6, "--compression-level", min=1, max=9,
                                 help="zlib level 1 (fastest) to 9 (smallest) of the "
                                      "streamOptimized grains written (6, as qemu-img).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output file (never "
                         "done without it).")


def refuse_existing(path: str, overwrite: bool) -> None:
    """An output file that exists is replaced only with --overwrite."""
    if not overwrite and path != "-" and os.path.lexists(path):
        from ..errors import RefusedError
        raise RefusedError("exists; refusing to overwrite it", path=path,
                           hint="pass --overwrite to replace it")


def exit_code_for(exc: BaseException) -> int:
    """The one table from exception to exit code."""
    return EXIT_REPAIR_FAILED if isinstance(exc, RepairError) else EXIT_ERROR


def fail(message: str, code: int = EXIT_ERROR, hint: str | None = None,
         path: str | None = None, offset: int | None = None) -> typer.Exit:
    """Report one error (see error()); return the Exit to raise."""
    error(message, hint, path, offset)
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn every failure into one line on stderr and the table's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except _USAGE_ERRORS:
            raise   # a bad option value: the parser reports it with exit 2
        except KeyboardInterrupt:
            typer.echo("vdisk: interrupted", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # the reader (e.g. `| head`) went away: stop quietly, as cat and grep do
            try:
                devnull = platform.open_fd(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            raise typer.Exit(EXIT_OK) from None
        except BaseException as exc:  # noqa: BLE001 - the single place that catches all
            if DEBUG["on"]:
                traceback.print_exc()
            hint = getattr(exc, "hint", None)
            where = getattr(exc, "path", None) or getattr(exc, "filename", None)
            offset = getattr(exc, "offset", None)
            if isinstance(exc, VdiskError):
                msg = str(exc)
            elif isinstance(exc, OSError):
                msg = f"{exc.filename + ': ' if exc.filename else ''}{platform.describe(exc)}"
                if platform.held_open(exc):
                    hint = hint or platform.HELD_OPEN_HINT
            elif isinstance(exc, (MemoryError, RecursionError)):
                msg = f"input too large or too deeply nested ({type(exc).__name__})"
            else:
                msg = f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]
                hint = hint or "run with --debug for the traceback and report it"
            raise fail(msg, exit_code_for(exc), hint, None if where is None else str(where),
                       offset if isinstance(offset, int) else None) from None

    return wrapper  # type: ignore[return-value]


FORMAT_PARAM = "image_format"


ImageFormat = enum.Enum("ImageFormat", {f: f for f in FORMATS}, type=str)  # type: ignore[misc]


def _format_option() -> Any:
    return typer.Option(None, "--format", "-f", case_sensitive=False,
                        help="Read the image as raw, vmdk, qcow2 or vhdx, whatever its bytes suggest "
                             "(as qemu-img -f). Default: detected; other containers are "
                             "refused by name.")


def takes_format(*image_params: str) -> Callable[[F], F]:
    """Give a command the shared -f/--format option: the files named by `image_params`
    (parameter names) are opened as that format wherever the command opens them."""

    def deco(fn: F) -> F:
        sig = inspect.signature(fn)
        # `vdisk check` reports leftovers as findings itself
        reports_leftovers = fn.__module__.endswith(".vmdk") and fn.__name__ == "check"
        extra = inspect.Parameter(FORMAT_PARAM, inspect.Parameter.KEYWORD_ONLY,
                                  default=_format_option(), annotation=Optional[ImageFormat])  # noqa: UP045

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            chosen = kwargs.pop(FORMAT_PARAM, None)
            fmt = None if chosen is None else str(getattr(chosen, "value", chosen))
            bound = sig.bind_partial(*args, **kwargs)
            if not reports_leftovers:
                for name in image_params:
                    note_leftovers(bound.arguments.get(name))
            with contextlib.ExitStack() as stack:
                for name in image_params:
                    stack.enter_context(forced_format(bound.arguments.get(name), fmt))
                return fn(*args, **kwargs)

        params = [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
                  if p.kind == inspect.Parameter.POSITIONAL_ONLY else p
                  for p in sig.parameters.values()]
        wrapper.__signature__ = sig.replace(parameters=[*params, extra])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {**fn.__annotations__, FORMAT_PARAM: Optional[ImageFormat]}  # noqa: UP045
        return wrapper  # type: ignore[return-value]

    return deco


def envelope(obj: Any, ok: bool | None = None, findings: Any = None) -> dict[str, Any]:
    """The one JSON shape of every command (cli/_plain.py, specs/json.md)."""
    return _plain.envelope(obj, MODE.get("command", ""), ok, findings)


def emit_json(obj: Any, ok: bool | None = None, findings: Any = None) -> None:
    """Print a command's result in the JSON envelope (see envelope())."""
    typer.echo(_plain.json_text(obj, MODE.get("command", ""), ok, findings))


def report(text: str | None, data: dict[str, Any], ok: bool | None = None) -> None:
    """A command's result: `text` for people (nothing if None), `data` under --json."""
    if MODE["json"]:
        emit_json(data, ok)
    elif text is not None:
        typer.echo(text)


def say(text: str, err: bool = False) -> None:
    """Chatter around the result (plans, progress notes): not under --quiet or --json."""
    if not MODE["quiet"] and not MODE["json"]:
        typer.echo(text, err=err)


def show_plan(lines: str | list[str], dry_run: bool) -> None:
    """A plan printed before it is applied: the result of a dry run, chatter otherwise
    (not under --quiet). Callers print it only without --json."""
    for line in [lines] if isinstance(lines, str) else lines:
        if dry_run:
            typer.echo(line)
        else:
            say(line)


def print_findings(findings: list[Finding], prefix: str = "") -> None:
    for f in findings:
        typer.echo(_plain.finding_line(f, prefix))


_SHOWN: set[str] = set()


def note_leftovers(path: Any) -> None:
    """Every command that opens an image says what an interrupted run left beside it
    (`.NAME.vdisk-tmp-PID[...]`), with the command that removes it as printed."""
    if not isinstance(path, str) or not os.path.isfile(path):
        return
    from ..image.safe import leftovers_of, removal_command
    for tmp in leftovers_of(path):
        warn(f"{tmp} was left by an interrupted run; the next change to "
             f"{os.path.basename(path)} removes it (or: {removal_command(tmp)})")


def warn(message: str) -> None:
    """One warning line on stderr (each distinct message once per run)."""
    if message in _SHOWN:
        return
    _SHOWN.add(message)
    typer.echo(f"vdisk: warning: {message}", err=True)


@contextmanager
def progress(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A progress callback (done, total) drawn as a bar on a TTY, nothing otherwise."""
    if not enabled or MODE["quiet"] or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), transient=True,
                  console=__import__("rich.console").console.Console(stderr=True)) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def confirm(message: str, yes: bool) -> None:
    """Ask before destroying data: a prompt on a TTY; without a TTY, --yes is required."""
    if yes:
        return
    if not stdin_is_terminal():
        raise fail(f"{message}: refusing without confirmation", EXIT_USAGE,
                   "pass --yes to confirm when not running on a terminal")
    if not typer.confirm(f"{message}. Continue?", default=False):
        raise fail("cancelled", EXIT_USAGE)


def flag_pending_journal(image: str) -> Finding | None:
    """For read-only commands: an interrupted edit's undo journal beside `image` means the
    content may be half changed. Print it as an error finding on stderr and return it (the
    command then exits 1); it names the command that rolls the edit back."""
    from ..image.journal import pending_finding
    found = pending_finding(image)
    if found is not None:
        typer.echo(f"vdisk: {found.severity.value}: {found.code}: {found.message}", err=True)
    return found


def findings_exit(findings: list[Finding]) -> int:
    return EXIT_FINDINGS if any(f.severity.value != "info" for f in findings) else EXIT_OK


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, option: str = "--size") -> int:
    """'100M', '8G', '1.5G', '512K', '1048576' -> bytes (binary units, as qemu-img); a bad
    one is a usage error naming `option`."""
    t = text.strip().upper().replace("IB", "").rstrip("B") if text.strip().upper() not in ("", "B") else text
    unit = t[-1] if t and t[-1] in _UNITS else ""
    number = t[:-1] if unit else t
    try:
        value = float(number)
    except ValueError:
        raise typer.BadParameter(f"not a size: {text!r} (use e.g. 100M, 8G)",
                                 param_hint=f"'{option}'") from None
    n = int(value * _UNITS[unit])
    if n <= 0:
        raise typer.BadParameter(f"size must be positive: {text!r}", param_hint=f"'{option}'")
    return n


def show_library_warnings() -> None:
    """Library warnings (a lock overridden with --force, leftovers removed) become one
    `vdisk: warning:` line on stderr each."""
    import warnings as _warnings

    from ..image.safe import LeftoverWarning, LockOverrideWarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        warn(str(message))

    _warnings.showwarning = show
    for cat in (LockOverrideWarning, LeftoverWarning):
        _warnings.simplefilter("always", cat)


def reset_warnings() -> None:
    """Forget the warnings shown (each command invocation starts afresh)."""
    _SHOWN.clear()
