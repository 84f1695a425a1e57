"""Platform, VMware Tools and network rules over a VM's settings (specs/vmx.md §Platform,
§Network).

Each rule takes a plain mapping of settings (lower-case vmx keys to their values), so a vmx
(`settings_of`) and the settings an OVF package implies can be judged alike; rules yield
Issues without a path (the caller knows which file the settings came from, `at_path`).
The words follow the innovaphone wiki's known issues: ESX 3.x and below have no virtual IDE
disks; vSphere 5 needs V9 hotfix 4; VMware Tools are not supported.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace

from ..errors import Severity
from .doctor_model import Issue, issue
from .fwversion import V9HF4, FirmwareId, older_than
from .vmx import Vmx, shown, vmx_bool

HW_IDE_MIN = 7          # vSphere 4 (ESX 4.0) hardware; 4 is ESX 3.x, 3 is ESX 2.x
HW_VSPHERE5 = 8         # vSphere 5.0 hardware; 9 = 5.1, 10 = 5.5, 11 = 6.0 ...
ETH0, ETH1 = "ethernet0", "ethernet1"
SHIPPED_ETH1 = "host-only and not connected at power-on"
SHIPPED_ETH1_BUILD = 90468
CONSOLE_SETUP = ("on the VM console: config change IP0 ETH0 /addr ADDR /mask MASK; "
                 "config change DHCP0 /mode off; config write; reset")
#: tools.* keys that make VMware install, upgrade or sync through VMware Tools: the words
#: in the key name, and the values that leave the feature off.
TOOLS_WORDS = ("install", "upgrade", "sync")
TOOLS_OFF = {"false", "no", "0", "off", "manual", ""}


def settings_of(vmx: Vmx) -> dict[str, str]:
    """A vmx as the rules see it: lower-case keys, the last value of each (as VMware reads)."""
    return {e.key.lower(): e.value for e in vmx.entries()}


def at_path(issues: Iterable[Issue], path: str | None) -> Iterator[Issue]:
    """The rules' Issues, attributed to the file the settings came from."""
    for i in issues:
        yield i if path is None else replace(i, finding=replace(i.finding, path=path))


def hardware_version(settings: Mapping[str, str]) -> int | None:
    raw = (settings.get("virtualhw.version") or "").strip()
    return int(raw) if raw.isdigit() and len(raw) < 4 else None


# -- platform ---------------------------------------------------------------------------------
def check_hardware(settings: Mapping[str, str]) -> Iterator[Issue]:
    """virtualHW.version below 7: ESX 3.x and below offer no virtual IDE disks."""
    hw = hardware_version(settings)
    if hw is not None and hw < HW_IDE_MIN:
        yield issue("vmx.hw-version-old", Severity.ERROR, f"virtualHW.version {hw} is hardware "
                    "of ESX 3.x and below: no virtual IDE disks there, and the appliance boots "
                    "only from IDE", "vmx", fix=f"upgrade the VM's hardware to version {HW_IDE_MIN} "
                    "or later (vSphere 4 or later; Workstation 6.5 or later)")


def check_vsphere5_firmware(settings: Mapping[str, str], firmware: FirmwareId | None
                            ) -> Iterator[Issue]:
    """virtualHW.version 8 or later (vSphere 5) with a firmware older than 9.00 hotfix4."""
    hw = hardware_version(settings)
    if hw is None or hw < HW_VSPHERE5 or firmware is None:
        return
    if older_than(firmware, V9HF4) is False:    # V9HF4 has a pinned build: never None
        return
    yield issue("vmx.vsphere5-firmware", Severity.ERROR, f"virtualHW.version {hw} is vSphere 5 "
                f"hardware (or later), the firmware is {firmware.describe()}: {V9HF4.name} "
                f"({V9HF4.release}) is needed for vSphere 5", "vmx",
                fix=f"install firmware {V9HF4.release} or later: "
                "vdisk boot restore BOOT_DISK --firmware ipva.bin")


def check_tools(settings: Mapping[str, str]) -> Iterator[Issue]:
    """tools.* keys that install, upgrade or sync through VMware Tools."""
    for key, value in settings.items():
        if not key.startswith("tools.") or not any(w in key for w in TOOLS_WORDS):
            continue
        if value.strip().lower() in TOOLS_OFF:
            continue
        off = "manual" if "policy" in key else "FALSE"
        yield issue("vmx.tools-unsupported", Severity.WARNING, f'VMware Tools are not supported: '
                    f'{shown(key)} = "{shown(value)}" asks VMware to {_tools_verb(key)} them', "vmx",
                    fix=f'set {shown(key)} = "{off}" (or remove the line)')


def _tools_verb(key: str) -> str:
    if "sync" in key:
        return "sync the guest through"
    return "upgrade" if "upgrade" in key else "install"


# -- network ----------------------------------------------------------------------------------
def eth0_present(settings: Mapping[str, str]) -> bool:
    return vmx_bool(settings.get(f"{ETH0}.present"))


def check_eth0(settings: Mapping[str, str]) -> Iterator[Issue]:
    """ethernet0 absent or not present: error; a connection other than bridged: info."""
    if not eth0_present(settings):
        why = ("is not in the settings" if f"{ETH0}.present" not in settings
               else f'has present = "{shown(settings[f"{ETH0}.present"])}"')
        yield issue("vmx.nic-missing", Severity.ERROR, f"{ETH0} {why}: the appliance has no "
                    "network adapter for ETH0", "vmx",
                    fix=f'set {ETH0}.present = "TRUE" with {ETH0}.virtualDev = "vlance"')
        return
    kind = (settings.get(f"{ETH0}.connectiontype") or "").strip()
    if kind and kind.lower() != "bridged":
        net = settings.get(f"{ETH0}.vnet")
        on = f" on {shown(net)}" if kind.lower() == "custom" and net else ""
        yield issue("vmx.eth0-not-bridged", Severity.INFO, f'{ETH0}.connectionType is "{shown(kind)}"'
                    f"{on}, not bridged: the appliance is a DHCP client on ETH0 as shipped and "
                    "expects a DHCP server on that network, unless its address is set on the "
                    "console", "vmx", fix=f'set {ETH0}.connectionType = "bridged", or set the '
                    f"address {CONSOLE_SETUP}")


def check_eth1(settings: Mapping[str, str]) -> Iterator[Issue]:
    """ethernet1's state against how the appliance ships it (from build 90468)."""
    shipped = f"as shipped from build {SHIPPED_ETH1_BUILD}, ETH1 is {SHIPPED_ETH1}"
    if not vmx_bool(settings.get(f"{ETH1}.present")):
        yield issue("vmx.eth1-state", Severity.INFO, f"{ETH1} is not present: the appliance's "
                    f"ETH1 has no adapter ({shipped})", "vmx")
        return
    kind = (settings.get(f"{ETH1}.connectiontype") or "bridged").strip()
    connected = vmx_bool(settings.get(f"{ETH1}.startconnected", "TRUE"))
    state = f"{shown(kind)}, {'connected' if connected else 'not connected'} at power-on"
    if kind.lower() == "hostonly" and not connected:
        yield issue("vmx.eth1-state", Severity.INFO, f"{ETH1} (ETH1) is {state}: {shipped}", "vmx")
        return
    yield issue("vmx.eth1-state", Severity.INFO, f"{ETH1} (ETH1) is {state}; {shipped}. ETH1 "
                "answers on its own static address (192.168.1.1/24 by default) on the network "
                "it is connected to", "vmx",
                fix=f'set {ETH1}.connectionType = "hostonly" and {ETH1}.startConnected = "FALSE" '
                "unless ETH1 is meant to be used")
