"""Small assertions shared by the tests."""

from __future__ import annotations

import re

import pytest


def raises_exactly(exc: type[BaseException] | tuple[type[BaseException], ...], text: str):
    """``pytest.raises`` whose message must be ``text`` whole (not a pattern, not a part)."""
    return pytest.raises(exc, match="^" + re.escape(text) + "$")
