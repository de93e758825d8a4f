"""The plugin's options: one ``--nemaudit-<name>`` group, each with an ini twin.

Parsed and validated once at configure time (:func:`parse_options`): a bad value is a
``pytest.UsageError`` naming the option and what it expects.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from nemaudit.errors import SpecError
from nemaudit.files import check_output

#: name → (ini type, help). Each is ``--nemaudit-<name>`` and ini ``nemaudit_<name>``.
OPTIONS: dict[str, tuple[str, str]] = {
    "device": ("string", "auto | cpu | cuda | cuda:N | mps (default auto: the GPU if any)"),
    "seed": ("string", "seed of corruptions whose spec gives none (default 0)"),
    "json": ("string", "write the audit report as JSON to this path"),
    "html": ("string", "write the audit report as self-contained HTML to this path"),
    "cache-dir": ("string", "clean-baseline cache directory (default .nemaudit-cache, "
                            "relative to the rootdir; 'none' disables caching)"),
    "update": ("bool", "(re)write committed explanation baselines instead of comparing"),
    "autosave": ("bool", "save this run's JSON report (machine, commit, versions) under "
                         ".nemaudit-runs/ in the rootdir"),
    "compare": ("string", "compare with a saved run: a JSON report, or 'last' (the newest "
                          "autosaved run)"),
    "compare-fail": ("string", "with --nemaudit-compare: fail the run when a metric regressed, "
                               "e.g. flip_rate:+5% (comma-separated)"),
    "fail-on-warn": ("bool", "fail a property that holds at its point estimate but not at its "
                             "confidence bound (@ 95%); default: a warning"),
    "batch-size": ("string", "probe images per forward pass (default 64)"),
    "workers": ("string", "DataLoader worker processes decoding the probe ahead of the "
                          "forward pass (default 0)"),
    "max-units": ("string", "per-unit attacks attack at most this many units "
                            "(default: every labelled unit)"),
}
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def add_options(parser: pytest.Parser) -> None:
    """One option group; CLI defaults are None so that an ini value can fill in."""
    group = parser.getgroup("nemaudit", "neuron-explanation robustness audits (nemaudit)")
    group.addoption("--nemaudit", action="store_true", default=False,
                    help="run nemaudit audits (otherwise audit tests are skipped)")
    for name, (kind, help_) in OPTIONS.items():
        dest = "nemaudit_" + name.replace("-", "_")
        if kind == "bool":
            group.addoption(f"--nemaudit-{name}", action="store_true", default=None, dest=dest,
                            help=help_)
        else:
            group.addoption(f"--nemaudit-{name}", action="store", default=None, dest=dest,
                            metavar=name.upper().replace("-", "_"), help=help_)
        parser.addini(dest, f"{help_} (--nemaudit-{name} wins)",
                      type="bool" if kind == "bool" else "string",  # type: ignore[maybe-unrecognized-str-typeform]
                      default=False if kind == "bool" else "")


@dataclass
class Options:
    enabled: bool = False
    device: str = "auto"
    seed: int = 0
    json: Path | None = None
    html: Path | None = None
    cache_dir: Path | None = None
    update: bool = False
    fail_on_warn: bool = False
    autosave: bool = False
    compare: Path | None = None
    compare_fail: tuple[str, ...] = ()
    batch_size: int = 64
    workers: int = 0
    max_units: int | None = None

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def _raw(config: pytest.Config, name: str) -> tuple[Any, str, Path]:
    """(value, where it came from, the directory relative paths are resolved against)."""
    dest = "nemaudit_" + name.replace("-", "_")
    value = config.getoption(dest, None)
    if value is not None:
        return value, f"--nemaudit-{name}", Path(config.invocation_params.dir)
    ini = config.getini(dest)
    base = Path(config.inipath).parent if config.inipath else Path(config.rootpath)
    return (None if ini in ("", None) else ini), f"ini option {dest}", base


def _int_option(config: pytest.Config, name: str, minimum: int, default: int | None,
                allow_none: bool = False) -> int | None:
    value, src, _ = _raw(config, name)
    if value is None:
        return default
    text = str(value).strip()
    if allow_none and text.lower() in ("none", "all", "0"):
        return None
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is None or n < minimum:
        extra = " or 'none'" if allow_none else ""
        raise pytest.UsageError(f"{src}: expected an integer >= {minimum}{extra}, got {value!r}")
    return n


def parse_options(config: pytest.Config) -> Options:
    """Validate every option (CLI over ini); a bad value is a UsageError naming it."""
    opts = Options(enabled=bool(config.getoption("nemaudit", False)))
    device, src, _ = _raw(config, "device")
    if device is not None:
        if not _DEVICE_RE.match(str(device).strip().lower()):
            raise pytest.UsageError(f"{src}: expected auto, cpu, cuda, cuda:N or mps, "
                                    f"got {device!r}")
        opts.device = str(device).strip().lower()
    opts.seed = _int_option(config, "seed", 0, 0) or 0
    opts.batch_size = _int_option(config, "batch-size", 1, 64) or 64
    opts.workers = _int_option(config, "workers", 0, 0) or 0
    opts.max_units = _int_option(config, "max-units", 1, None, allow_none=True)
    for name in ("json", "html"):
        value, src, base = _raw(config, name)
        if value is not None:
            if not str(value).strip():
                raise pytest.UsageError(f"{src}: expected a file path, got {value!r}")
            path = base / Path(str(value)).expanduser()
            try:  # a report that cannot be written fails now, not after every audit ran
                check_output(str(path) + ("/" if str(value).endswith("/") else ""), src)
            except SpecError as e:
                raise pytest.UsageError(str(e)) from None
            setattr(opts, name, path)
    value, src, _ = _raw(config, "cache-dir")
    if value is None:
        opts.cache_dir = Path(config.rootpath) / ".nemaudit-cache"
    elif str(value).strip().lower() in ("none", "off", "false"):
        opts.cache_dir = None
    else:
        base = Path(config.rootpath)
        opts.cache_dir = base / Path(str(value)).expanduser()
        if opts.cache_dir.exists() and not opts.cache_dir.is_dir():
            raise pytest.UsageError(f"{src}: {opts.cache_dir} exists and is not a directory")
    update, _, _ = _raw(config, "update")
    opts.update = bool(update)
    fail_on_warn, _, _ = _raw(config, "fail-on-warn")
    opts.fail_on_warn = bool(fail_on_warn)
    autosave, _, _ = _raw(config, "autosave")
    opts.autosave = bool(autosave)
    value, src, base = _raw(config, "compare")
    if value is not None and str(value).strip():
        from nemaudit.report.compare import RUNS_DIR

        text = str(value).strip()
        opts.compare = (Path(config.rootpath) / RUNS_DIR if text in ("last", "latest")
                        else base / Path(text).expanduser())
    value, src, _ = _raw(config, "compare-fail")
    if value is not None and str(value).strip():
        from nemaudit.report.compare import Gate

        try:
            opts.compare_fail = tuple(Gate.parse(g).text for g in str(value).split(",")
                                      if g.strip())
        except SpecError as e:
            raise pytest.UsageError(f"{src}: {e}") from None
        if opts.compare is None:
            raise pytest.UsageError(f"{src} needs --nemaudit-compare (the run to compare with)")
    return opts
