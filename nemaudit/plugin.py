"""pytest plugin entry point (``pytest11``): ``pytest --nemaudit`` turns audits on.

Hooks only (as in syrupy): options and state live in :mod:`nemaudit.session`, spec files in
:mod:`nemaudit.spec`, baselines in :mod:`nemaudit.baseline`. This module and those import
nothing heavy: torch is imported only once an audit runs, i.e. only with ``--nemaudit``.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from nemaudit import session as ns
from nemaudit import spec


def pytest_addoption(parser: pytest.Parser) -> None:
    ns.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "nemaudit(**defaults): an audit test, skipped unless pytest --nemaudit; "
                   "keyword arguments (model=, probe=, layer=, weights=, normalize=) are "
                   "defaults for the nemaudit fixture")
    options = ns.parse_options(config)
    state = ns.NemauditState(config, options)
    config.stash[ns.STATE_KEY] = state
    config.pluginmanager.register(_Collector(state), "nemaudit-collector")
    if options.enabled:
        state.check_device()


def pytest_report_header(config: pytest.Config) -> str | None:
    state = ns.get_state(config)
    o = state.options
    if not o.enabled:
        return None
    return (f"nemaudit: device={state.device} seed={o.seed} batch={o.batch_size} "
            f"cache={o.cache_dir or 'off'}{' update-baselines' if o.update else ''}")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if spec.is_spec_file(file_path):
        return spec.SpecFile.from_parent(parent, path=file_path)
    if file_path.name == "pyproject.toml" and file_path.parent == parent.config.rootpath:
        table = spec.pyproject_table(file_path)
        if table is not None:
            node = spec.SpecFile.from_parent(parent, path=file_path)
            node.table = table
            return node
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ns.get_state(config).options.enabled:
        return
    skip = pytest.mark.skip(reason=ns.SKIP_REASON)
    for item in items:
        # a malformed spec item stays an error: it is checked without torch, so for free
        invalid = isinstance(item, spec.PropertyItem) and item.error is not None
        if ns.is_audit_item(item) and not invalid:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, Any, Any]:
    state = ns.get_state(item.config)
    state.begin(item)
    try:
        return (yield)
    finally:
        state.end()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    ns.get_state(item.config).attach(item, call, report)
    return report


class _Collector:
    """Receives every test report, the controller's included (xdist replays workers' reports
    there): the one hook that gets no ``config`` argument, hence an object bound to it."""

    def __init__(self, state: ns.NemauditState) -> None:
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.state.collect(report)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.state.set_order([item.nodeid for item in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.state.set_order(ids)  # the controller collects nothing itself under xdist


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(ns.STATE_KEY, None)
    if state is not None:
        state.close()
    plugin = config.pluginmanager.get_plugin("nemaudit-collector")
    if plugin is not None:
        config.pluginmanager.unregister(plugin)


def pytest_assertrepr_compare(config: pytest.Config, op: str, left: Any, right: Any
                              ) -> list[str] | None:
    return ns.get_state(config).assertrepr(op, left, right)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    ns.get_state(session.config).write_reports(int(exitstatus))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config
                            ) -> None:
    ns.get_state(config).terminal_summary(terminalreporter)


@pytest.fixture(scope="session")
def nemaudit(pytestconfig: pytest.Config) -> ns.Nemaudit:
    """Audits, expectations and committed baselines: ``nemaudit.audit(...)``,
    ``nemaudit.expect(result, "flip_rate <= 0.05")``, ``nemaudit.baseline(name, ...)``."""
    state = ns.get_state(pytestconfig)
    if not state.options.enabled:
        pytest.skip(ns.SKIP_REASON)
    return state.helper

