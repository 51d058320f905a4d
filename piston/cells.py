"""Spreadsheet-safe CSV cells, written by the workers and read back by the console.

A text cell that starts with `= + - @` (or a tab or carriage return) is run as a formula by
the spreadsheet a person opens the file in; such cells get a leading `'`, which spreadsheets
show as text, and `from_cell` takes it off again.
"""

from __future__ import annotations

from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def to_cell(value: Any) -> Any:
    """A text cell a spreadsheet shows as text; anything else as it is."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def from_cell(text: str) -> str:
    """The text `to_cell` was given."""
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_START) else text
