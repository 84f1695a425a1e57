"""Plain value conversion for the option types vdisk uses (str, int with bounds, bool, enum,
a list of str), so that parsing a command line does not build a pydantic validator per
parameter (typer's default, which costs more than the rest of `vdisk info` together).

Anything else (a parser callback, a file or path type, a type not listed) keeps typer's own
conversion. Errors are click's BadParameter, reported as every usage error is (exit 2).
"""
from __future__ import annotations

from enum import Enum
from typing import Any, get_args, get_origin


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _integer(value: Any, info: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str, bytes)):
        raise ValueError(f"{value!r} is not an integer")
    try:
        n = int(_text(value)) if isinstance(value, (str, bytes)) else value
    except ValueError:
        raise ValueError(f"{_text(value)!r} is not an integer") from None
    low, high = getattr(info, "min", None), getattr(info, "max", None)
    if getattr(info, "clamp", False):
        return max(low, n) if low is not None and n < low else (
            min(high, n) if high is not None and n > high else n)
    if low is not None and n < low:
        raise ValueError(f"{n} is below the smallest allowed value, {low}")
    if high is not None and n > high:
        raise ValueError(f"{n} is above the largest allowed value, {high}")
    return n


def _choice(value: Any, choices: list[Enum], case_sensitive: bool) -> Enum:
    if isinstance(value, Enum) and value in choices:
        return value
    text = _text(value)
    for c in choices:
        v = str(c.value)
        if v == text or (not case_sensitive and v.lower() == text.lower()):
            return c
    raise ValueError(f"{text!r} is not one of {', '.join(repr(str(c.value)) for c in choices)}")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).strip().lower()
    if text in ("1", "true", "t", "yes", "y", "on"):
        return True
    if text in ("", "0", "false", "f", "no", "n", "off"):
        return False
    raise ValueError(f"{_text(value)!r} is not a boolean")


def converter(annotation: Any, info: Any) -> Any:
    """The conversion of one value for `annotation`, or None when typer's own is needed."""
    if annotation is str:
        return _text
    if annotation is bool:
        return _boolean
    if annotation is int:
        return lambda v: _integer(v, info)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        choices = list(annotation)
        sensitive = getattr(info, "case_sensitive", True)
        return lambda v: _choice(v, choices, sensitive)
    return None


def install(param: Any) -> bool:
    """Give a typer parameter the plain conversion; False (typer's own stays) when its type
    or typer's internals are not the known ones."""
    td = getattr(param, "type_descriptor", None)
    if td is None or not hasattr(param, "_runtime_param") or param._runtime_param is not None:
        return False
    info = td.parameter_info
    if td.file_annotation is not None or getattr(info, "parser", None) is not None \
            or getattr(info, "click_type", None) is not None:
        return False
    annotation = td.annotation
    many = get_origin(annotation) in (list, tuple)
    if many:
        args = get_args(annotation)
        if get_origin(annotation) is tuple or len(args) != 1:
            return False
        annotation = args[0]
    one = converter(annotation, info)
    if one is None:
        return False
    cls = _plain_class()
    if cls is None:
        return False
    param._runtime_param = cls(parameter_info=info, annotation=td.annotation, one=one, many=many)
    return True


def install_on_help(command: Any) -> None:
    """The same for the -h/--help option, which click makes only when a line is parsed."""
    made = getattr(command, "get_help_option", None)
    if made is None or getattr(made, "_vdisk_plain", False):
        return

    def get_help_option(ctx: Any) -> Any:
        option = made(ctx)
        if option is not None:
            install(option)
        return option

    get_help_option._vdisk_plain = True  # type: ignore[attr-defined]
    command.get_help_option = get_help_option


_CLASS: list[Any] = []


def _plain_class() -> Any:
    """typer's RuntimeParam with the plain conversion (None: not this typer)."""
    if not _CLASS:
        try:
            from dataclasses import dataclass

            from typer import BadParameter
            from typer._coercion import RuntimeParam
        except ImportError:
            _CLASS.append(None)
            return None

        @dataclass(frozen=True)
        class Plain(RuntimeParam):  # type: ignore[misc]
            one: Any = None
            many: bool = False

            def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
                try:
                    if self.many:
                        items = value if isinstance(value, (list, tuple)) else [value]
                        return [self.one(v) for v in items]
                    return self.one(value)
                except ValueError as exc:
                    raise BadParameter(str(exc), ctx=ctx, param=param) from None

        _CLASS.append(Plain)
    return _CLASS[0]
