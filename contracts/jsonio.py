"""Strict JSON reading for files that cross a wall (manifest.json, job files).

`json.loads` fails in three ways that are not `json.JSONDecodeError`: arrays or objects nested deeper
than the interpreter's recursion limit raise RecursionError, an integer of more than 4,300 digits
raises a plain ValueError (the int/str conversion limit, CVE-2020-10735), and undecodable bytes raise
UnicodeDecodeError. All of them are bad input, so all become one JsonError with a one-line message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts.errors import JsonError

__all__ = ["loads_json", "read_json"]


def loads_json(data: bytes | str) -> Any:
    """The parsed document; JsonError("not valid JSON (...)") for anything json cannot read."""
    try:
        return json.loads(data)
    except RecursionError:
        raise JsonError("not valid JSON (nested too deeply)") from None
    except json.JSONDecodeError as exc:
        raise JsonError(f"not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise JsonError(f"not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    except ValueError as exc:  # e.g. an integer beyond sys.get_int_max_str_digits()
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise JsonError(f"not valid JSON ({first})") from None


def read_json(path: Path | str) -> Any:
    """Parse a file; OSError passes through (the caller names a missing or unreadable file)."""
    return loads_json(Path(path).read_bytes())
