"""Command lines run without loading the parser: `vdisk check IMAGE` (with --json,
-q/--quiet), the check scripts and monitoring run most often.

Loading typer costs more than the whole check of a large sparse disk, so a command line
this module understands in full is run here and prints exactly what the full command
prints (tests/test_fast.py holds the two against each other). Anything else, and any
run that meets an error or a warning, is left to the full command line (cli/app.py),
which then reports it the one usual way: a check only reads, so running it again there
changes nothing. VDISK_NO_FAST=1 turns this off.
"""
from __future__ import annotations

import os
import sys

QUIET = ("-q", "--quiet")


def _check_args(argv: list[str]) -> tuple[str, bool] | None:
    """(image, --json) of `check IMAGE [--json]` with global -q/--quiet anywhere; None for
    any other command line."""
    rest = [a for a in argv if a not in QUIET]
    if len(rest) < 2 or rest[0] != "check":
        return None
    json_out = "--json" in rest[1:]
    words = [a for a in rest[1:] if a != "--json"]
    if len(words) != 1 or words[0].startswith("-") or not words[0]:
        return None
    return words[0], json_out


def run(argv: list[str]) -> int | None:
    """The exit code of a command line run here, or None when the full command line must
    run it (nothing has been printed then)."""
    if os.environ.get("VDISK_NO_FAST", "") not in ("", "0"):
        return None
    parsed = _check_args(argv)
    if parsed is None or not _plain_stdout():
        return None
    image, json_out = parsed
    import warnings

    from ..image.check import check_image
    from . import _plain
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = check_image(image)
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - the full command line reports it
        return None
    if caught:
        return None
    text = _plain.json_text(report.to_dict(), "check") if json_out \
        else "\n".join(_plain.check_lines(report))
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly with 0, as the full command line does
        from ..image import platform
        try:
            os.dup2(platform.open_fd(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except (OSError, ValueError):
        # nothing reached the output (a full disk, a character the encoding lacks): the
        # full command line reports it
        return None
    return 0 if report.clean else 1


def _plain_stdout() -> bool:
    """An output the full command line writes to as it is: present, and not ASCII-only
    (click writes UTF-8 to an ASCII stream itself)."""
    out = sys.stdout
    if out is None or not hasattr(out, "write"):
        return False
    import codecs
    try:
        return codecs.lookup(getattr(out, "encoding", None) or "ascii").name != "ascii"
    except LookupError:
        return False
