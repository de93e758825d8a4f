"""The CLI's declared interface and its ``--help`` text.

``--help`` is the only manual most users read, so its text is checked two ways: every numeric
default a help line states ("(default 1e-3)") is compared with the value the library really
uses, and the whole declaration (each command's options, metavars, defaults, types and help)
is compared with ``tests/golden/cli_options.json``, so that a changed word is a reviewed diff,
not an accident. After an intended change, rewrite the file with
``NEMAUDIT_UPDATE_GOLDEN=1 pytest tests/test_cli_help.py`` and review ``git diff``.

The snapshot is a plain JSON file rather than syrupy's: syrupy fails the whole run when a
snapshot goes unused (a skipped test, or a ``-k``/node-id selection such as the mutation
runner's), and argparse's rendered text differs between Python versions (3.13 prints
``-o, --out OUT``), so the declaration is snapshotted, not the rendering.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import pytest

from nemaudit.cli import build_parser, main

GOLDEN = Path(__file__).parent / "golden" / "cli_options.json"


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub


def _name(value: object) -> object:
    if value is None or isinstance(value, (str, int, float, bool, list)):
        return value
    return getattr(value, "__name__", repr(value))


def _action(a: argparse.Action) -> dict:
    return {"options": a.option_strings, "dest": a.dest, "kind": type(a).__name__,
            "metavar": a.metavar, "default": _name(a.default), "type": _name(a.type),
            "nargs": a.nargs, "choices": a.choices, "required": a.required, "help": a.help}


def declaration() -> dict:
    parser = build_parser()
    sub = _subparsers(parser)
    helps = {c.dest: c.help for c in sub._choices_actions}
    out: dict = {"nemaudit": {"description": parser.description,
                              "actions": [_action(a) for a in parser._actions
                                          if a is not sub]}}
    for name, p in sub.choices.items():
        out[name] = {"help": helps[name], "description": p.description,
                     "defaults": {k: _name(v) for k, v in sorted(p._defaults.items())},
                     "actions": [_action(a) for a in p._actions]}
    return out


def _dump(doc: dict) -> str:
    """JSON with one line per option, so a diff shows the option that changed."""
    def line(v: object) -> str:
        return json.dumps(v, ensure_ascii=False)

    parts = []
    for command, d in doc.items():
        head = ", ".join(f"{line(k)}: {line(v)}" for k, v in d.items() if k != "actions")
        rows = ",\n".join(f"   {line(a)}" for a in d["actions"])
        parts.append(f" {line(command)}: {{{head}{', ' if head else ''}\"actions\": [\n{rows}\n ]}}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def test_the_declared_interface_is_the_reviewed_one():
    got = declaration()
    if os.environ.get("NEMAUDIT_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(_dump(got), encoding="utf-8")
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert list(got) == list(want)  # the commands, in the order --help lists them
    for command in want:
        assert got[command] == want[command], (
            f"`nemaudit {command}`'s declaration changed; if intended, rerun with "
            "NEMAUDIT_UPDATE_GOLDEN=1 and review the diff")


def _expanded_help(a: argparse.Action, prog: str) -> str:
    """``a.help`` as argparse prints it (``%(default)s`` filled in, ``%%`` → ``%``)."""
    params = {k: v for k, v in vars(a).items() if v is not argparse.SUPPRESS}
    params["prog"] = prog
    return a.help % params


# (train and train-milan forward --help to their own scripts: tests/test_cli_main_exact.py)
@pytest.mark.parametrize("command", [*(c for c in _subparsers(build_parser()).choices
                                       if not c.startswith("train")), None])
def test_help_prints_every_option_and_its_line(command, capsys, monkeypatch):
    """What ``--help`` prints: each option's flag and its help line, whitespace aside."""
    monkeypatch.setenv("COLUMNS", "100")
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    parser = build_parser()
    p = parser if command is None else _subparsers(parser).choices[command]
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for c in a._choices_actions:
                assert f"{c.dest} {' '.join(c.help.split())}" in text
            continue
        for flag in a.option_strings:
            assert flag in text
        if a.help:
            assert " ".join(_expanded_help(a, p.prog).split()) in text


def _library_defaults() -> dict[tuple[str, str], object]:
    """Where each default that a help line states (for a flag whose argparse default is
    None: the library decides) really lives."""
    from nemaudit.audit.saliency.run import DEFAULT_IMAGES, DEFAULT_THRESHOLD
    from nemaudit.corrupt.manipulate import FoolingConfig
    from nemaudit.explain.milan.model import MilanSettings
    from nemaudit.explain.netdissect.dissect import DissectConfig

    fool = FoolingConfig()
    milan = MilanSettings()
    nd = DissectConfig()
    out: dict[tuple[str, str], object] = {
        ("fool", "--lr"): fool.lr, ("fool", "--lam"): fool.lam,
        ("fool", "--epochs"): fool.epochs, ("fool", "--max-top1-drop"): fool.max_top1_drop,
        ("audit", "--eta"): nd.eta, ("audit", "--iou-threshold"): nd.iou_threshold,
        ("describe", "--beam-size"): milan.beam_size, ("describe", "--lam"): milan.lam,
    }
    for command in ("fool", "saliency"):
        out[(command, "--images")] = DEFAULT_IMAGES
    out[("saliency", "--threshold")] = DEFAULT_THRESHOLD
    return out


_STATED = re.compile(r"\bdefault:? (-?[0-9][0-9.e-]*)(?=[):]|$)")


def test_every_stated_numeric_default_is_the_one_used():
    """A help line's "(default N)" is the argparse default, or (argparse default None) the
    library's; a stated number with no known source fails, so each new one gets checked."""
    library = _library_defaults()
    seen = set()
    sub = _subparsers(build_parser())
    for command, p in sub.choices.items():
        for a in p._actions:
            m = _STATED.search(a.help or "")
            if not m or not a.option_strings:
                continue
            stated = float(m.group(1))
            flag = a.option_strings[-1]
            if a.default is not None:
                assert stated == a.default, (command, flag)
                continue
            assert (command, flag) in library, f"{command} {flag}: where is {stated} from?"
            assert stated == library[(command, flag)], (command, flag)
            seen.add((command, flag))
    assert seen == set(library)  # and no table entry names a flag that states nothing

