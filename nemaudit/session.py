"""Per-process state of a ``pytest --nemaudit`` run, and nothing else.

One :class:`NemauditState` per pytest process (the controller and each xdist worker), kept
in ``config.stash``: the parsed options, the :class:`~nemaudit.auditor.Auditor` (created on
first use, so a run with audits off never imports torch), the item running now and the
records collected. What is *done* with that state lives in :mod:`nemaudit.harness`.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

SKIP_REASON = "nemaudit audits are off; run pytest --nemaudit"
STATE_KEY = pytest.StashKey["NemauditState"]()


class NemauditState:
    """Options, the Auditor, the running item's record and every record of this process."""

    def __init__(self, config: pytest.Config, options: Any, records: Any) -> None:
        self.config, self.options, self.records = config, options, records
        #: the running audit item's :class:`~nemaudit.harness.records.ItemRun` (or None)
        self.current: Any = None
        self._auditor: Any = None

    @property
    def is_controller(self) -> bool:
        """The process that writes reports: not an xdist worker, and rank 0 under torchrun."""
        if hasattr(self.config, "workerinput"):
            return False
        import os

        return os.environ.get("RANK", "0") == "0" or os.environ.get("WORLD_SIZE", "1") == "1"

    @property
    def wants_pictures(self) -> bool:
        return bool(self.options.json or self.options.html)

    @property
    def auditor(self) -> Any:
        """The process's Auditor, built from the options on first use."""
        if self._auditor is None:
            from nemaudit.auditor import Auditor

            o = self.options
            self._auditor = Auditor(o.device, cache_dir=o.cache_dir, batch_size=o.batch_size,
                                    workers=o.workers, seed=o.seed, max_units=o.max_units)
        return self._auditor

    @property
    def device(self) -> Any:
        """The resolved device (xdist workers first share the cores out)."""
        if self._auditor is None or not self._auditor.device_resolved:
            workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
            if workers and int(workers) > 1 and "OMP_NUM_THREADS" not in os.environ:
                import torch

                # xdist workers share the cores: don't let each one use all of them
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))
        return self.auditor.device

    @property
    def device_name(self) -> str:
        return self._auditor.device_name if self._auditor is not None else self.options.device


def get_state(config: pytest.Config) -> NemauditState:
    return config.stash[STATE_KEY]
