"""Values from files and requests as path components: the one checked way to put them into a path.

A SeriesInstanceUID, a file stem, a dataset name read from a zip or a case id can come from anyone who
can send a file. :func:`path_component` refuses everything that could leave the directory it is joined
to (``..``, separators, absolute paths, NUL, empty or over-long names); :func:`path_under` joins such
components to a root and checks the result is still below it. Both raise :class:`UnsafePathError`
naming the value and where it came from.
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow_provider_kaapana.exceptions import UnsafePathError

#: The longest file name most file systems accept (bytes, UTF-8).
MAX_COMPONENT_BYTES = 255


def path_component(value: object, source: str, *, max_bytes: int = MAX_COMPONENT_BYTES) -> str:
    """``value`` if it is safe as ONE file or directory name, else :class:`UnsafePathError`.

    ``source`` says where the value came from (``"SeriesInstanceUID of /in/x.dcm"``) and is named in the
    error. Refused: non-strings, empty names, ``.`` and ``..``, ``/`` or ``\\`` anywhere (so no absolute
    path either), NUL and other control characters, names longer than ``max_bytes`` bytes.
    """
    if not isinstance(value, str):
        raise UnsafePathError(f"{source}: {value!r} is not a name (a {type(value).__name__})")
    shown = repr(value) if len(value) <= 80 else f"{value[:60]!r}... ({len(value)} characters)"
    if not value:
        problem = "is empty"
    elif value in (".", ".."):
        problem = "is a relative directory reference"
    elif "/" in value or "\\" in value or os.sep in value:
        problem = "contains a path separator"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        problem = "contains NUL or another control character"
    elif len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        problem = f"is longer than {max_bytes} bytes"
    else:
        return value
    raise UnsafePathError(f"{source}: {shown} {problem}; refusing to use it as a file name")


def path_under(root: str | Path, *components: object, source: str) -> Path:
    """``root/c1/c2/...`` after checking each component with :func:`path_component`.

    As a second line of defence the joined path, normalised, must still lie below ``root``.
    """
    root = Path(root)
    path = root
    for component in components:
        path = path / path_component(component, source)
    if not Path(os.path.normpath(path)).is_relative_to(os.path.normpath(root)):  # pragma: no cover
        raise UnsafePathError(f"{source}: {path} lies outside {root}")
    return path
