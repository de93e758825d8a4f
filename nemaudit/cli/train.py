"""``nemaudit train`` and ``nemaudit train-milan``: the bundled models' trainers, whose own
parsers take every argument."""

from __future__ import annotations

import argparse
from typing import Any


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("train", help="train the bundled concept-world model "
                                     "(arguments go to python -m nemaudit.training.conceptnet)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=run_conceptnet)
    p = sub.add_parser("train-milan", help="train the bundled offline MILAN (arguments go to "
                                           "python -m nemaudit.training.milan)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=run_milan)


def run_conceptnet(args: argparse.Namespace) -> int:
    from nemaudit.training.conceptnet import main

    return int(main(args.rest) or 0)


def run_milan(args: argparse.Namespace) -> int:
    from nemaudit.training.milan import main

    return int(main(args.rest) or 0)
