"""fs cat, fs df and fs put from stdin, judged against mtools (mdir's free-space summary,
mtype's file content) on a volume mkfs.fat made."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from conftest import need_tool, vdisk
from fatutil import MIB, mkfs, mt, mtools_fill, mtype


def _mdir_free(img: Path, offset: int) -> int:
    need_tool("mdir")
    out = subprocess.run(["mdir", "-i", mt(img, offset), "::"], capture_output=True, text=True,
                         check=True, env=dict(os.environ, MTOOLS_SKIP_CHECK="1")).stdout
    return int(re.search(r"([\d ]+) bytes free", out).group(1).replace(" ", ""))


def test_cat_df_and_put_from_stdin(tmp_path: Path, runner) -> None:
    img = tmp_path / "v.img"
    off = mkfs(img, 40 * MIB, 16, partition=True)
    mtools_fill(img, off, {"LOGS/A.TXT": b"a" * 7000, "B.BIN": bytes(range(256)) * 50}, tmp_path)
    r = vdisk(runner, "fs", "cat", str(img), "/LOGS/A.TXT")
    assert r.exit_code == 0 and r.stdout_bytes == b"a" * 7000
    r = vdisk(runner, "fs", "cat", str(img), "/LOGS")
    assert r.exit_code == 2 and "is a directory" in r.stderr

    r = vdisk(runner, "fs", "df", str(img), "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["free_bytes"] == _mdir_free(img, off)
    assert d["clusters_used"] + d["clusters_free"] == d["clusters_total"]
    assert d["used_bytes"] + d["free_bytes"] == d["size_bytes"]
    text = vdisk(runner, "fs", "df", str(img)).stdout
    assert str(d["free_bytes"]) in text and f"{d['clusters_used']} used" in text

    payload = b"from a pipe\n" * 1000
    r = runner.invoke(__import__("vdisk_tool.cli.app", fromlist=["app"]).app,
                      ["fs", "put", str(img), "-", "/PIPE.TXT"], input=payload)
    assert r.exit_code == 0, r.output
    assert mtype(img, off, "PIPE.TXT") == payload
    assert json.loads(vdisk(runner, "fs", "df", str(img), "--json").stdout)["free_bytes"] \
        == _mdir_free(img, off) < d["free_bytes"]
