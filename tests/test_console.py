"""The console on every host: output that never fails on a legacy code page, Ctrl-C as one
line and exit 130 (cli/main.py).

A Windows console with its ANSI code page, or output redirected there, is simulated with a
cp1252 stream: the text printed holds characters cp1252 lacks (a vnet name in Japanese).
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vdisk_tool.cli import main as cli_main

SAMPLE = Path(__file__).resolve().parent.parent / "sample_images" / "ipva"


def _child(args: list[str], env_extra: dict[str, str], cwd: Path,
           code: str = "from vdisk_tool.cli.main import main; main()") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "VDISK_DEBUG")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, stdin=subprocess.DEVNULL)


@pytest.fixture
def japanese_vnet(tmp_path: Path) -> Path:
    folder = tmp_path / "ipva"
    shutil.copytree(SAMPLE, folder)
    vmx = folder / "ipva.vmx"
    text = re.sub(r'ethernet0\.connectionType = "[^"]*"', 'ethernet0.connectionType = "custom"',
                  vmx.read_text(encoding="utf-8"))
    vmx.write_text(text + 'ethernet0.vnet = "VMnet仮想"\n', encoding="utf-8")
    return folder


def test_a_legacy_code_page_does_not_break_the_output(japanese_vnet: Path) -> None:
    res = _child(["bundle", "check", "."], {"PYTHONIOENCODING": "cp1252"}, japanese_vnet)
    assert res.returncode == 0, res.stderr
    assert b"internal error" not in res.stderr and b"Traceback" not in res.stderr
    assert b'"custom" on VMnet??' in res.stdout


def test_redirected_output_becomes_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Windows gives a redirected stdout without PYTHONIOENCODING: the ANSI code page."""
    monkeypatch.delenv("PYTHONIOENCODING", raising=False)
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="cp1252")
    monkeypatch.setattr(sys, "stdout", out)
    cli_main.console_streams()
    print("VMnet仮想 Büro", file=out)
    out.flush()
    assert raw.getvalue() == "VMnet仮想 Büro\n".encode()


def test_a_terminal_keeps_its_code_page_and_shows_what_it_can(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    raw = io.BytesIO()
    out = Tty(raw, encoding="cp1252")
    monkeypatch.setattr(sys, "stderr", out)
    cli_main.console_streams()
    out.write("Büro 仮想\n")
    out.flush()
    assert raw.getvalue() == "Büro ??\n".encode("cp1252")


SIGINT_AT_OPEN = ("import os, signal\n"
                  "from vdisk_tool.image import platform\n"
                  "def ctrl_c(*a, **k):\n"
                  "    os.kill(os.getpid(), signal.SIGINT)\n"
                  "    import time; time.sleep(5)\n"
                  "platform.open_fd = ctrl_c\n"
                  "from vdisk_tool.cli.main import main; main()\n")
SIGINT_AT_LOAD = ("import os, signal, time\n"
                  "from vdisk_tool.cli import _select\n"
                  "_select.route = lambda argv: (os.kill(os.getpid(), signal.SIGINT), time.sleep(5))\n"
                  "from vdisk_tool.cli.main import main; main()\n")


@pytest.mark.skipif(os.name == "nt", reason="Windows delivers Ctrl-C as CTRL_C_EVENT, not SIGINT")
@pytest.mark.parametrize("code", [SIGINT_AT_OPEN, SIGINT_AT_LOAD], ids=["in a command", "while loading"])
def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path, code: str) -> None:
    res = _child(["info", str(SAMPLE / "hd-boot.vmdk")], {}, tmp_path, code)
    assert res.returncode == 130, res.stderr
    assert res.stderr.decode() == "vdisk: interrupted\n"
