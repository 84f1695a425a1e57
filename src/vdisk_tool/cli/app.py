"""The `vdisk` command: one typer app, one module per command group."""
from __future__ import annotations

import sys

import typer

from .. import __version__
from . import common

app = typer.Typer(
    name="vdisk",
    help="Inspect and repair the virtual disks of the innovaphone Virtual Appliance (IPVA).\n\n"
         "Example: vdisk verify hd-boot.vmdk",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vdisk {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
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


from . import _select  # noqa: E402

load_groups(_select.ONLY)


def main() -> None:
    from .._crashpoints import install
    install()
    try:
        app()
    except SystemExit as exc:
        # click reports usage errors with exit 2, which matches the table.
        sys.exit(exc.code)
