"""Turning argument values into Python values: rendered templates, XCom values and form fields.

Operators receive their arguments after Jinja rendering: a value may be the Python object itself
(native rendering, an XComArg), or its text (``"{{ dag_run.conf }}"`` rendered to a string, ``"True"``,
``"0, 2"``). These functions are the one place that reads such values back; none of them guesses: a
value that is not what it should be is a :class:`ValueError` naming it.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from typing import Any

TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "0"})
_REQUIRED: Any = object()


def parse_bool(value: Any, name: str = "value", *, default: Any = _REQUIRED) -> bool:
    """``True``/``False`` from a bool, ``0``/``1`` or the words true/false, yes/no, on/off, 1/0 (any case).

    ``None`` gives ``default`` when one is given. Anything else (``"none"``, ``""``, ``"maybe"``, ``2``)
    raises :class:`ValueError` naming ``name`` and the value: a typo must not silently mean false.
    """
    if isinstance(value, bool):
        return value
    if value is None and default is not _REQUIRED:
        return bool(default)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ValueError(f"{name} must be a boolean (true/false, yes/no, on/off, 1/0), got {value!r}")


def optional_int(value: Any, name: str = "value") -> int | None:
    """An int, or None for ``None``/``""``/``"None"`` (an unset field rendered to text)."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "None")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


_UNPARSED: Any = object()


def _parse_literal(text: str) -> Any:
    """JSON, else a Python literal (what ``str()`` of a dict or list gives); ``_UNPARSED`` if neither."""
    try:
        return json.loads(text)
    except ValueError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return _UNPARSED


def as_native(value: Any) -> Any:
    """A dict or list rendered to its text (``"{{ dag_run.conf }}"``) back into the Python value.

    Only text that starts like a dict or list (``{``/``[``) is parsed; any other value, and text that
    does not parse, is returned as it is.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text or text[0] not in "[{":
        return value
    parsed = _parse_literal(text)
    return value if parsed is _UNPARSED else parsed


def as_mapping(value: Any, name: str) -> Mapping[str, Any]:
    """An XCom dict (``{}`` for None or ``""``); its rendered JSON or Python text is parsed back."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        parsed = _parse_literal(value)
        if parsed is _UNPARSED:
            raise ValueError(f"{name} is text that is neither JSON nor a Python dict: {value[:200]!r}")
        value = parsed
    if isinstance(value, Mapping):
        return value
    raise ValueError(f"{name} must be a dict (an XCom of the previous step), got {type(value).__name__}")


def as_list(value: Any) -> list[Any]:
    """A list from a list/tuple, one value, or text with one item per line or comma (``[]`` for empty)."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        return [v.strip() for v in value.replace(",", "\n").splitlines() if v.strip()]
    return [value]
