"""Small assertions shared by the tests."""

from __future__ import annotations

import re

import pytest


def raises_exactly(exc: type[BaseException] | tuple[type[BaseException], ...], text: str):
    """``pytest.raises`` whose message must be ``text`` whole (not a pattern, not a part)."""
    return pytest.raises(exc, match="^" + re.escape(text) + "$")


def table_cells(text: str) -> list[list[list[str]]]:
    """The body rows of the first rich table in ``text``: per row, per column, its lines.
    A line whose first column is filled starts a row; lines with it empty continue the row
    (rich separates rows by nothing unless ``show_lines``)."""
    rows: list[list[list[str]]] = []
    body = text.split("┡", 1)[1].split("└", 1)[0]
    for line in body.splitlines()[1:]:
        if not line.startswith("│"):
            continue
        parts = [p.strip() for p in line.strip().strip("│").split("│")]
        if parts[0] or not rows:
            rows.append([[] for _ in parts])
        for col, p in zip(rows[-1], parts, strict=True):
            if p:
                col.append(p)
    return rows
