"""`--backup PATH` never destroys: it refuses a PATH that exists, that is a folder, or that
is one of the image's own files, before anything changes, and names a free one instead."""
from __future__ import annotations

import os
from collections.abc import Iterable

from ..errors import RefusedError, VdiskError


def _stem(path: str) -> str:
    name = os.path.basename(path)
    root, ext = os.path.splitext(name)
    return root if ext.lower() in (".vmdk", ".img", ".raw") else name


def free_name(base: str) -> str:
    """`base` when nothing has that name, else the first free `base.1`, `base.2`, ..."""
    if not os.path.lexists(base):
        return base
    n = 1
    while os.path.lexists(f"{base}.{n}"):
        n += 1
    return f"{base}.{n}"


def check_backup_target(backup: str | None, image_files: Iterable[str]) -> None:
    """Raise RefusedError (nothing changed yet) unless `backup` names a new file or folder
    in an existing folder."""
    if not backup:
        return
    files = [os.path.abspath(f) for f in image_files]
    own = {os.path.realpath(f) for f in files}
    main = files[-1] if files else os.path.abspath(backup)
    if os.path.realpath(backup) in own:
        why, base = "is one of the image's own files", os.path.join(
            os.path.dirname(os.path.abspath(backup)), _stem(main) + ".bak")
    elif os.path.isdir(backup):
        why, base = "is a folder", os.path.join(backup, _stem(main) + ".bak")
    elif os.path.lexists(backup):
        why, base = "exists", backup
    elif not os.path.isdir(os.path.dirname(os.path.abspath(backup))):
        raise RefusedError("--backup: its folder does not exist; nothing was changed",
                           path=backup, hint="create the folder first, or name one that exists")
    else:
        return
    raise RefusedError(f"--backup {why}; a backup never replaces a file, nothing was changed",
                       path=backup, hint=f"choose a free name, e.g. --backup {free_name(base)}")


def image_files(path: str, allow_outside: bool = False) -> list[str]:
    """The files an image consists of (descriptor and extents); [path] when it cannot be
    opened (the command's own open reports why)."""
    from .disk import open_image
    try:
        with open_image(path, allow_outside=allow_outside) as disk:
            return [os.path.abspath(f) for f in disk.files] or [os.path.abspath(path)]
    except (VdiskError, OSError):
        return [os.path.abspath(path)]


def check_backup_for(backup: str | None, path: str, allow_outside: bool = False) -> None:
    """check_backup_target for the image at `path`."""
    if backup:
        check_backup_target(backup, image_files(path, allow_outside))
