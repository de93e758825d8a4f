"""One place for progress bars, so long work shows progress and tests/CI can silence it."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class _NullTask:
    def advance(self, n: float = 1) -> None:
        pass

    def describe(self, text: str) -> None:
        pass


class _RichTask:
    def __init__(self, progress, task_id) -> None:
        self._p, self._id = progress, task_id

    def advance(self, n: float = 1) -> None:
        self._p.advance(self._id, n)

    def describe(self, text: str) -> None:
        """Replace the bar's description (running losses, accuracy)."""
        self._p.update(self._id, description=text)


@contextlib.contextmanager
def progress_task(description: str, total: float | None, enabled: bool = True) -> Iterator:
    """A rich progress bar on stderr (if enabled and stderr is a terminal or forced); only
    rank 0 of a distributed run draws one."""
    if enabled:
        from nemaudit.dist import is_main

        enabled = is_main()
    if not enabled:
        yield _NullTask()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                  transient=False) as p:
        yield _RichTask(p, p.add_task(description, total=total))
