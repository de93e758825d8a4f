"""The nemaudit command: dissect, audit, describe (MILAN), fool and saliency, compare runs,
and train.

One module per command; each builds :class:`~nemaudit.audit.request.AuditRequest` s from its
flags and runs them on the same :class:`~nemaudit.auditor.Auditor` the pytest fixture uses,
so both accept the same specs and share the clean-run cache. ``nemaudit --help`` imports no
torch.
"""

from __future__ import annotations

import argparse
import sys

from nemaudit.cli import audit, compare, describe, dissect, fool, train
from nemaudit.errors import NemauditError


def build_parser() -> argparse.ArgumentParser:
    from nemaudit import __version__

    parser = argparse.ArgumentParser(prog="nemaudit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"nemaudit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    dissect.add_parser(sub)
    audit.add_parser(sub)
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
        return args.func(args)
    except (NemauditError, KeyError, ValueError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"nemaudit: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
