"""Character sets as VMware names them: `encoding = "..."` in a VMDK descriptor and
`.encoding = "..."` in a vmx (specs/platform.md §Text).

VMware writes the host's ANSI code page there (windows-1252 on a western Windows,
Shift_JIS on a Japanese one, GBK, Big5 ...) or UTF-8. Windows' Shift_JIS is code page 932,
a superset of the JIS standard, so the name maps to Python's cp932, and so on.
"""
from __future__ import annotations

import codecs
import re

_ALIASES = {
    "utf-8": "utf-8", "utf8": "utf-8",
    "windows-1252": "cp1252", "cp1252": "cp1252",
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "windows-31j": "cp932",
    "cp932": "cp932",
    "gbk": "gbk", "gb2312": "gbk", "cp936": "gbk", "big5": "cp950", "euc-kr": "cp949",
    "ks_c_5601-1987": "cp949",
}
BOM = b"\xef\xbb\xbf"


def python_codec(name: str) -> str | None:
    """The Python codec for VMware's name of a character set (None when unknown)."""
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    try:
        return codecs.lookup(key).name
    except LookupError:
        return None


def declared(data: bytes, key: str) -> str | None:
    """The value of `key = "..."` in the raw bytes of a descriptor or vmx (every charset
    VMware writes keeps ASCII as ASCII, so the line is found before decoding)."""
    m = re.search(rb'(?mi)^[ \t]*' + re.escape(key.encode()) + rb'[ \t]*=[ \t]*"?([A-Za-z0-9_.:-]+)',
                  data)
    return m.group(1).decode("ascii") if m else None


# codecs whose decode and encode are inverse on every byte string they decode
BYTE_EXACT = frozenset({"utf-8", "latin-1", "iso8859-1", "cp1252", "ascii"})


def decode(data: bytes, key: str) -> tuple[str, str]:
    """(text, codec) of the bytes: the declared charset when they decode with it, else
    UTF-8, else latin-1 (every byte maps to itself, so writing back keeps it)."""
    name = declared(data, key)
    first = python_codec(name) if name else None
    for codec in dict.fromkeys(filter(None, (first, "utf-8"))):
        try:
            return data.decode(codec), codec
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1"), "latin-1"
