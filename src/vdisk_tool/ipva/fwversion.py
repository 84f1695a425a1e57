"""Which firmware is older: the ordering of IPVA firmware versions (specs/ipva-firmware.md
§Version order).

A firmware names itself twice in its header: the version text (`9.00 hotfix4`, `10.00 sr3`,
`12r1 sr10`) and the build number (90468). The text decides where it can be read as a
release; where it cannot (no text, a text of another shape, a pre-release such as
`9.00 hotfix1 beta`), the build number decides, as far as the builds the model pins allow.
Comparisons answer True, False or None (cannot tell): callers decide what "cannot tell" means
for them (a careful check treats it as the risky case).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .firmware_check import FirmwareReport

#: A build number's leading digits give its major version: 90468 is a V9 build [model].
BUILD_MAJOR_DIVISOR = 10000

_RELEASE = re.compile(
    r"^\s*v?\s*(?P<major>\d{1,3})(?:(?:\.(?P<minor>\d{1,3}))|(?:r(?P<rel>\d{1,3})))?"
    r"(?:\s*(?:hotfix|hf|sr|service\s*release)\s*(?P<level>\d{1,4}))?"
    r"(?P<rest>.*)$", re.IGNORECASE)
_PRERELEASE = re.compile(r"beta|alpha|dvl|rc\d*|test|pre", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Release:
    """A release as the version text names it: major, minor (`.00`, `r1`), service level
    (`hotfixN`, `srN`; 0 for the release itself)."""

    major: int
    minor: int = 0
    level: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor:02d}" + (f" hotfix{self.level}" if self.level else "")


@dataclass(frozen=True)
class FirmwareId:
    """A firmware as its header names it."""

    build: int
    version: str | None

    def describe(self) -> str:
        text = (self.version or "").strip()
        return f"{text} (build {self.build})" if text else f"build {self.build}"

    def to_dict(self) -> dict[str, object]:
        return {"build": self.build, "version": self.version,
                "release": None if (r := parse_release(self.version)) is None else str(r)}


@dataclass(frozen=True)
class Milestone:
    """A release other rules refer to, with its build where the model pins one."""

    name: str          # how the wiki writes it: "V9HF4"
    release: Release
    build: int | None = None

    def __str__(self) -> str:
        return f"{self.release} ({self.name})"


V9HF1 = Milestone("V9HF1", Release(9, 0, 1))
#: 90468 is the build the Reference9 article names; ipva-model §3 pairs it with
#: "9.00 hotfix4" [model].
V9HF4 = Milestone("V9HF4", Release(9, 0, 4), build=90468)
KNOWN_BUILDS = (V9HF4,)


def parse_release(text: str | None) -> Release | None:
    """The release a version text names, or None when the text is not enough (absent, of
    another shape, or a pre-release whose order against the release is unknown)."""
    if not text:
        return None
    m = _RELEASE.match(text)
    if m is None or _PRERELEASE.search(m.group("rest") or ""):
        return None
    if (m.group("rest") or "").strip(" ._-/()[]"):
        rest = m.group("rest").strip()
        if re.search(r"\d", rest):        # more numbers we do not understand
            return None
    minor = m.group("minor") or m.group("rel") or "0"
    return Release(int(m.group("major")), int(minor), int(m.group("level") or 0))


def build_major(build: int) -> int:
    return build // BUILD_MAJOR_DIVISOR


def older_than(fw: FirmwareId, ms: Milestone) -> bool | None:
    """Is `fw` older than the milestone? None when neither its text nor its build can tell."""
    rel = parse_release(fw.version)
    if rel is not None:
        return rel < ms.release
    if ms.build is not None:
        return fw.build < ms.build
    for known in KNOWN_BUILDS:              # a later pinned build reached: not older
        if known.release >= ms.release and known.build is not None and fw.build >= known.build:
            return False
    major = build_major(fw.build)
    if major != ms.release.major and 0 < major < 100:
        return major < ms.release.major
    return None


def firmware_id(report: FirmwareReport | None) -> FirmwareId | None:
    """The build and version of a checked image, when its header can be trusted (its CRC
    matches): a damaged header names no firmware."""
    h = None if report is None else report.header
    if h is None or h.found_header_crc32 != h.header_crc32:
        return None
    return FirmwareId(h.build, h.version)
