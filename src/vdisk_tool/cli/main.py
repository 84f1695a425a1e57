"""The `vdisk` console script: load only the command group the command line needs."""
from __future__ import annotations

import os
import sys

EXIT_INTERRUPTED = 130


def console_streams() -> None:
    """stdout and stderr that never fail on a character the host's code page lacks (a
    Windows console's legacy code page, output redirected to a file, a C locale):
    redirected output becomes UTF-8; a terminal, or an encoding the user chose with
    PYTHONIOENCODING, keeps its encoding and shows `?` for what it cannot show."""
    for stream in (sys.stdout, sys.stderr):
        enc = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if enc == "utf8" or not hasattr(stream, "reconfigure"):
            continue
        try:
            if stream.isatty() or os.environ.get("PYTHONIOENCODING"):
                stream.reconfigure(errors="replace")
            else:
                stream.reconfigure(encoding="utf-8", errors="replace")
        except (OSError, ValueError):
            pass


def main() -> None:
    console_streams()
    try:
        from . import fast
        code = fast.run(sys.argv[1:])
        if code is not None:
            sys.exit(code)
        from . import _select
        _select.ONLY = _select.route(sys.argv[1:])
        from .app import main as run
        run()
    except KeyboardInterrupt:
        # Ctrl-C outside a command's own handler (while loading, at a prompt): one line
        sys.stderr.write("vdisk: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
