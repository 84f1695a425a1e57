"""What the command line prints, as text and JSON, without the parser: the finding line,
the check report and the JSON envelope (specs/json.md). cli/common.py prints them for
every command; cli/fast.py for the command lines it runs without loading typer."""
from __future__ import annotations

from typing import Any

SCHEMA = 1          # the version of the --json envelope (specs/json.md)
SUCCESS_KEYS = ("ok", "healthy", "clean", "same")


def finding_line(f: Any, prefix: str = "") -> str:
    where = f" @0x{f.offset:x}" if f.offset is not None else ""
    fix = " (fixable)" if f.fixable else ""
    return f"{prefix}{f.severity.value}: {f.code}{where}: {f.message}{fix}"


def check_lines(report: Any) -> list[str]:
    """What `vdisk check` prints for a report (without --json)."""
    if report.clean:
        return [f"No errors were found on {report.path} ({report.grains_checked} "
                f"{report.units} checked).", *(finding_line(f) for f in report.findings)]
    n = sum(1 for f in report.findings if f.severity.value != "info")
    fixable = sum(1 for f in report.findings if f.fixable)
    return [*(finding_line(f) for f in report.findings),
            f"{n} finding(s), {fixable} fixable with --repair."]


def json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "__dataclass_fields__"):
        import dataclasses
        return dataclasses.asdict(o)
    if isinstance(o, bytes):
        return o.hex()
    if hasattr(o, "value"):
        return o.value
    return str(o)


def envelope(obj: Any, command: str, ok: bool | None = None, findings: Any = None
             ) -> dict[str, Any]:
    """The one JSON shape of every command (specs/json.md): schema, command, ok, findings,
    then the command's own keys. `ok` defaults to the result's own verdict (ok, healthy,
    clean, same), else to no error or warning among the findings."""
    import json  # only what prints JSON loads it (start-up)
    data = json.loads(json.dumps(obj, default=json_default))
    if not isinstance(data, dict):
        data = {"result": data}
    found = data.pop("findings", None)
    if found is None:
        found = data.pop("issues", None)
    if findings is not None:
        found = json.loads(json.dumps(list(findings), default=json_default))
    found = found or []
    if ok is None:
        verdict = next((data[k] for k in SUCCESS_KEYS if isinstance(data.get(k), bool)), None)
        ok = verdict if verdict is not None else not any(
            f.get("severity") in ("error", "warning") for f in found if isinstance(f, dict))
    data.pop("ok", None)
    return {"schema": SCHEMA, "command": command, "ok": ok, "findings": found, **data}


def json_text(obj: Any, command: str, ok: bool | None = None, findings: Any = None) -> str:
    import json
    return json.dumps(envelope(obj, command, ok, findings), indent=2)
