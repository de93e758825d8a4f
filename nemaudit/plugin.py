"""pytest plugin entry point (``pytest11``): ``pytest --nemaudit`` turns audits on.

Hooks only (as in syrupy): the rooms they call are :mod:`nemaudit.harness` (options, the
fixture, spec-file items, records and reports, failure messages) and the per-process state
is :mod:`nemaudit.session`. Nothing heavy is imported here: torch comes in only once an audit
runs, i.e. only with ``--nemaudit``.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from nemaudit import session as ns
from nemaudit.errors import NemauditError
from nemaudit.harness import fixture, messages, options, properties, records


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "nemaudit(**defaults): an audit test, skipped unless pytest --nemaudit; "
                   "keyword arguments (model=, probe=, layer=, weights=, normalize=) are "
                   "defaults for the nemaudit fixture")
    opts = options.parse_options(config)
    state = ns.NemauditState(config, opts, records.Records())
    config.stash[ns.STATE_KEY] = state
    config.pluginmanager.register(_Collector(state), "nemaudit-collector")
    if opts.enabled:
        _join_process_group(config)
        # resolve the device now, so `cuda` without a GPU is a UsageError
        try:
            _ = state.device
        except NemauditError as e:
            raise pytest.UsageError(f"--nemaudit-device: {e}") from None


def _join_process_group(config: pytest.Config) -> None:
    """``torchrun --nproc-per-node N -m pytest --nemaudit``: every rank runs the same tests in
    the same order, and each audit's work is sharded over the ranks (:mod:`nemaudit.dist`);
    rank 0 writes the reports. xdist cannot be combined with it (its workers would each be
    a rank of their own)."""
    import os

    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return
    if getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):
        raise pytest.UsageError("--nemaudit under torchrun shards each audit over the ranks; "
                                "do not combine it with pytest -n (xdist)")
    from nemaudit import dist

    try:
        dist.init_from_env()
    except NemauditError as e:
        raise pytest.UsageError(f"torchrun: {e}") from None


def pytest_report_header(config: pytest.Config) -> str | None:
    state = ns.get_state(config)
    o = state.options
    if not o.enabled:
        return None
    return (f"nemaudit: device={state.device} seed={o.seed} batch={o.batch_size} "
            f"cache={o.cache_dir or 'off'}{' update-baselines' if o.update else ''}")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if properties.is_spec_file(file_path):
        return properties.SpecFile.from_parent(parent, path=file_path)
    if file_path.name == "pyproject.toml" and file_path.parent == parent.config.rootpath:
        table = properties.pyproject_table(file_path)
        if table is not None:
            node = properties.SpecFile.from_parent(parent, path=file_path)
            node.table = table
            return node
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ns.get_state(config).options.enabled:
        return
    skip = pytest.mark.skip(reason=ns.SKIP_REASON)
    for item in items:
        # a malformed spec item stays an error: it is checked without torch, so for free
        invalid = isinstance(item, properties.PropertyItem) and item.error is not None
        if records.is_audit_item(item) and not invalid:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, Any, Any]:
    state = ns.get_state(item.config)
    state.current = records.ItemRun(item)
    try:
        return (yield)
    finally:
        state.current = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    state = ns.get_state(item.config)
    if state.options.enabled and records.is_audit_item(item):
        run = state.current if state.current is not None and state.current.item is item \
            else None
        record = records.make_record(item, call, report, run, state.wants_pictures)
        if record is not None:
            report.nemaudit_record = record  # type: ignore[attr-defined]  # JSON: crosses xdist
            # JUnit XML reads the item's user properties (from its last report): the verdict's
            # numbers travel there too, for CI dashboards
            props = [(f"nemaudit_{k}", record[k]) for k in ("expectation", "measured", "bound")
                     if record.get(k) is not None]
            item.user_properties.extend(props)
            report.user_properties.extend(props)
            if item.config.pluginmanager.hasplugin("html"):
                extras = records.html_extras(record)
                if extras:
                    report.extras = [*getattr(report, "extras", []), *extras]  # type: ignore
    return report


class _Collector:
    """Receives every test report, the controller's included (xdist replays workers' reports
    there): the one hook that gets no ``config`` argument, hence an object bound to it."""

    def __init__(self, state: ns.NemauditState) -> None:
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.state.records.collect(report)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.state.records.set_order([item.nodeid for item in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.state.records.set_order(ids)  # the controller collects nothing itself under xdist


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(ns.STATE_KEY, None)
    if state is not None:
        fixture.stop_listening(state)
        if state.options.enabled:
            from nemaudit import dist

            dist.shutdown()
    plugin = config.pluginmanager.get_plugin("nemaudit-collector")
    if plugin is not None:
        config.pluginmanager.unregister(plugin)


def pytest_assertrepr_compare(config: pytest.Config, op: str, left: Any, right: Any
                              ) -> list[str] | None:
    return messages.assertrepr(config, ns.get_state(config).current, op, left, right)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = ns.get_state(session.config)
    o = state.options
    if o.enabled and state.is_controller:
        info = state.records.session_info(session.config, o, state.device_name,
                                          int(exitstatus))
        state.records.write_reports(info, {"json": o.json, "html": o.html}, o.cache_dir)
        state.records.compare_and_save(info, o, session.config.rootpath)
        if _full_selection(session.config):  # a partial run leaves baselines unused
            state.records.unused = state.records.unused_baselines(session.config.rootpath)
        if state.records.regressions and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # robustness regressed


def _full_selection(config: pytest.Config) -> bool:
    opt = config.option
    partial = (getattr(opt, "keyword", "") or getattr(opt, "markexpr", "")
               or getattr(opt, "deselect", None) or getattr(opt, "lf", False)
               or any("::" in str(a) for a in config.args))
    return not partial


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config
                            ) -> None:
    state = ns.get_state(config)
    if state.options.enabled and state.is_controller:
        state.records.terminal_summary(terminalreporter)


@pytest.fixture(scope="session")
def nemaudit(pytestconfig: pytest.Config) -> fixture.Nemaudit:
    """Audits, expectations and committed baselines: ``nemaudit.audit(...)``,
    ``nemaudit.expect(result, "flip_rate <= 0.05")``, ``nemaudit.baseline(name, ...)``."""
    state = ns.get_state(pytestconfig)
    if not state.options.enabled:
        pytest.skip(ns.SKIP_REASON)
    return fixture.Nemaudit(state)
