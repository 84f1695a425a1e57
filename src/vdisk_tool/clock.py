"""Time and randomness for what vdisk writes, reproducible on request (leaf module).

Normally: the current time, and identifiers (CIDs, uuid.bios, random MACs) from the
operating system's secure generator. With SOURCE_DATE_EPOCH set (the reproducible-builds
convention, seconds since 1970 UTC), timestamps are that moment and identifiers come from a
generator seeded with it, so the same commands write the same bytes — for sample images
and golden-image pipelines that must be byte-stable.
"""
from __future__ import annotations

import datetime as _dt
import os
import random
import time

_SEEDED: dict[str, random.Random] = {}


def epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    return int(value) if value.isdigit() else None


def _rng() -> random.Random | None:
    e = epoch()
    if e is None:
        return None
    key = str(e)
    if key not in _SEEDED:
        _SEEDED.clear()
        _SEEDED[key] = random.Random(e)
    return _SEEDED[key]


def unix_time() -> int:
    e = epoch()
    return int(time.time()) if e is None else e


def unix_time_ms() -> int:
    e = epoch()
    return int(time.time() * 1000) if e is None else e * 1000


def now() -> _dt.datetime:
    """Local wall-clock time as FAT stores it (naive); the fixed moment (UTC) when reproducible."""
    e = epoch()
    if e is None:
        return _dt.datetime.now()
    return _dt.datetime.fromtimestamp(e, _dt.timezone.utc).replace(tzinfo=None)


def randbits(k: int) -> int:
    rng = _rng()
    if rng is None:
        import secrets  # loaded when first needed (start-up)
        return secrets.randbits(k)
    return rng.getrandbits(k)


def randbelow(n: int) -> int:
    rng = _rng()
    if rng is None:
        import secrets
        return secrets.randbelow(n)
    return rng.randrange(n)


def token_bytes(n: int) -> bytes:
    rng = _rng()
    if rng is None:
        import secrets
        return secrets.token_bytes(n)
    return rng.randbytes(n)
