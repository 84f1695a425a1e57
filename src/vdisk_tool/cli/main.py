"""The `vdisk` console script: load only the command group the command line needs."""
from __future__ import annotations

import sys


def main() -> None:
    from . import _select
    _select.ONLY = _select.route(sys.argv[1:])
    from .app import main as run
    run()
