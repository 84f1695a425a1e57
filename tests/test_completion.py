"""Shell completion (typer's --install-completion/--show-completion): scripts for bash, zsh
and fish, and completions of command names, options and enum values from the real entry
point."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ENTRY = [sys.executable, "-c", "import sys; sys.argv[0] = 'vdisk'; "
         "from vdisk_tool.cli.main import main; main()"]


def _complete(words: str) -> list[str]:
    env = dict(os.environ, _VDISK_COMPLETE="complete_bash", COMP_WORDS=words,
               COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)))
    r = subprocess.run(ENTRY, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_completes_commands_options_and_enum_values() -> None:
    assert {"info", "fs", "bundle", "verify"} <= set(_complete("vdisk "))
    assert {"cat", "df", "put", "check"} <= set(_complete("vdisk fs "))
    assert _complete("vdisk create x.vmdk --ov") == ["--overwrite"]
    assert _complete("vdisk create x.vmdk -F stream") == ["streamOptimized"]
    assert set(_complete("vdisk bundle create d --target ")) == {"workstation", "vsphere", "ova",
                                                                        "proxmox", "hyperv"}


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o default -F _vdisk_completion"),
                                           ("zsh", "compdef _vdisk_completion vdisk"),
                                           ("fish", "complete --command vdisk")])
def test_show_completion_for_each_shell(shell, marker) -> None:
    env = dict(os.environ, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    r = subprocess.run([*ENTRY, "--show-completion", shell], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert marker in r.stdout and "_VDISK_COMPLETE" in r.stdout
