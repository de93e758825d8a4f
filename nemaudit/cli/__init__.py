"""The nemaudit command: dissect, audit, radius, describe (MILAN), fool and saliency, compare
runs, and train.

One module per command; each builds :class:`~nemaudit.audit.request.AuditRequest` s from its
flags and runs them on the same :class:`~nemaudit.auditor.Auditor` the pytest fixture uses,
so both accept the same specs and share the clean-run cache. ``nemaudit --help`` imports no
torch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator

from nemaudit.cli import audit, compare, describe, dissect, fool, radius, train
from nemaudit.errors import NemauditError


def build_parser() -> argparse.ArgumentParser:
    from nemaudit import __version__

    parser = argparse.ArgumentParser(prog="nemaudit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"nemaudit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    dissect.add_parser(sub)
    audit.add_parser(sub)
    radius.add_parser(sub)
    describe.add_parser(sub)
    compare.add_parser(sub)
    fool.add_parsers(sub)
    train.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # the train commands forward every argument (options included) to their own parsers
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "rest", None) is not None:
        args.rest = extra + list(args.rest)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        with _process_group(args):
            return args.func(args)
    except (NemauditError, KeyError, ValueError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"nemaudit: error: {_rank_prefix()}{msg}", file=sys.stderr)
        return 2


#: commands whose work is sharded over a process group (``torchrun -m nemaudit ...``)
DISTRIBUTED = ("dissect", "audit", "describe", "fool")


@contextlib.contextmanager
def _process_group(args: argparse.Namespace) -> Iterator[None]:
    """Under ``torchrun`` (WORLD_SIZE > 1): join the group, let only rank 0 print and write,
    post a rank's error for the others (so theirs quotes it) and leave the group."""
    from nemaudit import dist

    if not dist.launched():
        yield
        return
    if args.command not in DISTRIBUTED:
        raise NemauditError(f"nemaudit {args.command} runs in one process; under torchrun "
                            f"use one of: {', '.join(DISTRIBUTED)}")
    group = dist.init_from_env()
    quiet, stdout = None, sys.stdout
    if group is not None and not group.is_main:
        args.out = None  # rank 0 writes the result
        quiet = open(os.devnull, "w")  # noqa: SIM115 - closed below
        sys.stdout = quiet
    try:
        yield
    except BaseException as e:
        dist.report_failure(e)
        raise
    finally:
        if quiet is not None:
            sys.stdout = stdout  # whatever it was (a caller's redirect, pytest's capture)
            quiet.close()
        dist.shutdown()


def _rank_prefix() -> str:
    return f"rank {os.environ['RANK']}: " if os.environ.get("WORLD_SIZE", "1") not in ("", "1") \
        and "RANK" in os.environ else ""


if __name__ == "__main__":
    sys.exit(main())
