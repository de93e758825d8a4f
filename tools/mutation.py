#!/usr/bin/env python
"""Mutation testing of nemaudit's core with mutmut 3 (slow; not run in CI).

Each module is mutated in its own scratch copy of the repository (``--workdir``, outside the
checkout), with a ``[tool.mutmut]`` section written into that copy's ``pyproject.toml`` only: the
real ``pyproject.toml`` is never touched. mutmut copies the source into ``<copy>/mutants/`` and
runs pytest from there with ``mutants/`` first on ``sys.path`` (the editable install's finder comes
after ``sys.path`` entries, so the tests import the mutated package). Each mutant runs only the
tests that cover the mutated function, out of the test files mapped to its module below.

    nice -n 19 .venv/bin/python tools/mutation.py --module nemaudit/expectations.py
    nice -n 19 .venv/bin/python tools/mutation.py                 # every module of MODULE_TESTS
    nice -n 19 .venv/bin/python tools/mutation.py --module nemaudit/baseline.py --survivors
        # rerun only the survivors of the previous run (after adding tests), keeping the copy

The score printed per module is killed / total, where "killed" counts mutants that a test failed
on, that timed out or that crashed, and "total" counts every mutant mutmut generated (a mutant no
test covers counts as surviving). A summary goes to ``--summary`` (``.json`` and ``.md``), with
the diff of every surviving mutant; survivors judged equivalent are listed, with their reasons,
in ``tools/equivalent_mutants.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module (a file, or a folder meaning each .py file under it) -> the test files that check it.
MODULE_TESTS: dict[str, list[str]] = {
    "nemaudit/expectations.py": [
        "tests/test_spec.py",
        "tests/test_boundaries.py",
        "tests/test_confidence.py",
    ],
    "nemaudit/baseline.py": [
        "tests/test_baseline_exact.py",
        "tests/test_boundaries.py",
        "tests/test_compare.py",
        "tests/test_spec.py",
    ],
    "nemaudit/audit/result.py": ["tests/test_audit.py", "tests/test_metric_meanings.py"],
    "nemaudit/audit/confidence.py": ["tests/test_confidence_exact.py", "tests/test_confidence.py",
                                     "tests/test_boundaries.py"],
    "nemaudit/audit/netdissect/bootstrap.py": ["tests/test_bootstrap_exact.py",
                                               "tests/test_bootstrap_probe.py",
                                               "tests/test_confidence.py"],
    "nemaudit/audit/radius": ["tests/test_radius_exact.py"],
    "nemaudit/audit/fields.py": ["tests/test_field_ranges.py"],
    "nemaudit/audit/saliency/__init__.py": ["tests/test_field_ranges.py",
                                            "tests/test_saliency_run_exact.py"],
    "nemaudit/audit/netdissect/cache.py": ["tests/test_clean_cache_exact.py", "tests/test_audit.py",
                                           "tests/test_nd_run_exact.py"],
    "nemaudit/audit/netdissect/flags.py": ["tests/test_netdissect_result.py", "tests/test_bootstrap_probe.py"],
    "nemaudit/audit/netdissect/result.py": [
        "tests/test_audit.py",
        "tests/test_metric_meanings.py",
        "tests/test_netdissect_result.py",
        "tests/test_confidence.py",
    ],
    "nemaudit/audit/netdissect/run.py": [
        "tests/test_nd_run_exact.py",
        "tests/test_audit.py",
        "tests/test_metric_meanings.py",
        "tests/test_threaded_group.py",  # the group branches, ranks as threads
    ],
    "nemaudit/audit/milan/run.py": [
        "tests/test_milan_audit.py",
        "tests/test_metric_meanings.py",
        "tests/test_milan_audit_exact.py",
    ],
    "nemaudit/audit/milan/__init__.py": [
        "tests/test_milan_audit_exact.py",
        "tests/test_milan_audit.py",
    ],
    "nemaudit/corrupt/base.py": [
        "tests/test_corrupt_base.py",
        "tests/test_corrupt_spec.py",
        "tests/test_corrupt_pgd.py",
        "tests/test_corrupt_fgsm.py",
        "tests/test_corrupt_noise.py",
        "tests/test_boundaries.py",
    ],
    "nemaudit/corrupt/pgd.py": [
        "tests/test_corrupt_pgd.py",
        "tests/test_metric_meanings.py",
        "tests/test_pgd_exact.py",
    ],
    "nemaudit/corrupt/fgsm.py": ["tests/test_corrupt_fgsm.py", "tests/test_fgsm_exact.py"],
    "nemaudit/corrupt/noise.py": ["tests/test_corrupt_noise.py", "tests/test_noise_exact.py"],
    "nemaudit/corrupt/spec.py": ["tests/test_corrupt_spec.py", "tests/test_corrupt_spec_messages.py"],
    "nemaudit/explain/netdissect/tally.py": [
        "tests/test_tally_incremental_exact.py",
        "tests/test_tally_labels.py",
        "tests/test_netdissect.py",
        "tests/test_incremental.py",
        "tests/test_distributed.py",  # IoUTally.sum_across_ranks and state_dict
    ],
    "nemaudit/explain/netdissect/incremental.py": [
        "tests/test_incremental.py",
        "tests/test_tally_incremental_exact.py",
    ],
    "nemaudit/explain/netdissect/dissect.py": [
        "tests/test_netdissect.py",
        "tests/test_dissect_exact.py",
        "tests/test_netdissect_result.py",
        "tests/test_tally_incremental_exact.py",
        "tests/test_tally_labels.py",
        "tests/test_incremental.py",
        "tests/test_threaded_group.py",
    ],
    "nemaudit/explain/common": [
        "tests/test_netdissect.py",
        "tests/test_quantile_exact.py",
        "tests/test_activations_exact.py",
        "tests/test_milan_exemplars.py",
        "tests/test_incremental.py",
        "tests/test_model.py",
        "tests/test_memo_probe.py",
        "tests/test_threaded_group.py",  # merge_across_ranks
    ],
    # the in-process tests only: test_distributed.py's gloo processes are invisible to mutmut
    # (it measures the tests' reach in this process) and take minutes a mutant
    "nemaudit/dist.py": ["tests/test_dist_inprocess.py", "tests/test_threaded_group.py"],
    "nemaudit/explain/saliency/metrics.py": ["tests/test_fooling.py",
                                             "tests/test_saliency_metrics_exact.py"],
    "nemaudit/explain/saliency/__init__.py": ["tests/test_saliency_interpreters.py"],
    "nemaudit/explain/saliency/lrp.py": ["tests/test_saliency_interpreters.py"],
    "nemaudit/corrupt/manipulate/losses.py": ["tests/test_fooling.py",
                                              "tests/test_saliency_metrics_exact.py"],
    # the fast value-by-value tests only: test_saliency_audit.py and test_fooling.py train the
    # bundled model, minutes a mutant
    "nemaudit/audit/saliency/run.py": ["tests/test_saliency_run_exact.py"],
    "nemaudit/corrupt/manipulate/data.py": ["tests/test_manipulate_exact.py",
                                            "tests/test_fooling.py",
                                            "tests/test_saliency_run_exact.py"],
    "nemaudit/corrupt/manipulate/evaluate.py": ["tests/test_manipulate_exact.py",
                                                "tests/test_fooling.py",
                                                "tests/test_saliency_run_exact.py"],
    "nemaudit/explain/milan/exemplars.py": ["tests/test_milan_exemplars.py",
                                            "tests/test_exemplars_parts.py",
                                            "tests/test_milan_audit_exact.py"],
    "nemaudit/explain/milan/model.py": ["tests/test_milan_model_exact.py",
                                        "tests/test_milan_decode.py"],
    "nemaudit/explain/milan/decode.py": ["tests/test_milan_decode.py", "tests/test_decode_exact.py",
                                         "tests/test_milan_audit_exact.py"],
    "nemaudit/explain/milan/bertscore.py": ["tests/test_milan_bertscore.py",
                                            "tests/test_bertscore_exact.py",
                                            "tests/test_milan_audit_exact.py"],
    "nemaudit/explain/milan/describer.py": ["tests/test_milan_describer.py",
                                            "tests/test_describer_parts.py",
                                            "tests/test_milan_audit_exact.py"],
    "nemaudit/explain/netdissect/images.py": ["tests/test_bootstrap_probe.py",
                                              "tests/test_bootstrap_exact.py"],
    "nemaudit/audit/__init__.py": ["tests/test_lazy_exports.py"],
    "nemaudit/corrupt/__init__.py": ["tests/test_lazy_exports.py"],
    "nemaudit/audit/request.py": ["tests/test_request_exact.py", "tests/test_front_doors.py",
                                  "tests/test_field_ranges.py"],
    "nemaudit/corrupt/torchattacks_adapter.py": ["tests/test_corrupt_pgd.py"],
    "nemaudit/specs.py": ["tests/test_specs.py", "tests/test_specs_exact.py",
                          "tests/test_corrupt_spec_messages.py"],
    "nemaudit/auditor.py": ["tests/test_auditor_exact.py", "tests/test_cli_common.py"],
    "nemaudit/audit/pictures.py": ["tests/test_pictures_exact.py"],
    "nemaudit/audit/netdissect/pictures.py": ["tests/test_pictures_exact.py"],
    "nemaudit/audit/milan/pictures.py": ["tests/test_pictures_exact.py"],
    "nemaudit/audit/saliency/pictures.py": ["tests/test_pictures_exact.py"],
    "nemaudit/audit/methods.py": ["tests/test_method_declarations_exact.py", "tests/test_spec.py",
                                  "tests/test_report_methods.py"],
    "nemaudit/audit/netdissect/__init__.py": ["tests/test_method_declarations_exact.py",
                                              "tests/test_spec.py", "tests/test_html_exact.py"],
    "nemaudit/corrupt/kinds.py": ["tests/test_method_declarations_exact.py",
                                  "tests/test_corrupt_spec.py"],
    "nemaudit/corrupt/manipulate/__init__.py": ["tests/test_method_declarations_exact.py",
                                                "tests/test_manipulate_exact.py"],
    "nemaudit/corrupt/manipulate/save.py": ["tests/test_method_declarations_exact.py"],
    # the fast loop tests only (a tiny CNN on 8x8 images); test_fooling.py trains for seconds
    "nemaudit/corrupt/manipulate/train.py": ["tests/test_fool_loop_exact.py"],
    "nemaudit/cli/common.py": [
        "tests/test_cli_common.py",
        "tests/test_cli.py",
        "tests/test_cli_flags.py",
        "tests/test_cli_help.py",
    ],
    "nemaudit/cli/audit.py": [
        "tests/test_cli_audit_parts.py",
        "tests/test_cli.py",
        "tests/test_cli_flags.py",
        "tests/test_cli_help.py",
    ],
    "nemaudit/cli/dissect.py": ["tests/test_cli_dissect_exact.py", "tests/test_cli.py",
                                "tests/test_cli_flags.py", "tests/test_cli_help.py"],
    "nemaudit/cli/__init__.py": ["tests/test_cli_main_exact.py", "tests/test_cli_help.py"],
    "nemaudit/cli/describe.py": ["tests/test_cli_describe_exact.py", "tests/test_cli_help.py"],
    "nemaudit/cli/fool.py": ["tests/test_cli_fool_flags.py", "tests/test_cli_help.py"],
    "nemaudit/cli/radius.py": ["tests/test_cli_fool_flags.py", "tests/test_cli_help.py"],
    "nemaudit/cli/compare.py": ["tests/test_cli_fool_flags.py", "tests/test_compare.py",
                                "tests/test_cli_help.py"],
    "nemaudit/report/compare.py": ["tests/test_compare_exact.py", "tests/test_compare.py"],
    "nemaudit/report/netdissect_html.py": ["tests/test_netdissect_html_exact.py",
                                           "tests/test_report_escaping.py"],
    "nemaudit/report/milan_html.py": ["tests/test_method_html_views_exact.py",
                                      "tests/test_report_escaping.py"],
    "nemaudit/report/saliency_html.py": ["tests/test_method_html_views_exact.py",
                                         "tests/test_report_escaping.py"],
    "nemaudit/report/compare_html.py": ["tests/test_compare_view_exact.py",
                                        "tests/test_compare_html.py"],
    "nemaudit/report/json_report.py": ["tests/test_json_report_exact.py", "tests/test_report.py"],
    "nemaudit/report/terminal.py": ["tests/test_terminal_exact.py", "tests/test_report_terminal.py"],
    "nemaudit/report/html.py": [
        "tests/test_html_exact.py",
        "tests/test_report_escaping.py",
        "tests/test_escaping_fields.py",
    ],
    "nemaudit/report/html_parts.py": [
        "tests/test_html_exact.py",
        "tests/test_report_escaping.py",
        "tests/test_report_methods.py",
        "tests/test_escaping_fields.py",
    ],
}

# Killed: a test failed (1), pytest crashed on it (3), it timed out, or it crashed the worker.
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
STATUS_BY_EXIT_CODE = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    2: "interrupted",
    None: "not checked",
    33: "no tests",
    34: "skipped",
    35: "suspicious",
    36: "timeout",
    37: "caught by type check",
    -24: "timeout",
    24: "timeout",
    152: "timeout",
    255: "timeout",
    -11: "segfault",
    -9: "segfault",
}


def slug(module: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", module).strip("_")


def module_files(module: str) -> list[str]:
    path = ROOT / module
    if path.is_dir():
        return sorted(str(p.relative_to(ROOT)) for p in path.rglob("*.py"))
    return [module]


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def mutmut_config(module: str, tests: list[str]) -> str:
    only = [module.rstrip("/") + "/*"] if (ROOT / module).is_dir() else [module]
    return "\n".join(
        [
            "",
            "[tool.mutmut]",
            'source_paths = ["nemaudit"]',
            f"only_mutate = {toml_list(only)}",
            f"pytest_add_cli_args_test_selection = {toml_list(tests)}",
            # no cache, no xdist workers inside a mutant's run, no plugin from the environment
            # that reorders tests
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:xdist", "-o", "addopts="]',
            # torch is not fork-safe once used: fork each mutant from a server that only imported
            'process_isolation = "forkserver"',
            'also_copy = ["README.md", "examples", "benchmarks"]',
            "timeout_multiplier = 10.0",
            "",
        ]
    )


def prepare(workdir: Path, module: str, tests: list[str], keep: bool) -> None:
    if workdir.exists() and not keep:
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    for name in ("nemaudit", "tests", "examples", "benchmarks"):
        if (ROOT / name).exists():
            if keep and name == "nemaudit" and (workdir / name).exists():
                continue  # the mutants were made from this copy: keep it as it was
            shutil.copytree(ROOT / name, workdir / name, ignore=ignore, dirs_exist_ok=True)
    shutil.copy2(ROOT / "README.md", workdir / "README.md")
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    text = re.sub(r"\n\[tool\.mutmut\].*?(?=\n\[|\Z)", "\n", text, flags=re.S)
    (workdir / "pyproject.toml").write_text(text + mutmut_config(module, tests), encoding="utf-8")
    (workdir / "tests" / "conftest.py").write_text(FIXTURE_HITS, encoding="utf-8")
    # mutmut only looks for changes through git; the copy is not a repository, which it accepts.


#: written as the scratch copy's ``tests/conftest.py``. mutmut maps each function to the tests
#: that ran it, by the calls made between one test's teardown and the next; a function called
#: in a module-scoped fixture is thus mapped to the first test using it only, and a mutant
#: of it would never meet the other tests that read the fixture's result. This plugin
#: credits what a shared fixture's setup called to every test that uses the fixture.
FIXTURE_HITS = '''
import pytest

_HITS = {}


def _stats():
    try:
        from mutmut.state import state
    except ImportError:
        return None
    return state()._stats


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    stats = _stats()
    before = set(stats) if stats is not None else None
    yield
    if stats is not None and fixturedef.scope != "function":
        _HITS.setdefault(id(fixturedef), set()).update(set(stats) - before)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    stats = _stats()
    if stats is None:
        return
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info else ()):
        for d in defs:
            stats.update(_HITS.get(id(d), ()))
'''


def read_results(workdir: Path, module: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for f in module_files(module):
        meta = workdir / "mutants" / (f + ".meta")
        if not meta.exists():
            continue
        data = json.loads(meta.read_text(encoding="utf-8"))
        statuses = {
            k: STATUS_BY_EXIT_CODE.get(v, "suspicious") for k, v in data["exit_code_by_key"].items()
        }
        out[f] = statuses
    return out


#: the merged verdicts of the last run, kept in the module's scratch copy
VERDICTS = "verdicts.json"


def previous_results(workdir: Path, module: str) -> dict[str, dict[str, str]]:
    """The last run's verdicts: the merged ones it kept, else mutmut's own record."""
    if (workdir / VERDICTS).exists():
        return json.loads((workdir / VERDICTS).read_text(encoding="utf-8"))
    return read_results(workdir, module) if workdir.exists() else {}


def mutmut_bin() -> str:
    here = Path(sys.executable).parent / "mutmut"
    return str(here) if here.exists() else "mutmut"


def diff_of(workdir: Path, name: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [mutmut_bin(), "show", name], cwd=workdir, env=env, capture_output=True, text=True
    )
    return proc.stdout.strip()


def run_module(module: str, tests: list[str], args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir) / slug(module)
    survivors: list[str] = []
    previous: dict[str, dict[str, str]] = {}
    if args.survivors:
        previous = previous_results(workdir, module)
        survivors = [k for st in previous.values() for k, s in st.items() if s not in KILLED]
        if not previous:
            print(f"{module}: no previous run in {workdir}; running all mutants")
        elif not survivors:
            print(f"{module}: no survivors left in {workdir}")
    prepare(workdir, module, tests, keep=bool(args.survivors and survivors))
    # the tests may have changed since: map functions to tests afresh
    (workdir / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("PYTEST_ADDOPTS", None)
    cmd = ["nice", "-n", str(args.nice), mutmut_bin(), "run", "--max-children", str(args.max_children)]
    if args.survivors and survivors:
        cmd += survivors
    print(f"== {module}: {' '.join(cmd[:6])} ({len(tests)} test files) in {workdir}", flush=True)
    start = time.monotonic()
    log = workdir / "mutmut-run.log"
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, cwd=workdir, env=env, stdout=fh, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - start
    results = read_results(workdir, module)
    # a changed test selection makes mutmut forget old verdicts; only the survivors were rerun,
    # and added tests cannot revive a killed mutant: keep the previous verdict of the rest
    for f, st in results.items():
        for k, s in st.items():
            if s == "not checked" and previous.get(f, {}).get(k) in KILLED:
                st[k] = previous[f][k]
    # mutmut's own record says "not checked" for every mutant a --survivors run skipped: keep
    # the merged verdicts, so that a second --survivors run reruns only the real survivors
    (workdir / VERDICTS).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    statuses = [s for st in results.values() for s in st.values()]
    killed = sum(s in KILLED for s in statuses)
    survived = sorted(k for st in results.values() for k, s in st.items() if s not in KILLED)
    entry = {
        "module": module,
        "tests": tests,
        "killed": killed,
        "total": len(statuses),
        "score": (killed / len(statuses)) if statuses else None,
        "by_status": {s: statuses.count(s) for s in sorted(set(statuses))},
        "survivors": {name: diff_of(workdir, name, env) for name in survived}
        if not args.no_diffs
        else {name: "" for name in survived},
        "seconds": round(elapsed, 1),
        "mutmut_exit_code": proc.returncode,
        "log": str(log),
    }
    if proc.returncode != 0 or not statuses:
        print(f"   mutmut exited {proc.returncode}; see {log}")
    return entry


def write_summary(entries: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    old: dict[str, dict] = {}
    if path.with_suffix(".json").exists():  # keep modules run earlier, replace those run now
        for e in json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["modules"]:
            old[e["module"]] = e
    for e in entries:
        old[e["module"]] = e
    merged = [old[k] for k in sorted(old)]
    path.with_suffix(".json").write_text(
        json.dumps({"modules": merged}, indent=2) + "\n", encoding="utf-8"
    )
    lines = ["# Mutation scores", "", "| module | killed | total | score |", "|---|---|---|---|"]
    for e in merged:
        score = f"{100 * e['score']:.1f}%" if e["score"] is not None else "n/a"
        lines.append(f"| `{e['module']}` | {e['killed']} | {e['total']} | {score} |")
    for e in merged:
        if e["survivors"]:
            lines += ["", f"## Survivors of `{e['module']}`", ""]
            for name, diff in e["survivors"].items():
                lines += [f"### `{name}`", "", "```diff", diff, "```", ""]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--module",
        action="append",
        help="module to mutate (a key of MODULE_TESTS, or any file/folder with --tests); repeatable",
    )
    parser.add_argument(
        "--tests", nargs="+", help="test files for the modules given (instead of the mapping)"
    )
    parser.add_argument("--workdir", default="/tmp/nemaudit-mutation", help="scratch copies")
    parser.add_argument(
        "--summary", default=str(ROOT / "reports" / "mutation" / "summary"),
        help="summary path without suffix (.json and .md are written)",
    )
    parser.add_argument("--max-children", type=int, default=1)
    parser.add_argument("--nice", type=int, default=19)
    parser.add_argument(
        "--survivors", action="store_true",
        help="rerun only the previous run's survivors in the kept copy (tests re-synced)",
    )
    parser.add_argument("--no-diffs", action="store_true", help="don't list survivors' diffs")
    parser.add_argument("--list", action="store_true", help="print the module -> tests mapping")
    args = parser.parse_args(argv)

    if args.list:
        for m, t in MODULE_TESTS.items():
            print(f"{m}: {' '.join(t)}")
        return 0
    modules = args.module or list(MODULE_TESTS)
    entries = []
    for module in modules:
        module = module.rstrip("/")
        tests = args.tests or MODULE_TESTS.get(module)
        if not tests:
            parser.error(f"no tests mapped to {module}; pass --tests")
        tests = [t for t in tests if (ROOT / t).exists()]
        entry = run_module(module, tests, args)
        entries.append(entry)
        score = f"{100 * entry['score']:.1f}%" if entry["score"] is not None else "n/a"
        print(
            f"{module}: {entry['killed']} / {entry['total']} killed ({score}) "
            f"{entry['by_status']} in {entry['seconds']} s",
            flush=True,
        )
    write_summary(entries, Path(args.summary))
    print(f"summary: {args.summary}.json, {args.summary}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
