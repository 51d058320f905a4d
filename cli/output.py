"""Writing results: JSON for scripts (`--json`), short lines for people."""

from __future__ import annotations

import json
import sys
from typing import Any


def emit(payload: Any, as_json: bool, human: str | None = None) -> None:
    """Write `payload` as JSON, or the human-readable text, to stdout."""
    text = json.dumps(payload, indent=2, default=str) if as_json or human is None else human
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain aligned text table."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [
        max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
