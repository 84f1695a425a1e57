"""Which command-group modules the running command line needs (None: all of them)."""
from __future__ import annotations

ONLY: tuple[str, ...] | None = None
WORD: str | None = None     # the command word of the line (None: help, unknown, none)

ROUTES = {
    "info": "vmdk", "map": "vmdk", "compare": "vmdk", "check": "vmdk", "create": "vmdk",
    "convert": "vmdk", "grow": "vmdk", "verify": "firmware", "firmware": "firmware",
    "boot": "firmware", "fs": "fs", "cf": "cf", "dump": "dump", "flash": "flash",
    "bundle": "bundle",
}


def route(argv: list[str]) -> tuple[str, ...] | None:
    """The module for the first command word; None (load all) for help or anything unknown.
    The word itself is kept in WORD."""
    global WORD
    WORD = None
    for arg in argv:
        if arg.startswith("-"):
            if arg in ("-h", "--help"):
                return None
            if arg == "--version":
                return ()
            continue
        module = ROUTES.get(arg)
        if module:
            WORD = arg
        return (module,) if module else None
    return None
