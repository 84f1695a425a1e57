"""vmware.log reading (ipva/vmlog.py) and the doctor's findings from it.

The logs are written here by hand in the two shapes VMware writes (ESX 4 / Workstation 7:
`Oct 16 14:25:33.412: vcpu-0| …`; ESXi 5 and later: `2013-10-16T14:25:33.412Z| vcpu-0| I120: …`)
around the wiki's own excerpts, with ordinary noise, rotated files, and hostile bytes."""
from __future__ import annotations

import json
import os
import time

import pytest
from conftest import vdisk
from test_bundle_check import _disks, disk_set, make_bundle, problems  # noqa: F401
from test_vmx import WORKSTATION_VMX

from vdisk_tool.errors import Severity
from vdisk_tool.ipva import doctor, vmlog

HALT = "The CPU has been disabled by the guest operating system. Power off or reset the virtual machine."


def esx4_session(pid: int, minute: int, events: list[str]) -> str:
    """One ESX 4 power-on session: the banner, noise, then `events` (one line each)."""
    t = f"Oct 16 14:{minute:02d}"
    lines = [f"{t}:01.100: vmx| Log for VMware ESX pid={pid} version=4.1.0 build=build-260247 option=Release",
             f"{t}:01.101: vmx| The process is 64-bit.",
             f"{t}:01.200: vmx| Host codepage=UTF-8 encoding=UTF-8",
             f"{t}:02.310: vmx| DISK: OPEN ide0:0 '/vmfs/volumes/ds1/ipva/hd-boot.vmdk' persistent R[]",
             f"{t}:02.311: vmx| DISK: OPEN ide0:1 '/vmfs/volumes/ds1/ipva/hd-cf.vmdk' persistent R[]",
             f"{t}:03.000: vmx| Destroying virtual dev for ide1:1 (no VSCSI line follows: not the signature)",
             f"{t}:03.500: vmx| VMXVmdb_LoadRawConfig: Loading raw config",
             ]
    for n, e in enumerate(events):
        lines += [f"{t}:{10 + n:02d}.412: vmx| {e}", f"{t}:{10 + n:02d}.500: vmx| Msg_Post: ok"]
    return "\n".join(lines) + "\n"


def esxi5_session(events: list[str], hour: int = 9) -> str:
    t = f"2013-10-17T{hour:02d}:00"
    lines = [f"{t}:00.001Z| vmx| I120: Log for VMware ESX pid=4711 version=5.0.0 "
             "build=build-469512 option=Release",
             f"{t}:00.002Z| vmx| I120: Hostname=esx5",
             f"{t}:01.000Z| vcpu-0| I120: Guest: toolbox: Version: build-0"]
    lines += [f"{t}:05.{n:03d}Z| vmx| I120: {e}" for n, e in enumerate(events)]
    return "\n".join(lines) + "\n"


DESTROY_CF = ["Destroying virtual dev for ide0:1 vscsi=8198", "VMMon_VSCSIDestroyDev: Not found"]
DESTROY_FLASH = ["Destroying virtual dev for ide1:0 vscsi=8199", "VMX: noise in between",
                 "VMMon_VSCSIDestroyDev: Not found"]


def write(folder, name: str, text: str | bytes, age_s: float = 0.0) -> str:
    p = os.path.join(folder, name)
    with open(p, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    t = time.time() - age_s
    os.utime(p, (t, t))
    return p


def issues(rep: doctor.Report, code: str) -> list:
    return [i for i in rep.issues if i.code == code]


def test_wiki_story_halt_then_ide_devices_gone(tmp_path, runner):
    """Upload/DRAM on vSphere 4: the CPU halts (vmware-1.log); on the next power-on VMware
    destroys the IDE devices (vmware.log). The vmx lost ide0:1; ide1:0 is still attached."""
    text = WORKSTATION_VMX.replace('ide0:1.present = "TRUE"\r\n', "")
    b = make_bundle(tmp_path / "ipva", text)
    write(b, "vmware-1.log", esx4_session(100, 20, [HALT]), age_s=600)
    write(b, "vmware.log", esx4_session(101, 31, DESTROY_CF + DESTROY_FLASH))
    rep = doctor.check_bundle(b)
    [halt] = issues(rep, "bundle.log-cpu-halted")
    assert halt.severity == Severity.WARNING          # one session before the newest
    msg = halt.finding.message
    assert "the guest halted the CPU in the power-on session 1 before the newest" in msg
    assert "Maintenance/Upload/DRAM on vSphere 4" in msg
    assert f'vmware-1.log: "Oct 16 14:20:10.412: vmx| {HALT}"' in msg
    assert "Upload/Firmware" in halt.fix
    cf, flash = issues(rep, "bundle.log-ide-destroyed")
    assert (cf.subject, cf.severity, flash.subject, flash.severity) == (
        "cf", Severity.ERROR, "flash", Severity.WARNING)
    assert 'vmware.log: "Oct 16 14:31:10.412: vmx| Destroying virtual dev for ide0:1 vscsi=8198"' \
        in cf.finding.message
    assert 'vmware.log: "Oct 16 14:31:11.412: vmx| VMMon_VSCSIDestroyDev: Not found"' in cf.finding.message
    assert "the vmx no longer attaches a disk there" in cf.finding.message
    assert cf.fix.startswith('set ide0:1.present = "TRUE" and ide0:1.fileName = "hd-cf.vmdk"; restore')
    assert f"vdisk cf format {os.path.join(b, 'hd-cf.vmdk')} --yes" in cf.fix
    assert "ide1:1" not in " ".join(i.finding.message for i in rep.issues if i.code.startswith("bundle.log"))
    assert "attaches hd-flash.vmdk there again" in flash.finding.message
    assert flash.fix == f"vdisk check {os.path.join(b, 'hd-flash.vmdk')}"
    data = json.loads(vdisk(runner, "bundle", "check", b, "--json").stdout)
    got = {i["code"] for i in data["findings"]}
    assert {"bundle.log-cpu-halted", "bundle.log-ide-destroyed"} <= got
    r = vdisk(runner, "bundle", "check", b)
    assert r.exit_code == 1 and "error: bundle.log-ide-destroyed: VMware destroyed the cf disk" in r.output


def test_esxi5_log_newest_halt_is_an_error_and_recreate_steps(tmp_path):
    text = "".join(line for line in WORKSTATION_VMX.splitlines(keepends=True)
                   if not line.lower().startswith(("ide0:0.", "ide1:1.")))
    b = make_bundle(tmp_path / "e", text)
    events = ["Destroying virtual dev for ide0:0", "VMMon_VSCSIDestroyDev: Not found",
              "Destroying virtual dev for ide1:1", "VMMon_VSCSIDestroyDev: Not found", HALT]
    write(b, "vmware.log", esxi5_session(events))
    rep = doctor.check_bundle(b)
    [halt] = issues(rep, "bundle.log-cpu-halted")
    assert halt.severity == Severity.ERROR and "in the newest power-on session" in halt.finding.message
    assert '"2013-10-17T09:00:05.004Z| vmx| I120: The CPU has been disabled' in halt.finding.message
    by = {i.subject: i for i in issues(rep, "bundle.log-ide-destroyed")}
    assert "vdisk boot create" in by["boot"].fix and "--firmware ipva.bin" in by["boot"].fix
    assert by["dump"].fix.endswith(f"vdisk dump init {os.path.join(b, 'hd-dump.vmdk')}")
    assert "--size 64M" in by["dump"].fix


def test_only_recent_sessions_and_pairs_count(tmp_path):
    b = make_bundle(tmp_path / "r")
    # four sessions in one file (banners inside it): the halt is in the oldest, outside
    # the three most recent; a destroy line without its VSCSI partner is not the signature
    old = esx4_session(1, 1, [HALT]) + esx4_session(2, 2, []) + esx4_session(3, 3, [])
    write(b, "vmware.log", old + esx4_session(4, 4, ["Destroying virtual dev for ide0:1",
                                                     "a", "b", "c", "d", "e", "f",
                                                     "VMMon_VSCSIDestroyDev: Not found",
                                                     "Destroying virtual dev for ide0:10",
                                                     "VMMon_VSCSIDestroyDev: Not found"]))
    scan = vmlog.scan_logs(b)
    assert scan.sessions == 3 and scan.halts == () and scan.destroyed == ()
    assert problems(doctor.check_bundle(b)) == set()
    assert len(vmlog.scan_logs(b, recent=4).halts) == 1


def test_rotated_logs_order_and_bound(tmp_path):
    folder = str(tmp_path)
    for n in range(8):                       # vmware-7.log the newest rotated one
        write(folder, f"vmware-{n}.log", esx4_session(n, n, []), age_s=1000 - n * 10)
    write(folder, "vmware.log", esx4_session(99, 50, []))
    write(folder, "vmware-notes.log", "not a VMware log name\n")
    found = [os.path.basename(p) for p in vmlog.find_logs(folder)]
    assert found == ["vmware.log", "vmware-7.log", "vmware-6.log", "vmware-5.log"]
    write(folder, "vmware-5.log", esx4_session(5, 5, [HALT]), age_s=0)   # touched last
    assert [os.path.basename(p) for p in vmlog.find_logs(folder)][:2] == ["vmware.log", "vmware-5.log"]


def test_hostile_logs_are_just_text(tmp_path, runner):
    b = make_bundle(tmp_path / "h")
    junk = bytes(range(256)) * 64 + b"\xff\xfe\xc3(\x00\x1b[2J\x1b]0;owned\x07"
    huge_line = b"A" * (3 << 20)                                    # 3 MiB, no newline
    before = esx4_session(7, 7, [HALT]).encode()                    # beyond the 1 MiB tail
    tail = ("Oct 16 15:00:00.000: vcpu-0| \x1b[31m" + HALT + "\x1b[0m \u202e\t" + "x" * 500
            + "\n").encode()
    write(b, "vmware.log", before + junk + b"\n" + huge_line + b"\n" + junk + b"\n" + tail)
    os.mkfifo(os.path.join(b, "vmware-0.log"))                       # would block a plain open
    os.symlink("/dev/zero", os.path.join(b, "vmware-1.log"))
    rep = doctor.check_bundle(b)
    [halt] = issues(rep, "bundle.log-cpu-halted")
    msg = halt.finding.message
    assert "\x1b" not in msg and "\u202e" not in msg and "\t" not in msg
    assert '"Oct 16 15:00:00.000: vcpu-0| ?[31mThe CPU has been disabled' in msg
    assert msg.endswith("…\"")                                      # quote bounded
    assert len(msg) < 600
    notes = {os.path.basename(i.finding.path): i.finding.message
             for i in issues(rep, "bundle.log-unreadable")}
    assert "is not a regular file" in notes["vmware-0.log"]
    assert "symbolic link" in notes["vmware-1.log"]
    assert all(i.severity == Severity.INFO for i in issues(rep, "bundle.log-unreadable"))
    r = vdisk(runner, "bundle", "check", b, "--json")
    assert r.exit_code == 1 and "Traceback" not in r.output
    json.loads(r.stdout)


@pytest.mark.parametrize("data", [b"", b"\n", b"\x00" * 4096, b"\r\n" * 1000])
def test_degenerate_logs(tmp_path, data):
    write(str(tmp_path), "vmware.log", data)
    scan = vmlog.scan_logs(str(tmp_path))
    assert scan.halts == () and scan.destroyed == ()


def test_tail_is_bounded(tmp_path):
    p = write(str(tmp_path), "vmware.log", b"x\n" + b"y" * (2 * vmlog.MAX_TAIL_BYTES) + b"\nlast\n")
    assert vmlog.read_tail(p) == b"last\n"             # the cut line is dropped
    p = write(str(tmp_path), "vmware.log", b"x" * 50 + b"\n" + b"y" * (vmlog.MAX_TAIL_BYTES - 10)
              + b"\nlast\n")
    data = vmlog.read_tail(p)
    assert len(data) <= vmlog.MAX_TAIL_BYTES and data.startswith(b"yyy") and data.endswith(b"last\n")


def test_newer_esxi_line_shape_keeps_its_time(tmp_path):
    write(str(tmp_path), "vmware.log", "2021-03-01T10:00:00.000Z In(05) vmx - Log for VMware ESX\n"
          f"2021-03-01T10:00:09.120Z In(05) vcpu-0 - {HALT}\n")
    [h] = vmlog.scan_logs(str(tmp_path)).halts
    assert h.line.time == "2021-03-01T10:00:09.120Z" and h.age == 0
