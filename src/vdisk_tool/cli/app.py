"""The `vdisk` command: one typer app, one module per command group."""
from __future__ import annotations

import functools
import re
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from .. import __version__
from . import _coerce, common


class VdiskGroup(TyperGroup):
    """The root command: plain help with one-line summaries and named metavars, and one
    error path for usage errors (one line + hint, exit 2; JSON on stdout under --json)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,  # noqa: ANN001
             **extra):  # noqa: ANN003
        argv = list(sys.argv[1:] if args is None else args)
        argv = common.begin(argv)
        polish(self)
        try:
            rv = super().main(args=argv, prog_name=prog_name or "vdisk", complete_var=complete_var,
                              standalone_mode=False, **extra)
        except common.CLICK_ERRORS as exc:
            rv = common.report_click_error(exc)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else common.EXIT_OK)


# What a value is, by parameter name; otherwise integers are N and the rest the name itself.
METAVARS = {"size": "SIZE", "cf_size": "SIZE", "mac": "MAC", "backup": "PATH", "output": "PATH",
            "firmware": "PATH", "vmx": "PATH", "text": "PATH", "all_dir": "DIR", "when": "SECONDS",
            "timestamp": "SECONDS", "memsize": "MB", "section": "NAME=FILE", "hw_version": "N",
            "align": "BYTES", "slot_sectors": "N", "sequence": "N", "partition": "N",
            "new": "LABEL", "label_": "LABEL", "version": "TEXT"}


def _one_line(text: str | None) -> str:
    """The first sentence of a help text, as one line (click wraps it to the terminal)."""
    para = " ".join((text or "").strip().split("\n\n", 1)[0].split())
    para = re.sub(r" \([^()]*\)", "", para)        # details in brackets stay in -h
    head = re.split(r"(?<=[.?!]) |: |; ", para, maxsplit=1)[0]
    return head.rstrip(".")


def _choices(param) -> list[str] | None:  # noqa: ANN001 - a click parameter of whichever click
    td = getattr(param, "type_descriptor", None)
    found = td.choices if td is not None else getattr(getattr(param, "type", None), "choices", None)
    return None if found is None else [str(getattr(c, "value", c)) for c in found]


def _metavar(param) -> str | None:  # noqa: ANN001
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    td = getattr(param, "type_descriptor", None)
    is_int = td.annotation is int if td is not None else getattr(param.type, "name", "") == "integer"
    name = param.name or ""
    return METAVARS.get(name) or ("N" if is_int else name.strip("_").upper().replace("_", "-"))


_PLAIN: dict[type, type] = {}


def _plain_argument(param) -> None:  # noqa: ANN001
    """Show an argument as NAME in the usage line and the argument list (not `{name}` and
    `name <str>`); choices stay visible. Only typer's own argument class needs it."""
    cls = type(param)
    if not hasattr(cls, "_usage_display_name"):
        return
    if cls not in _PLAIN:
        def usage(self) -> str:  # noqa: ANN001
            name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
            return name + ("..." if self.nargs != 1 else "")

        def shown_type(self, ctx) -> str | None:  # noqa: ANN001
            return None

        _PLAIN[cls] = type(cls.__name__, (cls,), {"_usage_display_name": usage,
                                                  "display_type_rich": shown_type})
    param.__class__ = _PLAIN[cls]


def _named(callback, name: str):  # noqa: ANN001, ANN202
    """Run a command's callback with its name noted for the JSON envelope."""
    @functools.wraps(callback)
    def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if name or not common.MODE["command"]:
            common.MODE["command"] = name
        return callback(*args, **kwargs)
    run._vdisk_named = True  # type: ignore[attr-defined]
    return run


def polish(group) -> None:  # noqa: ANN001
    """Plain help (no rich boxes), one-line summaries in group listings and metavars that
    say what a value is, for every command however it was added (walks the click tree)."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(group, ())]
    while stack:
        cmd, path = stack.pop()
        if cmd.callback is not None and not getattr(cmd.callback, "_vdisk_named", False):
            cmd.callback = _named(cmd.callback, " ".join(path))
        if hasattr(cmd, "rich_markup_mode"):
            cmd.rich_markup_mode = None
        if not cmd.short_help:
            cmd.short_help = _one_line(cmd.help)
        _coerce.install_on_help(cmd)
        for param in cmd.params:
            _coerce.install(param)
            if param.param_type_name == "argument":
                _plain_argument(param)
            values = _choices(param)
            if values and "One of:" not in (param.help or "") and hasattr(param, "help"):
                param.help = f"{param.help or ''} One of: {', '.join(values)}.".strip()
            if param.metavar is None and (name := _metavar(param)) is not None:
                param.metavar = name
        stack.extend((sub, (*path, name)) for name, sub in getattr(cmd, "commands", {}).items())


app = typer.Typer(
    name="vdisk",
    cls=VdiskGroup,
    help="Inspect and repair the virtual disks of the innovaphone Virtual Appliance (IPVA).\n\n"
         "Example: vdisk verify hd-boot.vmdk",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vdisk {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors (anywhere on the "
                               "line; also VDISK_DEBUG=1)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no chatter: only "
                               "the result or the error (anywhere on the line)."),
    version: bool | None = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
) -> None:
    """vdisk: VMDK, FAT and IPVA appliance disks, inspected and repaired on image files only."""
    if debug:
        common.DEBUG["on"] = True
    common.show_library_warnings()
    common.reset_warnings()


# Command groups register themselves on `app` when imported. The `vdisk` entry point
# (cli/main.py) imports only the group a command line needs, to start faster.
GROUP_MODULES = ("vmdk", "dump", "flash", "firmware", "bundle", "fs", "cf")


def load_groups(only: tuple[str, ...] | None = None) -> None:
    import importlib
    for name in GROUP_MODULES if only is None else only:
        importlib.import_module(f".{name}", __package__)


def keep_only(word: str | None) -> None:
    """Build only the top-level command the line names (the others' parameters are never
    looked at: start-up); groups and anything else stay as they are."""
    if word is None:
        return
    named = [c for c in app.registered_commands
             if (c.name or getattr(c.callback, "__name__", "").replace("_", "-")) == word]
    if len(named) == 1:
        app.registered_commands = named


from . import _select  # noqa: E402

load_groups(_select.ONLY)
if _select.ONLY is not None:
    keep_only(_select.WORD)


def main() -> None:
    from .._crashpoints import install
    install()
    try:
        app()
    except SystemExit as exc:
        # click reports usage errors with exit 2, which matches the table.
        sys.exit(exc.code)
