"""``nemaudit.cli.main`` itself: which errors become exit code 2 and how they read, the train
commands' forwarded arguments, and the process-group wrapper under a launcher (stood in)."""

from __future__ import annotations

import io
import sys

import pytest

from nemaudit import dist
from nemaudit.cli import _process_group, _rank_prefix, compare, main, train
from nemaudit.errors import NemauditError, SpecError
from tests.helpers import raises_exactly


@pytest.fixture
def one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)


def _failing(exc):
    def run(args):
        raise exc
    return run


@pytest.mark.parametrize("exc, text", [
    (SpecError("bad spec"), "bad spec"),
    (NemauditError("plain"), "plain"),
    (KeyError("no such key"), "no such key"),  # the key itself, not its repr
    (KeyError(), ""),
    (ValueError("bad value"), "bad value"),
    (FileNotFoundError("gone.json"), "gone.json"),
])
def test_user_errors_exit_2_with_one_line(exc, text, capsys, monkeypatch, one_process):
    monkeypatch.setattr(compare, "run", _failing(exc))
    assert main(["compare", "a.json", "b.json"]) == 2
    out = capsys.readouterr()
    assert out.err == f"nemaudit: error: {text}\n" and out.out == ""


def test_other_errors_are_not_swallowed(monkeypatch, one_process):
    monkeypatch.setattr(compare, "run", _failing(RuntimeError("a bug")))
    with raises_exactly(RuntimeError, "a bug"):
        main(["compare", "a.json", "b.json"])


def test_the_commands_exit_code_is_mains(monkeypatch, one_process):
    monkeypatch.setattr(compare, "run", lambda args: 7)
    assert main(["compare", "a.json", "b.json"]) == 7


def test_unknown_arguments_are_an_argparse_error(capsys, one_process):
    with pytest.raises(SystemExit) as e:
        main(["compare", "a.json", "b.json", "--bogus", "x"])
    assert e.value.code == 2
    assert "nemaudit: error: unrecognized arguments: --bogus x" in capsys.readouterr().err


@pytest.mark.parametrize("command, runner", [("train", "run_conceptnet"),
                                             ("train-milan", "run_milan")])
def test_train_commands_forward_every_argument(command, runner, monkeypatch, one_process):
    seen = []
    monkeypatch.setattr(train, runner, lambda args: seen.append(args.rest) or 0)
    assert main([command, "--epochs", "1", "--help", "pos"]) == 0
    assert main([command]) == 0
    assert seen == [["--epochs", "1", "--help", "pos"], []]


def test_rank_prefix(monkeypatch):
    for world, rank, want in (("2", "1", "rank 1: "), ("1", "0", ""), ("", "0", ""),
                              ("3", None, "")):
        monkeypatch.setenv("WORLD_SIZE", world)
        if rank is None:
            monkeypatch.delenv("RANK", raising=False)
        else:
            monkeypatch.setenv("RANK", rank)
        assert _rank_prefix() == want
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("RANK", "1")
    assert _rank_prefix() == ""


# --------------------------------------------------------------------------- under a launcher

class _Args:
    def __init__(self, command: str) -> None:
        self.command, self.out = command, "result.json"


@pytest.fixture
def launcher(monkeypatch):
    calls: list = []
    monkeypatch.setattr(dist, "launched", lambda: True)
    monkeypatch.setattr(dist, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(dist, "report_failure", lambda e: calls.append(("failed", str(e))))
    return calls


def test_a_one_process_command_is_refused_under_a_launcher(launcher):
    with raises_exactly(NemauditError, "nemaudit compare runs in one process; under torchrun "
                                       "use one of: dissect, audit, describe, fool"):
        with _process_group(_Args("compare")):
            pytest.fail("ran")
    assert launcher == []  # no group joined, none left


def test_rank_0_prints_and_writes_the_others_are_quiet(launcher, monkeypatch):
    for rank, main_rank in ((0, True), (1, False)):
        monkeypatch.setattr(dist, "init_from_env", lambda r=rank: dist.Group(r, 2, "gloo", 5.0))
        args = _Args("audit")
        real = sys.stdout
        with _process_group(args):
            print("shown?")
            inside = sys.stdout
        assert sys.stdout is real
        if main_rank:
            assert args.out == "result.json" and inside is real
        else:
            assert args.out is None and inside is not real and inside.closed
    assert launcher == ["shutdown", "shutdown"]


def test_a_ranks_failure_is_posted_and_the_group_left(launcher, monkeypatch):
    monkeypatch.setattr(dist, "init_from_env", lambda: dist.Group(1, 2, "gloo", 5.0))
    real = sys.stdout
    with pytest.raises(ValueError, match="boom"):
        with _process_group(_Args("dissect")):
            raise ValueError("boom")
    assert launcher == [("failed", "boom"), "shutdown"] and sys.stdout is real


def test_not_launched_runs_as_it_is(monkeypatch):
    monkeypatch.setattr(dist, "launched", lambda: False)
    monkeypatch.setattr(dist, "init_from_env", lambda: pytest.fail("joined"))
    args = _Args("compare")
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    with _process_group(args):
        print("here")
    assert buf.getvalue() == "here\n" and args.out == "result.json"


def test_version_and_a_missing_command(capsys, one_process):
    from nemaudit import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"nemaudit {__version__}\n"
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    assert "the following arguments are required: command" in capsys.readouterr().err


def test_main_refuses_a_one_process_command_under_a_launcher(launcher, capsys):
    assert main(["compare", "a.json", "b.json"]) == 2
    assert capsys.readouterr().err == ("nemaudit: error: nemaudit compare runs in one process; "
                                       "under torchrun use one of: dissect, audit, describe, "
                                       "fool\n")
