"""Which paths name an OVF package (.ova, .ovf or .zip): the test commands make before
choosing between the package reader (ipva/ova.py) and the image reader, kept apart from
the reader so that a command on a plain disk does not load it."""
from __future__ import annotations

import os

PACKAGE_SUFFIXES = (".ova", ".ovf", ".zip")


def is_package(path: str) -> bool:
    """True for an existing file whose name ends in a package suffix."""
    return path.lower().endswith(PACKAGE_SUFFIXES) and os.path.isfile(path)
